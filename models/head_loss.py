"""Head losses as modules: one for dense heads (RetinaNet's head and the RPN), one for the RoI box head.

Both take a few explicit parts (assigner, sampler, box loss) and own everything between a head's raw outputs
and its raw losses: assignment, targets, the classification loss, the box loss, the IoU-balanced weights
(Wu et al.) and the normaliser. The detectors only run the heads and name the results.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from losses import sigmoid_focal_loss
from losses.iou_balanced import check_normaliser, iou_balanced_cross_entropy, iou_balanced_weight
from models.anchors import level_groups
from models.assigner import IGNORED, MaxIoUAssigner, pad_boxes
from models.box_loss import BoxRegressionLoss
from models.sampler import RandomSampler

# where a dense head counts its normaliser: over the batch (mmdetection) or per image (torchvision's RetinaNet)
DENSE_NORMS = ("batch", "image")


@dataclass(frozen=True)
class SigmoidLoss:
    """Element-wise sigmoid classification loss: focal loss (Lin et al.) with ``alpha`` / ``gamma``; with
    ``gamma = 0`` and ``alpha < 0`` it is plain binary cross-entropy (the RPN's objectness, ``BCE``)."""

    alpha: float = 0.25
    gamma: float = 2.0

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        return sigmoid_focal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma)


BCE = SigmoidLoss(alpha=-1.0, gamma=0.0)


@dataclass(frozen=True)
class IoUBalanced:
    """IoU-balanced losses (Wu et al.). ``eta``: positives' classification loss times ``u**eta * Z`` with Z
    keeping their sum (per FPN level with ``norm="level"``, the released code, or over the batch with
    ``"batch"``); ``lam``: each positive's box loss times ``u**lam``. ``u`` is the detached IoU of the
    positive's regressed box with its ground truth; ``None`` switches either part off."""

    eta: Optional[float] = None
    lam: Optional[float] = None
    norm: str = "level"

    def __post_init__(self):
        check_normaliser(self.norm)

    @property
    def active(self) -> bool:
        return self.eta is not None or self.lam is not None

    def box_factor(self, ious: Tensor) -> Tensor:
        return ious.pow(self.lam)


def _ground_truth(ref: Tensor, targets: List[Dict], with_labels: bool):
    """Padded ground-truth boxes [B, M, 4] (``ref``'s dtype and device), valid [B, M] and labels [B, M] (or
    None)."""
    return pad_boxes([t["boxes"].to(ref) for t in targets], [t["labels"] for t in targets] if with_labels else None)


def _assign(assigner: MaxIoUAssigner, ref: Tensor, gt_boxes: Tensor, gt_valid: Tensor, targets: List[Dict]):
    """Max-IoU assignment of ``ref`` ([N, 4] shared anchors or [B, N, 4] per-image boxes), with each image's
    crowd regions (``ignore_boxes``) when any image has some."""
    ignore = ignore_valid = None
    if any("ignore_boxes" in t for t in targets):
        ignore, ignore_valid, _ = pad_boxes([t.get("ignore_boxes", ref.new_zeros(0, 4)).to(ref) for t in targets])
    return assigner(ref, gt_boxes, gt_valid, ignore, ignore_valid)


def _gather_boxes(gt_boxes: Tensor, index: Tensor) -> Tensor:
    return gt_boxes.gather(1, index[..., None].expand(-1, -1, 4))


