"""Batched max-IoU target assignment.

All images of a batch are assigned in one pass: ground truths are padded to ``[B, G, 4]`` with a
validity mask, the IoU matrix ``[B, G, A]`` is computed once, and every rule below is a tensor
operation (no Python loop over anchors, ground truths or images).

Rules (mmdetection's MaxIoUAssigner semantics):
1. anchors whose best IoU is in ``[0, neg_iou_thr)`` are negatives;
2. anchors whose best IoU is ``>= pos_iou_thr`` are positives of their best ground truth;
3. low-quality matches: every ground truth whose best IoU is ``>= min_pos_iou`` (and > 0) also claims all
   anchors that reach that best IoU (ties included); when an anchor is the best of several ground
   truths, the one with the highest index wins (as in a sequential loop over ground truths); with
   ``low_quality_target="anchor"`` (torchvision's ``Matcher``) such an anchor goes instead to its own
   best ground truth, whichever ground truth it was the best match of;
4. anything else is ignored (``-2``).
Anchors whose IoU-over-foreground with an ignore region (e.g. COCO crowd boxes) is ``>= ignore_iof_thr``
become ignored unless rule 2 or 3 made them positive.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from losses.iou import pairwise_box_iou

NEGATIVE = -1
IGNORED = -2


@dataclass
class AssignResult:
    """``gt_index`` [B, A]: >= 0 index of the matched ground truth, -1 negative, -2 ignored.
    ``max_iou`` [B, A]: best IoU of each anchor over the image's ground truths (0 if none)."""

    gt_index: Tensor
    max_iou: Tensor

    @property
    def positive(self) -> Tensor:
        return self.gt_index >= 0

    @property
    def negative(self) -> Tensor:
        return self.gt_index == NEGATIVE


def pad_boxes(boxes: List[Tensor], labels: Optional[List[Tensor]] = None) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Pad per-image boxes [M_i, 4] into [B, G, 4] with a validity mask [B, G] (G = max M_i, at least 1).

    Sizes are known on the host, so padding needs no boolean indexing (which would synchronise a GPU)."""
    counts = [int(x.shape[0]) for x in boxes]
    g = max(counts + [1])
    device = boxes[0].device if boxes else torch.device("cpu")
    padded = torch.zeros(len(boxes), g, 4, device=device, dtype=torch.float32)
    padded_labels = torch.full((len(boxes), g), -1, dtype=torch.long, device=device) if labels is not None else None
    for i, n in enumerate(counts):  # one slice copy per image, no per-box work
        if n:
            padded[i, :n] = boxes[i].float().reshape(n, 4)
            if labels is not None:
                padded_labels[i, :n] = labels[i].long().reshape(n).to(device)
    valid = torch.arange(g, device=device)[None, :] < torch.tensor(counts, device=device).reshape(-1, 1)
    return padded, valid, padded_labels


class MaxIoUAssigner:
    def __init__(
        self,
        pos_iou_thr: float = 0.5,
        neg_iou_thr: float = 0.4,
        min_pos_iou: float = 0.0,
        low_quality_match: bool = True,
        ignore_iof_thr: float = -1.0,
        low_quality_target: str = "gt",
    ):
        if low_quality_target not in ("gt", "anchor"):
            raise ValueError(f"low_quality_target must be 'gt' or 'anchor', got {low_quality_target!r}")
        if neg_iou_thr > pos_iou_thr:
            raise ValueError(f"neg_iou_thr {neg_iou_thr} must not exceed pos_iou_thr {pos_iou_thr}")
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = min_pos_iou
        self.low_quality_match = low_quality_match
        self.ignore_iof_thr = ignore_iof_thr
        self.low_quality_target = low_quality_target

    def __call__(
        self, anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, ignore_boxes: Optional[Tensor] = None,
        ignore_valid: Optional[Tensor] = None,
    ) -> AssignResult:
        """Assign anchors [A, 4] (shared) or [B, A, 4] to padded ground truths [B, G, 4] with mask [B, G]."""
        b, g = gt_valid.shape
        a = anchors.shape[-2]
        if anchors.dim() == 2:
            anchors = anchors.unsqueeze(0).expand(b, a, 4)
        iou = pairwise_box_iou(gt_boxes.float(), anchors.float())  # [B, G, A]
        # padding gets IoU 0 so that images without ground truth make every anchor a negative
        iou.masked_fill_(~gt_valid[:, :, None], 0.0)
        if g == 0 or a == 0:
            return AssignResult(
                torch.full((b, a), NEGATIVE, dtype=torch.long, device=anchors.device),
                torch.zeros(b, a, device=anchors.device),
            )
        max_iou, argmax = iou.max(dim=1)  # over ground truths: [B, A]
        # torch.where / masked_fill rather than boolean-index assignment: no host synchronisation on GPU
        gt_index = torch.full_like(argmax, IGNORED).masked_fill(max_iou < self.neg_iou_thr, NEGATIVE)
        gt_index = torch.where(max_iou >= self.pos_iou_thr, argmax, gt_index)
        if self.low_quality_match:
            gt_max = iou.max(dim=2, keepdim=True).values  # best anchor IoU per ground truth: [B, G, 1]
            # ground truths that may not claim anchors compare against 2 (no IoU reaches it): one [B, G, A]
            # pass gives every (ground truth, anchor) best match
            usable = (gt_max >= self.min_pos_iou) & (gt_max > 0) & gt_valid[:, :, None]
            is_best = iou == torch.where(usable, gt_max, torch.full_like(gt_max, 2.0))
            # highest ground-truth index among those for which the anchor is a best match: the first
            # maximum along the flipped axis (max returns the first index of ties), on one-byte values
            any_best, last = is_best.flip(1).view(torch.uint8).max(dim=1)
            claimed = argmax if self.low_quality_target == "anchor" else (g - 1) - last
            gt_index = torch.where(any_best.bool(), claimed, gt_index)
        if self.ignore_iof_thr > 0 and ignore_boxes is not None and ignore_boxes.shape[1] > 0:
            iof = _iof(anchors, ignore_boxes).masked_fill(~ignore_valid[:, :, None], 0.0)
            ignored = (iof.max(dim=1).values >= self.ignore_iof_thr) & (gt_index < 0)
            gt_index = gt_index.masked_fill(ignored, IGNORED)
        return AssignResult(gt_index, max_iou)


def _iof(anchors: Tensor, regions: Tensor) -> Tensor:
    """Intersection over anchor area: anchors [B, A, 4], regions [B, R, 4] -> [B, R, A]."""
    lt = torch.maximum(regions[:, :, None, :2], anchors[:, None, :, :2])
    rb = torch.minimum(regions[:, :, None, 2:], anchors[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = ((anchors[..., 2] - anchors[..., 0]) * (anchors[..., 3] - anchors[..., 1])).clamp(min=1e-6)
    return inter / area[:, None, :]
