"""Atomic checkpoint files and random-number-generator state capture."""
from __future__ import annotations

import os
import random
import tempfile
from typing import Any, Dict

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (corrupt, not ours, or not this model's); the message names the file."""


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
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pth", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
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
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be read "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None
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
