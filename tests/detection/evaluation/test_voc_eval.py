"""Tests for detection.evaluation.voc.voc_map (PASCAL VOC mAP)."""
import math

import numpy as np
import pytest

from detection.evaluation import voc_map


def det(boxes, scores, labels):
    return {"boxes": np.array(boxes, dtype=np.float64).reshape(-1, 4),
            "scores": np.array(scores, dtype=np.float64),
            "labels": np.array(labels, dtype=np.int64)}


def ann(boxes, labels, difficult=None):
    a = {"boxes": np.array(boxes, dtype=np.float64).reshape(-1, 4),
         "labels": np.array(labels, dtype=np.int64)}
    if difficult is not None:
        a["difficult"] = np.array(difficult, dtype=bool)
    return a


# ---------------------------------------------------------------------------
# Hand-computed case (continuous coordinates, so IoU = plain area ratios).
# Image 0 gts: G1 c0 [0,0,10,10]; G2 c0 [20,20,30,30] DIFFICULT; G3 c1 [50,50,60,60]
# Image 1 gts: G4 c0 [0,0,10,10]; G5 c0 [40,40,50,50] (never detected); G6 c1 [0,0,20,20]
# Class 0 (npos = G1, G4, G5 = 3; G2 is difficult):
#   d1 s.9 img0 [0,0,10,10] IoU(G1)=1            -> TP
#   d2 s.8 img0 [0,0,10,9]  IoU(G1)=90/100=.9    -> FP (G1 already matched)
#   d3 s.7 img0 [20,20,30,30] best gt G2 difficult -> ignored
#   d4 s.6 img1 [0,0,10,4]  IoU(G4)=40/100=.4    -> FP (low IoU)
#   d5 s.5 img1 [0,0,10,10] IoU(G4)=1            -> TP
#   kept: TP FP FP TP; cumTP 1,1,1,2; cumFP 0,1,2,2
#   rec 1/3,1/3,1/3,2/3; prec 1,1/2,1/3,1/2
#   11pt: t=0,.1,.2,.3 -> 1 (4 pts); t=.4,.5,.6 -> 1/2 (3 pts); t>=.7 -> 0
#         AP = (4 + 1.5)/11 = 0.5
#   area: envelope 1 on (0,1/3], 1/2 on (1/3,2/3] -> 1/3 + 1/6 = 0.5
# Class 1 (npos = G3, G6 = 2):
#   e1 s.95 img1 [0,0,20,20]       IoU(G6)=1 -> TP
#   e2 s.85 img0 [100,100,110,110] no overlap -> FP
#   e3 s.3  img0 [50,50,60,60]     IoU(G3)=1 -> TP
#   rec .5,.5,1; prec 1,1/2,2/3
#   11pt: t=0..0.5 -> 1 (6 pts); t=.6..1 -> 2/3 (5 pts) -> (6 + 10/3)/11 = 28/33
#   area: .5*1 + .5*2/3 = 5/6
# ---------------------------------------------------------------------------
def hand_case():
    dets = [
        det([[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30], [100, 100, 110, 110],
             [50, 50, 60, 60]],
            [0.9, 0.8, 0.7, 0.85, 0.3], [0, 0, 0, 1, 1]),
        det([[0, 0, 10, 4], [0, 0, 10, 10], [0, 0, 20, 20]],
            [0.6, 0.5, 0.95], [0, 0, 1]),
    ]
    anns = [
        ann([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0, 0, 1],
            [False, True, False]),
        ann([[0, 0, 10, 10], [40, 40, 50, 50], [0, 0, 20, 20]], [0, 0, 1],
            [False, False, False]),
    ]
    return dets, anns


def test_hand_case_11point():
    dets, anns = hand_case()
    r = voc_map(dets, anns, 2, metric="11point", legacy_coords=False)
    assert r["AP"] == pytest.approx([0.5, 28 / 33], abs=1e-12)
    assert r["mAP"] == pytest.approx((0.5 + 28 / 33) / 2, abs=1e-12)
    assert r["num_gts"] == [3, 2]
    assert r["recall"] == pytest.approx([2 / 3, 1.0], abs=1e-12)


