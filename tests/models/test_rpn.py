"""RPN: proposal generation on a hand-made case, losses, sampling normalisation, crowd regions."""
import math

import pytest

import torch

from models.anchors import AnchorGenerator
from models.head_loss import IoUBalanced
from models.rpn import ProposalConfig, RegionProposalNetwork, RPNHead, default_rpn_loss
from models.sampler import RandomSampler

# one level of stride 16 on a 2x2 map, one 16 px square anchor per cell:
# a0 (0,0,16,16)  a1 (16,0,32,16)  a2 (0,16,16,32)  a3 (16,16,32,32)
ANCHORS = torch.tensor([[0, 0, 16, 16], [16, 0, 32, 16], [0, 16, 16, 32], [16, 16, 32, 32]], dtype=torch.float32)


def rpn(sampler=None, iou_balanced_eta=None, iou_balanced_lambda=None, iou_balanced_norm="level", **kw):
    gen = AnchorGenerator(strides=[16], ratios=[1.0], scales=[1.0], center_offset=0.5)
    loss = default_rpn_loss()
    loss.sampler = sampler or loss.sampler
    loss.iou_balanced = IoUBalanced(iou_balanced_eta, iou_balanced_lambda, iou_balanced_norm)
    return RegionProposalNetwork(RPNHead(8, 1, 8), gen, loss, **kw)


def logit(p):
    return math.log(p / (1 - p))


def test_anchor_layout_matches_the_hand_made_case():
    anchors, counts = rpn().anchor_generator([torch.zeros(1, 8, 2, 2)])
    assert torch.equal(anchors, ANCHORS) and counts == [4]


def propose(obj, reg, cfg, img_hw=((32, 32),), anchors=ANCHORS, counts=(4,)):
    model = rpn()
    return model.proposals(torch.tensor(obj), torch.tensor(reg), anchors, list(counts), torch.tensor(img_hw, dtype=torch.float32), cfg)


def test_proposals_sorted_nms_topk_and_clipping():
    obj = [[logit(0.6), logit(0.9), logit(0.7), logit(0.8)]]
    reg = torch.zeros(1, 4, 4)
    reg[0, 2] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # a2 moves right by one width: onto a3 (IoU 1)
    reg[0, 1] = torch.tensor([0.0, 0.0, math.log(2.0), 0.0])  # a1 doubles its width: (8, 0, 40, 16) -> clipped (8, 0, 32, 16)
    boxes, valid = propose(obj, reg.tolist(), ProposalConfig(pre_nms_top_k=4, post_nms_top_k=10, nms_iou=0.7))
    # a3 (0.8) suppresses the moved a2 (0.7); order by score: a1 (0.9), a3 (0.8), a0 (0.6)
    assert valid.tolist() == [[True, True, True]]
    expected = torch.tensor([[8, 0, 32, 16], [16, 16, 32, 32], [0, 0, 16, 16]], dtype=torch.float32)
    assert torch.allclose(boxes[0], expected)


def test_pre_and_post_nms_top_k():
    obj = [[logit(0.6), logit(0.9), logit(0.7), logit(0.8)]]
    reg = torch.zeros(1, 4, 4).tolist()
    boxes, valid = propose(obj, reg, ProposalConfig(pre_nms_top_k=3, post_nms_top_k=10, nms_iou=0.7))
    assert torch.equal(boxes[0], ANCHORS[[1, 3, 2]])  # a0, the lowest, never reaches NMS
    boxes, valid = propose(obj, reg, ProposalConfig(pre_nms_top_k=4, post_nms_top_k=2, nms_iou=0.7))
    assert torch.equal(boxes[0], ANCHORS[[1, 3]]) and valid.all()


