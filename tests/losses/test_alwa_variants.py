"""ALWA's study variants (start_iter, first_window: skip, stats: raw) and its per-window records, on a scripted
stream whose first window is a transient, as a detector's first steps are: hand-computed λ sequences."""
import math

import pytest
import torch

from losses.weighting import ALWA

# steps 1-2: the transient (cls 100 then 0); then cls alternates 1, 3 and reg 1, 2 (every window the same)
STREAM = [(100.0, 1.0), (0.0, 1.0)] + [(1.0, 1.0), (3.0, 2.0)] * 4
SQRT2, HALF_SQRT2 = math.sqrt(2.0), math.sqrt(0.5)  # sample stds of [1, 3] and [1, 2]


def run(**kw):
    alwa = ALWA(variant=2, interval=2, **kw)
    lambdas = []
    for cls, reg in STREAM:
        alwa({"loss_cls": torch.tensor(cls), "loss_bbox": torch.tensor(reg)})
        lambdas.append(alwa.lambda_cls)
    return alwa, lambdas


def test_the_released_rule_is_decided_by_the_first_window():
    """Window 1 (100, 0 against 1, 1): CLS = 70.7 > REG = 0, λcls = 0; after that λcls·L is 0 and the rule
    never fires again: one cut, by the transient."""
    alwa, lambdas = run()
    assert lambdas == [1.0, 0.0] + [0.0] * 8
    records = alwa.pop_window_records()
    assert [r["fired"] for r in records] == [True, False, False, False, False]
    assert records[0]["cls_stat"] == pytest.approx(100 / SQRT2) and records[0]["reg_stat"] == 0.0
    assert records[1]["cls_stat"] == 0.0 and records[1]["reg_stat"] == pytest.approx(HALF_SQRT2)
    assert [r["step"] for r in records] == [2, 4, 6, 8, 10] and alwa.pop_window_records() == []


def test_start_iter_records_nothing_before_it():
    """start_iter 2: the transient is never recorded; the first window is steps 3-4 (CLS √2 > REG √½: λcls =
    ½), then λcls·L = (½, 3/2) has CLS = √½ = REG, not greater: λcls stays ½."""
    alwa, lambdas = run(start_iter=2)
    assert lambdas == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    records = alwa.pop_window_records()
    assert [r["step"] for r in records] == [4, 6, 8, 10] and [r["fired"] for r in records] == [True, False, False, False]
    assert records[0]["cls_stat"] == pytest.approx(SQRT2) and records[1]["cls_stat"] == pytest.approx(HALF_SQRT2)


def test_first_window_skip_drops_only_the_first_update():
    alwa, lambdas = run(first_window="skip")
    assert lambdas == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    records = alwa.pop_window_records()
    assert records[0]["skipped"] and not records[0]["fired"] and not records[0]["changed"]
    assert records[1]["fired"] and records[1]["changed"] and records[1]["lambda_cls"] == 0.5


def test_raw_statistics_let_lambda_follow_the_raw_losses():
    """stats raw: every window compares the raw losses. Window 1 sets λcls = 0 (70.7 vs 0); windows 2-5 compare
    √2 with √½ and set λcls = ½ each time: λ recovers from the transient."""
    alwa, lambdas = run(stats="raw")
    assert lambdas == [1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert [r["fired"] for r in alwa.pop_window_records()] == [True] * 5


def test_the_variants_survive_a_checkpoint():
    alwa, _ = run(start_iter=3)
    copy = ALWA(variant=2, interval=2, start_iter=3)
    copy.load_state_dict(alwa.state_dict())
    assert copy.steps_seen == 10 and copy.lambda_cls == alwa.lambda_cls
    with pytest.raises(ValueError, match="first_window must be 'use' or 'skip'"):
        ALWA(first_window="drop")
    with pytest.raises(ValueError, match="start_iter must be >= 0"):
        ALWA(start_iter=-1)
