import pytest
import torch
import torch.nn.functional as F

from losses import (
    REGRESSION_LOSSES,
    l1_loss,
    regression_loss_is_box_based,
    sigmoid_focal_loss,
    smooth_l1_loss,
)

PRED = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
TARGET = torch.tensor([[1.0, 1.0, 0.0, 3.5]])  # |d| = [1, 0, 2, 0.5]


def test_l1_hand_values():
    torch.testing.assert_close(l1_loss(PRED, TARGET), torch.tensor([[1.0, 0.0, 2.0, 0.5]]))
    assert l1_loss(PRED, TARGET, reduction="sum").item() == pytest.approx(3.5)
    assert l1_loss(PRED, TARGET, reduction="mean").item() == pytest.approx(3.5 / 4)


def test_smooth_l1_hand_values():
    # beta = 1: d=1 -> 1 - 0.5 = 0.5 (linear branch, d < beta is false)
    #           d=0 -> 0; d=2 -> 2 - 0.5 = 1.5; d=0.5 -> 0.5 * 0.25 / 1 = 0.125
    torch.testing.assert_close(
        smooth_l1_loss(PRED, TARGET), torch.tensor([[0.5, 0.0, 1.5, 0.125]])
    )
    # beta = 4: all quadratic, 0.5 d^2 / 4 = [0.125, 0, 0.5, 0.03125]
    torch.testing.assert_close(
        smooth_l1_loss(PRED, TARGET, beta=4.0), torch.tensor([[0.125, 0.0, 0.5, 0.03125]])
    )


@pytest.mark.parametrize("beta", [0.1, 1.0 / 9, 1.0, 3.0])
def test_smooth_l1_matches_torch(beta):
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(50, 4, generator=g) * 2, torch.randn(50, 4, generator=g)
    expected = F.smooth_l1_loss(pred, target, beta=beta, reduction="none")
    torch.testing.assert_close(smooth_l1_loss(pred, target, beta=beta), expected)


def test_smooth_l1_is_continuous_at_beta():
    beta = 0.5
    pred = torch.tensor([beta - 1e-4, beta, beta + 1e-4])
    out = smooth_l1_loss(pred, torch.zeros(3), beta=beta)
    # both branches equal 0.5 * beta = 0.25 at d = beta
    torch.testing.assert_close(out, torch.full((3,), 0.25), atol=2e-4, rtol=0)


def test_smooth_l1_beta_zero_is_l1_and_negative_raises():
    torch.testing.assert_close(smooth_l1_loss(PRED, TARGET, beta=0.0), l1_loss(PRED, TARGET))
    x = torch.zeros(2, 4, requires_grad=True)
    smooth_l1_loss(x, torch.zeros(2, 4), beta=0.0).sum().backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError):
        smooth_l1_loss(PRED, TARGET, beta=-1.0)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        l1_loss(torch.zeros(3, 4), torch.zeros(3, 1, 4))
    with pytest.raises(ValueError):
        smooth_l1_loss(torch.zeros(3, 4), torch.zeros(4))


def test_weight_and_avg_factor():
    weight = torch.tensor([[1.0, 1.0, 0.0, 2.0]])
    # l1 weighted = [1, 0, 0, 1] -> sum 2 -> / avg_factor 4 = 0.5
    out = l1_loss(PRED, TARGET, reduction="mean", weight=weight, avg_factor=4)
    assert out.item() == pytest.approx(0.5)


# the focal loss's empty-input case lives here too: one reduction path serves every element-wise loss
@pytest.mark.parametrize("fn", [l1_loss, smooth_l1_loss, sigmoid_focal_loss])
@pytest.mark.parametrize(
    "reduction,avg_factor", [("none", None), ("sum", None), ("mean", None), ("mean", 2.0)]
)
def test_elementwise_empty_input(fn, reduction, avg_factor):
    pred = torch.zeros(0, 4, requires_grad=True)
    out = fn(pred, torch.zeros(0, 4), reduction=reduction, avg_factor=avg_factor)
    if reduction == "none":
        assert out.shape == (0, 4)
    else:
        assert out.shape == () and out.item() == 0.0
    out.sum().backward()
    assert pred.grad.shape == (0, 4)


# ---------------------------------------------------------------- registry


def _valid_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 10
    wh = torch.rand(n, 2, generator=g) * 5 + 0.5
    return torch.cat([xy, xy + wh], dim=1)


def test_registry_names():
    assert set(REGRESSION_LOSSES) == {"l1", "smooth_l1", "iou", "giou", "diou", "ciou", "ciou_mmdet"}
    assert all(callable(fn) for fn in REGRESSION_LOSSES.values())


@pytest.mark.parametrize("name", ["l1", "smooth_l1", "iou", "giou", "diou", "ciou", "ciou_mmdet"])
def test_registry_returns_per_box_loss(name):
    fn = REGRESSION_LOSSES[name]
    pred, target = _valid_boxes(5, 1), _valid_boxes(5, 2)
    per_box = fn(pred, target, reduction="none")
    assert per_box.shape == (5,)
    assert (per_box >= 0).all()
    torch.testing.assert_close(fn(pred, target, reduction="sum"), per_box.sum())
    torch.testing.assert_close(fn(pred, target, reduction="mean"), per_box.mean())
    weight = torch.tensor([1.0, 0.0, 2.0, 0.0, 1.0])
    torch.testing.assert_close(
        fn(pred, target, reduction="mean", weight=weight, avg_factor=3.0),
        (per_box * weight).sum() / 3.0,
    )
    empty = fn(torch.zeros(0, 4), torch.zeros(0, 4), reduction="none")
    assert empty.shape == (0,)


def test_registry_l1_entries_sum_coordinates():
    # hand values from above: l1 row sum = 3.5, smooth_l1 row sum = 0.5+0+1.5+0.125
    torch.testing.assert_close(REGRESSION_LOSSES["l1"](PRED, TARGET), torch.tensor([3.5]))
    torch.testing.assert_close(
        REGRESSION_LOSSES["smooth_l1"](PRED, TARGET), torch.tensor([2.125])
    )
    torch.testing.assert_close(
        REGRESSION_LOSSES["smooth_l1"](PRED, TARGET, beta=4.0), torch.tensor([0.65625])
    )


def test_regression_loss_is_box_based():
    assert not regression_loss_is_box_based("l1")
    assert not regression_loss_is_box_based("smooth_l1")
    for name in ("iou", "giou", "diou", "ciou"):
        assert regression_loss_is_box_based(name)
    with pytest.raises(ValueError):
        regression_loss_is_box_based("mse")
