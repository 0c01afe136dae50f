"""A preallocated device window of per-step loss values, shared by every window-based weighting strategy.

ALWA (its two group values) and AVW, RLO and DWA (raw per-key losses) only need statistics over
``interval`` steps. Writing
each step's values into a preallocated ``[interval, K]`` tensor with a Python-int row index keeps the
per-step work on the device: nothing is read by the host until the window is full, so the training loop
is synchronised once per window instead of once per step.
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor


class LossWindow:
    """Rolling buffer of detached raw losses: one row per step, one column per key (float64).

    ``push(losses)`` writes a row and returns True when the window is full; ``collect()`` then returns
    the ``[n, K]`` values on the host (the single synchronisation) and empties the window. With
    ``sync=True`` under an initialised process group the windows of all ranks are concatenated, so every
    rank computes identical statistics.
    """

    def __init__(self, keys: Sequence[str], interval: int, sync: bool = False):
        self.keys: List[str] = list(keys)
        self.interval = int(interval)
        self.sync = sync
        self._buf: Optional[Tensor] = None  # [interval, K], allocated on the losses' device at first push
        self.count = 0

    def push(self, losses: Mapping[str, Tensor]) -> bool:
        row = torch.stack([losses[k].detach().reshape(()).to(torch.float64) for k in self.keys])
        if self._buf is None:
            self._buf = torch.zeros(self.interval, len(self.keys), dtype=torch.float64, device=row.device)
        # A Python-int row index is a device-side copy: no host round trip.
        self._buf[self.count] = row.to(self._buf.device)
        self.count += 1
        return self.count == self.interval

    def collect(self) -> Tensor:
        """The filled rows as a CPU float64 ``[n, K]`` tensor (n = interval, times world size if synced)."""
        rows = self._buf[: self.count]
        if self.sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, rows.contiguous())
            rows = torch.cat(parts)
        self.count = 0
        return rows.cpu().clone()  # the one host read per window

    def state_dict(self) -> dict:
        if self._buf is None:
            rows = torch.zeros(0, len(self.keys), dtype=torch.float64)
        else:
            rows = self._buf[: self.count].cpu().clone()
        return {"window": rows, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        rows, count = state["window"], int(state["count"])
        if rows.shape != (count, len(self.keys)) or count >= self.interval:
            raise ValueError(f"window state has shape {tuple(rows.shape)} for count {count}, "
                             f"{len(self.keys)} keys and interval {self.interval}")
        device = self._buf.device if self._buf is not None else rows.device
        self._buf = torch.zeros(self.interval, len(self.keys), dtype=torch.float64, device=device)
        self._buf[:count] = rows.to(device=device, dtype=torch.float64)
        self.count = count


def normalise_groups(keys, groups) -> List[List[str]]:
    """Key groups from either a flat ``keys`` list (one group) or ``groups`` (a list of lists), validated:
    non-empty, no key in two groups."""
    if (keys is None) == (groups is None):
        raise ValueError("give exactly one of keys (one group) or groups (a list of key lists)")
    if groups is None:
        groups = [keys]
    groups = [[k for k in g] for g in groups]
    flat = [k for g in groups for k in g]
    if not groups or any(not g for g in groups):
        raise ValueError(f"key groups must be non-empty, got {groups}")
    if any(not isinstance(k, str) for k in flat):
        raise TypeError(f"loss keys must be strings, got {groups}")
    if len(set(flat)) != len(flat):
        raise ValueError(f"a loss key appears twice in {groups}")
    return groups
