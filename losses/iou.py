"""IoU-family box losses (IoU, GIoU, DIoU, CIoU) and IoU helpers.

Boxes are absolute corners ``(x1, y1, x2, y2)``, ``x1 <= x2``, ``y1 <= y2``;
inverted boxes count as empty (widths/heights are clamped to ``>= 0``).
Everything runs in (at least) float32 with autocast disabled, because areas of
image-sized boxes overflow float16 (max 65504).

Common arguments of ``iou_loss``, ``giou_loss``, ``diou_loss``, ``ciou_loss`` (and ``ciou_mmdet_loss``):

* ``pred``: ``[N, 4]`` predicted (decoded) boxes; any ``[..., 4]`` works.
* ``target``: ground-truth boxes, same shape as ``pred``.
* ``eps``: lower bound for denominators (union, enclosing area/diagonal, box
  height) so that degenerate zero-area boxes give finite values and gradients.
* ``reduction``, ``weight`` (per box, ``[N]``), ``avg_factor``: see
  :func:`losses.reduction.reduce_loss`.

They return the ``[N]`` per-box loss for ``reduction="none"``, else a scalar;
float32 (float64 if an input is float64) regardless of input dtype or autocast.
``[0, 4]`` inputs give ``[0]``, or a 0 that is still attached to the graph.
"""

from __future__ import annotations

import functools
import math
from typing import Tuple

import torch

from .reduction import _at_least_float32, _no_autocast, with_reduction

_Pair = Tuple[torch.Tensor, torch.Tensor]
_FOUR_OVER_PI_SQ = 4.0 / math.pi**2


def _width_height(boxes: torch.Tensor) -> _Pair:
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0], wh[..., 1]


def _intersection_union(a: torch.Tensor, b: torch.Tensor, eps: float) -> _Pair:
    """Intersection and union areas of broadcastable ``[..., 4]`` boxes.

    The union is clamped to ``eps`` so that IoU is 0 (not NaN) for two empty
    boxes and its gradient stays finite.
    """
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    overlap = (rb - lt).clamp(min=0)
    inter = overlap[..., 0] * overlap[..., 1]
    wa, ha = _width_height(a)
    wb, hb = _width_height(b)
    union = (wa * ha + wb * hb - inter).clamp(min=eps)
    return inter, union


def _enclosing_width_height(a: torch.Tensor, b: torch.Tensor) -> _Pair:
    """Width and height of the smallest box containing both ``a`` and ``b``."""
    lt = torch.minimum(a[..., :2], b[..., :2])
    rb = torch.maximum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    return wh[..., 0], wh[..., 1]


def _centre_distance_sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Doubled centres (x1 + x2) avoid a multiply; the factor 1/4 is applied once.
    delta = (a[..., :2] + a[..., 2:]) - (b[..., :2] + b[..., 2:])
    return 0.25 * (delta * delta).sum(dim=-1)


