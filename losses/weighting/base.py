"""Loss-weighting strategies: the one place where raw losses become the total that is backpropagated.

Every strategy is called once per training step with the model's raw loss dict (``{"loss_*": scalar}``):
``apply(losses)`` returns the total with its terms and this step's weights (``WeightedLosses``), calling the
strategy returns the total alone. Keys outside a strategy's groups keep weight 1. Keys named in the
configuration must exist in the loss dict: a typo is an error at the first step, never ignored.

The per-step work of the windowed strategies is tensor writes into a preallocated window; the host reads the
window only at a boundary (one synchronisation every ``interval`` steps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Union

from torch import Tensor

from .window import LossWindow


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

    def weigh(self, losses: Mapping[str, Tensor]) -> WeightedLosses:
        """The step's total, terms and weights for ``losses``, recording nothing (see ``apply``)."""
        self.check_keys(losses)
        weights = self.step_weights()
        terms = self.weighted(losses)
        terms.update(self.extra_terms(losses))
        return WeightedLosses(sum(terms.values()), terms, {k: weights.get(k, 1.0) for k in losses})

    def apply(self, losses: Mapping[str, Tensor]) -> WeightedLosses:
        """``weigh(losses)``, then ``observe(losses)``: one whole training step. With gradient accumulation
        the trainer weighs every micro-batch and observes the step's mean raw losses once."""
        weighted = self.weigh(losses)
        self.observe(losses)
        return weighted

    def __call__(self, losses: Mapping[str, Tensor]) -> Tensor:
        return self.apply(losses).total

    def pop_window_records(self) -> List[dict]:
        """Records of the statistics windows completed since the last call (ALWA's; none here): plain values,
        read from the host at the boundary that completed them."""
        return []

    def parameters(self) -> Iterator[Tensor]:
        """Learnable weighting parameters the optimizer must update (none here)."""
        return iter(())

    def to(self, device) -> "WeightingStrategy":
        """Moves any device state (nothing here); returns self."""
        return self

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
