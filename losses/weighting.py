"""Loss-weighting strategies: the one place where raw losses become the total that is backpropagated.

Every strategy is called once per training step with the model's raw loss dict (``{"loss_*": scalar}``):
``apply(losses)`` returns the total with its terms and this step's weights (``WeightedLosses``), calling the
strategy returns the total alone. Keys outside a strategy's groups keep weight 1. Keys named in the
configuration must exist in the loss dict: a typo is an error at the first step, never ignored.

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

The per-step work is tensor writes into a preallocated window; the host reads the window only at a
boundary (one synchronisation every ``interval`` steps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Union

from torch import Tensor

from .loss_window import LossWindow


@dataclass
class WeightedLosses:
    """What one step backpropagates: ``total`` (a scalar with graph) is exactly ``sum(terms.values())``;
    ``terms`` holds every summand by name (each loss key times the weight it had in *this* step, plus any
    extra term of the strategy, e.g. uncertainty weighting's log-variances); ``weights`` are the weights
    of this step (floats, or detached scalar tensors for learned weights: reading those is the logger's
    job, once per log interval)."""

    total: Tensor
    terms: Dict[str, Tensor]
    weights: Dict[str, Union[float, Tensor]]


class WeightingStrategy:
    """Base class: ``weights`` maps loss keys to Python floats; unlisted keys have weight 1.

    ``apply(losses)`` weighs one step's raw losses and returns :class:`WeightedLosses`; ``strategy(losses)``
    is ``apply(losses).total``. Subclasses change the weights (``weights`` / ``weighted``), add terms
    (``extra_terms``) or record statistics after the step's weights are fixed (``observe``)."""

    def configured_keys(self) -> List[str]:
        return []

    def check_keys(self, losses: Mapping[str, Tensor]) -> None:
        missing = [k for k in self.configured_keys() if k not in losses]
        if missing:
            raise KeyError(
                f"{type(self).__name__} is configured with loss keys {missing} that the model does not "
                f"produce; the model's losses are {sorted(losses)}"
            )

    @property
    def weights(self) -> Dict[str, float]:
        raise NotImplementedError

    def weight_of(self, key: str) -> float:
        return self.weights.get(key, 1.0)

    def step_weights(self) -> Dict[str, Union[float, Tensor]]:
        """The weights in force, read without a host synchronisation (floats here)."""
        return self.weights

    def weighted(self, losses: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """Each loss times its current weight (no statistics recorded)."""
        weights = self.step_weights()  # once per call: it may be built or read from the device
        return {k: v * weights.get(k, 1.0) for k, v in losses.items()}

    def extra_terms(self, losses: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """Summands of the total that are not a weighted loss (none here)."""
        return {}

    def observe(self, losses: Mapping[str, Tensor]) -> None:
        """Record this step's losses after its weights were applied (windowed strategies update here, so the
        step that completes a window keeps the old weights)."""

    def apply(self, losses: Mapping[str, Tensor]) -> WeightedLosses:
        self.check_keys(losses)
        weights = self.step_weights()
        terms = self.weighted(losses)
        terms.update(self.extra_terms(losses))
        total = sum(terms.values())
        self.observe(losses)
        return WeightedLosses(total, terms, {k: weights.get(k, 1.0) for k in losses})

    def __call__(self, losses: Mapping[str, Tensor]) -> Tensor:
        return self.apply(losses).total

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Fixed(WeightingStrategy):
    """Constant weights, e.g. ``Fixed({"loss_cls": 1.0, "loss_bbox": 2.0})``; other keys weigh 1."""

    def __init__(self, weights: Optional[Mapping[str, float]] = None):
        self._weights = {k: float(v) for k, v in (weights or {}).items()}
        bad = {k: v for k, v in self._weights.items() if not math.isfinite(v) or v < 0}
        if bad:
            raise ValueError(f"fixed loss weights must be finite and non-negative, got {bad}")

    def configured_keys(self) -> List[str]:
        return list(self._weights)

    @property
    def weights(self) -> Dict[str, float]:
        return dict(self._weights)


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
        if cls_stat > reg_stat:
            self.lambda_cls = 1.0 - (cls_stat - reg_stat) / cls_stat
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"lambda_cls": self.lambda_cls, "lambda_reg": self.lambda_reg, "num_updates": self.num_updates,
                **self._window.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.lambda_cls = float(state["lambda_cls"])
        self.lambda_reg = float(state["lambda_reg"])
        self.num_updates = int(state.get("num_updates", 0))
        self._window.load_state_dict(state)


class WindowedWeighting(WeightingStrategy):
    """Base of strategies whose weights change only when a window of ``interval`` raw losses completes
    (AVW, RLO, DWA). Each step adds the raw losses of ``keys`` to a device-side ``LossWindow`` and is
    weighted with the weights in force (so the completing step keeps the old ones); at a boundary the
    host reads the window once and the subclass's ``_on_window(values [n, K])`` updates ``self._w``.
    Subclasses extend ``state_dict`` / ``load_state_dict`` with their own fields."""

    def __init__(self, keys: Sequence[str], interval: int, sync: bool):
        self._keys = list(keys)
        self.interval = int(interval)
        self._w = {k: 1.0 for k in self._keys}
        self._window = LossWindow(self._keys, self.interval, sync)
        self.num_updates = 0

    def configured_keys(self) -> List[str]:
        return list(self._keys)

    @property
    def weights(self) -> Dict[str, float]:
        return dict(self._w)

    def observe(self, losses: Mapping[str, Tensor]) -> None:
        if self._window.push(losses):
            self._on_window(self._window.collect())
            self.num_updates += 1

    def _on_window(self, values: Tensor) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"weights": dict(self._w), "num_updates": self.num_updates, **self._window.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if set(state["weights"]) != set(self._keys):
            raise ValueError(f"{type(self).__name__} state has keys {sorted(state['weights'])}, "
                             f"configured {sorted(self._keys)}")
        self._w = {k: float(state["weights"][k]) for k in self._keys}
        self.num_updates = int(state.get("num_updates", 0))
        self._window.load_state_dict(state)
