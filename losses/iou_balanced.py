"""IoU-balanced losses (Wu et al., "IoU-balanced Loss Functions for Single-stage
Object Detection", arXiv:1908.05641).

``u`` is the IoU between each positive's *regressed* (decoded predicted) box and
its assigned ground-truth box (``(x1, y1, x2, y2)``, e.g. from
:func:`losses.iou.box_iou_aligned`), clamped to ``[0, 1]``.

* Classification (focal / softmax CE): with element-wise loss ``L`` and
  positive set ``P``, each positive's ground-truth-class term is scaled by
  ``w_i = u_i**eta * Z`` with ``Z = sum_P L / sum_P (L * u**eta)``, so the summed
  positive loss is unchanged while weight moves towards well-localised
  positives; negatives keep weight 1. No positives, or a zero denominator,
  gives ``w = 1`` everywhere.
* Localisation (smooth L1): the per-box loss is scaled by ``u**lam`` with no
  normalisation.

All weights are **detached**: no gradient reaches ``ious`` (nor flows through
``Z``). Results are float32 (float64 for float64 inputs) even for half/bfloat16
inputs or under ``torch.autocast``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .focal import sigmoid_focal_loss
from .reduction import _at_least_float32, _no_autocast, with_reduction
from .regression import _check_same_shape, _elementwise_smooth_l1

NORMALISERS = ("level", "batch")


def check_normaliser(name: str) -> bool:
    """Validate an ``iou_balanced_norm`` setting; True when Z is kept per FPN level (the released code)."""
    if name not in NORMALISERS:
        raise ValueError(f"iou_balanced_norm must be one of {NORMALISERS}, got {name!r}")
    return name == "level"


def _iou_power(ious: torch.Tensor, n: int, exponent: float, dtype: torch.dtype) -> torch.Tensor:
    """Detached ``clamp(ious, 0, 1) ** exponent`` as ``dtype``; checks shape ``[n]``."""
    if ious.shape != (n,):
        raise ValueError(f"ious must have shape [{n}], got {tuple(ious.shape)}")
    return ious.detach().to(dtype).clamp(0.0, 1.0).pow(exponent)


def _balanced_weight(loss: torch.Tensor, pos: torch.Tensor, u_pow: torch.Tensor,
                     groups: Optional[torch.Tensor] = None, num_groups: int = 1) -> torch.Tensor:
    """Detached weight ``u_pow * Z`` on ``pos`` entries and 1 elsewhere.

    ``Z = sum(loss[pos]) / sum(loss[pos] * u_pow[pos])``, computed separately inside each group when
    ``groups`` (integer ids in ``[0, num_groups)``, broadcastable to ``loss``; e.g. the FPN level of each
    anchor) is given; a group without positives, or with a zero denominator, gets weight 1.
    """
    with torch.no_grad():
        # where() rather than a product so that NaN IoUs on negatives cannot leak.
        u_pos = torch.where(pos, u_pow, torch.zeros_like(u_pow))
        loss_pos = torch.where(pos, loss, torch.zeros_like(loss))
        if groups is None:
            groups, num_groups = torch.zeros((), dtype=torch.long, device=loss.device), 1
        groups = groups.expand_as(loss).reshape(-1)
        num = loss.new_zeros(num_groups).index_add_(0, groups, loss_pos.reshape(-1))
        den = loss.new_zeros(num_groups).index_add_(0, groups, (loss_pos * u_pos).reshape(-1))
        ok = den > 0
        scale = torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.ones_like(den))
        weight = torch.where(pos & ok[groups].view_as(loss), u_pos * scale[groups].view_as(loss), torch.ones_like(loss))
    return weight


def iou_balanced_weight(loss: torch.Tensor, pos: torch.Tensor, ious: torch.Tensor, eta: float = 1.5,
                        groups: Optional[torch.Tensor] = None, num_groups: int = 1) -> torch.Tensor:
    """Detached IoU-balanced weights for any element-wise classification loss of shape ``[N]``.

    ``pos`` [N] bool marks positives, ``ious`` [N] the IoU of each positive's regressed box; positives get
    ``u**eta * Z`` with ``Z`` keeping their summed loss unchanged, all others 1 (e.g. RPN objectness BCE).
    With ``groups`` [N] (ids in ``[0, num_groups)``, e.g. FPN levels) the sum is kept inside each group."""
    if loss.shape != pos.shape:
        raise ValueError(f"loss and pos must have the same shape, got {tuple(loss.shape)} and {tuple(pos.shape)}")
    flat = loss.reshape(-1)
    u_pow = _iou_power(ious.reshape(-1), flat.shape[0], eta, flat.dtype)
    g = None if groups is None else groups.expand_as(loss).reshape(-1)
    return _balanced_weight(flat.detach(), pos.reshape(-1), u_pow, g, num_groups).view_as(loss)


def _balanced_focal(logits: torch.Tensor, targets: torch.Tensor, ious: torch.Tensor, eta: float = 1.5,
                    alpha: float = 0.25, gamma: float = 2.0, groups: Optional[torch.Tensor] = None,
                    num_groups: int = 1) -> torch.Tensor:
    loss = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma)
    with _no_autocast(loss.device):
        u_pow = _iou_power(ious, logits.shape[0], eta, loss.dtype).unsqueeze(-1)
        g = None if groups is None else groups.reshape(-1, 1)
        return loss * _balanced_weight(loss, targets.to(loss.dtype) > 0, u_pow.expand_as(loss), g, num_groups)


def _balanced_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ious: torch.Tensor, eta: float = 1.5,
                            background: Optional[int] = None) -> torch.Tensor:
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [N, K+1] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    bg = logits.shape[1] - 1 if background is None else background
    with _no_autocast(logits.device):
        logits = _at_least_float32(logits)
        loss = F.cross_entropy(logits, labels.long(), reduction="none")
        return loss * _balanced_weight(loss, labels != bg, _iou_power(ious, logits.shape[0], eta, loss.dtype))


def _balanced_smooth_l1(pred: torch.Tensor, target: torch.Tensor, ious: torch.Tensor, lam: float = 1.5,
                        beta: float = 1.0) -> torch.Tensor:
    _check_same_shape(pred, target)
    with _no_autocast(pred.device):
        dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
        per_box = _elementwise_smooth_l1(pred.to(dtype), target.to(dtype), beta).sum(dim=-1)
        return per_box * _iou_power(ious, per_box.shape[0], lam, dtype)


iou_balanced_sigmoid_focal_loss = with_reduction(_balanced_focal, "iou_balanced_sigmoid_focal_loss", """IoU-balanced
    sigmoid focal loss for dense (single-stage) heads: ``iou_balanced_sigmoid_focal_loss(logits, targets, ious,
    eta=1.5, alpha=0.25, gamma=2.0, groups=None, num_groups=1, reduction='none', avg_factor=None)``.

    Args:
        logits: ``[N, C]`` raw scores, one column per foreground class.
        targets: ``[N, C]`` one-hot floats; all-zero rows are negatives.
        ious: ``[N]`` IoU of each anchor's regressed box with its ground truth; entries of negative rows are ignored.
        eta: exponent of the IoU weight (paper default 1.5).
        alpha, gamma: see :func:`losses.focal.sigmoid_focal_loss`.
        groups: optional ``[N]`` ids in ``[0, num_groups)`` (e.g. each anchor's FPN level): ``Z`` is then computed
            per group, as the authors' released code does per level; default one group (the whole batch).
        reduction, weight, avg_factor: see :func:`losses.reduction.reduce_loss`.

    Returns:
        ``[N, C]`` float32 loss for ``"none"``, else a scalar. Entries with ``targets > 0`` are scaled by the
        detached ``u**eta * Z``; others are plain focal loss.
    """)

iou_balanced_cross_entropy = with_reduction(_balanced_cross_entropy, "iou_balanced_cross_entropy", """IoU-balanced
    softmax cross-entropy for two-stage RoI classification heads: ``iou_balanced_cross_entropy(logits, labels, ious,
    eta=1.5, background=None, reduction='none', avg_factor=None)``.

    Args:
        logits: ``[N, K + 1]`` raw scores (``K`` foreground classes + background).
        labels: ``[N]`` int64 in ``[0, K]``; ``background`` marks negatives (default ``K``).
        ious: ``[N]`` IoU of each RoI's regressed box with its ground truth; entries of background rows are ignored.
        eta: exponent of the IoU weight.
        reduction, weight, avg_factor: see :func:`losses.reduction.reduce_loss`.

    Returns:
        ``[N]`` float32 per-row loss for ``"none"``, else a scalar; positive rows are scaled by the detached
        ``u**eta * Z``, background rows are plain CE.
    """)

iou_balanced_smooth_l1_loss = with_reduction(_balanced_smooth_l1, "iou_balanced_smooth_l1_loss", """IoU-balanced
    smooth L1 on encoded deltas, per-box loss times ``u**lam``: ``iou_balanced_smooth_l1_loss(pred, target, ious,
    lam=1.5, beta=1.0, reduction='none', weight=None, avg_factor=None)``.

    The smooth L1 is summed over the 4 coordinates, then multiplied by the detached ``clamp(ious, 0, 1) ** lam``.
    There is no normalisation, so the loss shrinks overall; the authors' released configs compensate with a constant
    regression loss weight of about 2.3-3.0.

    Args:
        pred, target: ``[N, 4]`` encoded box deltas.
        ious: ``[N]`` IoU of each regressed (decoded) box with its ground truth.
        lam: exponent of the IoU weight (paper default 1.5).
        beta: smooth L1 quadratic-zone width, see :func:`losses.regression.smooth_l1_loss`.
        reduction, weight (per box, ``[N]``), avg_factor: see :func:`losses.reduction.reduce_loss`.

    Returns:
        ``[N]`` float32 loss for ``"none"``, else a scalar; ``N == 0`` gives ``[0]`` or a graph-attached 0.
    """)
