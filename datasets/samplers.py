"""Aspect-ratio grouped, shardable, resumable batch sampler."""
from __future__ import annotations

import math
import random
from typing import Iterator, List, Sequence

import torch


class GroupedBatchSampler(torch.utils.data.Sampler):
    """Batches of images of one orientation group (landscape-or-square ``w >= h`` vs portrait), so that
    padding to the batch's largest image wastes little.

    The epoch's order is a function of ``(seed, epoch)`` only; batches are shuffled across groups and
    dealt out to ``num_replicas`` ranks (batch ``k`` goes to rank ``k % num_replicas``), padding by
    repetition so every rank gets ``len(self)`` batches. ``set_epoch(epoch, start_batch=k)`` skips the
    first ``k`` batches of this rank, to resume in the middle of an epoch.

    With ``augment_seeds`` every element is ``(index, seed)`` instead of ``index``, the seed a function of
    ``(seed, epoch, index)``: wrapped in ``SeededAugmentation``, a sample's random augmentation then no
    longer depends on which worker loads it or when the loader started, which is what makes a resumed run
    (new loader, new worker seeds) bit-identical to an uninterrupted one."""

    def __init__(self, aspect_ratios: Sequence[float], batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0, augment_seeds: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.groups = [0 if r >= 1.0 else 1 for r in aspect_ratios]
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.augment_seeds = augment_seeds
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _all_batches(self) -> List[List[int]]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        n = len(self.groups)
        order = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        batches: List[List[int]] = []
        for group in (0, 1):
            members = [i for i in order if self.groups[i] == group]
            for s in range(0, len(members), self.batch_size):
                chunk = members[s: s + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    batches.append(chunk)
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def _per_rank(self) -> int:
        total = self._count_batches()
        return math.ceil(total / self.num_replicas) if total else 0

    def _count_batches(self) -> int:
        sizes = [self.groups.count(0), self.groups.count(1)]
        if self.drop_last:
            return sum(s // self.batch_size for s in sizes)
        return sum(math.ceil(s / self.batch_size) for s in sizes)

    def __iter__(self) -> Iterator[List[int]]:
        batches = self._all_batches()
        per_rank = self._per_rank()
        if not batches:
            return
        padded = batches + batches[: per_rank * self.num_replicas - len(batches)]
        mine = padded[self.rank:: self.num_replicas]
        for batch in mine[self.start_batch:]:
            yield [(i, self.sample_seed(i)) for i in batch] if self.augment_seeds else batch

    def sample_seed(self, index: int) -> int:
        return ((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index) % (2 ** 63)

    def __len__(self) -> int:
        return self._per_rank()


class SeededAugmentation(torch.utils.data.Dataset):
    """Wraps a dataset whose transforms draw from Python's ``random``: item ``(index, seed)`` is loaded with
    ``random`` seeded by ``seed`` (and the caller's random state restored afterwards), plain ``index`` as
    usual. Other attributes are the wrapped dataset's."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):
        if name == "dataset":  # not set yet (e.g. while unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        state = random.getstate()
        random.seed(seed)
        try:
            return self.dataset[index]
        finally:
            random.setstate(state)


class RepeatDataset(torch.utils.data.Dataset):
    """``times`` passes over ``dataset`` per epoch (mmdetection's ``RepeatDataset``; the ALWA configs train
    VOC2012 trainval x 3, so their 12 "epochs" are 36 passes and the LR steps fall after passes 24 and 33).

    Item ``i`` is ``dataset[i % len(dataset)]``, so the sampler shuffles all ``times * N`` entries together
    and, with ``augment_seeds``, every repeat of an image draws its own augmentation (the seed depends on
    ``i``, not on ``i % N``). ``aspect_ratios()`` is repeated to match; ``records`` and other attributes are
    the wrapped dataset's (one entry per image, for data checks)."""

    def __init__(self, dataset, times: int):
        if int(times) != times or times < 1:
            raise ValueError(f"repeat times must be a positive integer, got {times}")
        self.dataset, self.times = dataset, int(times)

    def __len__(self) -> int:
        return self.times * len(self.dataset)

    def __getattr__(self, name):
        if name == "dataset":  # not set yet (e.g. while unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]

    def aspect_ratios(self) -> List[float]:
        return list(self.dataset.aspect_ratios()) * self.times

    def summary(self) -> str:
        head, _, rest = self.dataset.summary().partition("\n")
        line = f"{head}; repeated {self.times}x per epoch ({len(self)} samples, data.repeat)"
        return line + ("\n" + rest if rest else "")