class DenseHeadLoss:
    """Per-anchor losses of a dense head.

    ``loss(cls [B, N, C], reg [B, N, 4], anchors [N, 4], counts, targets)`` returns ``(cls_loss [B, N],
    box_loss [B, N], normaliser)``: each anchor's classification loss (summed over its C classes; 0 for
    ignored or unsampled anchors), its box loss (0 unless positive), and the divisor the head's losses use,
    at least 1. Without a sampler (RetinaNet) every non-ignored anchor counts and the normaliser is the
    number of positives; with one (the RPN) only the sampled anchors count and the normaliser is their
    number (mmdetection's choice). ``C == 1`` is class-agnostic (objectness): every positive is class 0.
    ``counts`` are the anchors per FPN level (for the per-level IoU-balanced normaliser).

    ``norm`` says where that number is counted: ``"batch"`` (mmdetection) gives one scalar for the batch,
    ``"image"`` (torchvision's RetinaNet) a [B] tensor, each image's own count (at least 1). :meth:`reduce`
    turns per-anchor losses and either normaliser into the head's scalar loss."""

    def __init__(self, assigner: MaxIoUAssigner, box_loss: BoxRegressionLoss, cls_loss: SigmoidLoss = SigmoidLoss(),
                 sampler: Optional[RandomSampler] = None, iou_balanced: IoUBalanced = IoUBalanced(),
                 norm: str = "batch"):
        if norm not in DENSE_NORMS:
            raise ValueError(f"dense head loss norm must be one of {DENSE_NORMS}, got {norm!r}")
        self.assigner, self.box_loss, self.cls_loss = assigner, box_loss, cls_loss
        self.sampler, self.iou_balanced, self.norm = sampler, iou_balanced, norm

    @staticmethod
    def reduce(per_anchor: Tensor, normaliser: Tensor) -> Tensor:
        """The scalar loss of per-anchor losses [B, N] (or one FPN level's [B, N_l]): their sum over the
        batch's normaliser (a scalar), or with per-image normalisers [B] each image's sum over its own, then
        the mean over images. The latter is torchvision's order of operations, so that its RetinaNet and
        ours round alike."""
        if normaliser.dim() == 0:
            return per_anchor.sum() / normaliser
        return (per_anchor.sum(1) / normaliser).mean()

    def __call__(self, cls: Tensor, reg: Tensor, anchors: Tensor, counts: Optional[List[int]],
                 targets: List[Dict]) -> Tuple[Tensor, Tensor, Tensor]:
        num_classes = cls.shape[-1]
        gt_boxes, gt_valid, gt_labels = _ground_truth(anchors, targets, with_labels=num_classes > 1)
        assign = _assign(self.assigner, anchors, gt_boxes, gt_valid, targets)
        idx = assign.gt_index.clamp(min=0)
        if self.sampler is None:
            pos, counted = assign.positive, assign.gt_index != IGNORED
            divides = pos
        else:
            sample = self.sampler(assign.gt_index)
            pos, counted = sample.pos, sample.sampled
            divides = counted
        # an image without positives divides by 1 (torchvision's max(1, n)): its loss is its negatives' sum
        num = (divides.sum(1) if self.norm == "image" else divides.sum()).clamp(min=1).float()
        labels = gt_labels.gather(1, idx) if num_classes > 1 else torch.zeros_like(idx)
        one_hot = nn.functional.one_hot(labels.clamp(min=0), num_classes).float() * pos[..., None]
        # non-positive anchors regress onto themselves: a valid box keeps every loss finite before masking
        matched = torch.where(pos[..., None], _gather_boxes(gt_boxes, idx), anchors[None])
        cls_elem = self.cls_loss(cls, one_hot)
        box = self.box_loss(reg, anchors[None], matched)
        balance = self.iou_balanced
        if balance.active:
            ious = self.box_loss.regressed_iou(reg, anchors[None], matched, pos)
            if balance.eta is not None:
                if balance.norm == "level" and counts is None:
                    raise ValueError("the per-level IoU-balanced normaliser needs the anchors per level (counts)")
                groups, num_groups = level_groups(counts, cls.device, balance.norm == "level")
                if groups is not None:  # the FPN level of each (image, anchor, class) entry
                    groups = groups[..., None]
                cls_elem = cls_elem * iou_balanced_weight(cls_elem, one_hot > 0, ious[..., None].expand_as(cls_elem),
                                                          balance.eta, groups, num_groups)
            if balance.lam is not None:
                box = box * balance.box_factor(ious)
        return cls_elem.sum(-1) * counted, box * pos, num


