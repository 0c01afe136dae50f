"""Second stage of Faster / Mask R-CNN: multi-level RoIAlign, a two-FC box head, proposal sampling,
softmax classification with class-specific box regression, and per-class NMS at test time.

Defaults follow mmdetection's Faster R-CNN R50-FPN 1x: RoIs mapped to P2-P5 by ``floor(log2(sqrt(wh) /
56))``, RoIAlign 7x7 (aligned, adaptive sampling), assignment 0.5 / 0.5 without low-quality matches,
ground truths added to the proposals, 512 RoIs per image with at most 25% positive, deltas normalised by
stds (0.1, 0.1, 0.2, 0.2), both losses averaged over the sampled RoIs of the batch. Background is the
last class index (``num_classes``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from losses.iou_balanced import iou_balanced_cross_entropy
from models.assigner import MaxIoUAssigner, pad_boxes
from models.box_coder import DeltaBoxCoder
from models.box_loss import BoxRegressionLoss
from models.postprocess import nms_per_image
from models.sampler import RandomSampler

# stands in for padding slots so that no zero-size box reaches RoIAlign or the coder
_DUMMY_BOX = (0.0, 0.0, 1.0, 1.0)


def map_roi_levels(boxes: Tensor, num_levels: int, finest_scale: float = 56.0) -> Tensor:
    """FPN level index (0 = finest) of each box [R, 4]: ``floor(log2(sqrt(w * h) / finest_scale))`` clamped
    to ``[0, num_levels - 1]``; with P2-P5 that sends boxes below 112 px to P2 and 448 px and above to P5."""
    scale = ((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)).sqrt()
    level = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return level.clamp(0, num_levels - 1).long()


class RoIFeatureExtractor(nn.Module):
    """RoIAlign of each box on its FPN level.

    Boxes are sorted by level and each level is pooled in one ``roi_align`` call; reading the per-level
    counts is one host synchronisation per call (RoI counts per level are data-dependent)."""

    def __init__(self, strides: Sequence[int], output_size: int = 7, sampling_ratio: int = 0,
                 finest_scale: float = 56.0):
        super().__init__()
        self.strides = [int(s) for s in strides]
        self.output_size, self.sampling_ratio, self.finest_scale = output_size, sampling_ratio, finest_scale

    def forward(self, feats: Sequence[Tensor], boxes: Tensor, image_index: Tensor) -> Tensor:
        """feats: at least ``len(strides)`` maps [B, C, H_l, W_l]; boxes [R, 4] input pixels; image_index [R].
        Returns [R, C, output_size, output_size]."""
        n = len(self.strides)
        level = map_roi_levels(boxes, n, self.finest_scale)
        rois = torch.cat([image_index[:, None].to(boxes), boxes], dim=1)
        o = self.output_size
        out = feats[0].new_zeros(boxes.shape[0], feats[0].shape[1], o, o)
        order = level.argsort()
        counts = torch.bincount(level, minlength=n).tolist()
        for lvl, idx in enumerate(order.split(counts)):
            if idx.numel():
                pooled = roi_align(feats[lvl], rois[idx], (o, o), spatial_scale=1.0 / self.strides[lvl],
                                   sampling_ratio=self.sampling_ratio, aligned=True)
                out[idx] = pooled.to(out.dtype)
        return out


class TwoFCBoxHead(nn.Module):
    """Flatten -> FC -> ReLU -> FC -> ReLU, then class logits [R, C + 1] and class-specific deltas [R, C * 4]."""

    def __init__(self, in_channels: int, roi_size: int, num_classes: int, fc_channels: int = 1024):
        super().__init__()
        self.num_classes = num_classes
        self.fc1 = nn.Linear(in_channels * roi_size * roi_size, fc_channels)
        self.fc2 = nn.Linear(fc_channels, fc_channels)
        self.cls = nn.Linear(fc_channels, num_classes + 1)
        self.reg = nn.Linear(fc_channels, num_classes * 4)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.normal_(self.reg.weight, std=0.001)
        nn.init.zeros_(self.cls.bias)
        nn.init.zeros_(self.reg.bias)

    def forward(self, x: Tensor):
        x = torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1)))))
        return self.cls(x), self.reg(x)


class RoIHeads(nn.Module):
    def __init__(
        self,
        extractor: RoIFeatureExtractor,
        box_head: TwoFCBoxHead,
        assigner: Optional[MaxIoUAssigner] = None,
        sampler: Optional[RandomSampler] = None,
        coder: Optional[DeltaBoxCoder] = None,
        reg_loss: str = "l1",
        smooth_l1_beta: float = 1.0,
        add_gt_as_proposals: bool = True,
        score_thr: float = 0.05,
        nms_iou: float = 0.5,
        max_per_img: int = 100,
        mask_branch: Optional[nn.Module] = None,
        iou_balanced_eta: Optional[float] = None,
        iou_balanced_lambda: Optional[float] = None,
        reg_loss_weight: float = 1.0,
    ):
        super().__init__()
        self.extractor, self.box_head, self.mask_branch = extractor, box_head, mask_branch
        self.num_classes = box_head.num_classes
        self.assigner = assigner or MaxIoUAssigner(0.5, 0.5, min_pos_iou=0.5, low_quality_match=False)
        self.sampler = sampler or RandomSampler(512, 0.25)
        self.coder = coder or DeltaBoxCoder(stds=(0.1, 0.1, 0.2, 0.2))
        self.box_loss = BoxRegressionLoss(reg_loss, self.coder, smooth_l1_beta, reg_loss_weight)
        self.add_gt_as_proposals = add_gt_as_proposals
        # IoU-balanced losses (Wu et al.): softmax CE of positives weighted by IoU^eta (sum kept), regression
        # by IoU^lambda, with the IoU of each positive's regressed box; None switches either off
        self.iou_balanced_eta, self.iou_balanced_lambda = iou_balanced_eta, iou_balanced_lambda
        self.test_cfg = dict(score_thr=score_thr, nms_iou=nms_iou, max_per_img=max_per_img)

    def _box_forward(self, feats: Sequence[Tensor], rois: Tensor):
        """rois [B, S, 4] -> class logits [B, S, C + 1] and deltas [B, S, C, 4]."""
        b, s = rois.shape[:2]
        image_index = torch.arange(b, device=rois.device).repeat_interleave(s)
        cls, reg = self.box_head(self.extractor(feats, rois.reshape(-1, 4), image_index))
        return cls.reshape(b, s, -1), reg.reshape(b, s, self.num_classes, 4)

    def forward(self, feats: Sequence[Tensor], proposals: Tensor, valid: Tensor, targets: List[Dict]) -> Dict[str, Tensor]:
        """Training losses ``loss_cls``, ``loss_bbox`` (and ``loss_mask``) for proposals [B, P, 4] / valid [B, P]."""
        gt_boxes, gt_valid, gt_labels = pad_boxes([t["boxes"].to(proposals) for t in targets],
                                                  [t["labels"] for t in targets])
        candidates, cand_valid = proposals, valid
        if self.add_gt_as_proposals:  # guarantees positives for every object early in training
            candidates = torch.cat([proposals, gt_boxes], dim=1)
            cand_valid = torch.cat([valid, gt_valid], dim=1)
        candidates = torch.where(cand_valid[..., None], candidates, candidates.new_tensor(_DUMMY_BOX))
        ignore = ignore_valid = None
        if any("ignore_boxes" in t for t in targets):
            ignore, ignore_valid, _ = pad_boxes([t.get("ignore_boxes", proposals.new_zeros(0, 4)).to(proposals)
                                                 for t in targets])
        assign = self.assigner(candidates, gt_boxes, gt_valid, ignore, ignore_valid)
        index, pos, neg = self.sampler.select(assign.gt_index, cand_valid)
        rois = candidates.gather(1, index[..., None].expand(-1, -1, 4))
        gt_index = assign.gt_index.gather(1, index).clamp(min=0)
        labels = torch.where(pos, gt_labels.gather(1, gt_index), torch.full_like(gt_index, self.num_classes))
        matched = torch.where(pos[..., None], gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4)), rois)
        sampled = pos | neg
        num = sampled.sum().clamp(min=1).float()

        cls, reg = self._box_forward(feats, rois)
        # deltas of each RoI's own class (background RoIs read class 0; their loss is masked out)
        own = reg.gather(2, labels.clamp(max=self.num_classes - 1)[..., None, None].expand(-1, -1, 1, 4)).squeeze(2)
        ious = None
        if self.iou_balanced_eta is not None or self.iou_balanced_lambda is not None:
            ious = self.box_loss.regressed_iou(own, rois, matched, pos)
        if self.iou_balanced_eta is not None:
            loss_cls = iou_balanced_cross_entropy(cls.flatten(0, 1), labels.flatten(), ious.flatten(),
                                                  eta=self.iou_balanced_eta)
        else:
            loss_cls = nn.functional.cross_entropy(cls.float().flatten(0, 1), labels.flatten(), reduction="none")
        loss_box = self.box_loss(own, rois, matched)
        if self.iou_balanced_lambda is not None:
            loss_box = loss_box * ious.pow(self.iou_balanced_lambda)
        losses = {"loss_cls": (loss_cls * sampled.flatten()).sum() / num, "loss_bbox": (loss_box * pos).sum() / num}
        if self.mask_branch is not None:
            b_idx, s_idx = pos.nonzero(as_tuple=True)  # positives only: data-dependent count, one sync
            losses["loss_mask"] = self.mask_branch.loss(
                feats, rois[b_idx, s_idx], b_idx, gt_index[b_idx, s_idx], labels[b_idx, s_idx],
                [t["masks"] for t in targets])
        return losses

    @torch.no_grad()
    def detect(self, feats: Sequence[Tensor], proposals: Tensor, valid: Tensor, img_hw: Tensor) -> List[Dict]:
        """Per-image detections in input pixels: ``boxes`` [D, 4], ``scores`` [D], ``labels`` [D]."""
        proposals = torch.where(valid[..., None], proposals, proposals.new_tensor(_DUMMY_BOX))
        cls, reg = self._box_forward(feats, proposals)
        b, p, c = reg.shape[:3]
        scores = cls.float().softmax(-1)[..., :c] * valid[..., None]
        boxes = self.coder.decode(proposals[:, :, None, :], reg, max_shape=img_hw[:, None, None, :])
        labels = torch.arange(c, device=cls.device).expand(b, p, c)
        cfg = self.test_cfg
        return nms_per_image(boxes.reshape(b, p * c, 4), scores.reshape(b, p * c), labels.reshape(b, p * c),
                             cfg["score_thr"], cfg["nms_iou"], cfg["max_per_img"], c)
