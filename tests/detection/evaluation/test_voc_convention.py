"""Our VOC boxes are continuous extents (x1 = xmin - 1); evaluating them with legacy_coords=False must
reproduce the devkit's +1 evaluation of the raw 1-based numbers exactly."""
import numpy as np

from detection.evaluation.voc import voc_map


def to_devkit(boxes):
    out = boxes.copy()
    out[:, :2] += 1  # continuous x1 -> 1-based first pixel; x2 is already the 1-based last pixel
    return out


def test_continuous_frame_equals_devkit_legacy():
    rng = np.random.default_rng(0)
    dets, gts, dets_dk, gts_dk = [], [], [], []
    for _ in range(40):
        m = rng.integers(1, 5)
        xy = rng.uniform(0, 80, (m, 2))
        g = np.concatenate([xy, xy + rng.uniform(3, 40, (m, 2))], 1).astype(np.float64)
        labels = rng.integers(0, 3, m)
        n = rng.integers(0, 8)
        pick = rng.integers(0, m, n)
        d = g[pick] + rng.normal(0, 3, (n, 4))
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        det = dict(boxes=d, scores=rng.uniform(size=n), labels=labels[pick])
        ann = dict(boxes=g, labels=labels, difficult=rng.uniform(size=m) < 0.1)
        dets.append(det)
        gts.append(ann)
        dets_dk.append(dict(det, boxes=to_devkit(d)))
        gts_dk.append(dict(ann, boxes=to_devkit(g)))
    for metric in ("11point", "area"):
        ours = voc_map(dets, gts, 3, metric=metric, legacy_coords=False)
        devkit = voc_map(dets_dk, gts_dk, 3, metric=metric, legacy_coords=True)
        assert np.allclose(ours["AP"], devkit["AP"], atol=1e-12)
        # and the +1 on already-continuous boxes is a different (looser) evaluation
        double = voc_map(dets, gts, 3, metric=metric, legacy_coords=True)
        assert not np.allclose(double["AP"], ours["AP"])
