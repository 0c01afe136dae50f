"""Fixed and ALWA weighting on scripted loss sequences with hand-computed λ."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from losses.weighting import ALWA, Fixed


def L(cls, reg):
    return {"loss_cls": torch.tensor(float(cls)), "loss_bbox": torch.tensor(float(reg))}


def feed(strategy, seq):
    totals = []
    for cls, reg in seq:
        totals.append(float(strategy(L(cls, reg))))
    return totals


def test_fixed_weights_and_unlisted_keys():
    w = Fixed({"loss_bbox": 2.0})
    total = w({"loss_cls": torch.tensor(1.5), "loss_bbox": torch.tensor(0.25), "loss_extra": torch.tensor(3.0)})
    assert float(total) == pytest.approx(1.5 + 2.0 * 0.25 + 3.0)
    assert w.weights == {"loss_bbox": 2.0}


def test_fixed_unknown_key_is_an_error():
    w = Fixed({"loss_boxx": 2.0})
    with pytest.raises(KeyError, match="loss_boxx"):
        w(L(1, 1))


def test_alwa2_hand_computed_windows():
    # interval 3, variant 2 (CLS = sample std), statistics of weighted losses.
    alwa = ALWA(variant=2, interval=3, stats="weighted")
    # window 1, λcls = 1: cls [1, 2, 3] -> std 1; reg [1, 1.5, 2] -> std 0.5; 1 > 0.5 -> λ = 1 - 0.5/1 = 0.5
    totals = feed(alwa, [(1, 1), (2, 1.5), (3, 2)])
    assert totals == [2.0, 3.5, 5.0]  # the completing step still uses λ = 1
    assert alwa.weights == {"loss_cls": 0.5, "loss_bbox": 1.0}
    # window 2, λcls = 0.5: raw cls [2, 3, 7] -> weighted [1, 1.5, 3.5], mean 2,
    # squared deviations 1 + 0.25 + 2.25 = 3.5, var 3.5/2, std sqrt(1.75); reg std 0.5
    totals = feed(alwa, [(2, 1), (3, 1.5), (7, 2)])
    assert totals == [2.0, 3.0, 5.5]
    assert alwa.lambda_cls == pytest.approx(1 - (math.sqrt(1.75) - 0.5) / math.sqrt(1.75))
    assert alwa.lambda_reg == 1.0
    # window 3: weighted cls [0.1, 0.1, 0.1] * λ has std 0 < REG -> λ unchanged
    before = alwa.lambda_cls
    feed(alwa, [(0.1, 1), (0.1, 1.5), (0.1, 2)])
    assert alwa.lambda_cls == before


def test_alwa1_uses_mean_plus_std():
    alwa = ALWA(variant=1, interval=3)
    # cls [1, 2, 3]: mean 2 + std 1 = 3; reg [1, 1.5, 2]: 1.5 + 0.5 = 2 -> λ = 1 - (3 - 2)/3 = 2/3
    feed(alwa, [(1, 1), (2, 1.5), (3, 2)])
    assert alwa.lambda_cls == pytest.approx(2 / 3)
    # window 2 at λ = 2/3: raw cls [1, 2, 2] -> weighted [2/3, 4/3, 4/3]: mean 10/9, var (16+4+4)/81/2,
    # std 0.385, CLS 1.496 < REG 2 -> kept
    feed(alwa, [(1, 1), (2, 1.5), (2, 2)])
    assert alwa.lambda_cls == pytest.approx(2 / 3)
    # window 3: raw cls [3, 6, 9] -> weighted [2, 4, 6]: 4 + 2 = 6 > 2 -> λ = 1 - 4/6 = 1/3 (replaces 2/3)
    feed(alwa, [(3, 1), (6, 1.5), (9, 2)])
    assert alwa.lambda_cls == pytest.approx(1 / 3)


def test_alwa_raw_stats_variant():
    alwa = ALWA(variant=2, interval=3, stats="raw")
    feed(alwa, [(1, 1), (2, 1.5), (3, 2)])
    assert alwa.lambda_cls == pytest.approx(0.5)
    # raw cls [2, 4, 6]: std 2 against reg std 0.5 -> 0.25 (the λ in force does not enter the statistics)
    feed(alwa, [(2, 1), (4, 1.5), (6, 2)])
    assert alwa.lambda_cls == pytest.approx(0.25)


def test_alwa_reg_larger_keeps_weight():
    alwa = ALWA(variant=2, interval=2, init_weight=0.75)
    feed(alwa, [(1, 0), (1.1, 5)])  # cls std 0.0707 < reg std 3.54
    assert alwa.weights == {"loss_cls": 0.75, "loss_bbox": 0.75}


def test_alwa_state_dict_round_trip_mid_window():
    seq = [(1, 1), (2, 1.5), (3, 2), (2, 1), (3, 1.5), (7, 2), (1, 2), (5, 1)]
    ref = ALWA(variant=2, interval=3)
    ref_totals = feed(ref, seq)
    a = ALWA(variant=2, interval=3)
    totals = feed(a, seq[:4])  # stop one value into the second window
    state = a.state_dict()
    assert state["count"] == 1 and state["window"].shape == (1, 2)
    b = ALWA(variant=2, interval=3)
    b.load_state_dict(state)
    totals += feed(b, seq[4:])
    assert totals == ref_totals
    assert b.lambda_cls == ref.lambda_cls


def test_alwa_unknown_key_and_bad_args():
    with pytest.raises(KeyError, match="loss_clss"):
        ALWA(cls_keys=["loss_clss"])(L(1, 1))
    with pytest.raises(ValueError, match="variant"):
        ALWA(variant=3)
    with pytest.raises(ValueError, match="interval"):
        ALWA(interval=1)
    with pytest.raises(ValueError, match="disjoint"):
        ALWA(cls_keys=["loss_cls"], reg_keys=["loss_cls"])


def test_alwa_multiple_keys_per_group_and_other_keys_weight_one():
    alwa = ALWA(variant=2, interval=2, cls_keys=["a", "b"], reg_keys=["c"])
    losses = [{"a": torch.tensor(1.0), "b": torch.tensor(1.0), "c": torch.tensor(1.0), "d": torch.tensor(10.0)},
              {"a": torch.tensor(2.0), "b": torch.tensor(3.0), "c": torch.tensor(1.5), "d": torch.tensor(10.0)}]
    for x in losses:
        alwa(x)
    # cls group sums [2, 5]: std 3/sqrt(2); reg [1, 1.5]: std 0.5/sqrt(2) -> λ = 0.5/3
    assert alwa.lambda_cls == pytest.approx(1 / 6)
    assert float(alwa(losses[0])) == pytest.approx(2 / 6 + 1 + 10)


def test_alwa_no_host_sync_between_boundaries(host_reads):
    alwa = ALWA(variant=2, interval=4)
    calls = host_reads()
    for i in range(3):
        alwa(L(1 + i, 1))
    assert calls == []  # three steps inside a window: nothing read on the host
    alwa(L(5, 1))
    assert calls  # the boundary reads the window once


def _stationary(stats, seed=0, windows=30, interval=100):
    g = torch.Generator().manual_seed(seed)
    alwa = ALWA(variant=2, interval=interval, stats=stats)
    lams = []
    for _ in range(windows):
        for _ in range(interval):
            cls = 1.0 + 0.3 * torch.randn((), generator=g)
            reg = 0.5 + 0.1 * torch.randn((), generator=g)
            alwa({"loss_cls": cls, "loss_bbox": reg})
        lams.append(alwa.lambda_cls)
    return lams


def test_alwa_weighted_stats_alternate_raw_stats_settle():
    # raw std ratio REG/CLS = 0.1 / 0.3 = 1/3
    raw = _stationary("raw")
    assert all(0.2 < lam < 0.5 for lam in raw), raw
    weighted = _stationary("weighted")
    high = sum(lam > 0.7 for lam in weighted)
    low = sum(lam < 0.45 for lam in weighted)
    # the new λ is REG/CLS of losses already scaled by the old λ, so it jumps between ~1/3 and ~1
    assert high >= 4 and low >= 4, weighted
    assert max(weighted) - min(weighted) > 0.5 > max(raw) - min(raw)


def _ddp_worker(rank, world, port, results):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    alwa = ALWA(variant=2, interval=2, sync=True)
    # rank 0 sees cls [1, 3], rank 1 sees [5, 7]; reg [1, 1] and [1, 2] on both halves
    seq = [(1, 1), (3, 1)] if rank == 0 else [(5, 1), (7, 2)]
    for cls, reg in seq:
        alwa(L(cls, reg))
    results[rank] = alwa.lambda_cls
    dist.destroy_process_group()


def test_alwa_sync_pools_windows_across_ranks():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, port, results), nprocs=2, join=True)
    pooled_cls = torch.tensor([1.0, 3, 5, 7]).std()
    pooled_reg = torch.tensor([1.0, 1, 1, 2]).std()
    expected = float(pooled_reg / pooled_cls)
    assert results[0] == pytest.approx(expected) and results[1] == pytest.approx(expected)
