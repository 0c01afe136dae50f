"""RetinaNet: backbone + FPN, a shared dense head, anchors, max-IoU assignment, focal + box losses.

``model(images [B, 3, H, W], targets)`` in training mode returns raw, unweighted losses
``{"loss_cls", "loss_bbox"}`` (or ``loss_cls_p3`` ... / ``loss_bbox_p3`` ... when ``loss_per_level``),
both normalised by the number of positive anchors in the batch (mmdetection), or per image and then
averaged over the images (torchvision, the loss's ``norm="image"``). In eval mode it returns one dict per
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

from models.anchors import AnchorGenerator, flatten_level_outputs
from models.contract import LossContract, head_contract
from models.head_loss import DenseHeadLoss
from models.postprocess import (DenseDetectConfig, image_metas, nms_per_image, rescale_to_original,
                               select_topk_anchors_per_level, select_topk_per_level)

# test-time pre-NMS selection per level: the top (anchor, class) pairs, or the top anchors by their best class
# score with all their classes (mmdetection 2.x)
PRE_NMS_SELECT = {"pairs": select_topk_per_level, "anchors": select_topk_anchors_per_level}


def level_names(strides: Sequence[int]) -> List[str]:
    """``p3`` ... ``p7`` for strides 8 ... 128."""
    return [f"p{int(math.log2(s))}" for s in strides]


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
    """``RetinaNet(backbone, head, anchor_generator, loss, test_cfg, loss_per_level)``: the head's outputs on
    the generated anchors go to ``loss`` (a :class:`DenseHeadLoss`: assignment, focal and box losses) in
    training and through top-k, decoding and NMS (``test_cfg``) in eval mode."""

    def __init__(self, backbone: nn.Module, head: RetinaHead, anchor_generator: AnchorGenerator, loss: DenseHeadLoss,
                 test_cfg: Optional[DenseDetectConfig] = None, loss_per_level: bool = False):
        super().__init__()
        self.backbone, self.head, self.anchor_generator, self.loss = backbone, head, anchor_generator, loss
        self.coder = loss.box_loss.coder
        self.num_classes = head.num_classes
        self.loss_per_level = loss_per_level
        self.level_names = level_names(anchor_generator.strides)
        self.test_cfg = test_cfg or DenseDetectConfig()
        if self.test_cfg.pre_nms_rank not in PRE_NMS_SELECT:
            raise ValueError(f"pre_nms_rank must be one of {sorted(PRE_NMS_SELECT)}, got {self.test_cfg.pre_nms_rank!r}")

    def class_layout(self) -> Dict[str, tuple]:
        """Class-dependent tensors: name -> ``(outer, inner, background)``, their rows being ``outer`` blocks of
        ``num_classes`` (+1 background last, if ``background``) classes of ``inner`` rows each (the classifier:
        one block per anchor)."""
        return self.class_layout_for(self.anchor_generator.num_anchors_per_location)

    @staticmethod
    def class_layout_for(num_anchors: int) -> Dict[str, tuple]:
        """``class_layout`` of a RetinaNet with ``num_anchors`` anchors per location, without building it."""
        return {f"head.cls_out.{p}": (num_anchors, 1, False) for p in ("weight", "bias")}

    @property
    def loss_contract(self) -> LossContract:
        return self.contract_for(self.anchor_generator.strides, self.loss_per_level)

    @staticmethod
    def contract_for(strides: Sequence[int], loss_per_level: bool) -> LossContract:
        """The loss keys of a RetinaNet on FPN levels of these anchor strides: ``loss_cls`` / ``loss_bbox``, or
        ``loss_cls_p3`` / ``loss_bbox_p3`` ... level by level when ``loss_per_level``."""
        return head_contract("loss_cls", "loss_bbox", level_names(strides) if loss_per_level else ())

    def forward(self, images: Tensor, targets: Optional[List[Dict]] = None):
        feats = self.backbone(images)
        cls_maps, reg_maps = self.head(feats)
        anchors, counts = self.anchor_generator(feats, tuple(images.shape[-2:]))
        cls = flatten_level_outputs(cls_maps, self.num_classes)
        reg = flatten_level_outputs(reg_maps, 4)
        if self.training:
            if targets is None:
                raise ValueError("RetinaNet in training mode needs targets")
            return self.losses(cls, reg, anchors, counts, targets)
        return self.detect(cls, reg, anchors, counts, targets, tuple(images.shape[-2:]))

    def losses(self, cls: Tensor, reg: Tensor, anchors: Tensor, counts: List[int], targets: List[Dict]) -> Dict[str, Tensor]:
        """Focal and box losses summed over anchors and divided by the positives (at least 1): the batch's, or
        each image's with the mean over images (``loss.norm``); whole or per FPN level (their sums are the
        whole ones)."""
        cls_per_anchor, reg_per_anchor, num_pos = self.loss(cls, reg, anchors, counts, targets)
        reduce = self.loss.reduce
        if not self.loss_per_level:
            return {"loss_cls": reduce(cls_per_anchor, num_pos), "loss_bbox": reduce(reg_per_anchor, num_pos)}
        levels = self.loss_contract.levels  # the per-level key names, defined once in the contract
        out = {}
        for k_cls, k_reg, c, r in zip(levels["loss_cls"], levels["loss_bbox"], cls_per_anchor.split(counts, 1),
                                      reg_per_anchor.split(counts, 1)):
            out[k_cls] = reduce(c, num_pos)
            out[k_reg] = reduce(r, num_pos)
        return out

    @torch.no_grad()
    def detect(self, cls: Tensor, reg: Tensor, anchors: Tensor, counts: List[int], targets, padded_hw) -> List[Dict]:
        cfg = self.test_cfg
        b = cls.shape[0]
        img_hw, scale, orig_hw = image_metas(targets, b, padded_hw, cls.device)
        scores, anchor_idx, labels = PRE_NMS_SELECT[cfg.pre_nms_rank](cls.sigmoid(), counts, cfg.pre_nms_top_k)
        deltas = reg.gather(1, anchor_idx[..., None].expand(-1, -1, 4))
        boxes = self.coder.decode(anchors[anchor_idx], deltas, max_shape=img_hw[:, None, :])
        dets = nms_per_image(boxes, scores.float(), labels, cfg.score_thr, cfg.nms_iou, cfg.max_per_img,
                             self.num_classes, cfg.min_box_size)
        return rescale_to_original(dets, scale, orig_hw)
