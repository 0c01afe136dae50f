"""Shared helpers for the loss functions: weighting/reduction and precision guards.

Every loss in this package computes an element-wise tensor first and then hands
it to :func:`reduce_loss`, so weighting and normalisation behave identically
across focal, L1 and IoU-family losses.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Optional, Union

import torch

_VALID_REDUCTIONS = ("none", "mean", "sum")

# Lower bound for avg_factor: a batch without positives can give avg_factor == 0
# and the loss sum is then 0 too, so 0 / eps keeps it at 0 instead of NaN.
_AVG_FACTOR_EPS = torch.finfo(torch.float32).eps


def reduce_loss(
    loss: torch.Tensor,
    reduction: str = "none",
    weight: Optional[torch.Tensor] = None,
    avg_factor: Optional[Union[float, torch.Tensor]] = None,
) -> torch.Tensor:
    """Weight and reduce an element-wise loss.

    Args:
        loss: element-wise loss of any shape ``S``.
        reduction: ``"none"`` (return shape ``S``), ``"sum"`` (scalar) or
            ``"mean"`` (scalar).
        weight: optional element-wise weight, broadcastable to ``S`` under the
            usual torch rules (note a ``[N]`` weight for an ``[N, C]`` loss must
            be passed as ``[N, 1]``). Applied before reducing.
        avg_factor: optional normaliser. When given, ``"mean"`` returns
            ``loss.sum() / avg_factor`` instead of averaging over elements
            (typical use: divide by the number of positive anchors). Only valid
            with ``reduction="mean"``. Values below float32 eps are clamped so
            that ``avg_factor == 0`` does not produce NaN.

    Returns:
        The reduced loss. A mean over an empty tensor is 0 (not NaN) and stays
        attached to the autograd graph of ``loss``.

    Raises:
        ValueError: unknown ``reduction``, or ``avg_factor`` combined with a
            reduction other than ``"mean"``.
    """
    if reduction not in _VALID_REDUCTIONS:
        raise ValueError(
            f"unknown reduction {reduction!r}; expected one of {_VALID_REDUCTIONS}"
        )
    if avg_factor is not None and reduction != "mean":
        raise ValueError(
            f"avg_factor requires reduction='mean', got reduction={reduction!r}"
        )

    if weight is not None:
        loss = loss * weight

    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()

    # reduction == "mean"
    if avg_factor is not None:
        if isinstance(avg_factor, torch.Tensor):
            avg_factor = avg_factor.to(loss.dtype).clamp(min=_AVG_FACTOR_EPS)
        else:
            avg_factor = max(float(avg_factor), _AVG_FACTOR_EPS)
        return loss.sum() / avg_factor
    if loss.numel() == 0:
        # torch.mean of an empty tensor is NaN; multiplying the (zero) sum keeps
        # the graph connected so backward() still works on empty batches.
        return loss.sum() * 0
    return loss.mean()


def with_reduction(elementwise: Callable[..., torch.Tensor], name: str, doc: str) -> Callable[..., torch.Tensor]:
    """The public form of an element-wise loss: ``name(*args, reduction="none", weight=None, avg_factor=None,
    **kwargs)`` computes ``elementwise(*args, **kwargs)`` and hands it to :func:`reduce_loss`, the one
    reduction path of every loss in this package. ``doc`` becomes its docstring."""

    def loss(*args, reduction: str = "none", weight: Optional[torch.Tensor] = None,
             avg_factor: Optional[Union[float, torch.Tensor]] = None, **kwargs) -> torch.Tensor:
        return reduce_loss(elementwise(*args, **kwargs), reduction, weight, avg_factor)

    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = doc
    loss.elementwise = elementwise
    return loss


def _no_autocast(device: torch.device) -> ContextManager:
    """Context that disables autocast for ``device``'s type.

    Falls back to a no-op for device types autocast does not know about (e.g.
    ``meta``), where ``torch.autocast`` would raise instead.
    """
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Cast half/bfloat16 (and integer/bool) tensors up to float32; keep float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))