def test_hand_case_area():
    dets, anns = hand_case()
    r = voc_map(dets, anns, 2, metric="area", legacy_coords=False,
                class_names=["cat", "dog"])
    assert r["AP"] == pytest.approx([0.5, 5 / 6], abs=1e-12)
    assert r["mAP"] == pytest.approx((0.5 + 5 / 6) / 2, abs=1e-12)
    assert r["AP_by_class"] == pytest.approx({"cat": 0.5, "dog": 5 / 6}, abs=1e-12)


def test_class_without_gt_is_nan_and_excluded():
    dets, anns = hand_case()
    # Class 2 has detections but no gt anywhere; class 3 has only a difficult gt.
    dets[0] = det(np.vstack([dets[0]["boxes"], [[1, 1, 5, 5], [20, 20, 30, 30]]]),
                  np.append(dets[0]["scores"], [0.99, 0.5]),
                  np.append(dets[0]["labels"], [2, 3]))
    anns[1] = ann(np.vstack([anns[1]["boxes"], [[20, 20, 30, 30]]]),
                  np.append(anns[1]["labels"], 3), np.append(anns[1]["difficult"], True))
    r = voc_map(dets, anns, 4, metric="area", legacy_coords=False)
    assert math.isnan(r["AP"][2]) and math.isnan(r["AP"][3])
    assert r["num_gts"] == [3, 2, 0, 0]
    # mean over classes 0 and 1 only: (0.5 + 5/6)/2 = 2/3 (would be 1/3 if NaN -> 0)
    assert r["mAP"] == pytest.approx(2 / 3, abs=1e-12)


def test_no_gt_at_all_warns_and_returns_zero():
    dets = [det([[0, 0, 5, 5]], [0.5], [0])]
    with pytest.warns(RuntimeWarning):
        r = voc_map(dets, [ann(np.zeros((0, 4)), [])], 2)
    assert r["mAP"] == 0.0


def test_difficult_detection_changes_nothing():
    dets, anns = hand_case()
    # Remove d3 (the detection on difficult G2): class 0 results unchanged.
    keep = [0, 1, 3, 4]
    dets_wo = [det(dets[0]["boxes"][keep], dets[0]["scores"][keep], dets[0]["labels"][keep]),
               dets[1]]
    for metric in ("11point", "area"):
        a = voc_map(dets, anns, 2, metric=metric, legacy_coords=False)
        b = voc_map(dets_wo, anns, 2, metric=metric, legacy_coords=False)
        assert a["AP"] == b["AP"] and a["recall"] == b["recall"]


def test_difficult_gt_not_in_recall():
    # 1 normal gt + 1 difficult gt, one perfect detection on the normal gt.
    # npos = 1 -> recall 1, precision 1 -> AP 1 (would be 0.5 recall if counted).
    anns = [ann([[0, 0, 10, 10], [30, 30, 40, 40]], [0, 0], [False, True])]
    dets = [det([[0, 0, 10, 10]], [0.9], [0])]
    r = voc_map(dets, anns, 1, metric="area")
    assert r["num_gts"] == [1] and r["recall"] == [1.0] and r["AP"] == [1.0]


def test_best_gt_difficult_ignores_even_if_normal_gt_overlaps():
    # gts: A [0,0,10,10] difficult, B [2,0,12,10] normal. det [0,0,10,10]:
    # IoU(A)=1, IoU(B)=80/120=.667 >= .5, but the best gt is A -> ignored (devkit).
    # Only det => nothing kept, recall 0 -> AP 0.
    anns = [ann([[0, 0, 10, 10], [2, 0, 12, 10]], [0, 0], [True, False])]
    r = voc_map([det([[0, 0, 10, 10]], [0.9], [0])], anns, 1, legacy_coords=False)
    assert r["AP"] == [0.0] and r["recall"] == [0.0]