def _aspect_penalty(pred: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """CIoU's ``v = 4/pi^2 * (atan(w_gt/h_gt) - atan(w/h))^2``."""
    wp, hp = _width_height(pred)
    wt, ht = _width_height(target)
    # eps in the denominator instead of atan2: atan2's gradient is 0/0 at (0, 0).
    diff = torch.atan(wt / (ht + eps)) - torch.atan(wp / (hp + eps))
    return _FOUR_OVER_PI_SQ * diff * diff


def _matched_boxes(pred: torch.Tensor, target: torch.Tensor) -> _Pair:
    """Checks that ``pred`` and ``target`` are equal-shape ``[..., 4]`` boxes and casts both to (at least)
    float32; call it with autocast disabled."""
    if pred.shape != target.shape or pred.shape[-1:] != (4,):
        raise ValueError(
            f"pred and target must both be [..., 4] with equal shapes, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
    return pred.to(dtype), target.to(dtype)


def _iou_family(kind: str, pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Element-wise loss of the IoU family; ``kind`` picks the penalty terms."""
    with _no_autocast(pred.device):
        pred, target = _matched_boxes(pred, target)
        inter, union = _intersection_union(pred, target, eps)
        iou = inter / union
        loss = 1 - iou
        if kind == "iou":
            return loss
        enc_w, enc_h = _enclosing_width_height(pred, target)
        if kind == "giou":
            enclosing = (enc_w * enc_h).clamp(min=eps)
            return loss + (enclosing - union) / enclosing
        diag_sq = (enc_w * enc_w + enc_h * enc_h).clamp(min=eps)
        loss = loss + _centre_distance_sq(pred, target) / diag_sq
        if kind == "ciou":
            v = _aspect_penalty(pred, target, eps)
            # The CIoU authors treat alpha as a constant trade-off weight so
            # that only v (not alpha) drives the aspect-ratio gradient.
            with torch.no_grad():
                alpha = v / (1 - iou + v).clamp(min=eps)
            loss = loss + alpha * v
        return loss


def _ciou_mmdet(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    with _no_autocast(pred.device):
        pred, target = _matched_boxes(pred, target)
        wp, hp = pred[..., 2] - pred[..., 0], pred[..., 3] - pred[..., 1]
        wt, ht = target[..., 2] - target[..., 0], target[..., 3] - target[..., 1]
        overlap = (torch.minimum(pred[..., 2:], target[..., 2:]) - torch.maximum(pred[..., :2], target[..., :2])).clamp(min=0)
        inter = overlap[..., 0] * overlap[..., 1]
        iou = inter / (wp * hp + wt * ht - inter + eps)
        enc_w, enc_h = _enclosing_width_height(pred, target)
        rho2_over_c2 = _centre_distance_sq(pred, target) / (enc_w * enc_w + enc_h * enc_h + eps)
        v = _FOUR_OVER_PI_SQ * (torch.atan(wt / (ht + eps)) - torch.atan(wp / (hp + eps))) ** 2
        return 1 - iou + rho2_over_c2 + v * v / (1 - iou + v)


_SIGNATURE = "``(pred, target, eps=1e-7, reduction='none', weight=None, avg_factor=None)``; see the module docstring.\n"
iou_loss = with_reduction(functools.partial(_iou_family, "iou"), "iou_loss",
                          "``1 - IoU`` per matched box pair " + _SIGNATURE)
giou_loss = with_reduction(functools.partial(_iou_family, "giou"), "giou_loss", (
    "``1 - IoU + |C minus (A union B)| / |C|``, C = smallest enclosing box; range ``[0, 2)``, and unlike plain IoU "
    "it still has a gradient for disjoint boxes. " + _SIGNATURE))
diou_loss = with_reduction(functools.partial(_iou_family, "diou"), "diou_loss", (
    "``1 - IoU + rho^2 / c^2``: rho = centre distance, c = enclosing-box diagonal. " + _SIGNATURE))
ciou_loss = with_reduction(functools.partial(_iou_family, "ciou"), "ciou_loss", (
    "``DIoU + alpha * v`` with ``v = 4/pi^2 (atan(w_gt/h_gt) - atan(w/h))^2`` and ``alpha = v / ((1 - IoU) + v)`` "
    "computed under ``no_grad`` (a constant weight, as in the CIoU authors' implementation); no IoU > 0.5 gating. "
    + _SIGNATURE))
ciou_mmdet_loss = with_reduction(_ciou_mmdet, "ciou_mmdet_loss", (
    "CIoU as mmdetection 2.x (2.7, the ALWA authors' fork) computes it: ``1 - IoU + rho^2 / c^2 + alpha * v`` with "
    "``alpha = v / (1 - IoU + v)`` *not* detached, so the gradient also flows through alpha. The small constants sit "
    "where mmdetection puts them: ``eps`` is added to the union, to ``c^2`` and to the two box heights inside "
    "``atan(w / h)``; areas are not clamped (decoded boxes are valid). On valid, non-degenerate boxes the value "
    "equals :func:`ciou_loss` to float rounding; the gradients differ. " + _SIGNATURE))


def box_iou_aligned(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Element-wise IoU of matched boxes.

    Args:
        a, b: ``[N, 4]`` boxes ``(x1, y1, x2, y2)`` (broadcastable ``[..., 4]``).
        eps: lower bound of the union area.

    Returns:
        ``[N]`` IoU in ``[0, 1]``, at least float32.
    """
    with _no_autocast(a.device):
        a, b = _at_least_float32(a), _at_least_float32(b)
        inter, union = _intersection_union(a, b, eps)
        return inter / union


def pairwise_box_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """IoU between every box of ``a`` and every box of ``b``.

    Args:
        a: ``[..., N, 4]`` boxes ``(x1, y1, x2, y2)``.
        b: ``[..., M, 4]`` boxes; leading dims broadcast against ``a``'s.
        eps: lower bound of the union area.

    Returns:
        ``[..., N, M]`` IoU matrix (at least float32); ``N == 0`` or ``M == 0``
        gives an empty tensor of that shape.
    """
    if a.shape[-1:] != (4,) or b.shape[-1:] != (4,) or a.dim() < 2 or b.dim() < 2:
        raise ValueError(
            f"expected boxes of shape [..., N, 4] and [..., M, 4], got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    with _no_autocast(a.device):
        a, b = _at_least_float32(a), _at_least_float32(b)
        # one coordinate at a time ([..., N, 1] against [..., 1, M]): every intermediate is a contiguous
        # [..., N, M] array instead of an interleaved [..., N, M, 2] one, and without autograd the
        # intermediates are reused in place; this is the hot part of anchor assignment (A x G per image)
        ax1, ay1, ax2, ay2 = (a[..., i, None] for i in range(4))
        bx1, by1, bx2, by2 = (b[..., None, :, i] for i in range(4))
        area_a = (ax2 - ax1).clamp(min=0) * (ay2 - ay1).clamp(min=0)
        area_b = (bx2 - bx1).clamp(min=0) * (by2 - by1).clamp(min=0)
        if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
            inter = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0) * \
                (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
            return inter / (area_a + area_b - inter).clamp(min=eps)
        inter = torch.minimum(ax2, bx2).sub_(torch.maximum(ax1, bx1)).clamp_(min=0)
        inter.mul_(torch.minimum(ay2, by2).sub_(torch.maximum(ay1, by1)).clamp_(min=0))
        union = (area_a + area_b).sub_(inter).clamp_(min=eps)
        return inter.div_(union)
