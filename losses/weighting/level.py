"""Per-level (multi-scale) loss weighting: AVW and RLO.

Both are RECONSTRUCTIONS from the abstract of Luo et al., "Dynamic Multi-Scale Loss Optimization for
Object Detection", which only says that AVW "balances multi-scale (per FPN level) losses according to
their statistical variance" and that RLO "decides the weighting scheme probabilistically during training,
using no extra learnable parameters for backpropagation". The exact rules below are our choice, not the
authors'; results from the paper should not be expected to reproduce bit for bit.

Typical use with a RetinaNet emitting per-level losses::

    cls = [f"loss_cls_p{i}" for i in range(3, 8)]
    box = [f"loss_bbox_p{i}" for i in range(3, 8)]
    AVW(groups=[cls, box], interval=100)        # levels compete within cls and within bbox
    RLO(groups=[cls, box], interval=100, seed=0)

Groups are weighted independently and each group's weights average 1 (before clipping), so the total scale
of a group is unchanged. Keys outside the groups keep weight 1. Like ``ALWA``, statistics are raw losses in a
preallocated device window (``LossWindow``); weights are Python floats that change only when a window
completes, and the step completing a window is still weighted with the old weights.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from .window import normalise_groups
from .base import WindowedWeighting


def group_variances(values: Tensor, groups: List[List[str]], keys: List[str]) -> List[Tensor]:
    """Sample variance (ddof 1) of each key's column of ``values`` ``[n, K]``, split by group."""
    var = values.var(dim=0, unbiased=True)
    return [var[[keys.index(k) for k in g]] for g in groups]


def variance_weights(v: Tensor, eps: float) -> List[float]:
    """AVW target for one group: ``w_k = n * v_k / sum(v)`` (mean 1); all 1 if ``sum(v) <= eps``."""
    total = float(v.sum())
    if total <= eps:
        return [1.0] * len(v)
    return [len(v) * float(x) / total for x in v]


def inverse_variance_weights(v: Tensor, eps: float) -> List[float]:
    """``w_k = n * (1 / (v_k + eps)) / sum_i 1 / (v_i + eps)``: damp the noisiest levels instead."""
    inv = 1.0 / (v + eps)
    return [len(v) * float(x) / float(inv.sum()) for x in inv]


def small_level_weights(n: int) -> List[float]:
    """``w_i = n * 2^-i / sum_j 2^-j`` for the i-th key of a group (keys listed smallest stride first)."""
    raw = [2.0 ** -i for i in range(n)]
    return [n * r / sum(raw) for r in raw]


def _check_interval(name: str, interval: int) -> int:
    if interval < 2:
        raise ValueError(f"{name} interval must be >= 2 (a sample variance needs two values), got {interval}")
    return int(interval)


class AVW(WindowedWeighting):
    """Adaptive Variance Weighting (reconstruction, see the module docstring).

    Rule, per group g of n_g keys, at the end of every window of ``interval`` steps:

    * ``v_k`` = sample variance (ddof 1; it cancels in the ratio) of key k's raw loss over the window;
    * target ``t_k = n_g * v_k / sum_{i in g} v_i`` (all 1 when the group's variances sum to <= eps);
    * ``w_k <- clip(momentum * w_k + (1 - momentum) * t_k, w_min, w_max)``.

    Weights start at 1. Why variance: a level whose loss still fluctuates strongly over a window is one the
    detector is still learning (its assignments and predictions keep changing), while a level with a flat
    loss has converged or is starved of positives; shifting weight to the fluctuating levels spends the
    gradient budget where it still changes something. Raw (unweighted) losses are used, so the weights in
    force do not feed back into the statistics.

    Args:
        keys: one group of loss keys (alternative to ``groups``).
        interval: window length in steps (>= 2).
        groups: several disjoint key groups, each normalised separately.
        momentum: in [0, 1); 0 replaces the weights with the target at each boundary.
        w_min, w_max: clipping bounds (clipping can move the group mean away from 1).
        sync: pool the windows of all ranks under torch.distributed.
    """

    def __init__(self, keys: Optional[Sequence[str]] = None, interval: int = 100, *,
                 groups: Optional[Sequence[Sequence[str]]] = None, momentum: float = 0.0,
                 w_min: float = 0.0, w_max: float = math.inf, eps: float = 1e-12, sync: bool = True):
        self.groups = normalise_groups(keys, groups)
        super().__init__([k for g in self.groups for k in g], _check_interval("AVW", interval), sync)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"AVW momentum must be in [0, 1), got {momentum}")
        if not 0.0 <= w_min <= w_max:
            raise ValueError(f"AVW needs 0 <= w_min <= w_max, got {w_min}, {w_max}")
        self.momentum, self.w_min, self.w_max, self.eps = float(momentum), float(w_min), float(w_max), eps

    def _on_window(self, values: Tensor) -> None:
        for g, v in zip(self.groups, group_variances(values, self.groups, self._keys)):
            for k, t in zip(g, variance_weights(v, self.eps)):
                w = self.momentum * self._w[k] + (1.0 - self.momentum) * t
                self._w[k] = min(max(w, self.w_min), self.w_max)


SCHEMES = ("equal", "avw", "inverse_variance", "small_level")


