"""Coordinate-wise regression losses on encoded box deltas.

``l1_loss`` / ``smooth_l1_loss`` are element-wise (``[N, 4] -> [N, 4]``). The
``*_per_box`` variants sum the last dimension first so they return one value
per box (``[N, 4] -> [N]``), matching the IoU-family losses; those are the
entries used in :data:`losses.REGRESSION_LOSSES`.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from .reduction import reduce_loss

AvgFactor = Optional[Union[float, torch.Tensor]]


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


def l1_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    reduction: str = "none",
    weight: Optional[torch.Tensor] = None,
    avg_factor: AvgFactor = None,
) -> torch.Tensor:
    """Element-wise ``|pred - target|``.

    Args:
        pred, target: same shape, typically ``[N, 4]`` encoded deltas.
        reduction, weight, avg_factor: see :func:`losses.reduction.reduce_loss`.

    Returns:
        ``[N, 4]`` (same shape as ``pred``) for ``"none"``, else a scalar.
    """
    _check_same_shape(pred, target)
    return reduce_loss((pred - target).abs(), reduction, weight, avg_factor)


def smooth_l1_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    beta: float = 1.0,
    reduction: str = "none",
    weight: Optional[torch.Tensor] = None,
    avg_factor: AvgFactor = None,
) -> torch.Tensor:
    """Element-wise smooth L1 (Huber-like) loss.

    With ``d = |pred - target|``: ``0.5 * d**2 / beta`` if ``d < beta`` else
    ``d - 0.5 * beta``. Both pieces and their slopes meet at ``d == beta``.

    Args:
        pred, target: same shape, typically ``[N, 4]`` encoded deltas.
        beta: width of the quadratic zone; ``0`` degenerates to L1, negative
            values raise ``ValueError``.
        reduction, weight, avg_factor: see :func:`losses.reduction.reduce_loss`.

    Returns:
        ``[N, 4]`` (same shape as ``pred``) for ``"none"``, else a scalar.
    """
    _check_same_shape(pred, target)
    return reduce_loss(_elementwise_smooth_l1(pred, target, beta), reduction, weight, avg_factor)


def l1_loss_per_box(
    pred: torch.Tensor,
    target: torch.Tensor,
    reduction: str = "none",
    weight: Optional[torch.Tensor] = None,
    avg_factor: AvgFactor = None,
) -> torch.Tensor:
    """L1 summed over the 4 coordinates: ``[N, 4] -> [N]`` for ``"none"``.

    ``weight`` is per box (``[N]``), applied after the coordinate sum.
    """
    _check_same_shape(pred, target)
    per_box = (pred - target).abs().sum(dim=-1)
    return reduce_loss(per_box, reduction, weight, avg_factor)


def smooth_l1_loss_per_box(
    pred: torch.Tensor,
    target: torch.Tensor,
    beta: float = 1.0,
    reduction: str = "none",
    weight: Optional[torch.Tensor] = None,
    avg_factor: AvgFactor = None,
) -> torch.Tensor:
    """Smooth L1 summed over the 4 coordinates: ``[N, 4] -> [N]`` for ``"none"``.

    ``weight`` is per box (``[N]``), applied after the coordinate sum.
    """
    _check_same_shape(pred, target)
    per_box = _elementwise_smooth_l1(pred, target, beta).sum(dim=-1)
    return reduce_loss(per_box, reduction, weight, avg_factor)
