"""RoI heads: FPN level mapping, multi-level RoIAlign, sampling, losses, class-specific detection."""
import math

import pytest
import torch
from torch import nn

from models.box_coder import DeltaBoxCoder
from models.head_loss import IoUBalanced
from models.postprocess import DetectConfig
from models.roi_heads import RoIFeatureExtractor, RoIHeads, TwoFCBoxHead, default_roi_loss, map_roi_levels
from models.sampler import RandomSampler


def square(side, x=0.0):
    return [x, 0.0, x + side, side]


@pytest.mark.parametrize("side,level", [(10, 0), (111.9, 0), (112, 1), (223.9, 1), (224, 2), (447, 2), (448, 3), (2000, 3)])
def test_fpn_level_mapping(side, level):
    # mmdetection's rule with finest_scale 56: < 112 -> P2, [112, 224) -> P3, [224, 448) -> P4, >= 448 -> P5
    assert map_roi_levels(torch.tensor([square(side)]), 4).item() == level


def test_level_mapping_uses_area_not_width():
    # 56 x 224: sqrt(area) = 112 -> P3 although the short side alone would say P2
    assert map_roi_levels(torch.tensor([[0.0, 0.0, 56.0, 224.0]]), 4).item() == 1


def test_extractor_pools_each_roi_from_its_level():
    # level l is filled with the value 10 * (l + 1) + image index, so every pooled value tells its source
    strides = [4, 8, 16, 32]
    feats = [torch.full((2, 3, 512 // s, 512 // s), 10.0 * (lvl + 1)) + torch.arange(2.0)[:, None, None, None]
             for lvl, s in enumerate(strides)]
    boxes = torch.tensor([square(50), square(150), square(300), square(500)] * 2)
    image = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    out = RoIFeatureExtractor(strides, output_size=7, sampling_ratio=2)(feats, boxes, image)
    assert out.shape == (8, 3, 7, 7)
    expected = torch.tensor([10.0, 20, 30, 40, 11, 21, 31, 41])
    assert torch.allclose(out.mean(dim=(1, 2, 3)), expected)


class FixedBoxHead(nn.Module):
    """A box head whose outputs are set by the test: cls [S, C + 1] and deltas [S, C * 4] per image."""

    def __init__(self, cls, reg, num_classes):
        super().__init__()
        self.num_classes, self.cls, self.reg = num_classes, cls, reg
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, x):
        n = x.shape[0]
        return self.cls.repeat(n // self.cls.shape[0], 1) * self.weight, self.reg.repeat(n // self.reg.shape[0], 1) * self.weight


def fixed_heads(cls, reg, num_classes=2, sampler=None, reg_loss="l1", coder=None, iou_balanced_eta=None,
                iou_balanced_lambda=None, add_gt_as_proposals=True, score_thr=0.05, nms_iou=0.5, max_per_img=100):
    loss = default_roi_loss(reg_loss)
    loss.sampler = sampler or loss.sampler
    loss.box_loss.coder = coder or loss.box_loss.coder
    loss.iou_balanced = IoUBalanced(iou_balanced_eta, iou_balanced_lambda, "batch")
    loss.add_gt_as_proposals = add_gt_as_proposals
    test = DetectConfig(score_thr, nms_iou, max_per_img)
    return RoIHeads(RoIFeatureExtractor([4], 2, 1), FixedBoxHead(torch.tensor(cls), torch.tensor(reg), num_classes), loss, test)


FEATS = [torch.zeros(1, 1, 16, 16)]


def test_detect_decodes_class_specific_boxes_and_applies_per_class_nms():
    # proposal 0 is class 1 (p = 0.7), proposal 1 is class 0 (p = 0.6); class 1's deltas move proposal 0 by
    # half a width (dx = 0.05 / std 0.1 -> 0.5 after de-normalisation)
    logits = [[math.log(0.2), math.log(0.7), math.log(0.1)], [math.log(0.6), math.log(0.3), math.log(0.1)]]
    deltas = [[0.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0], [0.0] * 8]
    heads = fixed_heads(logits, deltas, score_thr=0.25, nms_iou=0.5, max_per_img=10).eval()
    props = torch.tensor([[[8.0, 8.0, 24.0, 24.0], [30.0, 30.0, 50.0, 50.0]]])
    dets = heads.detect(FEATS, props, torch.ones(1, 2, dtype=torch.bool), torch.tensor([[64.0, 64.0]]))[0]
    # candidates above 0.25: (p0, class 1, 0.7), (p1, class 0, 0.6), (p1, class 1, 0.3)
    assert dets["labels"].tolist() == [1, 0, 1]
    assert torch.allclose(dets["scores"], torch.tensor([0.7, 0.6, 0.3]), atol=1e-6)
    assert torch.allclose(dets["boxes"][0], torch.tensor([16.0, 8.0, 32.0, 24.0]))  # shifted by 8 px
    assert torch.allclose(dets["boxes"][1], props[0, 1]) and torch.allclose(dets["boxes"][2], props[0, 1])


def test_detect_ignores_padding_proposals():
    logits = [[5.0, 0.0, 0.0]]
    heads = fixed_heads(logits, [[0.0] * 8]).eval()
    props = torch.tensor([[[8.0, 8.0, 24.0, 24.0], [0.0, 0.0, 0.0, 0.0]]])
    dets = heads.detect(FEATS, props, torch.tensor([[True, False]]), torch.tensor([[64.0, 64.0]]))[0]
    assert dets["labels"].tolist() == [0]


def test_training_losses_hand_computed():
    # all logits 0 over 3 outputs: CE = log 3 for every sampled RoI; deltas 0
    heads = fixed_heads([[0.0, 0.0, 0.0]], [[0.0] * 8], sampler=RandomSampler(4, 0.5))
    gt = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    # proposals: an exact copy of gt shifted by 2 px in x (IoU 18*20 / (22*20) = 0.818), and two far ones
    props = torch.tensor([[[12.0, 10.0, 32.0, 30.0], [40.0, 40.0, 60.0, 60.0], [0.0, 40.0, 8.0, 60.0]]])
    losses = heads(FEATS, props, torch.ones(1, 3, dtype=torch.bool), [{"boxes": gt, "labels": torch.tensor([1])}])
    # sampled: 2 positives (the gt itself, added as a proposal, and the shifted copy) + 2 of the negatives
    assert abs(losses["loss_cls"].item() - math.log(3.0)) < 1e-6
    # L1 of the shifted copy: dx = -2 / 20 / 0.1 = -1 -> |.| = 1; the gt itself has 0; divided by 4 sampled
    assert abs(losses["loss_bbox"].item() - 1.0 / 4) < 1e-5


def test_training_with_empty_image_is_finite_and_background_only():
    heads = fixed_heads([[0.0, 0.0, 0.0]], [[0.0] * 8], sampler=RandomSampler(8, 0.25))
    props = torch.tensor([[[12.0, 10.0, 32.0, 30.0], [40.0, 40.0, 60.0, 60.0]]])
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    losses = heads(FEATS, props, torch.tensor([[True, False]]), [empty])
    assert losses["loss_bbox"].item() == 0.0 and abs(losses["loss_cls"].item() - math.log(3.0)) < 1e-6
    sum(losses.values()).backward()
    assert torch.isfinite(heads.box_head.weight.grad)


def test_crowd_region_proposals_are_not_positives():
    # the only annotation is a crowd region: proposals on it may be ignored but never positive
    heads = fixed_heads([[0.0, 0.0, 0.0]], [[0.0] * 8], sampler=RandomSampler(8, 0.5))
    heads.loss.assigner.ignore_iof_thr = 0.5
    props = torch.tensor([[[10.0, 10.0, 30.0, 30.0], [40.0, 40.0, 60.0, 60.0]]])
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
              "ignore_boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]])}
    losses = heads(FEATS, props, torch.ones(1, 2, dtype=torch.bool), [target])
    assert losses["loss_bbox"].item() == 0.0
    # only the far proposal is sampled (as background): CE log 3 over one RoI
    assert abs(losses["loss_cls"].item() - math.log(3.0)) < 1e-6


def test_two_fc_head_shapes_and_init():
    head = TwoFCBoxHead(4, 7, num_classes=3, fc_channels=32)
    cls, reg = head(torch.randn(5, 4, 7, 7))
    assert cls.shape == (5, 4) and reg.shape == (5, 12)
    assert head.reg.weight.std().item() < 0.002 and head.cls.weight.std().item() < 0.02


def test_iou_loss_regresses_decoded_boxes():
    # GIoU of a perfect class-1 prediction is 0 even though its deltas are not
    heads = fixed_heads([[0.0, 0.0, 0.0]], [[0.0] * 8], sampler=RandomSampler(4, 0.5), reg_loss="giou",
                        coder=DeltaBoxCoder(stds=(0.1, 0.1, 0.2, 0.2)))
    gt = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    props = torch.tensor([[[10.0, 10.0, 30.0, 30.0]]])
    losses = heads(FEATS, props, torch.ones(1, 1, dtype=torch.bool), [{"boxes": gt, "labels": torch.tensor([1])}])
    assert abs(losses["loss_bbox"].item()) < 1e-6


def test_iou_balanced_roi_losses():
    # two positives with different IoUs after regression: the balanced CE keeps the summed positive loss
    # (all logits 0: every RoI's CE is log 3, so the sum over positives is unchanged and so is the mean)
    gt = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    props = torch.tensor([[[12.0, 10.0, 32.0, 30.0], [40.0, 40.0, 60.0, 60.0]]])
    target = [{"boxes": gt, "labels": torch.tensor([1])}]

    def run(**kw):
        heads = fixed_heads([[0.0, 0.0, 0.0]], [[0.0] * 8], sampler=RandomSampler(4, 0.5), **kw)
        torch.manual_seed(0)
        return heads(FEATS, props, torch.ones(1, 2, dtype=torch.bool), target)

    plain, balanced = run(), run(iou_balanced_eta=1.5, iou_balanced_lambda=1.5)
    assert abs(balanced["loss_cls"].item() - plain["loss_cls"].item()) < 1e-6
    # regression: the shifted copy (IoU 18 * 20 / (22 * 20)) is the only positive with a loss
    u = (18 * 20) / (22 * 20)
    assert abs(balanced["loss_bbox"].item() - plain["loss_bbox"].item() * u ** 1.5) < 1e-6
