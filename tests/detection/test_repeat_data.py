"""data.repeat (mmdetection's RepeatDataset): epoch length, LR steps, augmentation per repeat, mid-epoch resume."""
import pytest
import torch

from datasets import GroupedBatchSampler, RepeatDataset, SeededAugmentation
from detection import builders, engine


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, write_tiny_retinanet):
    path = write_tiny_retinanet(tmp_path_factory.mktemp("repeat"))
    builders.prepare_data(engine.load(path).data)
    return path


def _cfg(path, *extra):
    return engine.load(path, ["train.max_iters=null", "train.epochs=12", "train.lr_steps=[8,11]",
                              "data.batch_size=2", "data.aspect_ratio_grouping=false", *extra])


def test_epoch_is_times_passes_and_lr_steps_count_repeated_epochs(tiny):
    cfg = _cfg(tiny, "data.repeat=3")
    train = builders.build_dataset(cfg, train=True)
    assert isinstance(train, RepeatDataset) and len(train) == 36 and len(train.records) == 12
    assert "repeated 3x per epoch (36 samples" in train.summary()
    _, sampler = builders.build_train_loader(cfg, train)
    assert len(sampler) == 18  # 36 samples / 2 per batch
    assert builders.schedule_length(cfg, len(sampler)) == (12 * 18, [8 * 18, 11 * 18])
    plain = builders.build_dataset(_cfg(tiny), train=True)
    assert not isinstance(plain, RepeatDataset) and len(plain) == 12
    # every image appears exactly `times` times per epoch
    seen = sorted(i % 12 for batch in sampler for i, _ in batch)
    assert seen == sorted(list(range(12)) * 3)


def test_train_fraction_is_taken_before_repeating(tiny):
    train = builders.build_dataset(_cfg(tiny, "data.repeat=2", "data.train_fraction=0.5"), train=True)
    assert len(train.records) == 6 and len(train) == 12
    assert len(builders.build_dataset(_cfg(tiny, "data.repeat=2"), train=False)) == 6  # the test set never repeats


def test_each_repeat_draws_its_own_augmentation(tiny):
    cfg = _cfg(tiny, "data.repeat=3", "data.flip_prob=0.5")
    train = builders.build_dataset(cfg, train=True)
    _, sampler = builders.build_train_loader(cfg, train)
    seeded = SeededAugmentation(train)
    flips_differ = 0
    for i in range(12):
        a = seeded[(i, sampler.sample_seed(i))]
        again = seeded[(i, sampler.sample_seed(i))]
        b = seeded[(i + 12, sampler.sample_seed(i + 12))]
        assert torch.equal(a[0], again[0])  # same entry, same seed: same pixels
        assert sampler.sample_seed(i) != sampler.sample_seed(i + 12)
        flips_differ += not torch.equal(a[1]["boxes"], b[1]["boxes"])
    assert flips_differ > 0


def test_mid_epoch_resume_inside_a_repeat_continues_the_same_batches():
    ratios = [1.0, 0.5, 2.0, 0.5, 1.0, 0.5, 1.0, 0.8]
    repeated = [r for _ in range(3) for r in ratios]
    full = GroupedBatchSampler(repeated, 2, seed=5, drop_last=True, augment_seeds=True)
    full.set_epoch(4)
    batches = list(full)
    assert len(batches) == 12 and max(i for b in batches for i, _ in b) >= 16  # indices of the third pass
    resumed = GroupedBatchSampler(repeated, 2, seed=5, drop_last=True, augment_seeds=True)
    resumed.set_epoch(4, start_batch=7)
    assert list(resumed) == batches[7:]


def test_repeat_rejects_bad_counts(tiny):
    from detection.config.loader import ConfigError

    with pytest.raises(ValueError, match="positive integer"):
        RepeatDataset([1, 2], 0)
    with pytest.raises(ConfigError, match="data.repeat"):
        engine.load(tiny, ["data.repeat=0"])
