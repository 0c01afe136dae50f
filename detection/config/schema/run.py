"""The run's sections (data, optimizer, train, eval) and the root ``Config`` that holds them with the
model and weighting sections.

Defaults follow mmdetection's RetinaNet R50-FPN 1x and the ALWA paper's setup (SGD, momentum 0.9,
weight decay 1e-4, 12 epochs, lr steps at epochs 8 and 11, lr 0.01 for 8 images per step).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Literal, Optional

from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from detection.config.schema.model import ModelConfig, RetinaNetConfig
from detection.config.schema.weighting import FixedConfig, WeightingConfig


def check_ranges(section: str, **checks) -> None:
    """Raise one ``ValueError`` naming every ``key=(value, ok, expected)`` whose ``ok`` is false."""
    bad = [f"{section}.{k} must be {expected}, got {value!r}" for k, (value, ok, expected) in checks.items() if not ok]
    if bad:
        raise ValueError("; ".join(bad))


def _positive(value) -> bool:
    return value is not None and value > 0


@dataclass
class ShapesConfig:
    """Synthetic data generated into ``data.root`` when it is missing (the demo and tests)."""

    num_train: int = 1000
    num_val: int = 100
    num_test: int = 300
    image_size: int = 128
    seed: int = 0
    classes: List[str] = field(default_factory=lambda: ["circle", "rectangle", "triangle"])


@dataclass
class DataConfig:
    """``train_sets`` / ``test_sets``: VOC ``"SUBDIR/split"`` entries; COCO set names ``S`` meaning
    ``root/annotations/instances_S.json`` with images in ``root/S/`` (or ``root/<coco_image_dir>/``)."""

    format: Literal["voc", "coco"] = "voc"
    root: str = "data/VOCdevkit"
    train_sets: List[str] = field(default_factory=lambda: ["VOC2012/trainval"])
    test_sets: List[str] = field(default_factory=lambda: ["VOC2007/test"])
    coco_image_dir: Optional[str] = None
    classes: Optional[List[str]] = None  # null: the 20 VOC classes
    train_difficult: bool = False  # mmdetection trains without difficult boxes
    min_size: int = 800
    max_size: int = 1333
    flip_prob: float = 0.5
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))
    size_divisor: int = 32
    # mmdet: albumentations resizes the uint8 image to the nearest-pixel size, then normalises; torchvision:
    # normalise in float, then F.interpolate bilinear (floored size), as torchvision's detectors do
    preprocess: Literal["mmdet", "torchvision"] = "mmdet"
    batch_size: int = 2  # images per process
    test_batch_size: int = 4
    num_workers: int = 2
    aspect_ratio_grouping: bool = True
    # < 1: train on a fixed random subset of that fraction of the training images (quick passes, --scale);
    # the subset depends on the image list only, not on the run's seed
    train_fraction: float = 1.0
    # passes over the training images per epoch (mmdetection's RepeatDataset; the ALWA VOC configs use 3):
    # epochs, lr_steps in epochs and the epoch-based schedule count repeated epochs
    repeat: int = 1
    shapes: Optional[ShapesConfig] = None

    def __post_init__(self):
        dup = sorted({c for c in self.classes if self.classes.count(c) > 1}) if self.classes else []
        check_ranges(
            "data", train_fraction=(self.train_fraction, 0 < self.train_fraction <= 1, "in (0, 1]"),
            repeat=(self.repeat, self.repeat >= 1, "a positive integer"),
            batch_size=(self.batch_size, self.batch_size >= 1, "a positive integer (images per process)"),
            test_batch_size=(self.test_batch_size, self.test_batch_size >= 1, "a positive integer"),
            num_workers=(self.num_workers, self.num_workers >= 0, ">= 0"),
            min_size=(self.min_size, self.min_size >= 1, "a positive image size in pixels"),
            max_size=(self.max_size, self.max_size >= self.min_size, f">= data.min_size ({self.min_size})"),
            size_divisor=(self.size_divisor, self.size_divisor >= 1, ">= 1"),
            flip_prob=(self.flip_prob, 0 <= self.flip_prob <= 1, "in [0, 1]"),
            mean=(self.mean, len(self.mean) == 3, "3 numbers (one per RGB channel)"),
            # images are divided by std: a 0 makes every input infinite
            std=(self.std, len(self.std) == 3 and all(s > 0 for s in self.std), "3 numbers > 0 (one per RGB channel)"),
            classes=(self.classes, not dup, f"free of duplicates (repeated: {dup})"))


@dataclass
class OptimizerConfig:
    type: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: Optional[float] = None  # max gradient norm
    base_batch_size: int = 8  # lr is for this many images per step; scaled linearly when scale_lr
    scale_lr: bool = True

    def __post_init__(self):
        check_ranges(
            "optimizer", lr=(self.lr, self.lr > 0, "> 0"), momentum=(self.momentum, 0 <= self.momentum < 1, "in [0, 1)"),
            weight_decay=(self.weight_decay, self.weight_decay >= 0, ">= 0"),
            grad_clip=(self.grad_clip, self.grad_clip is None or self.grad_clip > 0, "> 0 or null"),
            base_batch_size=(self.base_batch_size, self.base_batch_size >= 1, "a positive integer"))


@dataclass
class TrainConfig:
    epochs: Optional[int] = 12
    max_iters: Optional[int] = None  # overrides epochs when set
    lr_steps: List[float] = field(default_factory=lambda: [8, 11])  # epochs, or iterations with max_iters
    lr_gamma: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    log_interval: int = 50
    checkpoint_interval: int = 1000  # iterations between checkpoints (and always at the end)
    keep_checkpoints: int = 1  # > 1: also keep the newest K as checkpoints/iter_NNNNNNN.pth
    amp: Literal["off", "bf16", "fp16"] = "off"
    eval_after: bool = True
    # validation during training: every eval_interval iterations (or epochs, eval_unit) the test set is
    # evaluated into metrics.jsonl and checkpoints/best.pth keeps the best state by best_metric (null: mAP for
    # VOC, AP for COCO); early_stop_patience > 0 stops after that many evaluations without improvement
    eval_interval: int = 0
    eval_unit: Literal["iters", "epochs"] = "iters"
    best_metric: Optional[str] = None
    early_stop_patience: int = 0
    tensorboard: bool = False  # also log to <work dir>/tensorboard (pip install -e ".[tensorboard]")
    # micro-batches per optimizer step: the effective batch is accumulate x data.batch_size x processes
    accumulate: int = 1
    progress: bool = True
    sync_bn: bool = False  # convert BatchNorm layers to SyncBatchNorm under DDP on GPUs
    channels_last: bool = False  # NHWC model and images: faster convs on GPUs and oneDNN CPUs (docs/benchmarks.md)
    cudnn_benchmark: bool = False  # cuDNN autotuning: for inputs of few distinct sizes (ignored when deterministic)
    check_finite: bool = True  # skip steps with non-finite losses or gradients (one host read per step)
    max_bad_steps: int = 5  # stop after this many consecutive skipped steps
    # a finite loss above this (any raw loss, in absolute value) counts as diverged: the step is skipped like a
    # non-finite one (null: no limit). Detection losses start near 1; 1e4 means the run has blown up
    max_loss: Optional[float] = 1e4

    def __post_init__(self):
        if self.epochs is None and self.max_iters is None:
            raise ValueError("set train.epochs or train.max_iters")
        if list(self.lr_steps) != sorted(self.lr_steps):
            raise ValueError(f"lr_steps must be increasing, got {list(self.lr_steps)}")
        check_ranges(
            "train", keep_checkpoints=(self.keep_checkpoints, self.keep_checkpoints >= 1, ">= 1"),
            epochs=(self.epochs, self.epochs is None or self.epochs >= 1, ">= 1 or null"),
            max_iters=(self.max_iters, self.max_iters is None or self.max_iters >= 1, ">= 1 or null"),
            log_interval=(self.log_interval, self.log_interval >= 1, ">= 1"),
            checkpoint_interval=(self.checkpoint_interval, self.checkpoint_interval >= 1, ">= 1 (iterations)"),
            warmup_iters=(self.warmup_iters, self.warmup_iters >= 0, ">= 0"),
            warmup_ratio=(self.warmup_ratio, 0 < self.warmup_ratio <= 1, "in (0, 1]"),
            lr_gamma=(self.lr_gamma, self.lr_gamma > 0, "> 0"),
            max_bad_steps=(self.max_bad_steps, self.max_bad_steps >= 1, ">= 1"),
            eval_interval=(self.eval_interval, self.eval_interval >= 0, ">= 0 (0: no evaluation during training)"),
            early_stop_patience=(self.early_stop_patience, self.early_stop_patience >= 0, ">= 0 (0: never stop)"),
            accumulate=(self.accumulate, self.accumulate >= 1, ">= 1 (micro-batches per optimizer step)"),
            max_loss=(self.max_loss, self.max_loss is None or self.max_loss > 0, "> 0 or null"))


@dataclass
class EvalConfig:
    """VOC evaluation. The VOC loader turns 1-based inclusive pixels into continuous extents
    (x1 = xmin - 1, x2 = xmax), in which the devkit's "+1" widths are already included: with
    ``legacy_coords: false`` the IoUs equal the devkit's exactly. ``true`` adds another pixel."""

    metric: Literal["11point", "area"] = "11point"
    iou_thr: float = 0.5
    legacy_coords: bool = False
    # COCO: pycocotools' COCOeval, or faster-coco-eval's (pip install -e ".[coco_fast]"): the same numbers, faster
    coco_backend: Literal["pycocotools", "faster_coco_eval"] = "pycocotools"


@dataclass
class Config:
    """A whole run. ``model`` and ``weighting`` are typed by their ``type`` (the section classes in
    ``detection.config.schema.model`` / ``detection.config.schema.weighting``)."""

    model: ModelConfig = field(default_factory=RetinaNetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # how the model's raw losses become the total (ALWA and the baselines)
    weighting: WeightingConfig = field(default_factory=FixedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    seed: int = 0
    deterministic: bool = False

    def __post_init__(self):
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
