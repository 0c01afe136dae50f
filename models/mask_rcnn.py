"""Mask R-CNN's mask branch: RoIAlign 14x14 on positive RoIs, a four-conv head upsampled to 28x28,
a per-class binary mask loss, and paste-back of the predicted masks into the original image.

A Mask R-CNN is a ``FasterRCNN`` whose ``RoIHeads`` carry a ``MaskBranch``; ``MaskRCNN`` is that class
under its own name (it checks the branch is there).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from models.faster_rcnn import FasterRCNN
from models.mask_head import MaskHead, mask_loss, mask_targets, paste_masks, paste_masks_torchvision

# how masks go back into the image: sampled at pixel centres inside the box (ours, see paste_masks), or
# torchvision's padded, grown and integer-snapped resize
PASTE = {"centres": paste_masks, "torchvision": paste_masks_torchvision}
from models.roi_heads import RoIFeatureExtractor


class MaskBranch(nn.Module):
    def __init__(self, extractor: RoIFeatureExtractor, head: MaskHead, mask_size: int = 28, mask_thr: float = 0.5,
                 paste: str = "centres"):
        super().__init__()
        if paste not in PASTE:
            raise ValueError(f"paste must be one of {sorted(PASTE)}, got {paste!r}")
        self.extractor, self.head = extractor, head
        self.mask_size, self.mask_thr, self.paste_rule = mask_size, mask_thr, paste

    def loss(self, feats: Sequence[Tensor], rois: Tensor, image_index: Tensor, gt_index: Tensor, labels: Tensor,
             gt_masks: List[Tensor]) -> Tensor:
        """Mask loss of positive RoIs [R, 4] (input pixels) of images ``image_index`` [R], matched to ground
        truth ``gt_index`` [R] of class ``labels`` [R]; ``gt_masks`` per image uint8 [M_i, h, w]."""
        logits = self.head(self.extractor(feats, rois, image_index))
        targets = mask_targets([m.to(rois.device) for m in gt_masks], rois, image_index, gt_index, self.mask_size)
        return mask_loss(logits, targets, labels)

    @torch.no_grad()
    def predict(self, feats: Sequence[Tensor], dets: List[Dict]) -> List[Tensor]:
        """Mask probabilities [D_i, 28, 28] of each detection's own class; detections in input pixels."""
        sizes = [len(d["boxes"]) for d in dets]
        boxes = torch.cat([d["boxes"] for d in dets])
        labels = torch.cat([d["labels"] for d in dets])
        if boxes.numel() == 0:
            return [boxes.new_zeros(0, self.mask_size, self.mask_size) for _ in dets]
        image_index = torch.repeat_interleave(torch.arange(len(dets), device=boxes.device),
                                              torch.tensor(sizes, device=boxes.device))
        logits = self.head(self.extractor(feats, boxes, image_index))
        own = logits[torch.arange(len(labels), device=labels.device), labels]
        return list(own.float().sigmoid().split(sizes))

    def paste(self, probs: Tensor, boxes: Tensor, image_hw: Tuple[int, int]) -> Tensor:
        """bool masks [D, H, W] from probabilities [D, 28, 28] and boxes [D, 4] in that image's pixels."""
        return PASTE[self.paste_rule](probs, boxes, tuple(image_hw), self.mask_thr)


class MaskRCNN(FasterRCNN):
    def __init__(self, backbone: nn.Module, rpn, roi_heads):
        if roi_heads.mask_branch is None:
            raise ValueError("MaskRCNN needs RoIHeads built with a mask_branch")
        super().__init__(backbone, rpn, roi_heads)
