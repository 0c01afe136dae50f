"""ALWA: Adaptive Loss Weight Adjustment (variants 1 and 2).

``ALWA`` follows the authors' released code (docs/design.md, "Loss weighting"; docs/paper.md for the source):

* ``λcls`` and ``λreg`` start at ``init_weight``; ``λreg`` never changes.
* each step appends the detached group values (``λcls·Lcls`` and ``λreg·Lreg`` with ``stats="weighted"``,
  the raw ``Lcls`` and ``Lreg`` with ``stats="raw"``) to a window kept on the device;
* when ``interval`` values are in the window: ``CLS = mean + std`` (variant 1) or ``CLS = std``
  (variant 2), sample std with ddof = 1, likewise ``REG``; if ``CLS > REG`` then
  ``λcls = 1 - (CLS - REG) / CLS``, else ``λcls`` is kept; the window is emptied. The step that
  completes a window is weighted with the old ``λ``.
* with ``sync=True`` under an initialised ``torch.distributed`` process group, the windows of all ranks
  are gathered at the boundary so every rank computes the same ``λ``; ``sync=False`` keeps them per process
  (each rank its own ``λ``), as the released code does.

Variants for studying the rule, each off by default (the released behaviour):

* ``start_iter = S``: the first ``S`` steps the strategy sees are not recorded (e.g. the warmup, whose loss
  transient otherwise fills the first window); windows count from step ``S + 1``.
* ``first_window = "skip"``: the first completed window updates nothing (its statistics are dropped).
* ``stats = "raw"``: statistics of the unweighted losses, so that λ can move both ways.

Each completed window leaves a record (``pop_window_records``): its end step, the CLS and REG it compared,
whether λcls changed and the λcls in force after it. The logger adds one entry per window to the
``metrics.jsonl`` record of the interval it completed in (``alwa_windows``; plain floats read at the
boundary: no extra host synchronisation).

The per-step work is tensor writes into a preallocated window; the host reads the window only at a
boundary (one synchronisation every ``interval`` steps).
"""
from __future__ import annotations

import collections
import math
from typing import Deque, Dict, List, Mapping, Sequence

from torch import Tensor

from .base import WeightingStrategy
from .window import LossWindow


class ALWA(WeightingStrategy):
    """Adaptive Loss Weight Adjustment (variants 1 and 2), see the module docstring."""

    def __init__(
        self,
        variant: int = 2,
        interval: int = 100,
        cls_keys: Sequence[str] = ("loss_cls",),
        reg_keys: Sequence[str] = ("loss_bbox",),
        init_weight: float = 1.0,
        stats: str = "weighted",
        sync: bool = True,
        start_iter: int = 0,
        first_window: str = "use",
    ):
        if variant not in (1, 2):
            raise ValueError(f"ALWA variant must be 1 or 2, got {variant!r}")
        if interval < 2:
            raise ValueError(f"ALWA interval must be >= 2 (a sample std needs two values), got {interval}")
        if stats not in ("weighted", "raw"):
            raise ValueError(f"ALWA stats must be 'weighted' or 'raw', got {stats!r}")
        if not cls_keys or not reg_keys or set(cls_keys) & set(reg_keys):
            raise ValueError(f"ALWA needs two disjoint, non-empty key groups, got {list(cls_keys)} and {list(reg_keys)}")
        if not (math.isfinite(init_weight) and init_weight > 0):
            raise ValueError(f"ALWA init_weight must be positive, got {init_weight}")
        if start_iter < 0:
            raise ValueError(f"ALWA start_iter must be >= 0, got {start_iter}")
        if first_window not in ("use", "skip"):
            raise ValueError(f"ALWA first_window must be 'use' or 'skip', got {first_window!r}")
        self.start_iter, self.first_window = int(start_iter), first_window
        self.steps_seen = 0  # steps observed, recorded or not (start_iter counts them)
        # pending window records; bounded, for users who never pop them (one entry per C steps)
        self._records: Deque[dict] = collections.deque(maxlen=10_000)
        self.variant, self.interval, self.stats, self.sync = variant, int(interval), stats, sync
        self.cls_keys, self.reg_keys = list(cls_keys), list(reg_keys)
        self.lambda_cls = float(init_weight)
        self.lambda_reg = float(init_weight)
        self._window = LossWindow(["cls", "reg"], self.interval, sync)  # the two group values per step
        self.num_updates = 0

    def configured_keys(self) -> List[str]:
        return self.cls_keys + self.reg_keys

    @property
    def weights(self) -> Dict[str, float]:
        out = {k: self.lambda_cls for k in self.cls_keys}
        out.update({k: self.lambda_reg for k in self.reg_keys})
        return out

    def observe(self, losses: Mapping[str, Tensor]) -> None:
        self.steps_seen += 1
        if self.steps_seen <= self.start_iter:
            return
        cls = sum(losses[k].detach().float() for k in self.cls_keys)
        reg = sum(losses[k].detach().float() for k in self.reg_keys)
        if self.stats == "weighted":
            cls, reg = cls * self.lambda_cls, reg * self.lambda_reg
        if self._window.push({"cls": cls, "reg": reg}):
            self._update(self._window.collect())

    def _update(self, values: Tensor) -> None:
        """``values`` [n, 2]: the window's (cls, reg) group values on the host, all ranks pooled."""
        std = values.std(dim=0, unbiased=True)
        stat = std if self.variant == 2 else values.mean(dim=0) + std
        cls_stat, reg_stat = float(stat[0]), float(stat[1])
        skipped = self.first_window == "skip" and self.num_updates == 0
        before = self.lambda_cls
        if cls_stat > reg_stat and not skipped:
            self.lambda_cls = 1.0 - (cls_stat - reg_stat) / cls_stat
        self.num_updates += 1
        self._records.append({"window": self.num_updates, "step": self.steps_seen, "cls_stat": cls_stat,
                              "reg_stat": reg_stat, "fired": cls_stat > reg_stat and not skipped,
                              "skipped": skipped, "changed": self.lambda_cls != before, "lambda_before": before,
                              "lambda_cls": self.lambda_cls,
                              "lambda_reg": self.lambda_reg})

    def pop_window_records(self) -> List[dict]:
        """The records of the windows completed since the last call (see the module docstring)."""
        out = list(self._records)
        self._records.clear()
        return out

    def state_dict(self) -> dict:
        return {"lambda_cls": self.lambda_cls, "lambda_reg": self.lambda_reg, "num_updates": self.num_updates,
                "steps_seen": self.steps_seen, **self._window.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.lambda_cls = float(state["lambda_cls"])
        self.lambda_reg = float(state["lambda_reg"])
        self.num_updates = int(state.get("num_updates", 0))
        self.steps_seen = int(state.get("steps_seen", 0))
        self._window.load_state_dict(state)
