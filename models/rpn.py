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

from models.anchors import AnchorGenerator, flatten_level_outputs, level_index
from models.assigner import MaxIoUAssigner
from models.box_coder import DeltaBoxCoder
from models.box_loss import BoxRegressionLoss
from models.contract import LossContract
from models.head_loss import BCE, DenseHeadLoss
from models.postprocess import nms_padded, select_topk_per_level
from models.sampler import RandomSampler


@dataclass
class ProposalConfig:
    """Proposal settings; the defaults are the test-time ones and :meth:`training` the training ones. The single
    definition of these defaults: the config's ``model.rpn.*_proposals`` use it."""

    pre_nms_top_k: int = 1000  # per FPN level and image
    post_nms_top_k: int = 1000  # per image
    nms_iou: float = 0.7
    min_size: float = 0.0  # proposals narrower or lower than this (input pixels) are dropped

    @classmethod
    def training(cls) -> ProposalConfig:
        """The training-time defaults: the top 2000 anchors of each level, the rest as at test time."""
        return cls(pre_nms_top_k=2000)


class RPNHead(nn.Module):
    """``num_convs`` 3x3 conv + ReLU shared over levels (torchvision's v2: 2), then 1x1 objectness
    [B, A, H, W] and deltas [B, A * 4, H, W]. The first conv is ``conv``, any further ones ``extra_convs``."""

    def __init__(self, in_channels: int, num_anchors: int, feat_channels: int = 256, num_convs: int = 1):
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"the RPN head needs at least one conv, got num_convs={num_convs}")
        self.conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.extra_convs = nn.ModuleList(nn.Conv2d(feat_channels, feat_channels, 3, padding=1)
                                         for _ in range(num_convs - 1))
        self.obj = nn.Conv2d(feat_channels, num_anchors, 1)
        self.reg = nn.Conv2d(feat_channels, num_anchors * 4, 1)
        for m in (self.conv, *self.extra_convs, self.obj, self.reg):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    def _hidden(self, f: Tensor) -> Tensor:
        h = torch.relu(self.conv(f))
        for conv in self.extra_convs:
            h = torch.relu(conv(h))
        return h

    def forward(self, feats: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        hidden = [self._hidden(f) for f in feats]
        return [self.obj(h) for h in hidden], [self.reg(h) for h in hidden]


def default_rpn_loss(box_loss: str = "l1", smooth_l1_beta: float = 1.0 / 9.0) -> DenseHeadLoss:
    """mmdetection's RPN loss: max-IoU 0.7 / 0.3 with low-quality matches (min IoU 0.3), 256 anchors
    sampled per image with at most half positive, objectness BCE, ``box_loss`` on deltas (means 0, stds 1)."""
    return DenseHeadLoss(MaxIoUAssigner(0.7, 0.3, min_pos_iou=0.3, low_quality_match=True),
                         BoxRegressionLoss(box_loss, DeltaBoxCoder(), smooth_l1_beta), BCE, RandomSampler(256, 0.5))


class RegionProposalNetwork(nn.Module):
    """``RegionProposalNetwork(head, anchor_generator, loss, train_proposals, test_proposals)``: objectness
    and deltas on the anchors, their losses through ``loss`` (a :class:`DenseHeadLoss` with a sampler and
    BCE, :func:`default_rpn_loss` when omitted), and proposals made with the train or test settings."""

    loss_keys = ("loss_rpn_cls", "loss_rpn_bbox")

    def __init__(self, head: RPNHead, anchor_generator: AnchorGenerator, loss: Optional[DenseHeadLoss] = None,
                 train_proposals: Optional[ProposalConfig] = None, test_proposals: Optional[ProposalConfig] = None):
        super().__init__()
        self.head, self.anchor_generator = head, anchor_generator
        self.loss = loss or default_rpn_loss()
        if self.loss.sampler is None:
            raise ValueError("the RPN's loss needs a sampler (the sampled anchors are its normaliser)")
        self.coder = self.loss.box_loss.coder
        self.train_proposals = train_proposals or ProposalConfig.training()
        self.test_proposals = test_proposals or ProposalConfig()

    @property
    def loss_contract(self) -> LossContract:
        return self.contract()

    @classmethod
    def contract(cls) -> LossContract:
        return LossContract(cls.loss_keys, {"cls": cls.loss_keys[:1], "reg": cls.loss_keys[1:]})

    def forward(self, feats: Sequence[Tensor], img_hw: Tensor, targets: Optional[List[Dict]] = None,
                image_size: Optional[Tuple[int, int]] = None):
        """Proposals for a batch, and the RPN losses in training mode.

        Args:
            feats: FPN maps, one per anchor stride. img_hw: [B, 2] valid (h, w) of each image.
            image_size: the padded batch's (H, W), for anchor generators that infer strides from it.
            targets: per image ``boxes`` [M, 4] (input pixels), optional ``ignore_boxes`` [R, 4].
        Returns:
            proposals [B, P, 4] (input pixels, detached), valid [B, P] bool, and a loss dict
            (``loss_rpn_cls``, ``loss_rpn_bbox``; empty in eval mode).
        """
        obj_maps, reg_maps = self.head(feats)
        anchors, counts = self.anchor_generator(feats, image_size)
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
        """Objectness BCE and box loss of the sampled anchors, both divided by their number; ``counts``
        (anchors per level) matter only for the per-level IoU-balanced normaliser."""
        cls, box, num = self.loss(obj[..., None], reg, anchors, counts, targets)
        return {"loss_rpn_cls": self.loss.reduce(cls, num), "loss_rpn_bbox": self.loss.reduce(box, num)}

    def proposals(self, obj: Tensor, reg: Tensor, anchors: Tensor, counts: List[int], img_hw: Tensor,
                  cfg: ProposalConfig) -> Tuple[Tensor, Tensor]:
        """Top-k anchors per level, decoded and clipped, NMS inside each (image, level), top per image."""
        # ranked on logits: sigmoid scores of confident anchors tie in float32 (thousands of them in one
        # image), which would make the choice among them arbitrary; NMS then sees the probabilities
        logits, idx, _ = select_topk_per_level(obj[..., None], counts, cfg.pre_nms_top_k)
        scores = logits.sigmoid()
        level = level_index([min(cfg.pre_nms_top_k, n) for n in counts], obj.device)
        deltas = reg.gather(1, idx[..., None].expand(-1, -1, 4))
        boxes = self.coder.decode(anchors[idx], deltas, max_shape=img_hw[:, None, :])
        wh = boxes[..., 2:] - boxes[..., :2]
        # zero-size boxes (e.g. anchors clipped away entirely) can never be matched: drop them
        valid = (wh > max(cfg.min_size, 1e-3)).all(-1) & torch.isfinite(scores)
        out_boxes, _, out_valid = nms_padded(boxes, scores, level.expand_as(scores), valid, cfg.nms_iou,
                                             cfg.post_nms_top_k, len(counts))
        return out_boxes, out_valid
