"""The ``model`` section: one typed section per detector kind, selected by ``model.type``.

``retinanet`` has ``anchors`` / ``assigner`` / ``coder`` / ``head`` / ``loss`` / ``test`` (with RetinaNet's
pre-NMS settings); ``faster_rcnn`` has ``rpn`` / ``roi_head`` / ``test``; ``mask_rcnn`` adds ``mask_head``.
A key of another kind (``model.head`` in a Faster R-CNN config) is an error naming the closest valid key.
Every head's loss settings use the same keys (``HeadLossConfig``). Defaults follow mmdetection's R50-FPN 1x.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Literal, Optional, Union

from losses import REGRESSION_LOSSES
from models.postprocess import DenseDetectConfig, DetectConfig
from models.rpn import ProposalConfig

MODEL_TYPES = ("retinanet", "faster_rcnn", "mask_rcnn")


@dataclass
class BackboneConfig:
    name: str = "resnet50"
    pretrained: Optional[str] = None  # null, "torchvision" / "IMAGENET1K_V1" (hub cache) or a file path
    download: bool = False  # fetch a torchvision weights file missing from the hub cache (off: a clear error)
    # frozen_bn: BN statistics and affine frozen (torchvision detection); bn_frozen_stats: statistics frozen,
    # affine trained (mmdetection's requires_grad=True + norm_eval=True: the ALWA paper's configs); bn: plain BN
    norm: Literal["frozen_bn", "bn_frozen_stats", "bn"] = "frozen_bn"
    frozen_stages: int = 1  # stem + this many stages (C2.. at strides 4..) get no gradient; -1: none
    bn_eps: float = 1e-5  # ResNet BN epsilon; torchvision's COCO (v1) detectors run their frozen BN with 0
    # frozen BNs folded into the convolution before them: faster, but rounded differently from torchvision's
    # separate FrozenBatchNorm2d (outputs then differ by float32 noise, ~1e-4 relative at C5)
    fold_bn: bool = True

    def __post_init__(self):
        if not self.bn_eps >= 0:
            raise ValueError(f"model.backbone.bn_eps must be >= 0, got {self.bn_eps}")


@dataclass
class FPNConfig:
    out_channels: int = 256
    in_levels: List[int] = field(default_factory=lambda: [3, 4, 5])
    extra: Literal["p6p7", "p6p7_p5", "maxpool", "none"] = "p6p7"
    p7_relu: bool = True  # P7 = conv(relu(P6)) (torchvision); false: conv(P6) (mmdetection 2.x, the ALWA configs)
    norm: Literal["none", "bn"] = "none"  # bn: BatchNorm after every FPN conv (torchvision's v2 Faster R-CNN)


@dataclass
class AnchorConfig:
    strides: List[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    ratios: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    octave_base_scale: float = 4.0
    scales_per_octave: int = 3
    scales: Optional[List[float]] = None
    center_offset: float = 0.0
    # torchvision: integer anchor sizes, cell anchors rounded to whole pixels, strides inferred as padded image
    # size // feature size (P6 / P7 at 61 x 64 / 114 x 121 on an 800 x 1216 input); mmdet: exact, nominal
    style: Literal["mmdet", "torchvision"] = "mmdet"


@dataclass
class AssignerConfig:
    pos_iou_thr: float = 0.5
    neg_iou_thr: float = 0.4
    min_pos_iou: float = 0.0
    low_quality_match: bool = True
    ignore_iof_thr: float = -1.0
    # an anchor that is some ground truth's best match goes to that ground truth (gt, mmdetection) or to its own
    # best ground truth (anchor, torchvision's Matcher)
    low_quality_target: Literal["gt", "anchor"] = "gt"


@dataclass
class CoderConfig:
    means: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    stds: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    clamp: Literal["both", "upper"] = "both"  # decoded log-size clamp at +-log(1000/16), or from above only (torchvision)


@dataclass
class SamplerConfig:
    num: int = 256  # sampled per image
    pos_fraction: float = 0.5
    neg_pos_ub: float = -1  # negatives per positive at most (-1: no cap)


@dataclass
class HeadLossConfig:
    """A head's box loss and IoU-balanced weights: the same keys in RetinaNet's ``model.loss``,
    ``model.rpn`` and ``model.roi_head``."""

    reg_loss: str = "l1"  # l1, smooth_l1 (encoded deltas), iou, giou, diou, ciou, ciou_mmdet (decoded boxes)
    reg_loss_weight: float = 1.0  # constant factor of the box loss (mmdetection's loss_weight)
    smooth_l1_beta: float = 1.0
    # IoU-balanced losses (Wu et al.): eta weights positives' classification loss by IoU^eta (their sum kept),
    # lambda scales each positive's box loss by IoU^lambda; null switches either off
    iou_balanced_eta: Optional[float] = None
    iou_balanced_lambda: Optional[float] = None

    def __post_init__(self):
        if self.reg_loss not in REGRESSION_LOSSES:
            raise ValueError(f"reg_loss must be one of {sorted(REGRESSION_LOSSES)}, got '{self.reg_loss}'")
        if not self.reg_loss_weight >= 0:
            raise ValueError(f"reg_loss_weight must be >= 0, got {self.reg_loss_weight}")


@dataclass
class DenseLossConfig(HeadLossConfig):
    smooth_l1_beta: float = 1.0 / 9.0
    iou_balanced_norm: Literal["level", "batch"] = "level"  # where the IoU-balanced sum is kept


@dataclass
class RetinaLossConfig(DenseLossConfig):
    renamed: ClassVar[Dict[str, str]] = {"reg": "reg_loss", "reg_weight": "reg_loss_weight"}

    smooth_l1_beta: float = 0.11
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    # both losses over the positive anchors: the batch's sum over the batch's positives (batch, mmdetection),
    # or each image's sum over its own positives, averaged over the images (image, torchvision's RetinaNet);
    # both count an image or batch without positives as 1
    pos_norm: Literal["batch", "image"] = "batch"


@dataclass
class HeadConfig:
    feat_channels: int = 256
    num_convs: int = 4
    prior_prob: float = 0.01
    norm: Literal["none", "gn"] = "none"
    loss_per_level: bool = False  # emit loss_cls_p3.. / loss_bbox_p3.. instead of loss_cls / loss_bbox


# The test and proposal sections are the models' own settings classes under the section names the messages
# use: their fields and defaults are written once, in models/ (the test ones frozen, as their bases are).
@dataclass(frozen=True)
class TestConfig(DetectConfig):
    """Two-stage detectors' ``model.test``: the fields and defaults of :class:`models.postprocess.DetectConfig`."""


