import math

import pytest
import torch
import torch.nn.functional as F

from losses import sigmoid_focal_loss


def naive_focal(logits, targets, alpha=0.25, gamma=2.0):
    """Direct formula in float64 with explicit logs (no log-sum-exp tricks)."""
    x = logits.double()
    t = targets.double()
    p = 1.0 / (1.0 + torch.exp(-x))
    ce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    loss = (t - p).abs() ** gamma * ce
    if alpha >= 0:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss


def random_case(n=64, c=7, scale=4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * scale
    labels = torch.randint(0, c + 1, (n,), generator=g)  # c == background
    targets = F.one_hot(labels, c + 1)[:, :c].float()
    return logits, targets


def test_hand_computed_values():
    # logit 0 -> p = 0.5, ce = ln 2, |t - p|^2 = 0.25
    #   t = 1: alpha_t = 0.25 -> 0.25 * 0.25 * ln2 = ln2 / 16
    #   t = 0: alpha_t = 0.75 -> 0.75 * 0.25 * ln2 = 3 ln2 / 16
    logits = torch.zeros(1, 2)
    targets = torch.tensor([[1.0, 0.0]])
    out = sigmoid_focal_loss(logits, targets)
    expected = torch.tensor([[math.log(2) / 16, 3 * math.log(2) / 16]])
    torch.testing.assert_close(out, expected)


def test_hand_computed_confident_prediction():
    # logit ln 3 -> p = 3/4; t = 1: (1/4)^2 * 0.25 * -ln(3/4) = ln(4/3) / 64
    out = sigmoid_focal_loss(torch.tensor([math.log(3)]), torch.tensor([1.0]))
    assert out.item() == pytest.approx(math.log(4 / 3) / 64, rel=1e-5)


@pytest.mark.parametrize("scale", [1.0, 4.0, 10.0])
def test_matches_naive_formula(scale):
    logits, targets = random_case(scale=scale, seed=int(scale))
    out = sigmoid_focal_loss(logits, targets)
    torch.testing.assert_close(out.double(), naive_focal(logits, targets), rtol=1e-5, atol=1e-6)


def test_large_logits_stay_finite_and_match():
    logits = torch.tensor([[30.0, -30.0, 30.0, -30.0, 25.0, -25.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0, 1.0]])
    logits.requires_grad_(True)
    out = sigmoid_focal_loss(logits, targets)
    assert torch.isfinite(out).all()
    # wrong-side confident predictions cost about alpha_t * 30
    assert out[0, 2].item() == pytest.approx(0.75 * 30, rel=1e-4)
    assert out[0, 3].item() == pytest.approx(0.25 * 30, rel=1e-4)
    torch.testing.assert_close(
        out.detach().double(), naive_focal(logits.detach(), targets), rtol=1e-4, atol=1e-6
    )
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_saturated_logits_have_finite_grad_for_small_gamma(gamma):
    # sigmoid(40) == 1.0 exactly in float32, so |t - p| == 0 for t = 1
    logits = torch.tensor([40.0, -40.0], requires_grad=True)
    sigmoid_focal_loss(logits, torch.tensor([1.0, 0.0]), gamma=gamma).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_soft_targets_match_naive():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(20, 5, generator=g) * 3
    targets = torch.rand(20, 5, generator=g)
    out = sigmoid_focal_loss(logits, targets, alpha=0.4, gamma=1.5)
    expected = naive_focal(logits, targets, alpha=0.4, gamma=1.5)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


def test_negative_alpha_disables_alpha_term():
    logits, targets = random_case(seed=5)
    out = sigmoid_focal_loss(logits, targets, alpha=-1.0)
    # independent: (t-p)^2 * ce with no class balancing at all
    torch.testing.assert_close(
        out.double(), naive_focal(logits, targets, alpha=-1.0), rtol=1e-5, atol=1e-6
    )
    # and differs from the default alpha (so the test can tell the two apart)
    assert not torch.allclose(out, sigmoid_focal_loss(logits, targets))


def test_gamma_zero_is_alpha_weighted_bce():
    logits, targets = random_case(seed=7)
    alpha = 0.25
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    bce = F.binary_cross_entropy(torch.sigmoid(logits.double()), targets.double(), reduction="none")
    out = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=0.0)
    torch.testing.assert_close(out.double(), alpha_t.double() * bce, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("in_dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_under_autocast_give_float32(in_dtype):
    logits, targets = random_case(seed=11)
    logits_h, targets_h = logits.to(in_dtype), targets.to(in_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sigmoid_focal_loss(logits_h, targets_h)
    assert out.dtype == torch.float32
    # same (exactly representable) values computed in float32 outside autocast
    torch.testing.assert_close(out, sigmoid_focal_loss(logits_h.float(), targets_h.float()))


def test_any_shape_and_reductions():
    g = torch.Generator().manual_seed(13)
    logits = torch.randn(2, 3, 5, generator=g)
    targets = (torch.rand(2, 3, 5, generator=g) > 0.7).float()
    full = sigmoid_focal_loss(logits, targets)
    assert full.shape == (2, 3, 5)
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, reduction="sum"), full.sum())
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, reduction="mean"), full.mean())
    torch.testing.assert_close(
        sigmoid_focal_loss(logits, targets, reduction="mean", avg_factor=4.0), full.sum() / 4
    )


def test_weight_and_avg_factor():
    logits, targets = random_case(n=6, c=3, seed=17)
    weight = torch.tensor([1.0, 0.0, 2.0, 1.0, 0.5, 0.0]).unsqueeze(1)  # per anchor
    full = sigmoid_focal_loss(logits, targets)
    out = sigmoid_focal_loss(logits, targets, reduction="mean", weight=weight, avg_factor=3)
    torch.testing.assert_close(out, (full * weight).sum() / 3)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        sigmoid_focal_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        sigmoid_focal_loss(torch.zeros(2, 3), torch.zeros(2, 3), gamma=-1.0)
    with pytest.raises(ValueError):
        sigmoid_focal_loss(torch.zeros(2, 3), torch.zeros(2, 3), reduction="avg")
