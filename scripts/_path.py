"""Lets the scripts run from a source checkout without installation: the repo root goes first on sys.path.

Imported first by every script, it also makes Ctrl-C during start-up (importing torch takes seconds) one line
and exit status 130 instead of an import traceback; ``detection.cli.run`` hands Ctrl-C back to Python's own
handler once the imports are done."""
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _interrupted_while_starting(signum, frame):
    sys.stderr.write("interrupted\n")
    sys.stderr.flush()
    raise SystemExit(130)


# only when a script is the program (not when tests import one), and not where Ctrl-C is ignored on purpose
# (e.g. a job started in the background by a non-interactive shell)
_main = getattr(sys.modules.get("__main__"), "__file__", None) or ""
if (os.path.dirname(os.path.abspath(_main)) == os.path.dirname(os.path.abspath(__file__))
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
    signal.signal(signal.SIGINT, _interrupted_while_starting)
