"""Faster R-CNN: backbone + FPN, region proposal network, RoI heads (and, for Mask R-CNN, a mask branch
inside the RoI heads).

``model(images [B, 3, H, W], targets)`` in training mode returns raw, unweighted losses
``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_cls``, ``loss_bbox`` (plus ``loss_mask`` with a mask branch).
In eval mode it returns one dict per image with ``boxes`` (x1, y1, x2, y2 in original image pixels, using
``targets[i]["scale_factor"]`` and ``orig_size`` when given), ``scores``, 0-based ``labels`` and, with a
mask branch, ``masks`` bool [D, H0, W0] in original image pixels.

Targets: per image ``boxes`` [M, 4] (input pixels), ``labels`` [M] (0-based), optional ``ignore_boxes``
[R, 4] (e.g. COCO crowd regions, never positives) and, for Mask R-CNN, ``masks`` uint8 [M, h, w].
"""
from __future__ import annotations

from typing import Dict, List, Optional

from torch import Tensor, nn

from models.contract import LossContract, merge_contracts
from models.postprocess import image_metas, rescale_to_original
from models.roi_heads import RoIHeads
from models.rpn import RegionProposalNetwork


class FasterRCNN(nn.Module):
    def __init__(self, backbone: nn.Module, rpn: RegionProposalNetwork, roi_heads: RoIHeads):
        super().__init__()
        self.backbone, self.rpn, self.roi_heads = backbone, rpn, roi_heads
        self.num_classes = roi_heads.num_classes

    def class_layout(self) -> Dict[str, tuple]:
        """Class-dependent tensors: name -> ``(outer, inner, background)`` (see ``RetinaNet.class_layout``): the
        box classifier (background last), the class-specific box regression (4 rows per class), the mask logits."""
        return self.class_layout_for(self.roi_heads.mask_branch is not None)

    @staticmethod
    def class_layout_for(with_masks: bool) -> Dict[str, tuple]:
        """``class_layout`` of a Faster (``with_masks``: Mask) R-CNN, without building it."""
        layout = {}
        for p in ("weight", "bias"):
            layout[f"roi_heads.box_head.cls.{p}"] = (1, 1, True)
            layout[f"roi_heads.box_head.reg.{p}"] = (1, 4, False)
            if with_masks:
                layout[f"roi_heads.mask_branch.head.predictor.{p}"] = (1, 1, False)
        return layout

    @property
    def loss_contract(self) -> LossContract:
        return merge_contracts({"rpn": self.rpn.loss_contract, "roi": self.roi_heads.loss_contract})

    @staticmethod
    def contract_for(with_masks: bool) -> LossContract:
        """The RPN's pair, then the RoI head's losses (``loss_mask`` last with a mask branch); groups ``rpn``,
        ``roi`` and each stage's own (``rpn_cls``, ``roi_reg``, ...)."""
        return merge_contracts({"rpn": RegionProposalNetwork.contract(), "roi": RoIHeads.contract_for(with_masks)})

    def forward(self, images: Tensor, targets: Optional[List[Dict]] = None):
        if self.training and targets is None:
            raise ValueError(f"{type(self).__name__} in training mode needs targets")
        feats = self.backbone(images)
        img_hw, scale, orig_hw = image_metas(targets, images.shape[0], tuple(images.shape[-2:]), images.device)
        proposals, valid, losses = self.rpn(feats, img_hw, targets, tuple(images.shape[-2:]))
        if self.training:
            losses.update(self.roi_heads(feats, proposals, valid, targets))
            return losses
        dets = self.roi_heads.detect(feats, proposals, valid, img_hw)
        mask_branch = self.roi_heads.mask_branch
        probs = mask_branch.predict(feats, dets) if mask_branch is not None else None
        dets = rescale_to_original(dets, scale, orig_hw)
        if probs is not None:
            for det, p, hw in zip(dets, probs, orig_hw.long().tolist()):
                det["masks"] = mask_branch.paste(p, det["boxes"], hw)
        return dets
