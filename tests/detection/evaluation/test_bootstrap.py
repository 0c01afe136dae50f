"""Paired bootstrap of VOC mAP: the weighted resample equals voc_map on the expanded image list; identical runs
give an interval of exactly 0; a run missing a share of its true positives lies outside the interval."""
import numpy as np
import pytest
import torch

from detection.evaluation.bootstrap import match_tables, paired_bootstrap, resampled_map
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
        for seed in (0, 1):
            work = tmp_path / scheme / str(seed)
            os.makedirs(work)
            kept = dets if scheme != "worse" else [{k: v[m] for k, v in d.items()} for d in dets
                                                   for m in [rng.random(len(d["scores"])) > 0.4]]
            with open(work / "detections.pkl", "wb") as f:
                pickle.dump({"format": "voc", "detections": kept, "annotations": anns, "classes": ["a", "b"],
                             "iou_thr": 0.5, "metric": "11point", "legacy_coords": False}, f)
            runs.append(GridRun(None, scheme, seed, str(work), ()))
    text = bootstrap_markdown(runs, n=100)
    row = [line for line in text.splitlines() if line.startswith("| all |")][0]
    same, worse = [c.strip() for c in row.split("|")[2:4]]
    assert same == "+0.0000 [+0.0000, +0.0000]"
    diff, lo, hi = (float(x) for x in worse.replace("[", "").replace("]", "").replace(",", "").split())
    assert lo <= diff <= hi < 0
    os.unlink(tmp_path / "worse" / "1" / "detections.pkl")
    assert bootstrap_markdown(runs, n=10) == ""  # a run without detections: no table