@dataclass(frozen=True)
class DenseTestConfig(DenseDetectConfig):
    """RetinaNet's ``model.test``: the fields and defaults of :class:`models.postprocess.DenseDetectConfig`."""


@dataclass
class ProposalsConfig(ProposalConfig):
    """``model.rpn.train_proposals`` / ``test_proposals``: the fields and defaults of
    :class:`models.rpn.ProposalConfig`."""


def _rpn_anchors() -> AnchorConfig:
    return AnchorConfig(strides=[4, 8, 16, 32, 64], ratios=[0.5, 1.0, 2.0], scales=[8.0])


@dataclass
class RPNConfig(DenseLossConfig):
    """Faster / Mask R-CNN region proposal network (mmdetection's R50-FPN 1x defaults)."""

    anchors: AnchorConfig = field(default_factory=_rpn_anchors)
    assigner: AssignerConfig = field(default_factory=lambda: AssignerConfig(0.7, 0.3, 0.3, True, -1.0))
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(256, 0.5))
    coder: CoderConfig = field(default_factory=CoderConfig)
    feat_channels: int = 256
    num_convs: int = 1  # shared 3x3 convs before the 1x1 outputs (torchvision's v2: 2)
    train_proposals: ProposalsConfig = field(default_factory=ProposalsConfig.training)
    test_proposals: ProposalsConfig = field(default_factory=ProposalsConfig)


