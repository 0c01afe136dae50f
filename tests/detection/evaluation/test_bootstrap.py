"""Paired bootstrap of VOC mAP: the weighted resample equals voc_map on the expanded image list; identical runs
give an interval of exactly 0; a run missing a share of its true positives lies outside the interval."""
import numpy as np
import pytest
import torch

from detection.evaluation.bootstrap import match_tables, paired_bootstrap, paired_bootstrap_mean, resampled_map
from detection.evaluation.voc import voc_map


def scene(n=60, seed=0):
    """n images with 1-3 objects of 2 classes; detections: jittered hits, some misses and false alarms."""
    rng = np.random.default_rng(seed)
    dets, anns = [], []
    for _ in range(n):
        k = rng.integers(1, 4)
        xy = rng.uniform(0, 80, (k, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(10, 30, (k, 2))], 1)
        labels = rng.integers(0, 2, k)
        anns.append({"boxes": boxes, "labels": labels, "difficult": rng.random(k) < 0.1})
        hit = rng.random(k) < 0.8
        det = boxes[hit] + rng.normal(0, 2, (hit.sum(), 4))
        fa = rng.uniform(0, 80, (rng.integers(0, 2), 2))
        det = np.concatenate([det, np.concatenate([fa, fa + 15], 1)])
        dets.append({"boxes": det, "scores": rng.random(len(det)),
                     "labels": np.concatenate([labels[hit], rng.integers(0, 2, len(fa))])})
    return dets, anns


@pytest.mark.parametrize("metric", ["11point", "area"])
def test_weighted_resample_equals_voc_map_of_the_expanded_list(metric):
    dets, anns = scene()
    tables, npos = match_tables(dets, anns, 2)
    counts = torch.zeros(1, len(dets))
    draw = np.random.default_rng(1).integers(0, len(dets), len(dets))
    np.add.at(counts[0].numpy(), draw, 1)
    # the expanded list: every drawn image as many times as drawn, in image order
    order = np.repeat(np.arange(len(dets)), counts[0].numpy().astype(int))
    want = voc_map([dets[i] for i in order], [anns[i] for i in order], 2, metric=metric, legacy_coords=False)["mAP"]
    got = float(resampled_map(tables, npos, counts, metric))
    assert got == pytest.approx(want, abs=1e-12)
    full = voc_map(dets, anns, 2, metric=metric, legacy_coords=False)["mAP"]
    assert float(resampled_map(tables, npos, torch.ones(1, len(dets)), metric)) == pytest.approx(full, abs=1e-12)


def test_identical_runs_give_an_interval_of_exactly_zero():
    dets, anns = scene()
    run = dict(zip(("tables", "npos"), match_tables(dets, anns, 2)))
    out = paired_bootstrap(run, run, n=200)
    assert out["diff"] == out["low"] == out["high"] == 0.0 and out["b_better"] == 0.0


def test_a_run_missing_a_third_of_its_detections_is_outside_the_interval():
    dets, anns = scene(n=120)
    rng = np.random.default_rng(5)
    weaker = [{k: v[keep] for k, v in d.items()} for d in dets for keep in [rng.random(len(d["scores"])) > 0.33]]
    a = dict(zip(("tables", "npos"), match_tables(dets, anns, 2)))
    b = dict(zip(("tables", "npos"), match_tables(weaker, anns, 2)))
    out = paired_bootstrap(a, b, n=300, seed=2)
    assert out["diff"] < 0 and out["high"] < 0 and out["low"] <= out["diff"] <= out["high"]
    assert out["b_better"] < 0.025
    with pytest.raises(ValueError, match="not evaluated on the same test images"):
        paired_bootstrap(a, dict(zip(("tables", "npos"), match_tables(dets[1:], anns[1:], 2))), n=10)


