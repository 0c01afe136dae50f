"""Stopping a run cleanly on Ctrl-C (SIGINT) or a scheduler's SIGTERM.

The first signal only sets a flag: the trainer finishes the step it is in, writes a checkpoint of that
iteration and raises :class:`TrainingInterrupted` (the command line prints where the checkpoint is and how to
resume). A second signal raises ``KeyboardInterrupt`` at once, without a checkpoint. Handlers are installed
only in the main thread (signals cannot be caught elsewhere) and restored when training ends.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after checkpointing iteration ``iteration`` (``checkpoint``: the file)."""

    def __init__(self, signame: str, iteration: int, checkpoint: Optional[str] = None):
        super().__init__(signame, iteration)
        self.signame, self.iteration, self.checkpoint = signame, iteration, checkpoint

    def __str__(self) -> str:  # the checkpoint is known only after the hooks ran
        where = f"checkpoint written to {self.checkpoint}" if self.checkpoint else "no checkpoint written here"
        return f"interrupted by {self.signame} at iteration {self.iteration}: {where}"


class StopSignals:
    """Context manager: ``requested`` becomes the signal's name (e.g. ``"SIGINT"``) on the first signal."""

    def __init__(self):
        self.requested: Optional[str] = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested is not None:  # the second one: stop now
            self._restore()
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopped at once, no checkpoint")
        self.requested = signal.Signals(signum).name
        # os.write, not print: a handler that prints while the main code is inside a print raises
        os.write(2, f"\n{self.requested}: stopping after this step and writing a checkpoint "
                    f"(send it again to stop at once)\n".encode())

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: a stop signal sent to the whole process group (Ctrl-C in a terminal,
    SIGTERM from a scheduler or ``timeout``) is left to the main process, which finishes its step and writes
    a checkpoint; its exit then ends the workers through the loader's shutdown. A worker killed by that
    SIGTERM would instead make torch raise "DataLoader worker ... killed by signal" in the middle of the
    step, before any checkpoint.

    SIGINT is ignored. SIGTERM cannot simply be ignored: the loader's shutdown terminates a worker that does
    not leave in time with SIGTERM from the main process. So SIGTERM is blocked and taken by a thread that
    ends the worker when the main process sent it and ignores it from anyone else (where
    ``signal.sigwaitinfo`` does not exist, SIGTERM keeps its default)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        return
    parent = os.getppid()
    # blocked before the thread starts: it inherits the mask, and no thread of the worker takes SIGTERM itself
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_sigterm_from_parent_only, args=(parent,), name="sigterm", daemon=True).start()


def _sigterm_from_parent_only(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent:  # the loader's own terminate(): leave as torch's worker handler does
            os._exit(0)
