"""Region proposal network: a shared conv head over the FPN levels, objectness + box losses on sampled
anchors, and batched proposal generation.

Defaults follow mmdetection's Faster R-CNN R50-FPN 1x: one anchor scale (8 x stride) and three ratios per
level on P2-P6, max-IoU assignment 0.7 / 0.3 with low-quality matches (min IoU 0.3), 256 anchors sampled
per image with at most half positive, sigmoid objectness, L1 on deltas (means 0, stds 1), proposals from
the top 2000 (train) / 1000 (test) anchors of each level, NMS 0.7 inside each level, 1000 per image.

Both losses are normalised by the number of sampled anchors in the batch (positives + negatives), as
mmdetection does, so ``loss_rpn_bbox`` carries the positive fraction of the sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from losses.iou_balanced import check_normaliser, iou_balanced_weight
from models.anchors import AnchorGenerator, flatten_level_outputs, level_groups, level_index
from models.assigner import MaxIoUAssigner, pad_boxes
from models.box_coder import DeltaBoxCoder
from models.box_loss import BoxRegressionLoss
from models.postprocess import nms_padded, select_topk_per_level
from models.sampler import RandomSampler


@dataclass
class ProposalConfig:
    pre_nms_top_k: int = 1000  # per level and image
    post_nms_top_k: int = 1000  # per image
    nms_iou: float = 0.7
    min_size: float = 0.0  # proposals narrower or lower than this (input pixels) are dropped


class RPNHead(nn.Module):
    """3x3 conv + ReLU shared over levels, then 1x1 objectness [B, A, H, W] and deltas [B, A * 4, H, W]."""

    def __init__(self, in_channels: int, num_anchors: int, feat_channels: int = 256):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.obj = nn.Conv2d(feat_channels, num_anchors, 1)
        self.reg = nn.Conv2d(feat_channels, num_anchors * 4, 1)
        for m in (self.conv, self.obj, self.reg):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        hidden = [torch.relu(self.conv(f)) for f in feats]
        return [self.obj(h) for h in hidden], [self.reg(h) for h in hidden]


class RegionProposalNetwork(nn.Module):
    def __init__(
        self,
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        assigner: Optional[MaxIoUAssigner] = None,
        sampler: Optional[RandomSampler] = None,
        coder: Optional[DeltaBoxCoder] = None,
        reg_loss: str = "l1",
        smooth_l1_beta: float = 1.0 / 9.0,
        train_proposals: Optional[ProposalConfig] = None,
        test_proposals: Optional[ProposalConfig] = None,
        iou_balanced_eta: Optional[float] = None,
        iou_balanced_lambda: Optional[float] = None,
        reg_loss_weight: float = 1.0,
        iou_balanced_norm: str = "level",
    ):
        super().__init__()
        self.head, self.anchor_generator = head, anchor_generator
        self.assigner = assigner or MaxIoUAssigner(0.7, 0.3, min_pos_iou=0.3, low_quality_match=True)
        self.sampler = sampler or RandomSampler(256, 0.5)
        self.coder = coder or DeltaBoxCoder()
        self.box_loss = BoxRegressionLoss(reg_loss, self.coder, smooth_l1_beta, reg_loss_weight)
        self.train_proposals = train_proposals or ProposalConfig(2000, 1000, 0.7, 0.0)
        self.test_proposals = test_proposals or ProposalConfig(1000, 1000, 0.7, 0.0)
        # IoU-balanced losses (Wu et al.): objectness BCE of positives weighted by IoU^eta (sum kept),
        # regression by IoU^lambda, with the IoU of each positive anchor's regressed box; None: off. The sum is
        # kept per FPN level ("level", as the authors' anchor-head code) or over the batch ("batch")
        self.iou_balanced_eta, self.iou_balanced_lambda = iou_balanced_eta, iou_balanced_lambda
        self.iou_balanced_norm = iou_balanced_norm
        check_normaliser(iou_balanced_norm)

    def forward(self, feats: Sequence[Tensor], img_hw: Tensor, targets: Optional[List[Dict]] = None):
        """Proposals for a batch, and the RPN losses in training mode.

        Args:
            feats: FPN maps, one per anchor stride. img_hw: [B, 2] valid (h, w) of each image.
            targets: per image ``boxes`` [M, 4] (input pixels), optional ``ignore_boxes`` [R, 4].
        Returns:
            proposals [B, P, 4] (input pixels, detached), valid [B, P] bool, and a loss dict
            (``loss_rpn_cls``, ``loss_rpn_bbox``; empty in eval mode).
        """
        obj_maps, reg_maps = self.head(feats)
        anchors, counts = self.anchor_generator(feats)
        obj = flatten_level_outputs(obj_maps, 1).squeeze(-1)  # [B, N]
        reg = flatten_level_outputs(reg_maps, 4)  # [B, N, 4]
        losses: Dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("the RPN in training mode needs targets")
            losses = self.losses(obj, reg, anchors, targets, counts)
        cfg = self.train_proposals if self.training else self.test_proposals
        with torch.no_grad():
            proposals, valid = self.proposals(obj.detach(), reg.detach(), anchors, counts, img_hw, cfg)
        return proposals, valid, losses

    def losses(self, obj: Tensor, reg: Tensor, anchors: Tensor, targets: List[Dict],
               counts: Optional[List[int]] = None) -> Dict[str, Tensor]:
        """Objectness BCE and box loss on the sampled anchors; ``counts`` (anchors per level) is needed for
        the per-level IoU-balanced normaliser."""
        gt_boxes, gt_valid, _ = pad_boxes([t["boxes"].to(anchors) for t in targets])
        ignore = ignore_valid = None
        if any("ignore_boxes" in t for t in targets):
            ignore, ignore_valid, _ = pad_boxes([t.get("ignore_boxes", anchors.new_zeros(0, 4)).to(anchors) for t in targets])
        assign = self.assigner(anchors, gt_boxes, gt_valid, ignore, ignore_valid)
        sample = self.sampler(assign.gt_index)
        pos, sampled = sample.pos, sample.sampled
        num = sampled.sum().clamp(min=1).float()
        cls = nn.functional.binary_cross_entropy_with_logits(obj.float(), pos.float(), reduction="none")
        idx = assign.gt_index.clamp(min=0)
        # unsampled anchors regress onto themselves so that every loss value is finite before masking
        matched = torch.where(pos[..., None], gt_boxes.gather(1, idx[..., None].expand(-1, -1, 4)), anchors[None])
        box = self.box_loss(reg, anchors[None], matched)
        if self.iou_balanced_eta is not None or self.iou_balanced_lambda is not None:
            ious = self.box_loss.regressed_iou(reg, anchors[None], matched, pos)
            if self.iou_balanced_eta is not None:
                per_level = check_normaliser(self.iou_balanced_norm)
                if per_level and counts is None:
                    raise ValueError("the per-level IoU-balanced normaliser needs the anchors per level (counts)")
                groups, num_groups = level_groups(counts, obj.device, per_level)
                cls = cls * iou_balanced_weight(cls, pos & sampled, ious, self.iou_balanced_eta, groups, num_groups)
            if self.iou_balanced_lambda is not None:
                box = box * ious.pow(self.iou_balanced_lambda)
        return {"loss_rpn_cls": (cls * sampled).sum() / num, "loss_rpn_bbox": (box * pos).sum() / num}

    def proposals(self, obj: Tensor, reg: Tensor, anchors: Tensor, counts: List[int], img_hw: Tensor,
                  cfg: ProposalConfig) -> Tuple[Tensor, Tensor]:
        """Top-k anchors per level, decoded and clipped, NMS inside each (image, level), top per image."""
        scores, idx, _ = select_topk_per_level(obj.sigmoid()[..., None], counts, cfg.pre_nms_top_k)
        level = level_index([min(cfg.pre_nms_top_k, n) for n in counts], obj.device)
        deltas = reg.gather(1, idx[..., None].expand(-1, -1, 4))
        boxes = self.coder.decode(anchors[idx], deltas, max_shape=img_hw[:, None, :])
        wh = boxes[..., 2:] - boxes[..., :2]
        # zero-size boxes (e.g. anchors clipped away entirely) can never be matched: drop them
        valid = (wh > max(cfg.min_size, 1e-3)).all(-1) & torch.isfinite(scores)
        out_boxes, _, out_valid = nms_padded(boxes, scores, level.expand_as(scores), valid, cfg.nms_iou,
                                             cfg.post_nms_top_k, len(counts))
        return out_boxes, out_valid
