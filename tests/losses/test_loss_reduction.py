import pytest
import torch

from losses import reduce_loss


def test_none_sum_mean_on_hand_values():
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.equal(reduce_loss(loss, "none"), loss)
    assert reduce_loss(loss, "sum").item() == pytest.approx(10.0)  # 1+2+3+4
    assert reduce_loss(loss, "mean").item() == pytest.approx(2.5)  # 10 / 4


def test_default_reduction_is_none():
    loss = torch.tensor([[1.0, 2.0]])
    assert torch.equal(reduce_loss(loss), loss)


def test_weight_is_applied_before_reduction():
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0])
    weight = torch.tensor([1.0, 0.0, 1.0, 0.5])
    # weighted = [1, 0, 3, 2]
    torch.testing.assert_close(
        reduce_loss(loss, "none", weight=weight), torch.tensor([1.0, 0.0, 3.0, 2.0])
    )
    assert reduce_loss(loss, "sum", weight=weight).item() == pytest.approx(6.0)
    # plain mean divides by the element count (4), not by the weight sum
    assert reduce_loss(loss, "mean", weight=weight).item() == pytest.approx(1.5)


def test_avg_factor_with_weight():
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0])
    weight = torch.tensor([1.0, 0.0, 1.0, 0.5])
    # sum(weighted) = 6, 6 / 3 = 2
    assert reduce_loss(loss, "mean", weight=weight, avg_factor=3).item() == pytest.approx(2.0)
    # tensor avg_factor behaves the same
    out = reduce_loss(loss, "mean", weight=weight, avg_factor=torch.tensor(3.0))
    assert out.item() == pytest.approx(2.0)


def test_avg_factor_zero_does_not_give_nan():
    # no positives: everything is 0 and the normaliser is 0 too
    loss = torch.zeros(3)
    assert reduce_loss(loss, "mean", avg_factor=0).item() == 0.0
    assert reduce_loss(loss, "mean", avg_factor=torch.tensor(0.0)).item() == 0.0


def test_broadcast_weight():
    loss = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    weight = torch.tensor([[2.0], [0.0]])  # per-row weight
    # [[2, 4], [0, 0]] -> sum 6
    assert reduce_loss(loss, "sum", weight=weight).item() == pytest.approx(6.0)


@pytest.mark.parametrize("bad", ["avg", "Mean", "", "elementwise_mean"])
def test_invalid_reduction_raises(bad):
    with pytest.raises(ValueError) as info:
        reduce_loss(torch.ones(2), bad)
    msg = str(info.value)
    assert repr(bad) in msg
    for valid in ("none", "mean", "sum"):
        assert valid in msg


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_avg_factor_requires_mean(reduction):
    with pytest.raises(ValueError):
        reduce_loss(torch.ones(2), reduction, avg_factor=2.0)


@pytest.mark.parametrize(
    "reduction,avg_factor", [("none", None), ("sum", None), ("mean", None), ("mean", 4.0)]
)
def test_empty_loss_stays_connected(reduction, avg_factor):
    x = torch.zeros(0, requires_grad=True)
    loss = x * 2
    out = reduce_loss(loss, reduction, avg_factor=avg_factor)
    if reduction == "none":
        assert out.shape == (0,)
    else:
        assert out.shape == ()
        assert out.item() == 0.0
        assert not torch.isnan(out)
    assert out.requires_grad
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == (0,)


def test_gradient_of_weighted_mean():
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    weight = torch.tensor([1.0, 2.0, 0.0])
    reduce_loss(x * x, "mean", weight=weight, avg_factor=2.0).backward()
    # d/dx_i of sum(w_i x_i^2)/2 = w_i x_i = [1, 4, 0]
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 4.0, 0.0]))