@dataclass
class RoISample:
    """The RoIs one training step classifies and regresses, per image: ``rois`` [B, S, 4] (input pixels),
    ``labels`` [B, S] (0-based, ``num_classes`` = background), ``matched`` [B, S, 4] (each positive's ground
    truth, the RoI itself elsewhere), ``pos`` / ``sampled`` [B, S] bool and ``gt_index`` [B, S] (each
    positive's ground-truth index, 0 elsewhere)."""

    rois: Tensor
    labels: Tensor
    matched: Tensor
    pos: Tensor
    sampled: Tensor
    gt_index: Tensor


# stands in for padding slots so that no zero-size box reaches RoIAlign or the coder
DUMMY_BOX = (0.0, 0.0, 1.0, 1.0)


class RoIHeadLoss:
    """Proposal sampling and the RoI box head's losses: softmax cross-entropy over ``C + 1`` classes (or its
    IoU-balanced form) and the box loss of each positive's own-class deltas, both averaged over the sampled
    RoIs of the batch. ``add_gt_as_proposals`` adds the ground truths to the candidates (positives for every
    object early in training)."""

    def __init__(self, assigner: MaxIoUAssigner, sampler: RandomSampler, box_loss: BoxRegressionLoss,
                 iou_balanced: IoUBalanced = IoUBalanced(norm="batch"), add_gt_as_proposals: bool = True):
        self.assigner, self.sampler, self.box_loss = assigner, sampler, box_loss
        self.iou_balanced, self.add_gt_as_proposals = iou_balanced, add_gt_as_proposals

    def sample(self, proposals: Tensor, valid: Tensor, targets: List[Dict], num_classes: int) -> RoISample:
        """Assign and sample the training RoIs among proposals [B, P, 4] (valid [B, P])."""
        gt_boxes, gt_valid, gt_labels = _ground_truth(proposals, targets, with_labels=True)
        candidates, cand_valid = proposals, valid
        if self.add_gt_as_proposals:
            candidates = torch.cat([proposals, gt_boxes], dim=1)
            cand_valid = torch.cat([valid, gt_valid], dim=1)
        candidates = torch.where(cand_valid[..., None], candidates, candidates.new_tensor(DUMMY_BOX))
        assign = _assign(self.assigner, candidates, gt_boxes, gt_valid, targets)
        index, pos, neg = self.sampler.select(assign.gt_index, cand_valid)
        rois = candidates.gather(1, index[..., None].expand(-1, -1, 4))
        gt_index = assign.gt_index.gather(1, index).clamp(min=0)
        labels = torch.where(pos, gt_labels.gather(1, gt_index), torch.full_like(gt_index, num_classes))
        matched = torch.where(pos[..., None], _gather_boxes(gt_boxes, gt_index), rois)
        return RoISample(rois, labels, matched, pos, pos | neg, gt_index)

    def __call__(self, cls: Tensor, reg: Tensor, s: RoISample) -> Dict[str, Tensor]:
        """``loss_cls`` and ``loss_bbox`` from class logits [B, S, C + 1] and deltas [B, S, C, 4]."""
        num_classes = reg.shape[2]
        num = s.sampled.sum().clamp(min=1).float()
        # deltas of each RoI's own class (background RoIs read class 0; their loss is masked out)
        own = reg.gather(2, s.labels.clamp(max=num_classes - 1)[..., None, None].expand(-1, -1, 1, 4)).squeeze(2)
        balance = self.iou_balanced
        ious = self.box_loss.regressed_iou(own, s.rois, s.matched, s.pos) if balance.active else None
        if balance.eta is not None:
            loss_cls = iou_balanced_cross_entropy(cls.flatten(0, 1), s.labels.flatten(), ious.flatten(), eta=balance.eta)
        else:
            loss_cls = nn.functional.cross_entropy(cls.float().flatten(0, 1), s.labels.flatten(), reduction="none")
        loss_box = self.box_loss(own, s.rois, s.matched)
        if balance.lam is not None:
            loss_box = loss_box * balance.box_factor(ious)
        return {"loss_cls": (loss_cls * s.sampled.flatten()).sum() / num, "loss_bbox": (loss_box * s.pos).sum() / num}
