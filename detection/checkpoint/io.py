"""Atomic checkpoint files and random-number-generator state capture."""
from __future__ import annotations

import errno
import os
import random
import shutil
import tempfile
from typing import Any, Dict, Optional

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (corrupt, not ours, or not this model's); the message names the file."""


class CorruptCheckpoint(CheckpointError):
    """A checkpoint file that cannot be read at all (``path``: the file)."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


class WriteError(RuntimeError):
    """An output file could not be written (a full disk, a quota, an I/O error): the message names the file,
    the free space of its folder and the checkpoint that survived."""


def human(size: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"


def _os_error(exc: BaseException) -> Optional[OSError]:
    """The OSError behind ``exc``: torch.save reports a failed write as "[enforce fail at inline_container.cc]
    unexpected pos ...", with the file's OSError (e.g. ENOSPC) only as the exception's context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def write_failure(path: str, exc: BaseException, free_bytes: Optional[int] = None) -> Optional[WriteError]:
    """A ``WriteError`` for a failed write of ``path`` when ``exc`` is a file-system failure (None otherwise):
    the reason, the free space of the folder (``free_bytes`` measured at the failure, else now) and what
    survived: the folder's (or its ``checkpoints/``) ``last.pth`` and its iteration."""
    error = _os_error(exc)
    if error is None and "unexpected pos" not in str(exc):
        return None
    folder = os.path.dirname(os.path.abspath(path))
    if free_bytes is None:
        free_bytes = _free(folder)
    reason = (error.strerror or str(error)) if error is not None else f"torch: {str(exc).strip()[:120]}"
    full = error is not None and error.errno in (errno.ENOSPC, errno.EDQUOT)
    space = f"{human(free_bytes)} free in {folder}" if free_bytes is not None else f"free space of {folder} unknown"
    hint = "; free some space and resume" if full else ""
    return WriteError(f"cannot write {path}: {reason} ({space}); {_survivor(folder)}{hint}")


def _free(folder: str) -> Optional[int]:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def checkpoint_iter(path: str) -> Optional[int]:
    """The iteration saved in ``path``; None when it cannot be read (mmap: the weights are not read)."""
    try:
        return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["iter"])
    except Exception:  # any unreadable file is simply not a candidate
        return None


def _survivor(folder: str) -> str:
    for candidate in (os.path.join(folder, "last.pth"), os.path.join(folder, "checkpoints", "last.pth")):
        if os.path.isfile(candidate):
            it = checkpoint_iter(candidate)
            if it is None:
                return f"{candidate} is there but cannot be read"
            return f"the previous checkpoint {candidate} (iteration {it}) is intact"
    return "no earlier checkpoint exists"


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def save_checkpoint(state: Dict[str, Any], path: str) -> None:
    """Write ``state`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    A crash at any point leaves either the previous file or the new one, never a truncated file. The file
    gets the permissions of any other output (``0o666`` less the umask; a temp file alone would be 0600)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pth", dir=folder)
    except OSError as exc:
        raise write_failure(path, exc) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        free = _free(folder)  # before the partial file is removed: the space the write ran out of
        if os.path.exists(tmp):
            os.unlink(tmp)
        failure = write_failure(path, exc, free)
        if failure is not None:
            raise failure from None
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        # our checkpoints hold only tensors, numbers, strings and RNG states (numpy arrays)
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CorruptCheckpoint(f"checkpoint {path} is truncated or corrupt and cannot be read "
                                f"({type(exc).__name__}: {str(exc)[:200]})", path) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} has no 'model' entry; is it a checkpoint written by scripts/train.py?")
    return state


def load_weights(model, state: Dict[str, Any], path: str) -> None:
    """``model.load_state_dict(state["model"])`` with an error naming the checkpoint and the first mismatches
    (a checkpoint of another model or configuration) instead of torch's long traceback."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()][:4]
        raise CheckpointError(f"checkpoint {path} does not fit this model (another model type, backbone, class "
                              f"count or head setting?): {' '.join(lines)[:400]}") from None


def rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
