"""Max-IoU assignment on a hand-made case with exact expected labels."""
import pytest
import torch

from models.assigner import IGNORED, NEGATIVE, MaxIoUAssigner, pad_boxes

GT = torch.tensor([
    [0, 0, 10, 10],    # gt0, area 100
    [20, 0, 30, 10],   # gt1
    [50, 50, 54, 54],  # gt2, area 16: no anchor reaches 0.4
    [50, 50, 54, 54],  # gt3, duplicate of gt2: the higher index wins the shared best anchors
], dtype=torch.float32)
ANCHORS = torch.tensor([
    [0, 0, 10, 10],      # a0: IoU(gt0) = 1                      -> gt0
    [0, 0, 10, 5],       # a1: 50 / 100 = 0.5 (>= pos thr)       -> gt0
    [0, 0, 10, 4],       # a2: 40 / 100 = 0.4 (in [0.4, 0.5))    -> ignored
    [0, 0, 10, 3],       # a3: 0.3                               -> negative
    [22, 0, 32, 10],     # a4: IoU(gt1) = 80 / 120 = 2/3         -> gt1
    [25, 0, 35, 10],     # a5: IoU(gt1) = 50 / 150 = 1/3         -> negative
    [100, 100, 110, 110],  # a6: 0                               -> negative
    [50, 50, 60, 60],    # a7: IoU(gt2) = IoU(gt3) = 16 / 100    -> low-quality match, gt3
    [44, 44, 54, 54],    # a8: the same IoU 0.16 (tie)           -> low-quality match, gt3
], dtype=torch.float32)


def assign(low_quality=True, gts=(GT,), anchors=ANCHORS):
    boxes, valid, _ = pad_boxes(list(gts))
    return MaxIoUAssigner(0.5, 0.4, 0.0, low_quality)(anchors, boxes, valid)


def test_hand_made_case():
    res = assign()
    assert res.gt_index[0].tolist() == [0, 0, IGNORED, NEGATIVE, 1, NEGATIVE, NEGATIVE, 3, 3]
    expected_iou = torch.tensor([1.0, 0.5, 0.4, 0.3, 2 / 3, 1 / 3, 0.0, 0.16, 0.16])
    assert torch.allclose(res.max_iou[0], expected_iou, atol=1e-6)


def test_without_low_quality_matches():
    res = assign(low_quality=False)
    assert res.gt_index[0].tolist() == [0, 0, IGNORED, NEGATIVE, 1, NEGATIVE, NEGATIVE, NEGATIVE, NEGATIVE]


def test_batched_with_empty_image():
    res = assign(gts=(GT, torch.zeros(0, 4), GT[:2]))
    assert res.gt_index.shape == (3, 9)
    assert res.gt_index[0].tolist() == [0, 0, IGNORED, NEGATIVE, 1, NEGATIVE, NEGATIVE, 3, 3]
    assert (res.gt_index[1] == NEGATIVE).all()  # no ground truth: every anchor is a negative
    assert res.gt_index[2].tolist() == [0, 0, IGNORED, NEGATIVE, 1, NEGATIVE, NEGATIVE, NEGATIVE, NEGATIVE]


def test_no_ground_truth_at_all():
    res = assign(gts=(torch.zeros(0, 4), torch.zeros(0, 4)))
    assert res.gt_index.shape == (2, 9) and (res.gt_index == NEGATIVE).all()


def test_no_anchors():
    res = assign(anchors=torch.zeros(0, 4))
    assert res.gt_index.shape == (1, 0) and res.max_iou.shape == (1, 0)


def test_ignore_regions():
    boxes, valid, _ = pad_boxes([GT[:2]])
    ignore, ivalid, _ = pad_boxes([torch.tensor([[95.0, 95, 120, 120]])])
    res = MaxIoUAssigner(0.5, 0.4, ignore_iof_thr=0.5)(ANCHORS, boxes, valid, ignore, ivalid)
    # a6 lies inside the ignore region (IoF 1) and becomes ignored; positives are untouched
    assert res.gt_index[0, 6] == IGNORED and res.gt_index[0, 0] == 0


def test_bad_thresholds():
    with pytest.raises(ValueError, match="neg_iou_thr"):
        MaxIoUAssigner(pos_iou_thr=0.4, neg_iou_thr=0.5)
