"""The work dir of a run: one run at a time (a lock file), and writable before anything trains.

``WorkDirLock`` creates ``<work dir>/.lock`` exclusively, holding the pid, host and start time of the run.
A second run in the same folder refuses with those; a lock left by a process that no longer runs (on this
host) is taken over, and said so. A lock from another host cannot be checked: the message says how to
remove it by hand.

A run stopped by the non-finite guard leaves ``<work dir>/diverged.json`` (iteration, loss keys, message),
removed when a run starts in the folder again.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from typing import Callable, Optional

from detection.checkpoint.io import write_failure


class WorkDirError(RuntimeError):
    """The work dir is in use or cannot be written; the message says which folder and why."""


def check_writable(folder: str) -> None:
    """Create ``folder`` if needed and prove that files can be written in it (a temp file, removed)."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test_", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise WorkDirError(f"cannot write to {folder}: {exc.strerror or exc} (choose another --work-dir or fix the "
                           f"folder's permissions)") from None


def _proc_start(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (Linux ``/proc/<pid>/stat``), None elsewhere: with
    the pid it names one process, also when a restarted container hands out the same pids again."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, start: Optional[int] = None) -> bool:
    """Whether the process that wrote a lock still runs: its pid exists and, when the lock recorded its start
    time, that pid still has it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    return start is None or _proc_start(pid) in (None, start)


class WorkDirLock:
    """``with WorkDirLock(work_dir): ...``: the run holds the folder; ``log`` receives the take-over note."""

    def __init__(self, work_dir: str, log: Callable[[str], None] = print):
        self.path = os.path.join(work_dir, ".lock")
        self.log = log
        self._held = False

    def _write(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "proc_start": _proc_start(os.getpid())}, f)
        except OSError as exc:  # a full disk: an empty lock left behind would refuse every later run
            os.unlink(self.path)
            raise write_failure(self.path, exc) from None
        return True

    def _holder(self) -> Optional[dict]:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None  # being written, or not ours: treated as held by an unknown process

    def __enter__(self) -> "WorkDirLock":
        folder = os.path.dirname(self.path)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:  # a file of that name, a read-only or full file system
            raise WorkDirError(f"cannot use {folder} as the work dir: {exc.strerror or exc}"
                               f"{' (a file of that name exists)' if os.path.isfile(folder) else ''}; "
                               f"choose another --work-dir") from None
        if not self._write():
            holder = self._holder()
            here = holder is not None and holder.get("host") == socket.gethostname()
            if here and isinstance(holder.get("pid"), int) and not _alive(holder["pid"], holder.get("proc_start")):
                self.log(f"{self.path}: taking over the lock of process {holder['pid']} (started "
                         f"{holder.get('started', '?')}), which no longer runs")
                os.unlink(self.path)
                if not self._write():
                    raise WorkDirError(f"{os.path.dirname(self.path)} was locked again while taking over a stale lock")
            else:
                who = (f"process {holder.get('pid')} on {holder.get('host')}, started {holder.get('started', '?')}"
                       if holder else "an unknown process")
                hint = f" If no run uses the folder any more (e.g. it crashed on another machine), delete {self.path}."
                raise WorkDirError(f"the work dir {os.path.dirname(self.path)} is in use by {who}: two runs in one "
                                   f"folder would mix their logs and checkpoints. Wait for it, or choose another "
                                   f"--work-dir.{hint}")
        self._held = True
        return self

    def __exit__(self, *exc) -> None:
        if self._held:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self._held = False


DIVERGED = "diverged.json"


def write_diverged(work_dir: str, iteration: int, keys, message: str) -> None:
    """Record that the run in ``work_dir`` was stopped by the non-finite guard: a grid then reports it as
    diverged (a result: the same seed diverges again) instead of a crash to retry. The results of an earlier
    run in the folder (``eval.json``, ``detections.pkl``) no longer describe it and are removed. The record
    is written atomically (a process stopped half way leaves no partial file)."""
    for stale in ("eval.json", "detections.pkl"):
        if os.path.isfile(os.path.join(work_dir, stale)):
            os.unlink(os.path.join(work_dir, stale))
    path = os.path.join(work_dir, DIVERGED)
    with open(path + ".tmp", "w") as f:
        json.dump({"iter": int(iteration), "keys": list(keys or []), "message": message}, f, indent=1)
    os.replace(path + ".tmp", path)


def read_diverged(work_dir: str) -> Optional[dict]:
    """The record :func:`write_diverged` left in ``work_dir``, or None."""
    path = os.path.join(work_dir, DIVERGED)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        int(record["iter"])
    except (ValueError, KeyError, TypeError) as exc:
        raise WorkDirError(f"{path} is not a diverged-run record ({exc}); delete it, or the folder, to retrain "
                           f"that run") from None
    return record


def clear_diverged(work_dir: str) -> None:
    """A run (re)starting in ``work_dir`` is no longer the diverged one."""
    path = os.path.join(work_dir, DIVERGED)
    if os.path.isfile(path):
        os.unlink(path)
