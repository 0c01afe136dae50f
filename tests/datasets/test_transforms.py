"""albumentations transforms: the keep-ratio rule, flips, normalisation, box/flag alignment, no dropped boxes."""
import random

import numpy as np
import pytest
import torch

from datasets import build_transforms, keep_ratio_size


def test_non_integer_scale_and_scale_factor_round_trip():
    # 30x45 (h x w), min 20, max 1000: scale = min(20/30, 1000/45) = 2/3 -> 20x30
    t = build_transforms(False, min_size=20, max_size=1000)
    boxes = np.array([[9, 6, 45, 30], [0, 3, 4.5, 7.5]], np.float32)
    img, out, labels, difficult, meta = t(np.zeros((30, 45, 3), np.uint8), boxes, [4, 7], [True, False])
    assert img.shape == (3, 20, 30) and meta["img_size"] == (20, 30)
    sx, sy = 30 / 45, 20 / 30
    assert meta["scale_factor"] == pytest.approx((sx, sy, sx, sy))
    np.testing.assert_allclose(out, [[6, 4, 30, 20], [0, 2, 3, 5]], atol=1e-4)
    np.testing.assert_allclose(out / np.array(meta["scale_factor"], np.float32), boxes, atol=1e-4)
    assert labels.tolist() == [4, 7] and difficult.tolist() == [True, False]


def test_difficult_defaults_to_false():
    t = build_transforms(False, min_size=8, max_size=8)
    *_, difficult, _ = t(np.zeros((8, 8, 3), np.uint8), np.array([[1, 1, 4, 4]], np.float32), [0])
    assert difficult.tolist() == [False]


def test_random_flip_follows_the_rule_both_ways():
    random.seed(123)
    t = build_transforms(True, min_size=10, max_size=20, flip_prob=0.5)
    boxes = np.array([[1, 2, 4, 6], [12, 0, 20, 10]], np.float32)
    seen = set()
    for _ in range(30):
        _, out, labels, difficult, meta = t(np.zeros((10, 20, 3), np.uint8), boxes, [0, 1], [False, True])
        expected = [[16, 2, 19, 6], [0, 0, 8, 10]] if meta["flipped"] else boxes.tolist()  # x1' = 20 - x2
        np.testing.assert_allclose(out, expected, atol=1e-4)
        assert labels.tolist() == [0, 1] and difficult.tolist() == [False, True]
        seen.add(meta["flipped"])
    assert seen == {True, False}


def test_partly_outside_box_is_clipped_not_dropped():
    t = build_transforms(False, min_size=10, max_size=10)
    _, out, *_ = t(np.zeros((10, 10, 3), np.uint8), np.array([[5, 5, 14, 12]], np.float32), [0], None)
    np.testing.assert_allclose(out, [[5, 5, 10, 10]], atol=1e-4)


def test_degenerate_box_raises_instead_of_vanishing():
    t = build_transforms(False, min_size=10, max_size=10)
    with pytest.raises(ValueError, match=r"box 1 \[3.0, 3.0, 3.0, 8.0\] \(of 2\) has no positive width"):
        t(np.zeros((10, 10, 3), np.uint8), np.array([[1, 1, 5, 5], [3, 3, 3, 8]], np.float32), [0, 1], None)
    with pytest.raises(ValueError, match=r"box 0 .* inside the 10 x 10 image"):  # entirely outside the image
        t(np.zeros((10, 10, 3), np.uint8), np.array([[12, 1, 15, 5]], np.float32), [0], None)


def test_keep_ratio_rule_by_hand():
    # scale = min(min_size / short, max_size / long)
    assert keep_ratio_size(50, 100, 60, 100) == (50, 100)    # min(60/50, 100/100) = 1
    assert keep_ratio_size(375, 500, 600, 1000) == (600, 800)  # min(1.6, 2.0) = 1.6
    assert keep_ratio_size(300, 1000, 600, 1000) == (300, 1000)  # min(2.0, 1.0) = 1
    assert keep_ratio_size(100, 100, 128, 128) == (128, 128)  # upscaling allowed


def test_flip_and_normalise():
    image = np.full((20, 40, 3), (130, 120, 110), np.uint8)
    boxes = np.array([[2, 3, 12, 13], [30, 0, 40, 20]], np.float32)
    t = build_transforms(True, min_size=20, max_size=40, flip_prob=1.0, mean=(100, 100, 100), std=(10, 20, 5))
    img, out, labels, difficult, meta = t(image, boxes, [1, 2], [False, True])
    assert meta["flipped"] and meta["img_size"] == (20, 40) and meta["scale_factor"] == (1.0, 1.0, 1.0, 1.0)
    # flip: x1' = W - x2, x2' = W - x1 with W = 40
    assert out.tolist() == [[28, 3, 38, 13], [0, 0, 10, 20]]
    assert labels.tolist() == [1, 2] and difficult.tolist() == [False, True]
    # (130 - 100) / 10 = 3, (120 - 100) / 20 = 1, (110 - 100) / 5 = 2
    assert torch.allclose(img[:, 5, 5], torch.tensor([3.0, 1.0, 2.0]))


def test_test_time_transform_never_flips_and_scales_boxes():
    random.seed(0)
    t = build_transforms(False, min_size=40, max_size=80, flip_prob=0.5)
    for _ in range(5):
        img, out, *_, meta = t(np.zeros((20, 30, 3), np.uint8), np.array([[3, 4, 9, 10]], np.float32), [0], [False])
        assert not meta["flipped"] and img.shape == (3, 40, 60)
        assert out.tolist() == [[6, 8, 18, 20]]


