"""Coordinate-wise regression losses on encoded box deltas.

``l1_loss`` / ``smooth_l1_loss`` are element-wise (``[N, 4] -> [N, 4]``). The
``*_per_box`` variants sum the last dimension first so they return one value
per box (``[N, 4] -> [N]``), matching the IoU-family losses; those are the
entries used in :data:`losses.REGRESSION_LOSSES`.
"""

from __future__ import annotations

import torch

from .reduction import with_reduction


def _check_same_shape(pred: torch.Tensor, target: torch.Tensor) -> None:
    # Silent broadcasting ([N, 4] vs [N, 1, 4]) would produce an [N, N, 4] loss.
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )


def _elementwise_smooth_l1(pred: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    if beta < 0:
        raise ValueError(f"smooth_l1 beta must be >= 0, got {beta}")
    diff = (pred - target).abs()
    if beta == 0:
        # The quadratic zone vanishes; avoid the 0/0 in 0.5 * d**2 / beta.
        return diff
    return torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


def _l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    _check_same_shape(pred, target)
    return (pred - target).abs()


def _smooth_l1(pred: torch.Tensor, target: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    _check_same_shape(pred, target)
    return _elementwise_smooth_l1(pred, target, beta)


def _per_box(elementwise):
    """The coordinate sum of an element-wise delta loss: ``[N, 4] -> [N]``."""
    return lambda pred, target, *args, **kwargs: elementwise(pred, target, *args, **kwargs).sum(dim=-1)


_ARGS = ("Args: pred, target (same shape, typically ``[N, 4]`` encoded deltas){beta}; reduction, weight, avg_factor: "
         "see :func:`losses.reduction.reduce_loss`. ")
_BETA = ", beta (width of the quadratic zone; ``0`` degenerates to L1, negative values raise ``ValueError``)"
l1_loss = with_reduction(_l1, "l1_loss", "Element-wise ``|pred - target|``. " + _ARGS.format(beta="")
                         + "Returns ``[N, 4]`` for ``'none'``, else a scalar.")
smooth_l1_loss = with_reduction(_smooth_l1, "smooth_l1_loss", (
    "Element-wise smooth L1 (Huber-like) loss, ``smooth_l1_loss(pred, target, beta=1.0, reduction=...)``: with "
    "``d = |pred - target|``, ``0.5 * d**2 / beta`` if ``d < beta`` else ``d - 0.5 * beta`` (both pieces and their "
    "slopes meet at ``d == beta``). " + _ARGS.format(beta=_BETA) + "Returns ``[N, 4]`` for ``'none'``, else a scalar."))
l1_loss_per_box = with_reduction(_per_box(_l1), "l1_loss_per_box", (
    "L1 summed over the 4 coordinates: ``[N, 4] -> [N]`` for ``'none'``; ``weight`` is per box (``[N]``), applied "
    "after the coordinate sum. " + _ARGS.format(beta="")))
smooth_l1_loss_per_box = with_reduction(_per_box(_smooth_l1), "smooth_l1_loss_per_box", (
    "Smooth L1 summed over the 4 coordinates: ``[N, 4] -> [N]`` for ``'none'``; ``weight`` is per box (``[N]``), "
    "applied after the coordinate sum. " + _ARGS.format(beta=_BETA)))