def test_no_fallback_to_second_best_gt():
    # gts A [0,0,10,10], B [2,0,12,10]; two dets [0,0,10,10] (scores .9, .8).
    # det1 -> A (IoU 1) TP. det2: best is A (matched) -> FP, although IoU(B)=.667.
    # rec .5,.5; prec 1,.5 -> area .5*1 = .5; 11pt t=0..0.5 -> 6/11.
    anns = [ann([[0, 0, 10, 10], [2, 0, 12, 10]], [0, 0])]
    dets = [det([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])]
    assert voc_map(dets, anns, 1, metric="area", legacy_coords=False)["AP"] == [0.5]
    ap11 = voc_map(dets, anns, 1, metric="11point", legacy_coords=False)["AP"][0]
    assert ap11 == pytest.approx(6 / 11, abs=1e-12)


def test_equal_iou_picks_first_gt():
    # Two identical gts, det IoU = 1 with both; the first in annotation order wins.
    # first difficult -> det ignored -> AP 0; first normal -> TP -> AP 1.
    box = [[0, 0, 10, 10], [0, 0, 10, 10]]
    dets = [det([[0, 0, 10, 10]], [0.9], [0])]
    assert voc_map(dets, [ann(box, [0, 0], [True, False])], 1)["AP"] == [0.0]
    assert voc_map(dets, [ann(box, [0, 0], [False, True])], 1)["AP"] == [1.0]


def test_legacy_coords_flip_match():
    # gt [0,0,9,9], det [0,0,9,4].
    # legacy: gt 10x10=100, det 10x5=50, inter 50, union 100 -> IoU .5 >= .5 -> TP -> AP 1
    # continuous: gt 9x9=81, det 9x4=36, inter 36, union 81 -> IoU .444 -> FP -> AP 0
    anns = [ann([[0, 0, 9, 9]], [0])]
    dets = [det([[0, 0, 9, 4]], [0.7], [0])]
    for metric in ("11point", "area"):
        assert voc_map(dets, anns, 1, metric=metric, legacy_coords=True)["AP"] == [1.0]
        assert voc_map(dets, anns, 1, metric=metric, legacy_coords=False)["AP"] == [0.0]


def test_iou_exactly_at_threshold_counts():
    # continuous: gt [0,0,10,10] (100), det [0,0,10,5] (50) -> IoU = 50/100 = .5 exactly.
    anns = [ann([[0, 0, 10, 10]], [0])]
    dets = [det([[0, 0, 10, 5]], [0.7], [0])]
    assert voc_map(dets, anns, 1, legacy_coords=False)["AP"] == [1.0]
    assert voc_map(dets, anns, 1, iou_thr=0.51, legacy_coords=False)["AP"] == [0.0]


def test_11point_thresholds_are_exact():
    # 5 gts, 3 perfect dets -> rec .2,.4,.6 (3/5 == 0.6 exactly), prec 1.
    # t = 0,.1,...,.6 -> 7 points of 1 -> 7/11. (np.arange(0,1.1,.1)[6] is
    # 0.6000000000000001 > 0.6, which would give 6/11.)   area: 0.6.
    gts = [[10 * i, 0, 10 * i + 5, 5] for i in range(5)]
    anns = [ann(gts, [0] * 5)]
    dets = [det(gts[:3], [0.9, 0.8, 0.7], [0, 0, 0])]
    assert voc_map(dets, anns, 1, metric="11point")["AP"][0] == pytest.approx(7 / 11, abs=1e-12)
    assert voc_map(dets, anns, 1, metric="area")["AP"][0] == pytest.approx(0.6, abs=1e-12)


def test_tied_scores_keep_input_order():
    # Same score .5: img0 det has no gt (FP) and comes first in input order,
    # img1 det is a TP. Order FP, TP -> rec 0,1; prec 0,1/2 -> area AP = 1/2.
    # Reversing the images gives TP, FP -> prec 1 at rec 1 -> AP 1.
    a0, a1 = ann(np.zeros((0, 4)), []), ann([[0, 0, 10, 10]], [0])
    d0, d1 = det([[50, 50, 60, 60]], [0.5], [0]), det([[0, 0, 10, 10]], [0.5], [0])
    assert voc_map([d0, d1], [a0, a1], 1, metric="area")["AP"] == [0.5]
    assert voc_map([d1, d0], [a1, a0], 1, metric="area")["AP"] == [1.0]