class RLO(WindowedWeighting):
    """Reinforcement Learning Optimization (reconstruction, see the module docstring): a softmax bandit
    over candidate weighting schemes, with no parameter trained by backpropagation.

    Schemes (applied per group to the statistics of the window that just ended, each averaging 1):
    ``"equal"`` all 1; ``"avw"`` ``n v_k / sum v``; ``"inverse_variance"`` ``n v_k^-1 / sum v^-1``;
    ``"small_level"`` ``n 2^-i / sum_j 2^-j`` for the i-th key (list keys smallest stride first, P3..P7).

    Rule, with preferences ``h`` (one per scheme, start 0) and policy ``pi = softmax(h / temperature)``:

    * window 1 is weighted with all 1 and has no scheme (``current_scheme`` is None);
    * at the end of window n, ``M_n`` = mean over its steps of the sum of the configured raw losses;
    * if a scheme ``a`` was in force during window n (n >= 2), its reward is the relative decrease
      ``r = (M_{n-1} - M_n) / max(M_{n-1}, eps)``; with baseline ``b`` = mean of all earlier rewards
      (0 before the first), ``h_j += lr * (r - b) * (1[j == a] - pi_j)`` (REINFORCE for a softmax
      policy), then ``r`` joins the baseline's mean;
    * the next scheme is drawn from the updated ``pi`` by inverting its CDF at ``u ~ U[0, 1)`` taken from
      a ``torch.Generator`` seeded with ``seed`` (deterministic, saved in ``state_dict``), and the weights
      for window n+1 are that scheme applied to window n's variances.

    Caveat of the reconstruction: the reward credits scheme ``a`` with the loss change of a single
    window, which is noisy; ``lr`` and ``interval`` trade reaction speed for noise.
    """

    def __init__(self, keys: Optional[Sequence[str]] = None, schemes: Sequence[str] = SCHEMES,
                 interval: int = 100, lr: float = 0.1, temperature: float = 1.0, seed: int = 0, *,
                 groups: Optional[Sequence[Sequence[str]]] = None, eps: float = 1e-12, sync: bool = True):
        self.groups = normalise_groups(keys, groups)
        super().__init__([k for g in self.groups for k in g], _check_interval("RLO", interval), sync)
        unknown = [s for s in schemes if s not in SCHEMES]
        if not schemes or unknown or len(set(schemes)) != len(schemes):
            raise ValueError(f"RLO schemes must be distinct names from {SCHEMES}, got {list(schemes)}")
        if not (lr >= 0 and temperature > 0):
            raise ValueError(f"RLO needs lr >= 0 and temperature > 0, got {lr}, {temperature}")
        self.schemes, self.lr, self.temperature, self.eps = list(schemes), float(lr), float(temperature), eps
        self.preferences = torch.zeros(len(self.schemes), dtype=torch.float64)  # host tensor, boundary-only
        self.baseline, self.num_rewards = 0.0, 0
        self.current: Optional[int] = None  # index into schemes of the scheme in force
        self.prev_mean: Optional[float] = None
        self.generator = torch.Generator().manual_seed(int(seed))

    @property
    def current_scheme(self) -> Optional[str]:
        return None if self.current is None else self.schemes[self.current]

    @property
    def policy(self) -> List[float]:
        """``softmax(h / temperature)`` as floats, in the order of ``schemes``."""
        return torch.softmax(self.preferences / self.temperature, dim=0).tolist()

    def reinforce(self, action: int, reward: float) -> None:
        """One REINFORCE step with the running-mean baseline (public so rewards can be scripted)."""
        pi = torch.softmax(self.preferences / self.temperature, dim=0)
        onehot = torch.zeros_like(pi)
        onehot[action] = 1.0
        self.preferences += self.lr * (reward - self.baseline) * (onehot - pi)
        self.num_rewards += 1
        self.baseline += (reward - self.baseline) / self.num_rewards

    def _sample(self) -> int:
        u = float(torch.rand((), generator=self.generator, dtype=torch.float64))
        cdf = 0.0
        for i, p in enumerate(self.policy):
            cdf += p
            if u < cdf:
                return i
        return len(self.schemes) - 1  # u within rounding of 1

    def _scheme_weights(self, name: str, v: Tensor) -> List[float]:
        if name == "equal":
            return [1.0] * len(v)
        if name == "avw":
            return variance_weights(v, self.eps)
        if name == "inverse_variance":
            return inverse_variance_weights(v, self.eps)
        return small_level_weights(len(v))

    def _on_window(self, values: Tensor) -> None:
        mean = float(values.sum(dim=1).mean())
        if self.current is not None and self.prev_mean is not None:
            self.reinforce(self.current, (self.prev_mean - mean) / max(self.prev_mean, self.eps))
        self.prev_mean = mean
        self.current = self._sample()
        for g, v in zip(self.groups, group_variances(values, self.groups, self._keys)):
            self._w.update(zip(g, self._scheme_weights(self.schemes[self.current], v)))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "preferences": self.preferences.clone(), "baseline": self.baseline,
                "num_rewards": self.num_rewards, "current": self.current, "prev_mean": self.prev_mean,
                "generator": self.generator.get_state(), "schemes": list(self.schemes)}

    def load_state_dict(self, state: dict) -> None:
        if list(state["schemes"]) != self.schemes:
            raise ValueError(f"RLO state was saved with schemes {list(state['schemes'])}, configured {self.schemes}")
        super().load_state_dict(state)
        self.preferences = state["preferences"].clone().to(torch.float64)
        self.baseline, self.num_rewards = float(state["baseline"]), int(state["num_rewards"])
        self.current, self.prev_mean = state["current"], state["prev_mean"]
        self.generator.set_state(state["generator"])