def test_compare_reports_the_interval_of_every_paired_cell(tmp_path):
    """Two schemes x two seeds: the cell is the mean difference over the seeds, with the bootstrap interval;
    an identical scheme gives exactly 0."""
    import os
    import pickle

    from detection.experiments.compare import GridRun, bootstrap_markdown

    dets, anns = scene(n=80)
    rng = np.random.default_rng(3)
    runs = []
    for scheme in ("fixed", "same", "worse"):
        # both seeds of a scheme give the same detections: no spread between seeds
        kept = dets if scheme != "worse" else [{k: v[m] for k, v in d.items()} for d in dets
                                               for m in [rng.random(len(d["scores"])) > 0.4]]
        for seed in (0, 1):
            work = tmp_path / scheme / str(seed)
            os.makedirs(work)
            with open(work / "detections.pkl", "wb") as f:
                pickle.dump({"format": "voc", "detections": kept, "annotations": anns, "classes": ["a", "b"],
                             "iou_thr": 0.5, "metric": "11point", "legacy_coords": False}, f)
            runs.append(GridRun(None, scheme, seed, str(work), ()))
    text = bootstrap_markdown(runs, n=100)
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[3:8]]
            for line in text.splitlines() if line.startswith("| all |")}
    assert sorted(rows) == ["same", "worse"]
    assert rows["same"] == ["2", "+0.0000", "[+0.0000, +0.0000]", "[+0.0000, +0.0000]", "[+0.0000, +0.0000]"]
    pairs, diff, *intervals = rows["worse"]
    assert pairs == "2"
    for cell in intervals:
        lo, hi = (float(x) for x in cell.strip("[]").split(","))
        assert lo <= float(diff) <= hi
    # no seed spread: the t-interval is a point and drawing seeds changes nothing in the bootstrap
    assert intervals[2] == f"[{diff}, {diff}]" and intervals[1] == intervals[0]
    assert float(intervals[0].strip("[]").split(",")[1]) < 0
    os.unlink(tmp_path / "worse" / "1" / "detections.pkl")
    assert bootstrap_markdown(runs, n=10) == ""  # a run without detections: no table


def _weakened(dets, drop, seed):
    rng = np.random.default_rng(seed)
    return [{k: v[keep] for k, v in d.items()} for d in dets for keep in [rng.random(len(d["scores"])) > drop]]


def test_seed_intervals_cover_the_spread_between_seeds_that_the_image_interval_ignores():
    """Three seed pairs whose differences disagree in sign: the image-only interval of the mean is narrow, the
    t-interval is the hand formula mean ± t(0.975, 2) sd / sqrt(3) and contains 0, and the two-level bootstrap
    lies between the smallest and largest pair difference."""
    import statistics

    dets, anns = scene(n=120)
    full = dict(zip(("tables", "npos"), match_tables(dets, anns, 2)))
    weak = [dict(zip(("tables", "npos"), match_tables(_weakened(dets, 0.3, s), anns, 2))) for s in (1, 2)]
    # seed 0: B is weaker; seed 1: A is weaker; seed 2: B weaker by a different draw
    pairs = [(full, weak[0]), (weak[1], full), (full, weak[1])]
    out = paired_bootstrap_mean(pairs, n=300, seed=4)
    d = out["pair_diffs"]
    assert len(d) == 3 and d[0] < 0 < d[1] and d[2] < 0
    assert out["diff"] == pytest.approx(statistics.fmean(d))
    half = 4.302652729911275 * statistics.stdev(d) / 3 ** 0.5
    assert (out["t_low"], out["t_high"]) == pytest.approx((out["diff"] - half, out["diff"] + half), abs=1e-9)
    assert out["t_low"] < 0 < out["t_high"]
    assert min(d) - 0.05 <= out["seeds_low"] <= out["seeds_high"] <= max(d) + 0.05
    assert out["seeds_high"] - out["seeds_low"] > out["high"] - out["low"]
    # one pair: the seed intervals are not defined, and the image interval is that of paired_bootstrap
    one = paired_bootstrap_mean(pairs[:1], n=300, seed=4)
    assert "t_low" not in one and "seeds_low" not in one
    assert (one["low"], one["high"]) == (paired_bootstrap(full, weak[0], n=300, seed=4)["low"],
                                         paired_bootstrap(full, weak[0], n=300, seed=4)["high"])


