"""The configuration schema: every key a YAML config may set, with its type and default.

Defaults follow mmdetection's RetinaNet R50-FPN 1x and the ALWA paper's setup (SGD, momentum 0.9,
weight decay 1e-4, 12 epochs, lr steps at epochs 8 and 11, lr 0.01 for 8 images per step).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional

from losses import REGRESSION_LOSSES

IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]


def _check_reg_loss(key: str, name: str) -> None:
    if name not in REGRESSION_LOSSES:
        raise ValueError(f"{key} must be one of {sorted(REGRESSION_LOSSES)}, got '{name}'")


@dataclass
class BackboneConfig:
    name: str = "resnet50"
    pretrained: Optional[str] = None  # null, "torchvision" (hub cache, never downloaded) or a file path
    # frozen_bn: BN statistics and affine frozen (torchvision detection); bn_frozen_stats: statistics frozen,
    # affine trained (mmdetection's requires_grad=True + norm_eval=True: the ALWA paper's configs); bn: plain BN
    norm: Literal["frozen_bn", "bn_frozen_stats", "bn"] = "frozen_bn"
    frozen_stages: int = 1  # stem + this many ResNet stages get no gradient


@dataclass
class FPNConfig:
    out_channels: int = 256
    in_levels: List[int] = field(default_factory=lambda: [3, 4, 5])
    extra: Literal["p6p7", "p6p7_p5", "maxpool", "none"] = "p6p7"
    p7_relu: bool = True  # P7 = conv(relu(P6)) (torchvision); false: conv(P6) (mmdetection 2.x, the ALWA configs)


@dataclass
class AnchorConfig:
    strides: List[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    ratios: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    octave_base_scale: float = 4.0
    scales_per_octave: int = 3
    scales: Optional[List[float]] = None
    center_offset: float = 0.0


@dataclass
class AssignerConfig:
    pos_iou_thr: float = 0.5
    neg_iou_thr: float = 0.4
    min_pos_iou: float = 0.0
    low_quality_match: bool = True
    ignore_iof_thr: float = -1.0


@dataclass
class CoderConfig:
    means: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    stds: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])


@dataclass
class HeadConfig:
    feat_channels: int = 256
    num_convs: int = 4
    prior_prob: float = 0.01
    norm: Literal["none", "gn"] = "none"
    loss_per_level: bool = False  # emit loss_cls_p3.. / loss_bbox_p3.. instead of loss_cls / loss_bbox


@dataclass
class LossConfig:
    reg: str = "l1"
    reg_weight: float = 1.0  # constant factor of the box loss (mmdetection's loss_weight)
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    smooth_l1_beta: float = 0.11
    # IoU-balanced losses (Wu et al.; RetinaNet): eta weights positives' focal loss by IoU^eta (sum kept),
    # lambda scales each positive's regression loss by IoU^lambda; null switches either off. The sum is kept
    # per FPN level (the authors' released code) or over the whole batch
    iou_balanced_eta: Optional[float] = None
    iou_balanced_lambda: Optional[float] = None
    iou_balanced_norm: Literal["level", "batch"] = "level"

    def __post_init__(self):
        _check_reg_loss("model.loss.reg", self.reg)


@dataclass
class TestConfig:
    score_thr: float = 0.05
    nms_iou: float = 0.5
    pre_nms_top_k: int = 1000
    max_per_img: int = 100
    # RetinaNet: per level, the top pre_nms_top_k (anchor, class) pairs, or the top anchors by their best class
    # score with all their classes (mmdetection 2.x's nms_pre, the ALWA configs)
    pre_nms_rank: Literal["pairs", "anchors"] = "pairs"


@dataclass
class SamplerConfig:
    num: int = 256  # sampled per image
    pos_fraction: float = 0.5
    neg_pos_ub: float = -1  # negatives per positive at most (-1: no cap)


@dataclass
class ProposalsConfig:
    pre_nms_top_k: int = 1000  # per FPN level and image
    post_nms_top_k: int = 1000  # per image
    nms_iou: float = 0.7
    min_size: float = 0.0


def _rpn_anchors() -> AnchorConfig:
    return AnchorConfig(strides=[4, 8, 16, 32, 64], ratios=[0.5, 1.0, 2.0], scales=[8.0])


@dataclass
class RPNConfig:
    """Faster / Mask R-CNN region proposal network (mmdetection's R50-FPN 1x defaults)."""

    anchors: AnchorConfig = field(default_factory=_rpn_anchors)
    assigner: AssignerConfig = field(default_factory=lambda: AssignerConfig(0.7, 0.3, 0.3, True, -1.0))
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(256, 0.5))
    coder: CoderConfig = field(default_factory=CoderConfig)
    feat_channels: int = 256
    reg_loss: str = "l1"
    reg_loss_weight: float = 1.0  # constant factor of the box loss (mmdetection's loss_weight)
    smooth_l1_beta: float = 1.0 / 9.0
    train_proposals: ProposalsConfig = field(default_factory=lambda: ProposalsConfig(2000, 1000, 0.7, 0.0))
    test_proposals: ProposalsConfig = field(default_factory=lambda: ProposalsConfig(1000, 1000, 0.7, 0.0))
    iou_balanced_eta: Optional[float] = None  # IoU-balanced objectness BCE (Wu et al.); null: off
    iou_balanced_lambda: Optional[float] = None  # IoU-balanced regression weight IoU^lambda; null: off
    iou_balanced_norm: Literal["level", "batch"] = "level"  # where the objectness sum is kept

    def __post_init__(self):
        _check_reg_loss("model.rpn.reg_loss", self.reg_loss)


