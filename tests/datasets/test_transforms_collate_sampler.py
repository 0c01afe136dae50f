import random

import numpy as np
import pytest
import torch

from datasets import GroupedBatchSampler, build_transforms, collate_detection, keep_ratio_size


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


def test_collate_pads_to_divisor():
    a, b = torch.ones(3, 70, 45), torch.full((3, 64, 64), 2.0)
    images, targets = collate_detection([(a, {"i": 0}), (b, {"i": 1})], size_divisor=32, pad_value=-1)
    assert images.shape == (2, 3, 96, 64)  # max h 70 -> 96, max w 64 -> 64
    assert (images[0, :, :70, :45] == 1).all() and (images[0, :, 70:, :] == -1).all() and (images[0, :, :, 45:] == -1).all()
    assert (images[1, :, :64, :64] == 2).all() and [t["i"] for t in targets] == [0, 1]


RATIOS = [1.5, 0.5, 1.0, 0.7, 2.0, 0.6, 1.2, 0.8, 1.1, 1.3, 0.9]  # 6 wide-or-square, 5 tall


def test_sampler_groups_cover_and_determinism():
    s = GroupedBatchSampler(RATIOS, batch_size=2, seed=1)
    s.set_epoch(0)
    batches = list(s)
    assert len(batches) == len(s) == 3 + 3  # ceil(6/2) + ceil(5/2)
    for b in batches:
        assert len({RATIOS[i] >= 1 for i in b}) == 1  # never mixes groups
    assert sorted(i for b in batches for i in b) == list(range(len(RATIOS)))
    assert list(s) == batches  # same (seed, epoch) -> same order
    s.set_epoch(1)
    assert list(s) != batches


def test_sampler_drop_last_and_shards():
    s = GroupedBatchSampler(RATIOS, batch_size=2, drop_last=True)
    assert len(s) == 3 + 2 and all(len(b) == 2 for b in s)
    shards = [GroupedBatchSampler(RATIOS, 2, seed=3, num_replicas=4, rank=r) for r in range(4)]
    parts = [list(x) for x in shards]
    assert [len(p) for p in parts] == [2, 2, 2, 2]  # 6 batches padded to 8
    seen = [tuple(b) for p in parts for b in p]
    assert sorted(set(i for b in seen for i in b)) == list(range(len(RATIOS)))
    assert len(set(seen)) == 6  # the two padding batches repeat real ones


def test_sampler_start_batch_skips_exactly():
    s = GroupedBatchSampler(RATIOS, batch_size=2, seed=5)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start_batch=4)
    assert list(s) == full[4:]


def test_sampler_bad_args():
    with pytest.raises(ValueError, match="rank 2"):
        GroupedBatchSampler(RATIOS, 2, num_replicas=2, rank=2)