def test_nms_is_per_level_and_batch_is_padded():
    # the same four anchors as two levels: identical boxes on different levels do not suppress each other
    anchors = torch.cat([ANCHORS, ANCHORS])
    obj = [[logit(0.9), -20.0, -20.0, -20.0, logit(0.8), -20.0, -20.0, -20.0],
           [logit(0.5)] + [-20.0] * 7]
    reg = torch.zeros(2, 8, 4)
    reg[1, 1:] = torch.tensor([0.0, 0.0, -20.0, -20.0])  # image 1: every box but a0 shrinks below min_size
    boxes, valid = propose(obj, reg.tolist(), ProposalConfig(pre_nms_top_k=1, post_nms_top_k=10, nms_iou=0.7, min_size=1.0),
                           img_hw=((32, 32), (32, 32)), anchors=anchors, counts=(4, 4))
    assert valid.tolist() == [[True, True], [True, False]]
    assert torch.equal(boxes[0], ANCHORS[[0, 0]])
    assert torch.equal(boxes[1, 0], ANCHORS[0]) and torch.equal(boxes[1, 1], torch.zeros(4))


def test_min_size_drops_small_proposals():
    obj = [[logit(0.9), logit(0.8), logit(0.7), logit(0.6)]]
    reg = torch.zeros(1, 4, 4)
    reg[0, 0, 2] = math.log(0.25)  # a0 becomes 4 px wide
    boxes, valid = propose(obj, reg.tolist(), ProposalConfig(4, 10, 0.7, min_size=5.0))
    assert valid.sum().item() == 3 and torch.equal(boxes[0], ANCHORS[1:])


def targets(boxes, ignore=None):
    t = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.zeros(len(boxes), dtype=torch.long)}
    if ignore is not None:
        t["ignore_boxes"] = torch.tensor(ignore, dtype=torch.float32).reshape(-1, 4)
    return t


def test_losses_are_normalised_by_the_sampled_anchors():
    model = rpn(sampler=RandomSampler(4, 0.5))
    obj = torch.zeros(1, 4)  # p = 0.5 everywhere: BCE = log 2 per anchor
    reg = torch.zeros(1, 4, 4)
    # gt equals a0 shifted by 4 px: IoU(a0) = 192 / 320 = 0.6 < 0.7, but a low-quality match (>= 0.3)
    losses = model.losses(obj, reg, ANCHORS, [targets([[4, 0, 20, 16]])])
    # sample: 1 positive (a0) + 3 negatives (the rest, IoU 0 or 4/28 < 0.3), all 4 sampled
    assert abs(losses["loss_rpn_cls"].item() - math.log(2.0)) < 1e-6
    # L1 on deltas of the positive: dx = 4 / 16 = 0.25, the others 0; divided by 4 sampled anchors
    assert abs(losses["loss_rpn_bbox"].item() - 0.25 / 4) < 1e-6


def test_crowd_region_is_never_positive_and_empty_image_is_finite():
    model = rpn(sampler=RandomSampler(4, 0.5))
    model.loss.assigner.ignore_iof_thr = 0.5
    obj = torch.zeros(2, 4, requires_grad=True)
    reg = torch.zeros(2, 4, 4, requires_grad=True)
    # image 0: only a crowd region over a0; image 1: no annotations at all
    losses = model.losses(obj, reg, ANCHORS, [targets([], ignore=[[0, 0, 16, 16]]), targets([])])
    assert losses["loss_rpn_bbox"].item() == 0.0
    # a0 of image 0 is ignored: 3 + 4 negatives are sampled, each log 2
    assert abs(losses["loss_rpn_cls"].item() - math.log(2.0)) < 1e-6
    sum(losses.values()).backward()
    assert obj.grad[0, 0].item() == 0.0 and obj.grad[0, 1].item() != 0.0
    assert torch.isfinite(reg.grad).all()