@dataclass
class RoIHeadConfig:
    """Faster / Mask R-CNN box head; ``strides`` are the FPN levels RoIs are pooled from (P2-P5)."""

    strides: List[int] = field(default_factory=lambda: [4, 8, 16, 32])
    roi_size: int = 7
    sampling_ratio: int = 0  # 0: adaptive, ceil(RoI size / output size) samples per bin
    finest_scale: float = 56.0
    fc_channels: int = 1024
    assigner: AssignerConfig = field(default_factory=lambda: AssignerConfig(0.5, 0.5, 0.5, False, -1.0))
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(512, 0.25))
    add_gt_as_proposals: bool = True
    coder: CoderConfig = field(default_factory=lambda: CoderConfig(stds=[0.1, 0.1, 0.2, 0.2]))
    reg_loss: str = "l1"
    reg_loss_weight: float = 1.0  # constant factor of the box loss (the ALWA configs: 1.1 with SmoothL1)
    smooth_l1_beta: float = 1.0
    iou_balanced_eta: Optional[float] = None  # IoU-balanced softmax CE (Wu et al.); null: off
    iou_balanced_lambda: Optional[float] = None  # IoU-balanced regression weight IoU^lambda; null: off

    def __post_init__(self):
        _check_reg_loss("model.roi_head.reg_loss", self.reg_loss)


@dataclass
class MaskHeadConfig:
    roi_size: int = 14
    num_convs: int = 4
    conv_channels: int = 256
    mask_size: int = 28
    mask_thr: float = 0.5  # probability threshold when pasting masks back


@dataclass
class ModelConfig:
    type: Literal["retinanet", "faster_rcnn", "mask_rcnn"] = "retinanet"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    assigner: AssignerConfig = field(default_factory=AssignerConfig)
    coder: CoderConfig = field(default_factory=CoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    test: TestConfig = field(default_factory=TestConfig)
    # two-stage detectors only (RetinaNet uses anchors / assigner / coder / head / loss above)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_head: RoIHeadConfig = field(default_factory=RoIHeadConfig)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)


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
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"data.train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.repeat < 1:
            raise ValueError(f"data.repeat must be a positive integer, got {self.repeat}")


@dataclass
class OptimizerConfig:
    type: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: Optional[float] = None  # max gradient norm
    base_batch_size: int = 8  # lr is for this many images per step; scaled linearly when scale_lr
    scale_lr: bool = True


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
    progress: bool = True
    sync_bn: bool = False  # convert BatchNorm layers to SyncBatchNorm under DDP on GPUs
    channels_last: bool = False  # NHWC model and images: faster convs on GPUs and oneDNN CPUs (docs/benchmarks.md)
    cudnn_benchmark: bool = False  # cuDNN autotuning: for inputs of few distinct sizes (ignored when deterministic)
    check_finite: bool = True  # skip steps with non-finite losses or gradients (one host read per step)
    max_bad_steps: int = 5  # stop (after a checkpoint) after this many consecutive skipped steps

    def __post_init__(self):
        if self.epochs is None and self.max_iters is None:
            raise ValueError("set train.epochs or train.max_iters")
        if list(self.lr_steps) != sorted(self.lr_steps):
            raise ValueError(f"lr_steps must be increasing, got {list(self.lr_steps)}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")


@dataclass
class WeightingConfig:
    """How raw losses become the total. ``fixed``: ``weights`` (key -> weight, others 1). ``alwa``: ALWA on
    ``cls_keys`` / ``reg_keys``. ``avw`` / ``rlo``: per-level weighting over ``groups`` (default: RetinaNet's
    ``loss_cls_p*`` and ``loss_bbox_p*``; needs ``model.head.loss_per_level``). ``uncertainty`` / ``dwa``:
    multi-task baselines over ``keys`` (default: cls_keys + reg_keys). ``interval`` is every windowed
    scheme's window length."""

    type: Literal["fixed", "alwa", "avw", "rlo", "uncertainty", "dwa"] = "fixed"
    weights: Dict[str, float] = field(default_factory=dict)  # fixed: key -> weight
    variant: int = 2
    interval: int = 100  # C in the paper
    cls_keys: List[str] = field(default_factory=lambda: ["loss_cls"])
    reg_keys: List[str] = field(default_factory=lambda: ["loss_bbox"])
    init_weight: float = 1.0
    stats: Literal["weighted", "raw"] = "weighted"
    # windows pooled over DDP ranks (every rank the same weights); false: per process, each rank its own λ from
    # its own images (the released ALWA code; the paper configs)
    sync: bool = True
    keys: Optional[List[str]] = None  # uncertainty, dwa
    groups: Optional[List[List[str]]] = None  # avw, rlo
    momentum: float = 0.0  # avw
    w_min: float = 0.0  # avw
    w_max: Optional[float] = None  # avw (null: no cap)
    schemes: List[str] = field(default_factory=lambda: ["equal", "avw", "inverse_variance", "small_level"])  # rlo
    policy_lr: float = 0.1  # rlo
    temperature: Optional[float] = None  # rlo (default 1) and dwa (default 2)
    init_log_var: float = 0.0  # uncertainty


@dataclass
class EvalConfig:
    """VOC evaluation. The VOC loader turns 1-based inclusive pixels into continuous extents
    (x1 = xmin - 1, x2 = xmax), in which the devkit's "+1" widths are already included: with
    ``legacy_coords: false`` the IoUs equal the devkit's exactly. ``true`` adds another pixel."""

    metric: Literal["11point", "area"] = "11point"
    iou_thr: float = 0.5
    legacy_coords: bool = False


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    seed: int = 0
    deterministic: bool = False