def test_perfect_and_empty():
    rng = np.random.default_rng(0)
    anns, perfect, empty = [], [], []
    for _ in range(5):
        xy = rng.uniform(0, 100, (4, 2))
        boxes = np.hstack([xy, xy + rng.uniform(5, 50, (4, 2))])
        labels = rng.integers(0, 3, 4)
        anns.append(ann(boxes, labels))
        perfect.append(det(boxes, rng.uniform(size=4), labels))
        empty.append(det(np.zeros((0, 4)), [], []))
    for metric in ("11point", "area"):
        assert voc_map(perfect, anns, 3, metric=metric)["mAP"] == pytest.approx(1.0)
        r = voc_map(empty, anns, 3, metric=metric)
        assert r["mAP"] == 0.0 and r["recall"] == [0.0] * 3


# ---------------------------------------------------------------------------
# Independent slow reference: greedy per-detection loop as in the devkit.
# ---------------------------------------------------------------------------
def ref_iou(a, b, legacy):
    off = 1.0 if legacy else 0.0
    iw = max(min(a[2], b[2]) - max(a[0], b[0]) + off, 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]) + off, 0.0)
    inter = iw * ih
    union = ((a[2] - a[0] + off) * (a[3] - a[1] + off)
             + (b[2] - b[0] + off) * (b[3] - b[1] + off) - inter)
    return inter / max(union, np.finfo(np.float64).eps)


def ref_voc_map(dets, anns, num_classes, iou_thr, metric, legacy):
    aps = []
    for c in range(num_classes):
        gts = {}  # image -> list of [box, difficult, matched]
        npos = 0
        for i, a in enumerate(anns):
            diff = a.get("difficult", np.zeros(len(a["labels"]), bool))
            gts[i] = [[list(b), bool(d), False] for b, l, d in
                      zip(a["boxes"].tolist(), a["labels"].tolist(), diff) if l == c]
            npos += sum(1 for g in gts[i] if not g[1])
        cands = [(s, i, b) for i, d in enumerate(dets)
                 for b, s, l in zip(d["boxes"].tolist(), d["scores"].tolist(),
                                    d["labels"].tolist()) if l == c]
        cands = sorted(cands, key=lambda t: -t[0])  # Python sort is stable
        flags = []
        for _, i, b in cands:
            best, jbest = -math.inf, -1
            for j, g in enumerate(gts[i]):
                o = ref_iou(b, g[0], legacy)
                if o > best:
                    best, jbest = o, j
            if best >= iou_thr:
                g = gts[i][jbest]
                if g[1]:
                    continue
                if not g[2]:
                    g[2] = True
                    flags.append(1)
                else:
                    flags.append(0)
            else:
                flags.append(0)
        if npos == 0:
            aps.append(float("nan"))
            continue
        rec, prec, tp = [], [], 0
        for k, f in enumerate(flags):
            tp += f
            rec.append(tp / npos)
            prec.append(tp / (k + 1))
        if metric == "11point":
            ap = 0.0
            for k in range(11):
                ps = [p for r, p in zip(rec, prec) if r >= k / 10.0]
                ap += (max(ps) if ps else 0.0) / 11.0
        else:
            mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
            for k in range(len(mpre) - 2, -1, -1):
                mpre[k] = max(mpre[k], mpre[k + 1])
            ap = sum((mrec[k + 1] - mrec[k]) * mpre[k + 1]
                     for k in range(len(mrec) - 1) if mrec[k + 1] != mrec[k])
        aps.append(ap)
    valid = [a for a in aps if not math.isnan(a)]
    return aps, (sum(valid) / len(valid) if valid else 0.0)