def test_significance_script_takes_seed_pairs_and_prints_the_seed_intervals(tmp_path, capsys, script):
    import pickle

    dets, anns = scene(n=60)
    paths = []
    for name, kept in (("a0", dets), ("b0", _weakened(dets, 0.3, 1)), ("a1", dets), ("b1", _weakened(dets, 0.3, 2))):
        paths.append(str(tmp_path / f"{name}.pkl"))
        with open(paths[-1], "wb") as f:
            pickle.dump({"format": "voc", "detections": kept, "annotations": anns, "classes": ["a", "b"],
                         "iou_thr": 0.5, "metric": "area", "legacy_coords": False}, f)
    module = script("significance")
    out = module.main(paths + ["-n", "60"])
    with pytest.raises(SystemExit) as stop:
        module.main(paths[:3])
    assert stop.value.code == 2
    text = capsys.readouterr()
    assert "runs come in pairs (A B [A B ...]); got 3 paths" in text.err
    assert out["pairs"] == 2 and out["diff"] == pytest.approx(sum(out["pair_diffs"]) / 2)
    assert f"seeds: 95% paired t-interval [{out['t_low']:+.4f}, {out['t_high']:+.4f}] (1 degree of freedom)" in text.out
    assert "per pair: " + ", ".join(f"{d:+.4f}" for d in out["pair_diffs"]) in text.out


def test_significance_vs_compares_unpaired_groups_with_welch(tmp_path, capsys, script):
    """--vs: each run's mAP on the full test set (that of the VOC evaluator), Welch's interval from those
    values, and one line for runs of other classes."""
    import pickle
    import statistics

    from detection.evaluation.intervals import welch_t_interval

    dets, anns = scene(n=60)
    paths, maps = [], []
    for name, drop, seed in (("a0", 0.0, 0), ("a1", 0.1, 1), ("b0", 0.3, 2), ("b1", 0.4, 3), ("b2", 0.35, 4)):
        paths.append(str(tmp_path / f"{name}.pkl"))
        kept = _weakened(dets, drop, seed)
        maps.append(voc_map(kept, anns, 2, metric="area", legacy_coords=False)["mAP"])
        with open(paths[-1], "wb") as f:
            pickle.dump({"format": "voc", "detections": kept, "annotations": anns,
                         "classes": ["a", "b"], "iou_thr": 0.5, "metric": "area", "legacy_coords": False}, f)
    module = script("significance")
    out = module.main(paths[:2] + ["--vs"] + paths[2:])
    assert len(out["a"]) == 2 and len(out["b"]) == 3
    assert out["a"] + out["b"] == pytest.approx(maps, abs=1e-9)
    assert out["diff"] == pytest.approx(statistics.fmean(out["b"]) - statistics.fmean(out["a"]))
    diff, low, high, df = welch_t_interval(out["a"], out["b"])
    assert (out["low"], out["high"], out["df"]) == pytest.approx((low, high, df)) and low < diff < high
    text = capsys.readouterr().out
    assert f"seeds: 95% Welch t-interval [{low:+.4f}, {high:+.4f}]" in text and out["diff"] < 0
    one = module.main(paths[:1] + ["--vs"] + paths[2:])  # one run a side: the difference, no interval
    assert one["low"] is None and "no interval" in capsys.readouterr().out
    with open(paths[-1], "wb") as f:
        pickle.dump({"format": "voc", "detections": dets, "annotations": anns, "classes": ["a", "c"],
                     "iou_thr": 0.5, "metric": "area", "legacy_coords": False}, f)
    with pytest.raises(SystemExit) as stop:
        module.main(paths[:2] + ["--vs"] + paths[2:])
    assert "b2.pkl were not evaluated on the same test images" in str(stop.value.code)  # one line, exit 1
