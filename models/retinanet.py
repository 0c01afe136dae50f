"""RetinaNet: backbone + FPN, a shared dense head, anchors, max-IoU assignment, focal + box losses.

``model(images [B, 3, H, W], targets)`` in training mode returns raw, unweighted losses
``{"loss_cls", "loss_bbox"}`` (or ``loss_cls_p3`` ... / ``loss_bbox_p3`` ... when ``loss_per_level``),
both normalised by the number of positive anchors in the batch. In eval mode it returns one dict per
image with ``boxes`` (x1, y1, x2, y2 in original image pixels, using ``targets[i]["scale_factor"]`` and
``orig_size`` when given), ``scores`` and 0-based ``labels``.

Targets: per image ``boxes`` [M, 4] (x1, y1, x2, y2 in input pixels), ``labels`` [M] (0-based),
optionally ``ignore_boxes`` [R, 4] (regions whose anchors are neither positive nor negative).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from losses import sigmoid_focal_loss
from losses.iou_balanced import check_normaliser, iou_balanced_sigmoid_focal_loss
from models.anchors import AnchorGenerator, flatten_level_outputs, level_groups
from models.assigner import IGNORED, MaxIoUAssigner, pad_boxes
from models.box_coder import DeltaBoxCoder
from models.box_loss import BoxRegressionLoss
from models.postprocess import (image_metas, nms_per_image, rescale_to_original, select_topk_anchors_per_level,
                               select_topk_per_level)

# test-time pre-NMS selection per level: the top (anchor, class) pairs, or the top anchors by their best class
# score with all their classes (mmdetection 2.x)
PRE_NMS_SELECT = {"pairs": select_topk_per_level, "anchors": select_topk_anchors_per_level}


class RetinaHead(nn.Module):
    """Classification and regression towers shared over levels.

    Outputs per level: cls [B, A * C, H, W] (logits), reg [B, A * 4, H, W] (deltas)."""

    def __init__(self, in_channels: int, num_classes: int, num_anchors: int, feat_channels: int = 256,
                 num_convs: int = 4, prior_prob: float = 0.01, norm: str = "none"):
        super().__init__()
        self.num_classes = num_classes
        self.cls_tower = self._tower(in_channels, feat_channels, num_convs, norm)
        self.reg_tower = self._tower(in_channels, feat_channels, num_convs, norm)
        last = feat_channels if num_convs > 0 else in_channels
        self.cls_out = nn.Conv2d(last, num_anchors * num_classes, 3, padding=1)
        self.reg_out = nn.Conv2d(last, num_anchors * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # start every anchor at probability prior_prob so the many easy negatives do not swamp step one
        nn.init.constant_(self.cls_out.bias, -math.log((1 - prior_prob) / prior_prob))

    @staticmethod
    def _tower(cin: int, cout: int, n: int, norm: str) -> nn.Sequential:
        layers: List[nn.Module] = []
        for i in range(n):
            layers.append(nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=norm == "none"))
            if norm == "gn":
                layers.append(nn.GroupNorm(min(32, cout // 4) or 1, cout))
            elif norm != "none":
                raise ValueError(f"unknown head norm '{norm}', use 'none' or 'gn'")
            layers.append(nn.ReLU(inplace=True))
        return nn.Sequential(*layers)

    def forward(self, feats: Sequence[Tensor]):
        return [self.cls_out(self.cls_tower(f)) for f in feats], [self.reg_out(self.reg_tower(f)) for f in feats]


class RetinaNet(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        head: RetinaHead,
        anchor_generator: AnchorGenerator,
        assigner: MaxIoUAssigner,
        coder: DeltaBoxCoder,
        reg_loss: str = "l1",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        smooth_l1_beta: float = 0.11,
        loss_per_level: bool = False,
        iou_balanced_eta: Optional[float] = None,
        iou_balanced_lambda: Optional[float] = None,
        score_thr: float = 0.05,
        nms_iou: float = 0.5,
        pre_nms_top_k: int = 1000,
        max_per_img: int = 100,
        pre_nms_rank: str = "pairs",
        reg_weight: float = 1.0,
        iou_balanced_norm: str = "level",
    ):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.anchor_generator, self.assigner, self.coder = anchor_generator, assigner, coder
        self.num_classes = head.num_classes
        self.reg_loss = reg_loss
        self.box_loss = BoxRegressionLoss(reg_loss, coder, smooth_l1_beta, reg_weight)
        self.focal_alpha, self.focal_gamma, self.smooth_l1_beta = focal_alpha, focal_gamma, smooth_l1_beta
        self.loss_per_level = loss_per_level
        # IoU-balanced losses (Wu et al.): None switches each part off; the classification normaliser Z is
        # computed per FPN level (the authors' released code) or over the whole batch
        self.iou_balanced_eta, self.iou_balanced_lambda = iou_balanced_eta, iou_balanced_lambda
        self.iou_balanced_norm = iou_balanced_norm
        check_normaliser(iou_balanced_norm)
        self.level_names = [f"p{int(math.log2(s))}" for s in anchor_generator.strides]
        if pre_nms_rank not in PRE_NMS_SELECT:
            raise ValueError(f"pre_nms_rank must be one of {sorted(PRE_NMS_SELECT)}, got {pre_nms_rank!r}")
        self.test_cfg = dict(score_thr=score_thr, nms_iou=nms_iou, pre_nms_top_k=pre_nms_top_k, max_per_img=max_per_img,
                             pre_nms_rank=pre_nms_rank)

    def forward(self, images: Tensor, targets: Optional[List[Dict]] = None):
        feats = self.backbone(images)
        cls_maps, reg_maps = self.head(feats)
        anchors, counts = self.anchor_generator(feats)
        cls = flatten_level_outputs(cls_maps, self.num_classes)
        reg = flatten_level_outputs(reg_maps, 4)
        if self.training:
            if targets is None:
                raise ValueError("RetinaNet in training mode needs targets")
            return self.losses(cls, reg, anchors, counts, targets)
        return self.detect(cls, reg, anchors, counts, targets, tuple(images.shape[-2:]))

    def losses(self, cls: Tensor, reg: Tensor, anchors: Tensor, counts: List[int], targets: List[Dict]) -> Dict[str, Tensor]:
        gt_boxes, gt_valid, gt_labels = pad_boxes([t["boxes"].to(anchors) for t in targets], [t["labels"] for t in targets])
        ignore = ignore_valid = None
        if any("ignore_boxes" in t for t in targets):
            ignore, ignore_valid, _ = pad_boxes([t.get("ignore_boxes", anchors.new_zeros(0, 4)).to(anchors) for t in targets])
        assign = self.assigner(anchors, gt_boxes, gt_valid, ignore, ignore_valid)
        pos = assign.positive
        idx = assign.gt_index.clamp(min=0)
        labels = gt_labels.gather(1, idx)
        # non-positive anchors regress onto themselves: a valid box keeps every loss finite before masking
        matched = torch.where(pos[..., None], gt_boxes.gather(1, idx[..., None].expand(-1, -1, 4)), anchors[None])
        # focal-loss normaliser: positives in this process's batch, at least 1 (empty images)
        num_pos = pos.sum().clamp(min=1).float()
        one_hot = nn.functional.one_hot(labels.clamp(min=0), self.num_classes).float() * pos[..., None]
        ious = None
        if self.iou_balanced_eta is not None or self.iou_balanced_lambda is not None:
            ious = self.box_loss.regressed_iou(reg, anchors[None], matched, pos)
        if self.iou_balanced_eta is not None:
            groups, num_groups = level_groups(counts, cls.device, check_normaliser(self.iou_balanced_norm))
            if groups is not None:  # one row per (image, anchor)
                groups = groups.expand(cls.shape[0], -1).flatten()
            cls_elem = iou_balanced_sigmoid_focal_loss(
                cls.flatten(0, 1), one_hot.flatten(0, 1), ious.flatten(), eta=self.iou_balanced_eta,
                alpha=self.focal_alpha, gamma=self.focal_gamma, groups=groups, num_groups=num_groups).view_as(one_hot)
        else:
            cls_elem = sigmoid_focal_loss(cls, one_hot, alpha=self.focal_alpha, gamma=self.focal_gamma)
        cls_per_anchor = cls_elem.sum(-1) * (assign.gt_index != IGNORED)
        reg_per_anchor = self.box_loss(reg, anchors[None], matched) * pos
        if self.iou_balanced_lambda is not None:
            reg_per_anchor = reg_per_anchor * ious.pow(self.iou_balanced_lambda)
        if not self.loss_per_level:
            return {"loss_cls": cls_per_anchor.sum() / num_pos, "loss_bbox": reg_per_anchor.sum() / num_pos}
        out = {}
        for name, c, r in zip(self.level_names, cls_per_anchor.split(counts, 1), reg_per_anchor.split(counts, 1)):
            out[f"loss_cls_{name}"] = c.sum() / num_pos
            out[f"loss_bbox_{name}"] = r.sum() / num_pos
        return out

    @torch.no_grad()
    def detect(self, cls: Tensor, reg: Tensor, anchors: Tensor, counts: List[int], targets, padded_hw) -> List[Dict]:
        cfg = self.test_cfg
        b = cls.shape[0]
        img_hw, scale, orig_hw = image_metas(targets, b, padded_hw, cls.device)
        scores, anchor_idx, labels = PRE_NMS_SELECT[cfg["pre_nms_rank"]](cls.sigmoid(), counts, cfg["pre_nms_top_k"])
        deltas = reg.gather(1, anchor_idx[..., None].expand(-1, -1, 4))
        boxes = self.coder.decode(anchors[anchor_idx], deltas, max_shape=img_hw[:, None, :])
        dets = nms_per_image(boxes, scores.float(), labels, cfg["score_thr"], cfg["nms_iou"], cfg["max_per_img"],
                             self.num_classes)
        return rescale_to_original(dets, scale, orig_hw)
