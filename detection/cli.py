"""What the command lines share: repeatable ``--set`` overrides, and user errors as one ``error:`` line.

Errors that the user can fix (a config, data, checkpoint or work-dir problem, a missing or unwritable file,
a diverged run) print one line naming the problem and exit with status 1; Ctrl-C exits with 130 after saying
what was saved. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional

from datasets import DataError
from detection.checkpoint import CheckpointError
from detection.config import ConfigError
from detection.signals import TrainingInterrupted
from detection.workdir import WorkDirError

USER_ERRORS = (ConfigError, DataError, CheckpointError, WorkDirError, FileNotFoundError, PermissionError,
               FloatingPointError)


def add_overrides(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--set KEY=VALUE ...``, repeatable: ``--set a=1 --set b=2`` keeps both (later ones win on a key)."""
    parser.add_argument("--set", action="extend", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. train.max_iters=100 (repeatable)")
    return parser


def run(fn: Callable[[], object], resume_hint: Optional[str] = None):
    """``fn()``, with user errors and interrupts turned into one line and an exit status."""
    try:
        return fn()
    except TrainingInterrupted as exc:
        print(f"{exc}" + (f"; continue with: {resume_hint}" if resume_hint and exc.checkpoint else ""),
              file=sys.stderr, flush=True)
        sys.exit(130)
    except KeyboardInterrupt as exc:
        print(f"interrupted{f': {exc}' if str(exc) else ''}", file=sys.stderr, flush=True)
        sys.exit(130)
    except USER_ERRORS as exc:
        sys.exit(f"error: {exc}")
