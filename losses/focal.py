"""Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reduction import _at_least_float32, _no_autocast, with_reduction

# Floor for |t - p| before raising it to gamma: for 0 < gamma < 1 the derivative
# of x**gamma is infinite at x == 0, which happens once sigmoid saturates to
# exactly 0/1 in float32. The floor changes the loss by at most 1e-12**gamma
# times a cross-entropy that is itself ~0 there.
_MODULATOR_FLOOR = 1e-12


def _sigmoid_focal(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    if logits.shape != targets.shape:
        raise ValueError(
            f"logits and targets must have the same shape, got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")

    with _no_autocast(logits.device):
        logits = _at_least_float32(logits)
        targets = targets.to(logits.dtype)

        ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        loss = ce
        if gamma != 0:
            p = torch.sigmoid(logits)
            # |t - p| equals 1 - p_t for hard targets and generalises to soft ones.
            modulator = (targets - p).abs().clamp(min=_MODULATOR_FLOOR).pow(gamma)
            loss = loss * modulator
        if alpha >= 0:
            loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
        return loss


sigmoid_focal_loss = with_reduction(_sigmoid_focal, "sigmoid_focal_loss", """Element-wise sigmoid focal loss.

    ``FL = -(alpha*t + (1-alpha)*(1-t)) * |t - p|**gamma * (t*log p + (1-t)*log(1-p))``
    with ``p = sigmoid(logits)``. The log terms come from
    ``binary_cross_entropy_with_logits`` so large logits (e.g. +-30) stay
    finite.

    ``sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction='none', weight=None, avg_factor=None)``.

    Args:
        logits: raw scores of any shape, typically ``[N, C]`` (one column per
            foreground class; background is all-zero targets).
        targets: same shape as ``logits``; one-hot floats, soft targets in
            ``[0, 1]`` are allowed.
        alpha: weight of the positive term; ``alpha < 0`` disables the alpha
            balancing entirely (factor 1 for all elements).
        gamma: focusing exponent, ``>= 0``; ``gamma == 0`` gives alpha-weighted
            binary cross-entropy.
        reduction, weight, avg_factor: see :func:`losses.reduction.reduce_loss`.

    Returns:
        Loss of the same shape as ``logits`` for ``reduction="none"``, else a
        scalar. Computed in (at least) float32 even for half/bfloat16 inputs and
        under ``torch.autocast``, because log/exp in half precision underflow
        for confident predictions.

    Raises:
        ValueError: shape mismatch or ``gamma < 0``.
    """)
