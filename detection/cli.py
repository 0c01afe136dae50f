"""What the command lines share: repeatable ``--set`` overrides, and user errors as one ``error:`` line.

Errors that the user can fix (a config, data, checkpoint or work-dir problem, a missing or unwritable file,
a full disk, a diverged run) print one line naming the problem and exit with status 1; Ctrl-C exits with 130 after saying
what was saved. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import signal
import sys
from typing import Callable, Optional, Tuple

from datasets import DataError
from detection.checkpoint.io import CheckpointError, WriteError
from detection.config.loader import ConfigError
from detection.runtime.signals import TrainingInterrupted
from detection.training.workdir import WorkDirError

# OSError: a missing or unreadable file, a full disk, a path that is a file: the machine's state, which
# the message (errno text and file name) describes; the project's own errors name the file or key themselves
USER_ERRORS = (ConfigError, DataError, CheckpointError, WorkDirError, OSError, FloatingPointError, WriteError)


def add_overrides(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--set KEY=VALUE ...``, repeatable: ``--set a=1 --set b=2`` keeps both (later ones win on a key)."""
    parser.add_argument("--set", action="extend", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. train.max_iters=100 (repeatable)")
    return parser


def positive_int(text: str) -> int:
    """argparse ``type`` of a count that must be at least 1 (a batch size of 0 would loop on nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def one_line(exc: BaseException) -> str:
    """The message of a user error; an error a DataLoader worker re-raised (``Caught DataError in DataLoader
    worker process 1. Original Traceback ...``) is reduced to its own last line."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        name, sep, message = last.partition(": ")
        return message if sep and name.split(".")[-1] == type(exc).__name__ else last
    return text


def run(fn: Callable[[], object], resume_hint: Optional[str] = None, also: Tuple[type, ...] = ()):
    """``fn()``, with user errors (and the exception types ``also``) and interrupts turned into one line and
    an exit status."""
    if getattr(signal.getsignal(signal.SIGINT), "__name__", "") == "_interrupted_while_starting":
        signal.signal(signal.SIGINT, signal.default_int_handler)  # scripts/_path.py's start-up handler
    try:
        return fn()
    except TrainingInterrupted as exc:
        print(f"{exc}" + (f"; continue with: {resume_hint}" if resume_hint and exc.checkpoint else ""),
              file=sys.stderr, flush=True)
        sys.exit(130)
    except KeyboardInterrupt as exc:
        print(f"interrupted{f': {exc}' if str(exc) else ''}", file=sys.stderr, flush=True)
        sys.exit(130)
    except USER_ERRORS + tuple(also) as exc:
        sys.exit(f"error: {one_line(exc)}")
