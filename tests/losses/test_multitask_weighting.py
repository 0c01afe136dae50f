"""UncertaintyWeighting and DWA on scripted losses with hand-computed weights and gradients."""
import math

import pytest
import torch

from losses.weighting.multitask import DWA, UncertaintyWeighting


def D(**values):
    return {k: torch.tensor(float(v)) for k, v in values.items()}


def feed(strategy, seq):
    return [float(strategy(D(**x))) for x in seq]


# ------------------------------------------------------------------------------------ Uncertainty

def test_uncertainty_total_and_other_keys():
    u = UncertaintyWeighting(["a", "b"])
    # s = 0: exp(0) * 2 + 0 + exp(0) * 3 + 0 + other 5 = 10
    assert float(u(D(a=2, b=3, other=5)).detach()) == pytest.approx(10.0)
    with torch.no_grad():
        u.log_var("a").fill_(math.log(2.0))
    # exp(-log 2) * 2 + log 2 + 3 + 5 = 1 + 0.6931 + 8
    assert float(u(D(a=2, b=3, other=5)).detach()) == pytest.approx(9.0 + math.log(2.0))
    assert u.weights == pytest.approx({"a": 0.5, "b": 1.0})
    assert u.weight_of("other") == 1.0


def test_uncertainty_gradient_is_one_minus_weighted_loss():
    u = UncertaintyWeighting(["a", "b"])
    with torch.no_grad():
        u.log_var("a").fill_(0.5)
        u.log_var("b").fill_(-1.0)
    la = torch.tensor(3.0, requires_grad=True)
    u({"a": la, "b": torch.tensor(0.2), "c": torch.tensor(7.0)}).backward()
    # d/ds_a = 1 - exp(-0.5) * 3 = 1 - 0.60653 * 3 = -0.81959
    assert float(u.log_var("a").grad) == pytest.approx(1 - math.exp(-0.5) * 3.0)
    assert float(u.log_var("a").grad) == pytest.approx(-0.81959, abs=1e-5)
    # d/ds_b = 1 - exp(1) * 0.2 = 1 - 0.54366 = 0.45634
    assert float(u.log_var("b").grad) == pytest.approx(0.45634, abs=1e-5)
    # and the loss itself is scaled by exp(-s_a) = 0.60653
    assert float(la.grad) == pytest.approx(math.exp(-0.5))


def test_uncertainty_optimizer_moves_weights_towards_inverse_loss():
    u = UncertaintyWeighting(["a", "b"], init_log_var=0.0)
    opt = torch.optim.SGD(u.parameters(), lr=0.1)
    losses = D(a=4.0, b=0.25)  # optimum exp(-s) = 1/L: a -> 0.25, b -> 4
    gaps = []
    for _ in range(300):
        opt.zero_grad()
        u(losses).backward()
        opt.step()
        w = u.weights
        gaps.append(abs(w["a"] - 0.25) + abs(w["b"] - 4.0))
    assert all(later <= earlier + 1e-12 for earlier, later in zip(gaps, gaps[1:]))
    assert u.weights == pytest.approx({"a": 0.25, "b": 4.0}, rel=1e-3)
    assert len(list(u.parameters())) == 2


def test_uncertainty_state_dict_round_trip():
    u = UncertaintyWeighting(["a", "b"], init_log_var=0.3)
    with torch.no_grad():
        u.log_var("b").fill_(-0.7)
    state = u.state_dict()
    with torch.no_grad():
        u.log_var("b").fill_(5.0)  # the saved state is a copy
    assert float(state["log_vars"]["b"]) == pytest.approx(-0.7)
    v = UncertaintyWeighting(["a", "b"])
    v.load_state_dict(state)
    assert v.weights == pytest.approx({"a": math.exp(-0.3), "b": math.exp(0.7)})
    assert v.log_var("a").requires_grad


def test_uncertainty_unknown_key():
    with pytest.raises(KeyError, match="loss_bbox"):
        UncertaintyWeighting(["loss_cls", "loss_bbox"])(D(loss_cls=1.0, loss_box=1.0))
    with pytest.raises(ValueError):
        UncertaintyWeighting(["a.b"])