@dataclass
class RoIHeadConfig(HeadLossConfig):
    """Faster / Mask R-CNN box head; ``strides`` are the FPN levels RoIs are pooled from (P2-P5)."""

    strides: List[int] = field(default_factory=lambda: [4, 8, 16, 32])
    roi_size: int = 7
    sampling_ratio: int = 0  # 0: adaptive, ceil(RoI size / output size) samples per bin
    finest_scale: float = 56.0
    aligned: bool = True  # RoIAlign's half-pixel shift (mmdetection, detectron2); torchvision's detectors: false
    level_rule: Literal["mmdet", "torchvision"] = "mmdet"  # where the 1e-6 of the RoI-to-level rule sits
    fc_channels: int = 1024
    # two_fc: flatten + 2 FC (mmdetection's default); conv_fc: head_convs 3x3 convs with head_norm, then head_fcs
    # FC (mmdetection's Shared4Conv1FC, torchvision's v2 box head: 4 convs with BN + 1 FC)
    head_type: Literal["two_fc", "conv_fc"] = "two_fc"
    head_convs: int = 4
    head_conv_channels: int = 256
    head_fcs: int = 1
    head_norm: Literal["none", "bn", "gn"] = "bn"
    assigner: AssignerConfig = field(default_factory=lambda: AssignerConfig(0.5, 0.5, 0.5, False, -1.0))
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(512, 0.25))
    add_gt_as_proposals: bool = True
    coder: CoderConfig = field(default_factory=lambda: CoderConfig(stds=[0.1, 0.1, 0.2, 0.2]))


@dataclass
class MaskHeadConfig:
    """Mask R-CNN's mask branch: RoIAlign ``roi_size`` features, ``num_convs`` convolutions of ``conv_channels``,
    masks of ``mask_size`` pixels per RoI."""

    roi_size: int = 14
    num_convs: int = 4
    conv_channels: int = 256
    mask_size: int = 28
    mask_thr: float = 0.5  # probability threshold when pasting masks back
    # centres: sampled at pixel centres inside the box; torchvision: its padded, grown, integer-snapped resize
    paste: Literal["centres", "torchvision"] = "centres"


@dataclass
class ModelConfig:
    """What every detector has; the section of ``type`` adds the rest (see ``variants``)."""

    variants: ClassVar[dict] = {}  # type -> section class
    # the one place that says which detectors predict masks (ground-truth masks loaded, mask AP evaluated)
    has_masks: ClassVar[bool] = False

    type: Literal["retinanet", "faster_rcnn", "mask_rcnn"] = "retinanet"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    # fine-tuning: a checkpoint of ours (e.g. converted from torchvision) whose tensors of matching name and
    # shape are loaded after model.backbone.pretrained; class-dependent rows are re-initialised unless
    # init_class_map is "by_name" (same class names) or {our class: checkpoint class} (names not listed
    # are matched by name)
    init_from: Optional[str] = None
    init_class_map: Union[None, Literal["by_name"], Dict[str, str]] = None


@dataclass
class RetinaNetConfig(ModelConfig):
    """RetinaNet: anchors, max-IoU assignment, delta coder, the shared dense head, focal + box loss, and the
    test-time selection (pre-NMS top-k per level, NMS)."""

    type: Literal["retinanet", "faster_rcnn", "mask_rcnn"] = "retinanet"
    # training targets: anchors per level, which anchors match which object, the regression targets
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    assigner: AssignerConfig = field(default_factory=AssignerConfig)
    coder: CoderConfig = field(default_factory=CoderConfig)
    # the head and its losses
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: RetinaLossConfig = field(default_factory=RetinaLossConfig)
    test: DenseTestConfig = field(default_factory=DenseTestConfig)


@dataclass
class FasterRCNNConfig(ModelConfig):
    """Faster R-CNN: the region proposal network and the RoI box head; test-time NMS settings."""

    type: Literal["retinanet", "faster_rcnn", "mask_rcnn"] = "faster_rcnn"
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_head: RoIHeadConfig = field(default_factory=RoIHeadConfig)
    test: TestConfig = field(default_factory=TestConfig)


@dataclass
class MaskRCNNConfig(FasterRCNNConfig):
    """Mask R-CNN: Faster R-CNN with a mask branch in the RoI heads."""

    type: Literal["retinanet", "faster_rcnn", "mask_rcnn"] = "mask_rcnn"
    has_masks: ClassVar[bool] = True
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)


ModelConfig.variants = {"retinanet": RetinaNetConfig, "faster_rcnn": FasterRCNNConfig, "mask_rcnn": MaskRCNNConfig}