def test_training_forward_returns_proposals_and_losses():
    torch.manual_seed(0)
    model = rpn().train()
    feats = [torch.randn(2, 8, 2, 2)]
    props, valid, losses = model(feats, torch.tensor([[32.0, 32.0], [32.0, 20.0]]), [targets([[0, 0, 16, 16]]), targets([])])
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_bbox"}
    assert props.shape[0] == 2 and not props.requires_grad
    # proposals lie inside each image
    assert (props[1, valid[1]][:, 2] <= 20.0).all() and (props[1, valid[1]][:, 3] <= 32.0).all()
    model.eval()
    _, _, losses = model(feats, torch.tensor([[32.0, 32.0], [32.0, 32.0]]))
    assert losses == {}


def test_iou_balanced_objectness_keeps_the_positive_sum():
    # two positives: a0 exactly on its gt (IoU 1 after regression), a3 matched to a shifted gt (IoU 0.6)
    obj = torch.tensor([[0.3, -1.0, -0.5, 0.8]], requires_grad=True)
    reg = torch.zeros(1, 4, 4)
    gts = [targets([[0, 0, 16, 16], [20, 16, 36, 32]])]
    plain = rpn(sampler=RandomSampler(4, 0.5)).losses(obj, reg, ANCHORS, gts)
    model = rpn(sampler=RandomSampler(4, 0.5), iou_balanced_eta=1.5, iou_balanced_lambda=1.0, iou_balanced_norm="batch")
    balanced = model.losses(obj, reg, ANCHORS, gts)
    # the summed positive BCE is kept, so with all anchors sampled the total is unchanged
    assert torch.allclose(balanced["loss_rpn_cls"], plain["loss_rpn_cls"], atol=1e-6)
    g_plain = torch.autograd.grad(plain["loss_rpn_cls"], obj)[0]
    g_bal = torch.autograd.grad(balanced["loss_rpn_cls"], obj)[0]
    # weight moves to the well-localised positive a0 and away from a3; negatives untouched
    assert abs(g_bal[0, 0]) > abs(g_plain[0, 0]) and abs(g_bal[0, 3]) < abs(g_plain[0, 3])
    assert torch.allclose(g_bal[0, 1:3], g_plain[0, 1:3])
    # regression: a3's L1 (dx = 4/16) times its IoU (12 * 16 / (20 * 16) = 0.6), over 4 sampled anchors
    assert abs(balanced["loss_rpn_bbox"].item() - 0.25 * 0.6 / 4) < 1e-6


def test_iou_balanced_objectness_normaliser_per_level():
    """Per level (the released code), Z keeps each level's positive sum: with one positive per level every
    positive's weight u^eta * Z is exactly 1, so the gradient is the plain BCE's; with both positives on one
    level it is the batch-wide rule's."""
    obj = torch.tensor([[0.3, -1.0, -0.5, 0.8]], requires_grad=True)
    reg = torch.zeros(1, 4, 4)
    gts = [targets([[0, 0, 16, 16], [20, 16, 36, 32]])]
    plain = rpn(sampler=RandomSampler(4, 0.5)).losses(obj, reg, ANCHORS, gts)
    kw = dict(sampler=RandomSampler(4, 0.5), iou_balanced_eta=1.5)
    split = rpn(**kw).losses(obj, reg, ANCHORS, gts, counts=[2, 2])  # a0 on level 0, a3 on level 1
    one_level = rpn(**kw).losses(obj, reg, ANCHORS, gts, counts=[4])
    batch = rpn(**kw, iou_balanced_norm="batch").losses(obj, reg, ANCHORS, gts)
    g = {k: torch.autograd.grad(v["loss_rpn_cls"], obj)[0]
         for k, v in dict(plain=plain, split=split, one_level=one_level, batch=batch).items()}
    torch.testing.assert_close(g["split"], g["plain"])
    torch.testing.assert_close(g["one_level"], g["batch"])
    assert not torch.allclose(g["batch"], g["plain"])
    with pytest.raises(ValueError, match="per level"):
        rpn(**kw).losses(obj, reg, ANCHORS, gts)