def test_empty_boxes():
    t = build_transforms(True, min_size=16, max_size=16)
    img, out, labels, difficult, meta = t(np.zeros((8, 8, 3), np.uint8), np.zeros((0, 4)), [], [])
    assert out.shape == (0, 4) and img.shape == (3, 16, 16)


# ---------------------------------------------------------------- masks and ignore boxes (COCO path)
def box_mask(h, w, box):
    m = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = 1
    return m


def mask_extent(m):
    ys, xs = np.nonzero(m)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_masks_resized_and_flipped_with_their_boxes(flip):
    boxes = [[4, 2, 14, 10], [20, 0, 40, 20], [0, 12, 3, 20]]
    masks = np.stack([box_mask(20, 40, b) for b in boxes])
    # 20x40 -> 30x60: scale 1.5; e.g. (4, 2, 14, 10) -> (6, 3, 21, 15), flipped (39, 3, 54, 15)
    t = build_transforms(True, min_size=30, max_size=60, flip_prob=flip)
    _, out, labels, _, meta = t(np.zeros((20, 40, 3), np.uint8), np.array(boxes, np.float32), [0, 1, 2],
                                masks=masks)
    assert meta["masks"].shape == (3, 30, 60) and meta["masks"].dtype == np.uint8
    expected = np.array(boxes, np.float32) * 1.5
    if flip:
        expected = np.stack([60 - expected[:, 2], expected[:, 1], 60 - expected[:, 0], expected[:, 3]], 1)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert out[0].tolist() == ([39, 3, 54, 15] if flip else [6, 3, 21, 15])
    for m, b in zip(meta["masks"], out):  # box order kept, each mask's extent matches its box
        np.testing.assert_allclose(mask_extent(m), b, atol=1.0)
    assert set(np.unique(meta["masks"])) == {0, 1}  # nearest neighbour: still binary


def test_mask_extent_tracks_box_under_downscale():
    rng = np.random.default_rng(0)
    t = build_transforms(False, min_size=37, max_size=1000)  # 64x64 -> 37x37, scale 0.578
    for _ in range(10):
        x1, y1 = rng.integers(0, 40, 2)
        b = [int(x1), int(y1), int(x1 + rng.integers(8, 24)), int(y1 + rng.integers(8, 24))]
        _, out, *_, meta = t(np.zeros((64, 64, 3), np.uint8), np.array([b], np.float32), [0],
                             masks=[box_mask(64, 64, b)])
        np.testing.assert_allclose(mask_extent(meta["masks"][0]), out[0], atol=1.0)


def test_ignore_boxes_scaled_flipped_and_clipped():
    # 10x20 -> 20x40 (scale 2), flipped: x' = 40 - x
    t = build_transforms(True, min_size=20, max_size=40, flip_prob=1.0)
    ignore = np.array([[1, 2, 4, 6], [15, 0, 25, 10]], np.float32)  # the second one leaves the image
    _, out, *_, meta = t(np.zeros((10, 20, 3), np.uint8), np.array([[0, 0, 5, 5]], np.float32), [0],
                         ignore_boxes=ignore)
    # (2, 4, 8, 12) -> (32, 4, 38, 12); (30, 0, 50, 20) clipped to (30, 0, 40, 20) -> (0, 0, 10, 20)
    assert meta["ignore_boxes"].dtype == np.float32
    assert meta["ignore_boxes"].tolist() == [[32, 4, 38, 12], [0, 0, 10, 20]]
    assert out.tolist() == [[30, 0, 40, 10]]
    _, _, *_, meta = t(np.zeros((10, 20, 3), np.uint8), np.zeros((0, 4)), [], ignore_boxes=np.zeros((0, 4)))
    assert meta["ignore_boxes"].shape == (0, 4) and "masks" not in meta


def test_empty_and_misaligned_masks():
    t = build_transforms(False, min_size=16, max_size=16)
    *_, meta = t(np.zeros((8, 8, 3), np.uint8), np.zeros((0, 4)), [], masks=np.zeros((0, 8, 8), np.uint8))
    assert meta["masks"].shape == (0, 16, 16)
    with pytest.raises(ValueError, match="one per box"):
        t(np.zeros((8, 8, 3), np.uint8), np.array([[1, 1, 4, 4]], np.float32), [0], masks=[])
    with pytest.raises(ValueError, match="one per box"):
        t(np.zeros((8, 8, 3), np.uint8), np.array([[1, 1, 4, 4]], np.float32), [0], masks=np.zeros((1, 8, 9)))


def test_voc_call_is_unchanged_by_the_new_options():
    image = np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    boxes = np.array([[3, 4, 9, 10], [0, 0, 30, 20]], np.float32)
    t = build_transforms(True, min_size=40, max_size=60, flip_prob=1.0)
    img, out, labels, difficult, meta = t(image, boxes, [2, 1], [True, False])
    assert set(meta) == {"img_size", "scale_factor", "flipped"}  # nothing extra without masks/ignore boxes
    img2, out2, *_, meta2 = t(image, boxes, [2, 1], [True, False], masks=[box_mask(20, 30, (3, 4, 9, 10))] * 2,
                              ignore_boxes=boxes[:1])
    assert torch.equal(img, img2) and np.array_equal(out, out2) and meta2["img_size"] == meta["img_size"]
    assert out.tolist() == [[42, 8, 54, 20], [0, 0, 60, 40]]  # scale 2, x' = 60 - x