# --------------------------------------------------------------------------------------------- DWA

def test_dwa_hand_computed_windows():
    dwa = DWA(["a", "b"], interval=3, temperature=2.0)
    # window 1: means a 2, b 1 -> no ratio yet, weights stay 1
    assert feed(dwa, [dict(a=2, b=1, c=5)] * 3) == [8.0] * 3
    assert dwa.weights == {"a": 1.0, "b": 1.0}
    # window 2: means a 1, b 1 -> r = [1/2, 1/1]; w = 2 * softmax([0.25, 0.5])
    totals = feed(dwa, [dict(a=1, b=1, c=5)] * 3)
    assert totals == [7.0] * 3  # weights 1 for the first two windows, completing step included
    wa = 2 / (1 + math.exp(0.25))  # 2 / 2.28403 = 0.87564
    assert dwa.weights == pytest.approx({"a": wa, "b": 2 - wa})
    assert dwa.weights["a"] == pytest.approx(0.87564, abs=1e-5)
    # window 3 step 1: 0.87564 * 2 + 1.12436 * 1 + 5 = 7.87564 (c keeps weight 1)
    assert float(dwa(D(a=2, b=1, c=5))) == pytest.approx(2 * wa + (2 - wa) + 5)
    # window 3 raw means: a (2 + 0 + 1) / 3 = 1, b (1 + 3 + 2) / 3 = 2 -> r = [1/1, 2/1]
    feed(dwa, [dict(a=0, b=3, c=5), dict(a=1, b=2, c=5)])
    wa = 2 / (1 + math.exp(0.5))  # 2 * softmax([0.5, 1])[0] = 2 / 2.64872 = 0.75508
    assert dwa.weights == pytest.approx({"a": wa, "b": 2 - wa})


def test_dwa_three_keys_temperature():
    dwa = DWA(["a", "b", "c"], interval=2, temperature=1.0)
    feed(dwa, [dict(a=1, b=2, c=4)] * 2)
    feed(dwa, [dict(a=1, b=1, c=1)] * 2)  # r = [1, 0.5, 0.25]
    z = math.e + math.exp(0.5) + math.exp(0.25)  # 2.71828 + 1.64872 + 1.28403 = 5.65103
    assert dwa.weights == pytest.approx({"a": 3 * math.e / z, "b": 3 * math.exp(0.5) / z,
                                         "c": 3 * math.exp(0.25) / z})
    assert sum(dwa.weights.values()) == pytest.approx(3.0)


def test_dwa_state_dict_round_trip_mid_window():
    seq = [dict(a=3 - 0.1 * i, b=1 + (i % 3), x=2) for i in range(13)]
    ref = DWA(["a", "b"], interval=3)
    ref_totals = feed(ref, seq)
    first = DWA(["a", "b"], interval=3)
    totals = feed(first, seq[:8])  # two windows done (weights set), two values into the third
    state = first.state_dict()
    assert state["count"] == 2 and state["prev_means"] is not None
    second = DWA(["a", "b"], interval=3)
    second.load_state_dict(state)
    totals += feed(second, seq[8:])
    assert totals == ref_totals and second.weights == ref.weights


def test_dwa_no_host_sync_between_boundaries(host_reads):
    dwa = DWA(["a", "b"], interval=4)
    feed(dwa, [dict(a=4 - i, b=1) for i in range(8)])  # two windows: weights now differ from 1
    losses = [D(a=1 + i, b=2) for i in range(3)]
    calls = host_reads()
    for x in losses:
        dwa(x)
    assert calls == []
    dwa(D(a=1, b=2))
    assert calls


def test_dwa_unknown_key_and_bad_args():
    with pytest.raises(KeyError, match="loss_iou"):
        DWA(["loss_cls", "loss_iou"])(D(loss_cls=1.0, loss_bbox=1.0))
    with pytest.raises(ValueError, match="temperature"):
        DWA(["a"], temperature=0)
