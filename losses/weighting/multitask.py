"""Multi-task loss weighting: homoscedastic uncertainty (Kendall et al.) and Dynamic Weight Average (Liu et al.).

* ``UncertaintyWeighting`` — Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
  Losses for Scene Geometry and Semantics", CVPR 2018. One learnable log-variance ``s_k`` per key.
* ``DWA`` — Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019. Weights from
  the rate at which each loss decreases, with windows of ``interval`` steps in place of epochs.

Keys outside a strategy's keys keep weight 1; configured keys missing from the loss dict raise KeyError.
"""
from __future__ import annotations

import math
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from .window import normalise_groups
from .base import WeightingStrategy, WindowedWeighting


class UncertaintyWeighting(WeightingStrategy):
    """``total = sum_k exp(-s_k) * L_k + s_k`` (+ other keys with weight 1), ``s_k = log sigma_k^2``.

    Variant: the paper writes ``1/(2 sigma^2) L + log sigma`` for regression and ``1/sigma^2 L + log sigma``
    for classification. We use the same form for every key and OMIT the 1/2 factors, i.e. twice the
    regression form, ``exp(-s) L + s``. Its gradient is ``d total / d s_k = 1 - exp(-s_k) L_k``, so at the
    optimum ``exp(-s_k) = 1 / L_k``: each weighted loss is pushed towards 1. ``s`` (rather than ``sigma``)
    is learnt because it is unconstrained and ``exp(-s)`` cannot divide by zero.

    The ``s_k`` are ``nn.Parameter`` scalars in ``self.module.log_vars`` (an ``nn.ParameterDict``);
    ``parameters()`` yields them so the training engine must add them to its optimizer (they get no update
    otherwise). ``to(device)`` moves them; losses on another device are also handled (a differentiable
    copy). The total is built from tensors only — no host synchronisation per step — but ``weights``
    reads ``exp(-s_k)`` back to the host: use it for logging only.

    Args:
        keys: the loss keys that get a learnt weight (names must not contain '.').
        init_log_var: initial ``s_k`` (0 -> weight 1).
    """

    def __init__(self, keys: Sequence[str], init_log_var: float = 0.0):
        self.keys = normalise_groups(keys, None)[0]
        bad = [k for k in self.keys if "." in k or not k]
        if bad:
            raise ValueError(f"UncertaintyWeighting keys must be non-empty and free of '.', got {bad}")
        if not math.isfinite(init_log_var):
            raise ValueError(f"init_log_var must be finite, got {init_log_var}")
        self.module = nn.Module()
        self.module.log_vars = nn.ParameterDict(
            {k: nn.Parameter(torch.tensor(float(init_log_var))) for k in self.keys})

    def configured_keys(self) -> List[str]:
        return list(self.keys)

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.module.parameters()

    def to(self, *args, **kwargs) -> "UncertaintyWeighting":
        self.module.to(*args, **kwargs)
        return self

    def log_var(self, key: str) -> Tensor:
        return self.module.log_vars[key]

    @property
    def weights(self) -> Dict[str, float]:
        """``exp(-s_k)`` as floats — a host read of every ``s_k``: logging only, not inside the step."""
        with torch.no_grad():
            return {k: float(torch.exp(-s)) for k, s in self.module.log_vars.items()}

    def step_weights(self) -> Dict[str, Tensor]:
        """``exp(-s_k)`` as detached device scalars: no host read inside the step."""
        with torch.no_grad():
            return {k: torch.exp(-s) for k, s in self.module.log_vars.items()}

    def weighted(self, losses: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """``exp(-s_k) * L_k`` for configured keys (differentiable in ``s_k``), ``L`` for the others."""
        out = dict(losses)
        for k in self.keys:
            out[k] = torch.exp(-self._s_on(k, losses[k])) * losses[k]
        return out

    def extra_terms(self, losses: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """The ``+ s_k`` regularisers, one term ``log_var/<key>`` each."""
        return {f"log_var/{k}": self._s_on(k, losses[k]) for k in self.keys}

    def _s_on(self, key: str, like: Tensor) -> Tensor:
        s = self.module.log_vars[key]
        return s if s.device == like.device else s.to(like.device)

    def state_dict(self) -> dict:
        return {"log_vars": {k: s.detach().cpu().clone() for k, s in self.module.log_vars.items()}}

    def load_state_dict(self, state: dict) -> None:
        saved = state["log_vars"]
        if set(saved) != set(self.keys):
            raise ValueError(f"UncertaintyWeighting state has keys {sorted(saved)}, configured {sorted(self.keys)}")
        with torch.no_grad():
            for k, s in self.module.log_vars.items():
                s.copy_(torch.as_tensor(saved[k]).reshape(()))


class DWA(WindowedWeighting):
    """Dynamic Weight Average: ``w_k(t) = K * exp(r_k(t-1) / T) / sum_i exp(r_i(t-1) / T)``.

    ``r_k(t-1) = Lbar_k(t-1) / Lbar_k(t-2)``, where ``Lbar_k(n)`` is the mean raw loss of key k over
    window n (``interval`` steps). The paper updates once per epoch with ``L_k`` the epoch's average
    loss; here a window of ``interval`` steps plays the role of an epoch, so the rule works the same in
    iteration-based training. A loss that decreases slowly (ratio near or above 1) gets more weight.
    ``K`` is the number of keys, so the weights sum to K. Weights are 1 during windows 1 and 2 (no ratio
    yet) and change only when a window completes; the completing step uses the old weights. Mean losses
    <= eps in the denominator are clamped to eps.

    Args:
        keys: the loss keys to balance (K of them).
        interval: window length in steps (>= 1).
        temperature: T; large T -> weights near 1.
        sync: pool the windows of all ranks under torch.distributed.
    """

    def __init__(self, keys: Sequence[str], interval: int = 100, temperature: float = 2.0,
                 eps: float = 1e-12, sync: bool = True):
        if interval < 1:
            raise ValueError(f"DWA interval must be >= 1, got {interval}")
        if not temperature > 0:
            raise ValueError(f"DWA temperature must be positive, got {temperature}")
        super().__init__(normalise_groups(keys, None)[0], interval, sync)
        self.temperature, self.eps = float(temperature), eps
        self.prev_means: Optional[List[float]] = None  # Lbar of the last completed window

    def _on_window(self, values: Tensor) -> None:
        means = values.mean(dim=0)  # [K]
        if self.prev_means is not None:
            ratios = means / torch.tensor(self.prev_means, dtype=torch.float64).clamp_min(self.eps)
            w = len(self._keys) * torch.softmax(ratios / self.temperature, dim=0)
            self._w = dict(zip(self._keys, w.tolist()))
        self.prev_means = means.tolist()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "prev_means": self.prev_means}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.prev_means = None if state["prev_means"] is None else [float(x) for x in state["prev_means"]]