def random_data(seed, num_images=30, num_classes=4):
    rng = np.random.default_rng(seed)
    dets, anns = [], []
    for _ in range(num_images):
        m = int(rng.integers(0, 6))
        xy = rng.integers(0, 80, (m, 2)).astype(float)
        gboxes = np.hstack([xy, xy + rng.integers(1, 40, (m, 2))])
        glabels = rng.integers(0, num_classes, m)
        gdiff = rng.uniform(size=m) < 0.2
        if m >= 2 and rng.uniform() < 0.4:
            # duplicate gt with the other difficult flag -> argmax tie-breaking matters
            gboxes[1], glabels[1], gdiff[1] = gboxes[0], glabels[0], not gdiff[0]
        anns.append(ann(gboxes, glabels, gdiff))
        # jittered copies of gts (integer jitter: exact IoU ties / thresholds) + noise
        k = int(rng.integers(0, 3 * m + 1)) if m else 0
        src = rng.integers(0, m, k) if m else np.zeros(0, int)
        jb = gboxes[src] + rng.integers(-4, 5, (k, 4))
        jl = np.where(rng.uniform(size=k) < 0.85, glabels[src], rng.integers(0, num_classes, k))
        n = int(rng.integers(0, 6))
        nxy = rng.uniform(0, 80, (n, 2))
        nb = np.hstack([nxy, nxy + rng.uniform(1, 40, (n, 2))])
        boxes = np.vstack([jb.reshape(-1, 4), nb])
        scores = np.round(rng.uniform(size=k + n), 1)  # coarse -> many ties
        labels = np.concatenate([jl, rng.integers(0, num_classes, n)])
        dets.append(det(boxes, scores, labels))
    return dets, anns


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("metric", ["11point", "area"])
@pytest.mark.parametrize("legacy", [True, False])
def test_matches_naive_reference(seed, metric, legacy):
    dets, anns = random_data(seed)
    r = voc_map(dets, anns, 4, metric=metric, legacy_coords=legacy)
    ref_aps, ref_map = ref_voc_map(dets, anns, 4, 0.5, metric, legacy)
    np.testing.assert_allclose(r["AP"], ref_aps, rtol=0, atol=1e-9, equal_nan=True)
    assert r["mAP"] == pytest.approx(ref_map, abs=1e-9)
    assert any(0 < a < 1 for a in r["AP"])  # the data is non-trivial


def test_torch_matches_numpy():
    torch = pytest.importorskip("torch")
    dets, anns = random_data(123)
    tdets = [{k: torch.from_numpy(v) for k, v in d.items()} for d in dets]
    tanns = [{k: torch.from_numpy(v) for k, v in a.items()} for a in anns]
    for metric in ("11point", "area"):
        a = voc_map(dets, anns, 4, metric=metric)
        b = voc_map(tdets, tanns, 4, metric=metric)
        np.testing.assert_array_equal(a["AP"], b["AP"])
        assert a["mAP"] == b["mAP"]


def test_validation_errors():
    dets, anns = hand_case()
    with pytest.raises(ValueError, match=r"len\(detections\)=2 != len\(annotations\)=1"):
        voc_map(dets, anns[:1], 2)
    bad = [dets[0], det([[0, 0, 1, 1]], [0.5], [7])]
    with pytest.raises(ValueError, match=r"image 1.*label 7"):
        voc_map(bad, anns, 2)
    bad_ann = [anns[0], ann([[0, 0, 1, 1]], [-1])]
    with pytest.raises(ValueError, match=r"image 1.*label -1"):
        voc_map(dets, bad_ann, 2)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        voc_map([{"boxes": np.zeros((2, 5)), "scores": np.zeros(2), "labels": np.zeros(2)},
                 dets[1]], anns, 2)
    with pytest.raises(ValueError, match="foo"):
        voc_map(dets, anns, 2, metric="foo")


def test_pr_curves_by_hand():
    from detection.evaluation.voc import voc_map

    # class 0: 2 gts; detections ranked TP, FP, TP -> recall .5 .5 1, precision 1 .5 2/3
    dets = [{"boxes": np.array([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], float),
             "scores": np.array([0.9, 0.8, 0.7]), "labels": np.array([0, 0, 0])}]
    anns = [{"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), "labels": np.array([0, 0])}]
    out = voc_map(dets, anns, 2, legacy_coords=False, curves=True)
    rec, prec = out["curves"][0]
    assert rec.tolist() == [0.5, 0.5, 1.0] and prec.tolist() == pytest.approx([1.0, 0.5, 2 / 3])
    assert out["curves"][1] is None  # no ground truth for class 1
