"""Collate padding and the grouped, sharded, resumable batch sampler."""
import pytest
import torch

from datasets import GroupedBatchSampler, collate_detection


def test_collate_without_divisor_keeps_max_size():
    a, b = torch.zeros(3, 5, 7), torch.ones(3, 6, 4)
    for divisor in (0, 1, None):
        images, _ = collate_detection([(a, {}), (b, {})], size_divisor=divisor)
        assert images.shape == (2, 3, 6, 7)
    assert (images[1, :, :6, :4] == 1).all() and (images[1, :, :, 4:] == 0).all()


def test_collate_exact_multiple_is_not_grown():
    images, _ = collate_detection([(torch.zeros(3, 64, 32), {})], size_divisor=32)
    assert images.shape == (1, 3, 64, 32)


def test_collate_empty_batch():
    with pytest.raises(ValueError, match="empty batch"):
        collate_detection([])


def test_unshuffled_sampler_is_ordered_within_groups():
    ratios = [1.0, 0.5, 2.0, 0.5, 1.0, 0.5, 1.0]  # wide-or-square: 0 2 4 6, tall: 1 3 5
    s = GroupedBatchSampler(ratios, batch_size=3, shuffle=False)
    assert list(s) == [[0, 2, 4], [6], [1, 3, 5]]


def test_shards_are_disjoint_when_no_padding_is_needed():
    ratios = [1.0] * 8 + [0.5] * 8
    parts = [list(GroupedBatchSampler(ratios, 2, seed=4, num_replicas=2, rank=r)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 4  # 8 batches over 2 ranks
    idx = [sorted(i for b in p for i in b) for p in parts]
    assert not set(idx[0]) & set(idx[1]) and sorted(idx[0] + idx[1]) == list(range(16))


def test_seed_changes_the_order_and_start_batch_past_the_end_is_empty():
    ratios = [1.0] * 12
    a, b = GroupedBatchSampler(ratios, 2, seed=0), GroupedBatchSampler(ratios, 2, seed=1)
    assert list(a) != list(b)
    a.set_epoch(0, start_batch=6)
    assert list(a) == [] and len(a) == 6


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
