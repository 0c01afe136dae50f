"""What the command lines share: repeatable ``--set`` overrides, and user errors as one ``error:`` line.

Errors that the user can fix (a config, data, checkpoint or work-dir problem, a missing or unwritable file,
a full disk, a diverged run) print one line naming the problem and exit with status 1; Ctrl-C exits with 130 after saying
what was saved. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import errno
import sys
from typing import Callable, Optional, Tuple

from datasets import DataError
from detection.checkpoint import CheckpointError, WriteError
from detection.config import ConfigError
from detection.signals import TrainingInterrupted
from detection.workdir import WorkDirError

USER_ERRORS = (ConfigError, DataError, CheckpointError, WorkDirError, FileNotFoundError, PermissionError,
               FloatingPointError, WriteError)


def add_overrides(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--set KEY=VALUE ...``, repeatable: ``--set a=1 --set b=2`` keeps both (later ones win on a key)."""
    parser.add_argument("--set", action="extend", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. train.max_iters=100 (repeatable)")
    return parser


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
    except OSError as exc:  # a full disk where no writer said more (a config, a record): still the user's
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        sys.exit(f"error: {exc.filename or 'an output file'}: {exc.strerror}")
