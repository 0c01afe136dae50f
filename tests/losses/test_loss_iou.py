import math

import pytest
import torch

from losses import (
    box_iou_aligned,
    ciou_loss,
    diou_loss,
    giou_loss,
    iou_loss,
    pairwise_box_iou,
)

ALL_LOSSES = {"iou": iou_loss, "giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}
A = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
B = torch.tensor([[1.0, 1.0, 3.0, 3.0]])


def reference_loss(kind, p, t):
    """Plain-python per-box formula (one box pair, float64 math)."""
    px1, py1, px2, py2 = p
    tx1, ty1, tx2, ty2 = t
    iw = max(0.0, min(px2, tx2) - max(px1, tx1))
    ih = max(0.0, min(py2, ty2) - max(py1, ty1))
    inter = iw * ih
    union = (px2 - px1) * (py2 - py1) + (tx2 - tx1) * (ty2 - ty1) - inter
    iou = inter / union
    if kind == "iou":
        return 1 - iou
    cw = max(px2, tx2) - min(px1, tx1)
    ch = max(py2, ty2) - min(py1, ty1)
    if kind == "giou":
        return 1 - iou + (cw * ch - union) / (cw * ch)
    rho2 = ((px1 + px2) / 2 - (tx1 + tx2) / 2) ** 2 + ((py1 + py2) / 2 - (ty1 + ty2) / 2) ** 2
    diou = 1 - iou + rho2 / (cw**2 + ch**2)
    if kind == "diou":
        return diou
    dtheta = math.atan((tx2 - tx1) / (ty2 - ty1)) - math.atan((px2 - px1) / (py2 - py1))
    v = 4 / math.pi**2 * dtheta**2
    return diou + v / (1 - iou + v) * v


def random_boxes(n, seed, spread=10.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * spread
    wh = torch.rand(n, 2, generator=g) * 6 + 0.2
    return torch.cat([xy, xy + wh], dim=1)


# ------------------------------------------------------------ hand values


def test_overlapping_squares_hand_values():
    # A = [0,0,2,2], B = [1,1,3,3]: inter = 1, union = 4 + 4 - 1 = 7, IoU = 1/7
    # enclosing [0,0,3,3]: area 9, diagonal^2 = 9 + 9 = 18
    # centres (1,1) and (2,2): rho^2 = 1 + 1 = 2
    # both squares -> v = 0, so CIoU == DIoU
    iou = 1 / 7
    assert box_iou_aligned(A, B).item() == pytest.approx(iou, rel=1e-6)
    assert iou_loss(A, B).item() == pytest.approx(1 - iou, rel=1e-6)
    assert giou_loss(A, B).item() == pytest.approx(1 - iou + (9 - 7) / 9, rel=1e-6)
    assert diou_loss(A, B).item() == pytest.approx(1 - iou + 2 / 18, rel=1e-6)
    assert ciou_loss(A, B).item() == pytest.approx(1 - iou + 2 / 18, rel=1e-6)


def test_disjoint_boxes_hand_values():
    # [0,0,1,1] vs [2,0,3,1]: IoU = 0, union = 2, enclosing [0,0,3,1] area 3
    # GIoU loss = 1 + (3 - 2)/3; centres (0.5,0.5),(2.5,0.5): rho^2 = 4, c^2 = 9 + 1
    p, t = torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    assert iou_loss(p, t).item() == pytest.approx(1.0)
    assert giou_loss(p, t).item() == pytest.approx(1 + 1 / 3, rel=1e-6)
    assert diou_loss(p, t).item() == pytest.approx(1 + 4 / 10, rel=1e-6)


def test_ciou_different_aspect_ratios_hand_values():
    # pred [0,0,2,1] (w=2, h=1), target [0,0,1,2] (w=1, h=2)
    # inter [0,0,1,1] = 1, union = 2 + 2 - 1 = 3, IoU = 1/3
    # enclosing [0,0,2,2]: c^2 = 8; centres (1,0.5),(0.5,1): rho^2 = 0.5
    # DIoU = 2/3 + 0.5/8 = 2/3 + 1/16
    # v = 4/pi^2 (atan(1/2) - atan(2))^2 and atan(2) - atan(1/2) = atan(0.75)
    #   (tan subtraction: (2 - 1/2) / (1 + 2 * 1/2) = 0.75)  -> v ~= 0.16783
    # alpha = v / (2/3 + v); CIoU = DIoU + alpha * v
    p, t = torch.tensor([[0.0, 0.0, 2.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0, 2.0]])
    diou = 2 / 3 + 1 / 16
    v = 4 / math.pi**2 * math.atan(0.75) ** 2
    assert v == pytest.approx(0.16783, abs=1e-5)
    assert iou_loss(p, t).item() == pytest.approx(2 / 3, rel=1e-6)
    assert diou_loss(p, t).item() == pytest.approx(diou, rel=1e-6)
    assert ciou_loss(p, t).item() == pytest.approx(diou + v / (2 / 3 + v) * v, rel=1e-5)


@pytest.mark.parametrize("kind", list(ALL_LOSSES))
def test_matches_python_reference(kind):
    pred, target = random_boxes(40, 1), random_boxes(40, 2)  # mix of overlap and disjoint
    out = ALL_LOSSES[kind](pred, target)
    expected = torch.tensor(
        [reference_loss(kind, p, t) for p, t in zip(pred.double().tolist(), target.double().tolist())],
        dtype=torch.float64,
    )
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------- invariants


@pytest.mark.parametrize("kind", list(ALL_LOSSES))
def test_identical_boxes_give_zero(kind):
    boxes = random_boxes(10, 3)
    out = ALL_LOSSES[kind](boxes, boxes.clone())
    torch.testing.assert_close(out, torch.zeros(10), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", list(ALL_LOSSES))
def test_symmetric_and_translation_invariant(kind):
    pred, target = random_boxes(20, 4), random_boxes(20, 5)
    fn = ALL_LOSSES[kind]
    out = fn(pred, target)
    torch.testing.assert_close(fn(target, pred), out)
    shift = torch.tensor([3.0, -2.0, 3.0, -2.0])
    torch.testing.assert_close(fn(pred + shift, target + shift), out, atol=1e-5, rtol=1e-5)


def test_loss_ordering():
    # penalties are non-negative, so IoU <= GIoU, IoU <= DIoU <= CIoU
    pred, target = random_boxes(30, 6), random_boxes(30, 7)
    iou, giou = iou_loss(pred, target), giou_loss(pred, target)
    diou, ciou = diou_loss(pred, target), ciou_loss(pred, target)
    assert (giou >= iou - 1e-6).all() and (giou < 2).all()
    assert (diou >= iou - 1e-6).all() and (ciou >= diou - 1e-6).all()


def test_ciou_alpha_is_constant_in_backward():
    pred = torch.tensor([[0.0, 0.0, 2.0, 1.0], [1.0, 0.5, 4.0, 2.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0, 1.0, 2.0], [0.0, 0.0, 2.0, 3.0]])
    ciou_loss(pred, target).sum().backward()

    def manual(alpha_detached):
        p = pred.detach().clone().requires_grad_(True)
        iou = box_iou_aligned(p, target)
        w, h = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
        wt, ht = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1]
        v = 4 / math.pi**2 * (torch.atan(wt / ht) - torch.atan(w / h)) ** 2
        alpha = v / (1 - iou + v)
        if alpha_detached:
            alpha = alpha.detach()
        (diou_loss(p, target) + alpha * v).sum().backward()
        return p.grad

    torch.testing.assert_close(pred.grad, manual(True), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(pred.grad, manual(False), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------- precision / dtype


@pytest.mark.parametrize("kind", list(ALL_LOSSES))
@pytest.mark.parametrize("in_dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_under_autocast_give_float32(kind, in_dtype):
    pred, target = random_boxes(16, 8).to(in_dtype), random_boxes(16, 9).to(in_dtype)
    fn = ALL_LOSSES[kind]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(pred, target)
        mean = fn(pred, target, reduction="mean")
    assert out.dtype == torch.float32 and mean.dtype == torch.float32
    torch.testing.assert_close(out, fn(pred.float(), target.float()))


def test_large_half_boxes_do_not_overflow():
    # areas of 1e6 overflow float16 (max 65504); IoU of these is 500*1000 / 1e6 = 0.5
    p = torch.tensor([[0.0, 0.0, 1000.0, 1000.0]], dtype=torch.float16)
    t = torch.tensor([[0.0, 0.0, 500.0, 1000.0]], dtype=torch.float16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert box_iou_aligned(p, t).item() == pytest.approx(0.5)
        assert iou_loss(p, t).item() == pytest.approx(0.5)
        iou = pairwise_box_iou(p, t)
    assert iou.dtype == torch.float32 and iou.item() == pytest.approx(0.5)


def test_float64_is_kept():
    assert iou_loss(A.double(), B.double()).dtype == torch.float64


# ------------------------------------------------------------- edge cases


@pytest.mark.parametrize("kind", list(ALL_LOSSES))
def test_degenerate_boxes_have_finite_values_and_grads(kind):
    pred = torch.tensor(
        [
            [1.0, 1.0, 1.0, 1.0],  # point inside target
            [0.0, 0.0, 0.0, 0.0],  # point, identical to a point target
            [0.0, 0.0, 2.0, 0.0],  # zero height
            [2.0, 2.0, 1.0, 1.0],  # inverted -> treated as empty
            [5.0, 5.0, 5.0, 7.0],  # zero width, disjoint
        ],
        requires_grad=True,
    )
    target = torch.tensor(
        [
            [0.0, 0.0, 2.0, 2.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 2.0, 2.0],
            [0.0, 0.0, 3.0, 3.0],
            [0.0, 0.0, 1.0, 1.0],
        ],
        requires_grad=True,
    )
    out = ALL_LOSSES[kind](pred, target)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(pred.grad).all() and torch.isfinite(target.grad).all()


@pytest.mark.parametrize("kind", list(ALL_LOSSES))
@pytest.mark.parametrize(
    "reduction,avg_factor", [("none", None), ("sum", None), ("mean", None), ("mean", 3.0)]
)
def test_empty_input(kind, reduction, avg_factor):
    pred = torch.zeros(0, 4, requires_grad=True)
    out = ALL_LOSSES[kind](pred, torch.zeros(0, 4), reduction=reduction, avg_factor=avg_factor)
    if reduction == "none":
        assert out.shape == (0,)
    else:
        assert out.shape == () and out.item() == 0.0
    assert out.requires_grad
    out.sum().backward()
    assert pred.grad.shape == (0, 4)


def test_weight_and_avg_factor():
    pred = torch.cat([A, A])
    target = torch.cat([B, A])  # second pair identical -> loss 0
    weight = torch.tensor([3.0, 5.0])
    # (3 * (1 - 1/7) + 5 * 0) / 2
    out = iou_loss(pred, target, reduction="mean", weight=weight, avg_factor=2.0)
    assert out.item() == pytest.approx(3 * (6 / 7) / 2, rel=1e-6)


def test_shape_validation():
    with pytest.raises(ValueError):
        iou_loss(torch.zeros(3, 4), torch.zeros(1, 4))
    with pytest.raises(ValueError):
        giou_loss(torch.zeros(3, 5), torch.zeros(3, 5))


# --------------------------------------------------------------- pairwise


def test_pairwise_hand_values():
    # A vs B = 1/7, A vs A = 1, B vs far box = 0
    a = torch.cat([A, B])
    b = torch.cat([B, A, torch.tensor([[10.0, 10.0, 11.0, 11.0]])])
    expected = torch.tensor([[1 / 7, 1.0, 0.0], [1.0, 1 / 7, 0.0]])
    torch.testing.assert_close(pairwise_box_iou(a, b), expected)


def test_pairwise_matches_aligned_and_reference():
    a, b = random_boxes(7, 10), random_boxes(5, 11)
    out = pairwise_box_iou(a, b)
    assert out.shape == (7, 5)
    for i in range(7):
        torch.testing.assert_close(out[i], box_iou_aligned(a[i].expand(5, 4), b))
    expected = torch.tensor(
        [[1 - reference_loss("iou", p, t) for t in b.double().tolist()] for p in a.double().tolist()]
    )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_pairwise_batched_broadcast():
    a = torch.stack([random_boxes(4, 12), random_boxes(4, 13)])  # [2, 4, 4]
    b = random_boxes(3, 14)  # [3, 4], broadcast over the batch
    out = pairwise_box_iou(a, b)
    assert out.shape == (2, 4, 3)
    for k in range(2):
        torch.testing.assert_close(out[k], pairwise_box_iou(a[k], b))
    b_batched = torch.stack([random_boxes(3, 15), random_boxes(3, 16)])
    out2 = pairwise_box_iou(a, b_batched)
    torch.testing.assert_close(out2[1], pairwise_box_iou(a[1], b_batched[1]))


@pytest.mark.parametrize(
    "a_shape,b_shape,out_shape",
    [
        ((0, 4), (5, 4), (0, 5)),
        ((3, 4), (0, 4), (3, 0)),
        ((2, 0, 4), (2, 6, 4), (2, 0, 6)),
        ((0, 4), (0, 4), (0, 0)),
    ],
)
def test_pairwise_empty(a_shape, b_shape, out_shape):
    assert pairwise_box_iou(torch.zeros(a_shape), torch.zeros(b_shape)).shape == out_shape


def test_aligned_empty():
    assert box_iou_aligned(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0,)


def test_ciou_mmdet_value_equals_ciou_and_gradient_flows_through_alpha():
    """mmdetection 2.x's CIoU: the same value as ours on valid boxes, but alpha is not detached, so its
    gradient is that of DIoU + alpha * v with alpha differentiated too (hand-written from the formula)."""
    from losses import REGRESSION_LOSSES, regression_loss_is_box_based
    from losses.iou import ciou_mmdet_loss

    target = torch.tensor([[0.0, 0.0, 1.0, 2.0], [0.0, 0.0, 2.0, 3.0], [5.0, 5.0, 9.0, 7.0]])
    start = torch.tensor([[0.0, 0.0, 2.0, 1.0], [1.0, 0.5, 4.0, 2.0], [4.0, 6.0, 9.5, 9.0]])
    pred = start.clone().requires_grad_(True)
    value = ciou_mmdet_loss(pred, target)
    torch.testing.assert_close(value, ciou_loss(start, target), rtol=1e-5, atol=1e-6)
    value.sum().backward()

    p = start.clone().requires_grad_(True)
    w, h = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    wt, ht = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1]
    iou = box_iou_aligned(p, target)
    v = 4 / math.pi**2 * (torch.atan(wt / ht) - torch.atan(w / h)) ** 2
    (diou_loss(p, target) + v / (1 - iou + v) * v).sum().backward()
    torch.testing.assert_close(pred.grad, p.grad, rtol=1e-4, atol=1e-6)

    detached = start.clone().requires_grad_(True)
    ciou_loss(detached, target).sum().backward()
    assert (pred.grad - detached.grad).abs().max() > 1e-3  # the two forms really differ in the backward
    assert REGRESSION_LOSSES["ciou_mmdet"] is ciou_mmdet_loss and regression_loss_is_box_based("ciou_mmdet")
    assert ciou_mmdet_loss(start, target, reduction="sum").shape == ()
