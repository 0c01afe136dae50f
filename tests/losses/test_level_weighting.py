"""AVW and RLO (per-level weighting, reconstructions) on scripted loss sequences with hand-computed λ."""
import math

import pytest
import torch

from losses.weighting.level import AVW, RLO


def D(**values):
    return {k: torch.tensor(float(v)) for k, v in values.items()}


def feed(strategy, seq):
    return [float(strategy(D(**x))) for x in seq]


# Window of interval 3 used by several tests:
#   a [1, 2, 3]: mean 2, squared deviations 1 + 0 + 1 = 2, sample variance 2/2 = 1
#   b [1, 1, 4]: mean 2, squared deviations 1 + 1 + 4 = 6, sample variance 6/2 = 3
#   c [2, 2, 2]: variance 0
#   d [1, 3, 5]: mean 3, squared deviations 4 + 0 + 4 = 8, sample variance 4
WIN1 = [dict(a=1, b=1, c=2, d=1, e=10), dict(a=2, b=1, c=2, d=3, e=10), dict(a=3, b=4, c=2, d=5, e=10)]


def test_avw_two_groups_hand_computed():
    avw = AVW(groups=[["a", "b"], ["c", "d"]], interval=3)
    totals = feed(avw, WIN1)
    # all weights 1 in window 1, including the completing step: 1+1+2+1+10, 2+1+2+3+10, 3+4+2+5+10
    assert totals == [15.0, 18.0, 24.0]
    # group [a, b]: w = 2 * v / (1 + 3) -> a 0.5, b 1.5; group [c, d]: 2 * [0, 4] / 4 -> c 0, d 2
    assert avw.weights == pytest.approx({"a": 0.5, "b": 1.5, "c": 0.0, "d": 2.0})
    assert avw.weight_of("e") == 1.0  # outside the groups
    # next step: 0.5*1 + 1.5*1 + 0*2 + 2*1 + 10 = 14
    assert float(avw(D(a=1, b=1, c=2, d=1, e=10))) == pytest.approx(14.0)


def test_avw_momentum_and_clipping_three_keys():
    avw = AVW(["x", "y", "z"], interval=3, momentum=0.5, w_max=1.5)
    # x [0,0,0] var 0; y [0,1,2] var 1; z [0,2,4] var 4; sum 5 -> targets 3*[0, .2, .8] = [0, .6, 2.4]
    # smoothed 0.5*1 + 0.5*t = [0.5, 0.8, 1.7]; clipped at 1.5 -> [0.5, 0.8, 1.5]
    feed(avw, [dict(x=0, y=0, z=0), dict(x=0, y=1, z=2), dict(x=0, y=2, z=4)])
    assert avw.weights == pytest.approx({"x": 0.5, "y": 0.8, "z": 1.5})
    # window 2: x [0,3,6] var 9, y and z constant -> targets [3, 0, 0]
    # smoothed 0.5*[0.5, 0.8, 1.5] + 0.5*[3, 0, 0] = [1.75, 0.4, 0.75]; clipped -> [1.5, 0.4, 0.75]
    totals = feed(avw, [dict(x=0, y=1, z=1), dict(x=3, y=1, z=1), dict(x=6, y=1, z=1)])
    # completing step still uses the old weights: 0.5*6 + 0.8*1 + 1.5*1 = 5.3
    assert totals[2] == pytest.approx(5.3)
    assert avw.weights == pytest.approx({"x": 1.5, "y": 0.4, "z": 0.75})


def test_avw_constant_losses_keep_weight_one():
    avw = AVW(["a", "b"], interval=2)
    feed(avw, [dict(a=1, b=2), dict(a=1, b=2)])  # both variances 0 -> sum below eps -> all 1
    assert avw.weights == {"a": 1.0, "b": 1.0} and avw.num_updates == 1


def test_avw_unknown_key_and_bad_args():
    with pytest.raises(KeyError, match="loss_cls_p9"):
        AVW(["loss_cls_p3", "loss_cls_p9"])(D(loss_cls_p3=1, loss_cls_p4=1))
    with pytest.raises(ValueError, match="interval"):
        AVW(["a", "b"], interval=1)
    with pytest.raises(ValueError, match="twice"):
        AVW(groups=[["a", "b"], ["b", "c"]])
    with pytest.raises(ValueError, match="exactly one"):
        AVW()


