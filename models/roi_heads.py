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

from models.assigner import MaxIoUAssigner
from models.box_coder import DeltaBoxCoder
from models.box_loss import BoxRegressionLoss
from models.contract import LossContract
from models.head_loss import DUMMY_BOX, RoIHeadLoss
from models.postprocess import DetectConfig, nms_per_image
from models.sampler import RandomSampler


def map_roi_levels(boxes: Tensor, num_levels: int, finest_scale: float = 56.0, rule: str = "mmdet") -> Tensor:
    """FPN level index (0 = finest) of each box [R, 4]: ``floor(log2(sqrt(w * h) / finest_scale))`` clamped
    to ``[0, num_levels - 1]``; with P2-P5 that sends boxes below 112 px to P2 and 448 px and above to P5.

    ``rule`` places the 1e-6 that decides boxes on a boundary: ``"mmdet"`` inside the log
    (``log2(s / 56 + 1e-6)``), ``"torchvision"`` outside, on the canonical level (``floor(4 + log2(s / 224)
    + 1e-6) - 2``, its ``LevelMapper``; the box area is not clamped there either)."""
    if rule == "torchvision":
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        level = torch.floor(4 + torch.log2(area.sqrt() / (finest_scale * 4)) + torch.tensor(1e-6, dtype=area.dtype)) - 2
    else:
        scale = ((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)).sqrt()
        level = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return level.clamp(0, num_levels - 1).long()


class RoIFeatureExtractor(nn.Module):
    """RoIAlign of each box on its FPN level (``aligned=True``: pixel centres at +0.5, mmdetection and
    detectron2; ``False``: torchvision's detectors, with ``sampling_ratio`` 2; ``level_rule`` see
    :func:`map_roi_levels`).

    Boxes are sorted by level and each level is pooled in one ``roi_align`` call; reading the per-level
    counts is one host synchronisation per call (RoI counts per level are data-dependent)."""

    def __init__(self, strides: Sequence[int], output_size: int = 7, sampling_ratio: int = 0,
                 finest_scale: float = 56.0, aligned: bool = True, level_rule: str = "mmdet"):
        super().__init__()
        if level_rule not in ("mmdet", "torchvision"):
            raise ValueError(f"level_rule must be 'mmdet' or 'torchvision', got {level_rule!r}")
        self.strides = [int(s) for s in strides]
        self.output_size, self.sampling_ratio, self.finest_scale = output_size, sampling_ratio, finest_scale
        self.aligned, self.level_rule = aligned, level_rule

    def forward(self, feats: Sequence[Tensor], boxes: Tensor, image_index: Tensor) -> Tensor:
        """feats: at least ``len(strides)`` maps [B, C, H_l, W_l]; boxes [R, 4] input pixels; image_index [R].
        Returns [R, C, output_size, output_size]."""
        n = len(self.strides)
        level = map_roi_levels(boxes, n, self.finest_scale, self.level_rule)
        rois = torch.cat([image_index[:, None].to(boxes), boxes], dim=1)
        o = self.output_size
        out = feats[0].new_zeros(boxes.shape[0], feats[0].shape[1], o, o)
        order = level.argsort()
        counts = torch.bincount(level, minlength=n).tolist()
        for lvl, idx in enumerate(order.split(counts)):
            if idx.numel():
                pooled = roi_align(feats[lvl], rois[idx], (o, o), spatial_scale=1.0 / self.strides[lvl],
                                   sampling_ratio=self.sampling_ratio, aligned=self.aligned)
                out[idx] = pooled.to(out.dtype)
        return out


class _BoxPredictor(nn.Module):
    """What every box head ends with: class logits [R, C + 1] (background last) and class-specific deltas
    [R, C * 4] from ``fc_channels`` features; made last, after the head's own layers (initialisation order)."""

    def _add_predictors(self, num_classes: int, fc_channels: int) -> None:
        self.num_classes = num_classes
        self.cls = nn.Linear(fc_channels, num_classes + 1)
        self.reg = nn.Linear(fc_channels, num_classes * 4)

    def _init_predictors(self) -> None:
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.normal_(self.reg.weight, std=0.001)
        nn.init.zeros_(self.cls.bias)
        nn.init.zeros_(self.reg.bias)


