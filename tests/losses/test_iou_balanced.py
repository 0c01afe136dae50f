import math

import pytest
import torch
import torch.nn.functional as F

from losses.focal import sigmoid_focal_loss
from losses.iou_balanced import (
    iou_balanced_cross_entropy,
    iou_balanced_smooth_l1_loss,
    iou_balanced_sigmoid_focal_loss,
)
from losses.regression import smooth_l1_loss_per_box


def dense_case(n=64, c=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 3
    labels = torch.randint(0, c + 1, (n,), generator=g)  # c == background
    labels[:3] = torch.tensor([0, 1, 2])  # make sure there are positives
    targets = F.one_hot(labels, c + 1)[:, :c].float()
    ious = torch.rand(n, generator=g) * 0.9 + 0.05
    return logits, targets, ious


def roi_case(n=48, k=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k + 1, generator=g) * 2
    labels = torch.randint(0, k + 1, (n,), generator=g)
    labels[:2] = torch.tensor([0, 3])
    ious = torch.rand(n, generator=g) * 0.9 + 0.05
    return logits, labels, ious


# ---------------------------------------------------------------- focal loss
def test_focal_summed_positive_loss_unchanged_and_negatives_untouched():
    logits, targets, ious = dense_case()
    plain = sigmoid_focal_loss(logits, targets)
    out = iou_balanced_sigmoid_focal_loss(logits, targets, ious)
    pos = targets > 0
    torch.testing.assert_close(out[pos].sum(), plain[pos].sum(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[~pos], plain[~pos], rtol=0, atol=0)
    assert not torch.allclose(out[pos], plain[pos])  # weights did move


def test_focal_weight_ratio_follows_iou_power():
    logits, targets, ious = dense_case()
    eta = 1.5
    w = iou_balanced_sigmoid_focal_loss(logits, targets, ious, eta=eta) / sigmoid_focal_loss(logits, targets)
    rows = targets.sum(1) > 0
    w_pos = (w * targets).sum(1)[rows]
    u = ious[rows]
    i, j = int(u.argmax()), int(u.argmin())
    assert w_pos[i] > w_pos[j]
    torch.testing.assert_close(w_pos[i] / w_pos[j], (u[i] / u[j]) ** eta, rtol=1e-5, atol=0)


def test_focal_hand_case():
    # logit 0 -> p = 0.5; positive entry FL = 0.25 * 0.5^2 * ln2 = ln2/16,
    # negative entry FL = 0.75 * 0.5^2 * ln2 = 3 ln2/16.
    # u = [1, 0.25], eta 1.5 -> u^eta = [1, 0.125]
    # Z = (2 * ln2/16) / (ln2/16 * (1 + 0.125)) = 2 / 1.125 = 16/9
    # weights = [16/9, 2/9] -> losses [ln2/9, ln2/72] (sum 9 ln2/72 = 2 ln2/16).
    # Row 2 is a negative; its IoU (NaN) must be ignored.
    logits = torch.zeros(3, 2)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    ious = torch.tensor([1.0, 0.25, float("nan")])
    out = iou_balanced_sigmoid_focal_loss(logits, targets, ious, eta=1.5)
    ln2 = math.log(2)
    neg = 3 * ln2 / 16
    expected = torch.tensor([[ln2 / 9, neg], [neg, ln2 / 72], [neg, neg]])
    torch.testing.assert_close(out, expected)
    assert iou_balanced_sigmoid_focal_loss(logits, targets, ious, reduction="sum").item() == pytest.approx(
        ln2 / 8 + 4 * neg, rel=1e-6
    )


def test_focal_no_gradient_into_ious():
    logits, targets, ious = dense_case()
    logits.requires_grad_(True)
    ious.requires_grad_(True)
    iou_balanced_sigmoid_focal_loss(logits, targets, ious, reduction="sum").backward()
    assert ious.grad is None
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_focal_no_positives_equals_plain():
    logits, _, ious = dense_case()
    targets = torch.zeros_like(logits)
    out = iou_balanced_sigmoid_focal_loss(logits, targets, ious)
    torch.testing.assert_close(out, sigmoid_focal_loss(logits, targets), rtol=0, atol=0)


def test_focal_zero_ious_no_nan():
    logits, targets, ious = dense_case()
    out = iou_balanced_sigmoid_focal_loss(logits, targets, torch.zeros_like(ious))
    assert torch.isfinite(out).all()
    # denominator 0 -> weights fall back to 1
    torch.testing.assert_close(out, sigmoid_focal_loss(logits, targets))


# --------------------------------------------------------------- softmax CE
def test_ce_invariants():
    logits, labels, ious = roi_case()
    eta = 2.0
    plain = F.cross_entropy(logits, labels, reduction="none")
    out = iou_balanced_cross_entropy(logits, labels, ious, eta=eta)
    assert out.shape == labels.shape
    pos = labels != logits.shape[1] - 1
    torch.testing.assert_close(out[pos].sum(), plain[pos].sum(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[~pos], plain[~pos], rtol=0, atol=0)
    w = (out / plain)[pos]
    u = ious[pos]
    i, j = int(u.argmax()), int(u.argmin())
    torch.testing.assert_close(w[i] / w[j], (u[i] / u[j]) ** eta, rtol=1e-5, atol=0)


def test_ce_hand_case_and_no_grad():
    # 3 classes (K = 2, background = 2), logits 0 -> CE = ln3 for every row.
    # positives u = [1, 0.25] -> u^1.5 = [1, 0.125] -> Z = 2 ln3 / (1.125 ln3) = 16/9
    # -> [16/9 ln3, 2/9 ln3]; the background row stays ln3.
    logits = torch.zeros(3, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2])
    ious = torch.tensor([1.0, 0.25, 0.9], requires_grad=True)
    out = iou_balanced_cross_entropy(logits, labels, ious)
    ln3 = math.log(3)
    torch.testing.assert_close(out, torch.tensor([16 / 9 * ln3, 2 / 9 * ln3, ln3]))
    out.sum().backward()
    assert ious.grad is None
    # explicit background index: label 0 becomes the negative instead
    # positives u = [0.25, 0.9]; only checks the summed positive CE is kept.
    out0 = iou_balanced_cross_entropy(logits.detach(), labels, ious.detach(), background=0)
    torch.testing.assert_close(out0[0], torch.tensor(ln3))
    torch.testing.assert_close(out0[1:].sum(), torch.tensor(2 * ln3))


# --------------------------------------------------------------- smooth L1
def test_smooth_l1_hand_case():
    # box 0: |d| = 0.5 < beta=1 -> 0.5 * 0.25 = 0.125 per coord -> 0.5; u^1.5 = 0.25^1.5 = 0.125 -> 0.0625
    # box 1: |d| = 2 -> 2 - 0.5 = 1.5 per coord -> 6; u = 1 -> 6
    pred = torch.zeros(2, 4)
    target = torch.tensor([[0.5] * 4, [2.0] * 4])
    ious = torch.tensor([0.25, 1.0])
    out = iou_balanced_smooth_l1_loss(pred, target, ious)
    torch.testing.assert_close(out, torch.tensor([0.0625, 6.0]))
    mean = iou_balanced_smooth_l1_loss(pred, target, ious, reduction="mean")
    assert mean.item() == pytest.approx((0.0625 + 6.0) / 2)
    weighted = iou_balanced_smooth_l1_loss(pred, target, ious, weight=torch.tensor([2.0, 0.0]), reduction="sum")
    assert weighted.item() == pytest.approx(0.125)


def test_smooth_l1_no_grad_into_ious():
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(10, 4, generator=g, requires_grad=True)
    target = torch.randn(10, 4, generator=g)
    ious = torch.rand(10, generator=g).requires_grad_(True)
    out = iou_balanced_smooth_l1_loss(pred, target, ious, lam=1.0)
    torch.testing.assert_close(out, smooth_l1_loss_per_box(pred, target) * ious.detach())
    out.sum().backward()
    assert ious.grad is None and pred.grad is not None


def test_smooth_l1_empty():
    pred = torch.zeros(0, 4, requires_grad=True)
    out = iou_balanced_smooth_l1_loss(pred, torch.zeros(0, 4), torch.zeros(0))
    assert out.shape == (0,)
    for red in ("mean", "sum"):
        val = iou_balanced_smooth_l1_loss(pred, torch.zeros(0, 4), torch.zeros(0), reduction=red)
        assert val.item() == 0.0
    val.backward()


# ---------------------------------------------------------------- autocast
def test_bfloat16_autocast_matches_float32():
    logits, targets, ious = dense_case()
    rl, rlab, rious = roi_case()
    pred, tgt = torch.randn(8, 4), torch.randn(8, 4)
    bf = lambda t: t.to(torch.bfloat16)  # noqa: E731
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [
            iou_balanced_sigmoid_focal_loss(bf(logits), bf(targets), bf(ious)),
            iou_balanced_cross_entropy(bf(rl), rlab, bf(rious)),
            iou_balanced_smooth_l1_loss(bf(pred), bf(tgt), bf(ious[:8])),
        ]
    refs = [
        iou_balanced_sigmoid_focal_loss(bf(logits).float(), targets, bf(ious).float()),
        iou_balanced_cross_entropy(bf(rl).float(), rlab, bf(rious).float()),
        iou_balanced_smooth_l1_loss(bf(pred).float(), bf(tgt).float(), bf(ious[:8]).float()),
    ]
    for out, ref in zip(outs, refs):
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