SEQ = [dict(a=1 + (i * 7 % 5), b=2 + (i * 3 % 4), c=0.5 * i, e=1) for i in range(14)]


def test_avw_state_dict_round_trip_mid_window():
    ref = AVW(groups=[["a", "b", "c"]], interval=3)
    ref_totals = feed(ref, SEQ)
    a = AVW(groups=[["a", "b", "c"]], interval=3)
    totals = feed(a, SEQ[:7])  # two windows done, one value into the third
    state = a.state_dict()
    assert state["count"] == 1 and state["window"].shape == (1, 3)
    b = AVW(groups=[["a", "b", "c"]], interval=3)
    b.load_state_dict(state)
    totals += feed(b, SEQ[7:])
    assert totals == ref_totals and b.weights == ref.weights


@pytest.mark.parametrize("make", [lambda: AVW(["a", "b"], interval=4),
                                  lambda: RLO(["a", "b"], interval=4, seed=3)])
def test_no_host_sync_between_boundaries(host_reads, make):
    strategy = make()
    feed(strategy, [dict(a=1 + i, b=2 * i) for i in range(4)])  # a full window before spying
    losses = [D(a=1 + i, b=3 - i) for i in range(3)]
    calls = host_reads()
    for x in losses:
        strategy(x)  # no float() on the total here: that read would be the test's own
    assert calls == []  # three steps inside the second window: nothing read on the host
    strategy(D(a=9, b=0))
    assert calls  # the boundary reads the window


# ----------------------------------------------------------------------------------------------- RLO

@pytest.mark.parametrize("scheme, expected", [
    ("equal", {"a": 1.0, "b": 1.0}),
    ("avw", {"a": 0.5, "b": 1.5}),               # 2 * [1, 3] / 4
    ("inverse_variance", {"a": 1.5, "b": 0.5}),  # 1/v = [1, 1/3], sum 4/3 -> 2 * [3/4, 1/4]
    ("small_level", {"a": 4 / 3, "b": 2 / 3}),   # 2^-i = [1, 1/2], sum 3/2 -> 2 * [2/3, 1/3]
])
def test_rlo_single_scheme_weights(scheme, expected):
    rlo = RLO(["a", "b"], schemes=(scheme,), interval=3)
    totals = feed(rlo, [dict(a=x["a"], b=x["b"], e=10) for x in WIN1])
    assert totals == [12.0, 13.0, 17.0]  # weights 1 during window 1: 1+1+10, 2+1+10, 3+4+10
    assert rlo.current_scheme == scheme and rlo.policy == [1.0]
    assert rlo.weights == pytest.approx(expected)
    assert rlo.weight_of("e") == 1.0


def test_rlo_small_level_three_keys_per_group():
    rlo = RLO(groups=[["p3", "p4", "p5"], ["q3", "q4"]], schemes=("small_level",), interval=2)
    feed(rlo, [dict(p3=1, p4=1, p5=1, q3=1, q4=1)] * 2)
    # 2^-i = [1, 1/2, 1/4], sum 7/4 -> 3 * [4/7, 2/7, 1/7]; second group 2 * [2/3, 1/3]
    assert rlo.weights == pytest.approx({"p3": 12 / 7, "p4": 6 / 7, "p5": 3 / 7, "q3": 4 / 3, "q4": 2 / 3})


def test_rlo_reward_update_hand_computed():
    rlo = RLO(["a", "b"], schemes=("equal", "avw"), interval=2, lr=0.5)
    feed(rlo, [dict(a=1, b=1), dict(a=3, b=1)])  # M1 = mean(2, 4) = 3; no reward yet
    assert rlo.preferences.tolist() == [0.0, 0.0]
    act = rlo.current
    feed(rlo, [dict(a=1, b=0.5), dict(a=1, b=0.5)])  # M2 = 1.5 -> r = (3 - 1.5) / 3 = 0.5
    # baseline 0 -> h[act] += 0.5 * 0.5 * (1 - 0.5) = 0.125, the other -= 0.125
    expected = [-0.125, -0.125]
    expected[act] = 0.125
    assert rlo.preferences.tolist() == pytest.approx(expected)
    assert rlo.baseline == pytest.approx(0.5)
    # pi[act] = e^.125 / (e^.125 + e^-.125) = sigmoid(0.25) = 0.5622
    assert rlo.policy[act] == pytest.approx(1 / (1 + math.exp(-0.25)))