def _xavier(fcs) -> None:
    for fc in fcs:
        nn.init.xavier_uniform_(fc.weight)
        nn.init.zeros_(fc.bias)


class TwoFCBoxHead(_BoxPredictor):
    """Flatten -> FC -> ReLU -> FC -> ReLU, then class logits [R, C + 1] and class-specific deltas [R, C * 4]."""

    def __init__(self, in_channels: int, roi_size: int, num_classes: int, fc_channels: int = 1024):
        super().__init__()
        self.fc1 = nn.Linear(in_channels * roi_size * roi_size, fc_channels)
        self.fc2 = nn.Linear(fc_channels, fc_channels)
        self._add_predictors(num_classes, fc_channels)
        _xavier((self.fc1, self.fc2))
        self._init_predictors()

    def forward(self, x: Tensor):
        x = torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1)))))
        return self.cls(x), self.reg(x)


class ConvFCBoxHead(_BoxPredictor):
    """``num_convs`` 3x3 convs (each with ``norm``: ``"bn"``, ``"gn"`` or ``"none"``, then ReLU), flatten,
    ``num_fcs`` FC + ReLU, then the class logits and deltas (mmdetection's ``Shared4Conv1FCBBoxHead``;
    torchvision's v2 ``FastRCNNConvFCHead`` with BN)."""

    def __init__(self, in_channels: int, roi_size: int, num_classes: int, fc_channels: int = 1024,
                 num_convs: int = 4, conv_channels: int = 256, num_fcs: int = 1, norm: str = "bn"):
        if norm not in ("none", "bn", "gn"):
            raise ValueError(f"unknown box head norm '{norm}', use 'none', 'bn' or 'gn'")
        if num_fcs < 1 or num_convs < 0:
            raise ValueError(f"the box head needs num_fcs >= 1 and num_convs >= 0, got {num_fcs} and {num_convs}")
        super().__init__()
        layers: List[nn.Module] = []
        for i in range(num_convs):
            layers.append(nn.Conv2d(in_channels if i == 0 else conv_channels, conv_channels, 3, padding=1,
                                    bias=norm == "none"))
            if norm != "none":
                layers.append(nn.BatchNorm2d(conv_channels) if norm == "bn" else nn.GroupNorm(32, conv_channels))
            layers.append(nn.ReLU(inplace=True))
        self.convs = nn.Sequential(*layers)
        flat = (conv_channels if num_convs else in_channels) * roi_size * roi_size
        self.fcs = nn.ModuleList(nn.Linear(flat if i == 0 else fc_channels, fc_channels) for i in range(num_fcs))
        self._add_predictors(num_classes, fc_channels)
        for m in self.convs.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        _xavier(self.fcs)
        self._init_predictors()

    def forward(self, x: Tensor):
        x = self.convs(x).flatten(1)
        for fc in self.fcs:
            x = torch.relu(fc(x))
        return self.cls(x), self.reg(x)


def default_roi_loss(box_loss: str = "l1", smooth_l1_beta: float = 1.0) -> RoIHeadLoss:
    """mmdetection's RoI head loss: max-IoU 0.5 / 0.5 without low-quality matches, ground truths added to
    the proposals, 512 RoIs per image with at most 25% positive, deltas normalised by (0.1, 0.1, 0.2, 0.2)."""
    return RoIHeadLoss(MaxIoUAssigner(0.5, 0.5, min_pos_iou=0.5, low_quality_match=False), RandomSampler(512, 0.25),
                       BoxRegressionLoss(box_loss, DeltaBoxCoder(stds=(0.1, 0.1, 0.2, 0.2)), smooth_l1_beta))


