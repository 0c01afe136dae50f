"""One box-regression loss for every head: delta losses on encoded targets, IoU losses on decoded boxes."""
from __future__ import annotations

from torch import Tensor

import torch

from losses import REGRESSION_LOSSES, box_iou_aligned, regression_loss_is_box_based
from models.box_coder import DeltaBoxCoder


class BoxRegressionLoss:
    """Per-box regression loss of predicted deltas against ground-truth boxes.

    ``l1`` / ``smooth_l1`` compare the deltas with ``coder.encode(refs, gt)`` (the coder's means/stds
    apply); ``iou`` ... ``ciou`` compare ``coder.decode(refs, deltas)`` with the ground truth
    (mmdetection's ``reg_decoded_bbox``). Inputs broadcast over leading dimensions: ``deltas`` [..., 4],
    ``refs`` (anchors or RoIs) and ``gt`` [..., 4] in input-image pixels; the result is [...] float32.
    Every box must be valid (positive width and height) so that no NaN can leak through a zero weight.
    ``weight`` is a constant factor that is part of the loss's definition (mmdetection's ``loss_weight``,
    e.g. the ALWA configs' SmoothL1 x 1.1 in the RoI head); loss-weighting strategies act on top of it.
    """

    def __init__(self, name: str, coder: DeltaBoxCoder, smooth_l1_beta: float = 1.0, weight: float = 1.0):
        if name not in REGRESSION_LOSSES:
            raise ValueError(f"unknown regression loss '{name}', choose from {sorted(REGRESSION_LOSSES)}")
        if not weight >= 0:
            raise ValueError(f"the regression loss weight must be >= 0, got {weight}")
        self.name, self.coder, self.beta, self.weight = name, coder, smooth_l1_beta, float(weight)
        self.fn = REGRESSION_LOSSES[name]
        self.box_based = regression_loss_is_box_based(name)

    def __call__(self, deltas: Tensor, refs: Tensor, gt: Tensor) -> Tensor:
        kwargs = {"beta": self.beta} if self.name == "smooth_l1" else {}
        if self.box_based:
            pred, target = self.coder.decode(refs, deltas), gt.float().expand_as(deltas)
        else:
            pred, target = deltas.float(), self.coder.encode(refs, gt).expand_as(deltas)
        shape = deltas.shape[:-1]
        loss = self.fn(pred.reshape(-1, 4), target.reshape(-1, 4), **kwargs).reshape(shape)
        return loss * self.weight if self.weight != 1.0 else loss

    @torch.no_grad()
    def regressed_iou(self, deltas: Tensor, refs: Tensor, gt: Tensor, pos: Tensor) -> Tensor:
        """Detached IoU [...] of each positive's decoded prediction with its ground truth, 0 elsewhere:
        the ``u`` of the IoU-balanced losses. Shapes as in ``__call__``; ``pos`` [...] bool."""
        boxes = self.coder.decode(refs, deltas.detach())
        iou = box_iou_aligned(boxes.reshape(-1, 4), gt.float().expand_as(boxes).reshape(-1, 4))
        return iou.view(pos.shape).clamp(0, 1) * pos