def test_rlo_reinforce_with_baseline_and_temperature():
    rlo = RLO(["a"], schemes=("equal", "avw", "small_level"), lr=1.0, temperature=2.0)
    rlo.reinforce(1, 0.3)  # pi = 1/3 each, baseline 0: h = 0.3 * ([0, 1, 0] - 1/3) = [-0.1, 0.2, -0.1]
    assert rlo.preferences.tolist() == pytest.approx([-0.1, 0.2, -0.1])
    assert rlo.baseline == pytest.approx(0.3)
    rlo.reinforce(0, 0.1)  # advantage 0.1 - 0.3 = -0.2, pi = softmax(h / 2) = softmax([-0.05, 0.1, -0.05])
    z = 2 * math.exp(-0.05) + math.exp(0.1)
    pi = [math.exp(-0.05) / z, math.exp(0.1) / z, math.exp(-0.05) / z]  # [0.3167, 0.3666, 0.3167]
    assert rlo.preferences.tolist() == pytest.approx(
        [-0.1 - 0.2 * (1 - pi[0]), 0.2 + 0.2 * pi[1], -0.1 + 0.2 * pi[2]])
    assert rlo.baseline == pytest.approx(0.2)  # mean of 0.3 and 0.1
    assert sum(rlo.policy) == pytest.approx(1.0)


def test_rlo_preferences_follow_scripted_rewards():
    rlo = RLO(["a"], schemes=("equal", "avw", "inverse_variance", "small_level"), lr=0.5)
    reward = {0: -0.02, 1: 0.10, 2: 0.0, 3: -0.05}  # "avw" is the best arm
    for _ in range(50):
        for arm in range(4):
            rlo.reinforce(arm, reward[arm])
    pi = rlo.policy
    assert sum(pi) == pytest.approx(1.0)
    assert pi[1] == max(pi) and pi[1] > 0.5
    assert rlo.preferences[3] == rlo.preferences.min()


def _environment(rlo, windows, interval=3):
    """Scripted training: the loss falls 20 % per window under 'avw' and rises 5 % under any other scheme."""
    level, schemes = 1.0, []
    for _ in range(windows):
        for i in range(interval):
            rlo(D(a=level * (1 + 0.1 * i), b=0.5 * level))
        schemes.append(rlo.current_scheme)
        level *= 0.8 if rlo.current_scheme == "avw" else 1.05
    return schemes


def test_rlo_learns_the_rewarding_scheme_end_to_end():
    rlo = RLO(["a", "b"], interval=3, lr=2.0, seed=0)
    schemes = _environment(rlo, 60)
    assert rlo.policy[rlo.schemes.index("avw")] > 0.6
    assert schemes[-20:].count("avw") >= 12


def test_rlo_deterministic_given_seed():
    s0 = _environment(RLO(["a", "b"], interval=3, seed=0), 20)
    assert s0 == _environment(RLO(["a", "b"], interval=3, seed=0), 20)
    assert s0 != _environment(RLO(["a", "b"], interval=3, seed=1), 20)


def test_rlo_state_dict_round_trip_mid_window():
    seq = [dict(a=1 + (i * 7 % 5) * 0.9 ** i, b=2 + (i * 3 % 4), e=1) for i in range(40)]
    ref = RLO(["a", "b"], interval=3, lr=1.0, seed=5)
    ref_totals = feed(ref, seq)
    a = RLO(["a", "b"], interval=3, lr=1.0, seed=5)
    totals = feed(a, seq[:20])  # six windows done, two values into the seventh
    state = a.state_dict()
    assert state["count"] == 2
    b = RLO(["a", "b"], interval=3, lr=1.0, seed=99)  # the seed is overwritten by the generator state
    b.load_state_dict(state)
    totals += feed(b, seq[20:])
    assert totals == ref_totals
    assert b.preferences.tolist() == ref.preferences.tolist() and b.current == ref.current


def test_rlo_unknown_key_and_bad_args():
    with pytest.raises(KeyError, match="loss_bbox_p7"):
        RLO(["loss_bbox_p3", "loss_bbox_p7"])(D(loss_bbox_p3=1.0))
    with pytest.raises(ValueError, match="schemes"):
        RLO(["a"], schemes=("equal", "bogus"))
    with pytest.raises(ValueError, match="temperature"):
        RLO(["a"], temperature=0.0)