class RoIHeads(nn.Module):
    """``RoIHeads(extractor, box_head, loss, test_cfg, mask_branch)``: RoIAlign features of sampled RoIs
    through the box head into ``loss`` (a :class:`RoIHeadLoss`, :func:`default_roi_loss` when omitted) in
    training; class-specific decoding and per-class NMS (``test_cfg``) at test time; the optional
    ``mask_branch`` (Mask R-CNN) adds ``loss_mask`` and masks."""

    def __init__(self, extractor: RoIFeatureExtractor, box_head: TwoFCBoxHead, loss: Optional[RoIHeadLoss] = None,
                 test_cfg: Optional[DetectConfig] = None, mask_branch: Optional[nn.Module] = None):
        super().__init__()
        self.extractor, self.box_head, self.mask_branch = extractor, box_head, mask_branch
        self.num_classes = box_head.num_classes
        self.loss = loss or default_roi_loss()
        self.coder = self.loss.box_loss.coder
        self.test_cfg = test_cfg or DetectConfig()

    @property
    def loss_contract(self) -> LossContract:
        return self.contract_for(self.mask_branch is not None)

    @staticmethod
    def contract_for(with_masks: bool) -> LossContract:
        keys = ("loss_cls", "loss_bbox") + (("loss_mask",) if with_masks else ())
        return LossContract(keys, {"cls": ("loss_cls",), "reg": ("loss_bbox",)})

    def _box_forward(self, feats: Sequence[Tensor], rois: Tensor):
        """rois [B, S, 4] -> class logits [B, S, C + 1] and deltas [B, S, C, 4]."""
        b, s = rois.shape[:2]
        image_index = torch.arange(b, device=rois.device).repeat_interleave(s)
        cls, reg = self.box_head(self.extractor(feats, rois.reshape(-1, 4), image_index))
        return cls.reshape(b, s, -1), reg.reshape(b, s, self.num_classes, 4)

    def forward(self, feats: Sequence[Tensor], proposals: Tensor, valid: Tensor, targets: List[Dict]) -> Dict[str, Tensor]:
        """Training losses ``loss_cls``, ``loss_bbox`` (and ``loss_mask``) for proposals [B, P, 4] / valid [B, P]."""
        sample = self.loss.sample(proposals, valid, targets, self.num_classes)
        cls, reg = self._box_forward(feats, sample.rois)
        losses = self.loss(cls, reg, sample)
        if self.mask_branch is not None:
            b_idx, s_idx = sample.pos.nonzero(as_tuple=True)  # positives only: data-dependent count, one sync
            losses["loss_mask"] = self.mask_branch.loss(
                feats, sample.rois[b_idx, s_idx], b_idx, sample.gt_index[b_idx, s_idx], sample.labels[b_idx, s_idx],
                [t["masks"] for t in targets])
        return losses

    @torch.no_grad()
    def detect(self, feats: Sequence[Tensor], proposals: Tensor, valid: Tensor, img_hw: Tensor) -> List[Dict]:
        """Per-image detections in input pixels: ``boxes`` [D, 4], ``scores`` [D], ``labels`` [D]."""
        proposals = torch.where(valid[..., None], proposals, proposals.new_tensor(DUMMY_BOX))
        cls, reg = self._box_forward(feats, proposals)
        b, p, c = reg.shape[:3]
        scores = cls.float().softmax(-1)[..., :c] * valid[..., None]
        boxes = self.coder.decode(proposals[:, :, None, :], reg, max_shape=img_hw[:, None, None, :])
        labels = torch.arange(c, device=cls.device).expand(b, p, c)
        cfg = self.test_cfg
        return nms_per_image(boxes.reshape(b, p * c, 4), scores.reshape(b, p * c), labels.reshape(b, p * c),
                             cfg.score_thr, cfg.nms_iou, cfg.max_per_img, c, cfg.min_box_size)
