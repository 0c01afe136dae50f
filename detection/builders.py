"""Small functions that turn a validated ``Config`` into the explicit parts of a training run."""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import List, Optional, Tuple

import torch
from torch import nn

import datasets
from datasets.shapes import make_shapes
from detection.config.loader import ConfigError
from detection.config.schema import Config, DataConfig
from detection.runtime.signals import ignore_stop_signals
from losses.weighting import ALWA, AVW, DWA, RLO, Fixed, UncertaintyWeighting, WeightingStrategy
from models.anchors import AnchorGenerator
from models.assigner import MaxIoUAssigner
from models.backbone import BackboneFPN, build_body
from models.box_coder import DeltaBoxCoder
from models.box_loss import BoxRegressionLoss
from models.contract import LossContract
from models.faster_rcnn import FasterRCNN
from models.head_loss import BCE, DenseHeadLoss, IoUBalanced, RoIHeadLoss, SigmoidLoss
from models.mask_head import MaskHead
from models.mask_rcnn import MaskBranch, MaskRCNN
from models.postprocess import DenseDetectConfig, DetectConfig
from models.retinanet import RetinaHead, RetinaNet
from models.roi_heads import ConvFCBoxHead, RoIFeatureExtractor, RoIHeads, TwoFCBoxHead
from models.rpn import ProposalConfig, RegionProposalNetwork, RPNHead
from models.sampler import RandomSampler


def class_names(cfg: Config) -> List[str]:
    if cfg.data.classes is not None:
        return list(cfg.data.classes)
    if cfg.data.shapes is not None:
        return list(cfg.data.shapes.classes)
    return list(datasets.COCO_CLASSES if cfg.data.format == "coco" else datasets.VOC_CLASSES)


def _settings(cls, section):
    """The models' settings class ``cls`` with the values of ``section`` (a schema section subclassing it): a
    copy of the models' own type, so that the model shares nothing with the config."""
    return cls(**{f.name: getattr(section, f.name) for f in dataclasses.fields(cls)})


def _anchor_generator(a) -> AnchorGenerator:
    return AnchorGenerator(strides=a.strides, ratios=a.ratios, octave_base_scale=a.octave_base_scale,
                           scales_per_octave=a.scales_per_octave, scales=a.scales, center_offset=a.center_offset,
                           style=a.style)


def _assigner(a) -> MaxIoUAssigner:
    return MaxIoUAssigner(a.pos_iou_thr, a.neg_iou_thr, a.min_pos_iou, a.low_quality_match, a.ignore_iof_thr,
                          a.low_quality_target)


def _check_strides(key: str, strides, backbone: BackboneFPN) -> None:
    if list(strides) != list(backbone.strides)[: len(strides)] or (key.endswith("anchors.strides")
                                                                   and len(strides) != len(backbone.strides)):
        raise ConfigError([f"{key} {list(strides)} do not match the FPN levels' strides {backbone.strides} "
                           f"(model.fpn.in_levels / model.fpn.extra)"])


def build_backbone(cfg: Config) -> BackboneFPN:
    m = cfg.model
    body = build_body(m.backbone.name, m.backbone.norm, m.backbone.frozen_stages, m.backbone.pretrained,
                      m.backbone.bn_eps, m.backbone.fold_bn, m.backbone.download)
    return BackboneFPN(body, m.fpn.out_channels, m.fpn.in_levels, m.fpn.extra, m.fpn.p7_relu, m.fpn.norm)


def _box_loss(h, coder) -> BoxRegressionLoss:
    """The box loss of one head's loss section (``HeadLossConfig``)."""
    return BoxRegressionLoss(h.reg_loss, DeltaBoxCoder(coder.means, coder.stds, clamp=coder.clamp), h.smooth_l1_beta,
                             h.reg_loss_weight)


def _iou_balanced(h, norm: str = "batch") -> IoUBalanced:
    return IoUBalanced(h.iou_balanced_eta, h.iou_balanced_lambda, norm)


def _sampler(s) -> RandomSampler:
    return RandomSampler(s.num, s.pos_fraction, s.neg_pos_ub)


def build_retinanet(cfg: Config, num_classes: int) -> RetinaNet:
    m = cfg.model
    backbone = build_backbone(cfg)
    anchors = _anchor_generator(m.anchors)
    _check_strides("model.anchors.strides", anchors.strides, backbone)
    head = RetinaHead(backbone.out_channels, num_classes, anchors.num_anchors_per_location, m.head.feat_channels,
                      m.head.num_convs, m.head.prior_prob, m.head.norm)
    loss = DenseHeadLoss(_assigner(m.assigner), _box_loss(m.loss, m.coder),
                         SigmoidLoss(m.loss.focal_alpha, m.loss.focal_gamma),
                         iou_balanced=_iou_balanced(m.loss, m.loss.iou_balanced_norm), norm=m.loss.pos_norm)
    return RetinaNet(backbone, head, anchors, loss, _settings(DenseDetectConfig, m.test),
                     loss_per_level=m.head.loss_per_level)


def build_rpn(cfg: Config, backbone: BackboneFPN) -> RegionProposalNetwork:
    r = cfg.model.rpn
    anchors = _anchor_generator(r.anchors)
    _check_strides("model.rpn.anchors.strides", anchors.strides, backbone)
    head = RPNHead(backbone.out_channels, anchors.num_anchors_per_location, r.feat_channels, r.num_convs)
    loss = DenseHeadLoss(_assigner(r.assigner), _box_loss(r, r.coder), BCE, _sampler(r.sampler),
                         _iou_balanced(r, r.iou_balanced_norm))
    return RegionProposalNetwork(head, anchors, loss, _settings(ProposalConfig, r.train_proposals),
                                 _settings(ProposalConfig, r.test_proposals))


def build_roi_heads(cfg: Config, backbone: BackboneFPN, num_classes: int) -> RoIHeads:
    m, h = cfg.model, cfg.model.roi_head
    _check_strides("model.roi_head.strides", h.strides, backbone)
    extractor = RoIFeatureExtractor(h.strides, h.roi_size, h.sampling_ratio, h.finest_scale, h.aligned, h.level_rule)
    if h.head_type == "conv_fc":
        box_head = ConvFCBoxHead(backbone.out_channels, h.roi_size, num_classes, h.fc_channels, h.head_convs,
                                 h.head_conv_channels, h.head_fcs, h.head_norm)
    else:
        box_head = TwoFCBoxHead(backbone.out_channels, h.roi_size, num_classes, h.fc_channels)
    mask_branch = None
    if m.has_masks:
        mh = m.mask_head
        mask_extractor = RoIFeatureExtractor(h.strides, mh.roi_size, h.sampling_ratio, h.finest_scale, h.aligned,
                                             h.level_rule)
        mask_head = MaskHead(backbone.out_channels, num_classes, mh.conv_channels, mh.num_convs)
        mask_branch = MaskBranch(mask_extractor, mask_head, mh.mask_size, mh.mask_thr, mh.paste)
    loss = RoIHeadLoss(_assigner(h.assigner), _sampler(h.sampler), _box_loss(h, h.coder), _iou_balanced(h),
                       h.add_gt_as_proposals)
    return RoIHeads(extractor, box_head, loss, _settings(DetectConfig, m.test), mask_branch)


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The detector named by ``model.type``, assembled from explicit parts."""
    if cfg.model.type == "retinanet":
        return build_retinanet(cfg, num_classes)
    backbone = build_backbone(cfg)
    rpn = build_rpn(cfg, backbone)
    roi_heads = build_roi_heads(cfg, backbone, num_classes)
    cls = MaskRCNN if cfg.model.has_masks else FasterRCNN
    return cls(backbone, rpn, roi_heads)


def loss_contract(cfg: Config) -> LossContract:
    """The loss contract of the model ``cfg`` describes, without building it (the models' own rules)."""
    if cfg.model.type == "retinanet":
        return RetinaNet.contract_for(cfg.model.anchors.strides, cfg.model.head.loss_per_level)
    return FasterRCNN.contract_for(cfg.model.has_masks)


def build_weighting(cfg: Config, contract: Optional[LossContract] = None) -> WeightingStrategy:
    """The strategy of ``cfg.weighting``, checked against the model's loss contract (default: the one
    ``cfg`` describes): every key it names must be one the model returns (an error naming the closest model
    key and all of them)."""
    contract = contract or loss_contract(cfg)
    try:
        strategy = _strategy(cfg, contract)
    except ConfigError:
        raise
    except ValueError as exc:  # the strategies' own range checks (e.g. ALWA's init_weight)
        raise ConfigError([f"weighting ({cfg.weighting.type}): {exc}"]) from None
    try:
        contract.check(strategy.configured_keys(), f"weighting ({cfg.weighting.type})", f"the {cfg.model.type} model")
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None
    return strategy


def _strategy(cfg: Config, contract: LossContract) -> WeightingStrategy:
    w = cfg.weighting
    if w.type == "fixed":
        strategy: WeightingStrategy = Fixed(w.weights)
    elif w.type == "alwa":
        strategy = ALWA(variant=w.variant, interval=w.interval, cls_keys=w.cls_keys, reg_keys=w.reg_keys,
                        init_weight=w.init_weight, stats=w.stats, sync=w.sync, start_iter=w.start_iter,
                        first_window=w.first_window)
    elif w.type in ("avw", "rlo"):
        groups = w.groups if w.groups is not None else contract.level_groups
        if not groups:
            raise ConfigError([f"weighting.type {w.type} weighs per-level losses: set model.head.loss_per_level: "
                               f"true (RetinaNet) or list the loss keys in weighting.groups"])
        if w.type == "avw":
            strategy = AVW(groups=groups, interval=w.interval, momentum=w.momentum, w_min=w.w_min,
                           w_max=math.inf if w.w_max is None else w.w_max, sync=w.sync)
        else:
            strategy = RLO(groups=groups, schemes=w.schemes, interval=w.interval, lr=w.policy_lr,
                           temperature=w.temperature, seed=cfg.seed, sync=w.sync)
    else:
        keys = w.keys if w.keys is not None else list(contract.keys)
        if w.type == "uncertainty":
            strategy = UncertaintyWeighting(keys, init_log_var=w.init_log_var)
        else:
            strategy = DWA(keys, interval=w.interval, temperature=w.temperature, sync=w.sync)
    return strategy


def prepare_data(data: DataConfig) -> None:
    """Generate the synthetic shapes data into ``data.root`` if the config asks for it. A root holding anything
    the generator did not write (a user's own data under a demo config's ``data.shapes``) is a ``DataError``
    naming the folder and the keys that fix it, before anything is written."""
    if data.shapes is None:
        return
    s = data.shapes
    make_shapes(data.root, num_train=s.num_train, num_val=s.num_val, num_test=s.num_test,
                image_size=s.image_size, classes=tuple(s.classes), seed=s.seed,
                remedy="set data.root to an empty or new folder, or remove the data.shapes section "
                       "(data.shapes: null) to use the data already there")


def build_transform(cfg: Config, train: bool):
    """The preprocessing of ``cfg``'s training (with flips) or test images."""
    d = cfg.data
    return datasets.build_transforms(train=train, min_size=d.min_size, max_size=d.max_size,
                                     flip_prob=d.flip_prob if train else 0.0, mean=d.mean, std=d.std,
                                     style=d.preprocess)


def build_dataset(cfg: Config, train: bool):
    d = cfg.data
    transforms = build_transform(cfg, train)
    sets = d.train_sets if train else d.test_sets
    if d.format == "coco" and not train and len(sets) > 1:
        raise ConfigError([f"data.test_sets {list(sets)}: COCO evaluation takes one set (one annotation file); "
                           f"evaluate the sets one at a time"])
    if d.format == "coco":
        classes = d.classes if d.classes is not None else (d.shapes.classes if d.shapes is not None else None)
        # ground-truth masks are only decoded when a mask branch trains on them
        dataset = datasets.COCODataset(d.root, sets, image_dir=d.coco_image_dir, classes=classes,
                                       with_masks=train and cfg.model.has_masks, transforms=transforms,
                                       check_masks=cfg.model.has_masks)
    else:
        dataset = datasets.VOCDataset(d.root, sets, classes=class_names(cfg),
                                      include_difficult=d.train_difficult if train else True, transforms=transforms)
    if train and d.train_fraction < 1:  # the subset first: a repeated epoch repeats the kept images
        dataset.keep_fraction(d.train_fraction)
    if train and d.repeat > 1:
        dataset = datasets.RepeatDataset(dataset, d.repeat)
    return dataset


def check_test_classes(train_set, test_set) -> None:
    """COCO-format data: evaluation maps the model's labels through the test file's category ids, so the test
    file must give every class the id the training files give it (a ``DataError`` naming both files and each
    differing name / id). VOC-format splits share ``class_names(cfg)`` by construction."""
    train_set = getattr(train_set, "dataset", train_set)  # data.repeat's wrapper
    if isinstance(train_set, datasets.COCODataset) and isinstance(test_set, datasets.COCODataset):
        train_set.check_same_categories(test_set)


def build_train_loader(cfg: Config, dataset, rank: int = 0, world_size: int = 1):
    d = cfg.data
    ratios = dataset.aspect_ratios() if d.aspect_ratio_grouping else [1.0] * len(dataset)
    sampler = datasets.GroupedBatchSampler(ratios, d.batch_size, shuffle=True, seed=cfg.seed, drop_last=True,
                                           num_replicas=world_size, rank=rank, augment_seeds=True)
    if len(sampler) == 0:
        raise ConfigError([f"the training set has {len(dataset)} images, fewer than one batch of "
                           f"data.batch_size={d.batch_size} per process on {world_size} process(es)"])
    loader = torch.utils.data.DataLoader(
        datasets.SeededAugmentation(dataset), batch_sampler=sampler, num_workers=d.num_workers, collate_fn=_collate(d.size_divisor),
        pin_memory=torch.cuda.is_available(), persistent_workers=d.num_workers > 0, worker_init_fn=ignore_stop_signals,
        generator=torch.Generator().manual_seed(cfg.seed * 1000 + rank),
    )
    return loader, sampler


def _collate(size_divisor: int):
    """The batch collation of ``datasets`` (picklable for worker processes: a partial of a module function, so
    the data path never comes back through the engine)."""
    return functools.partial(datasets.collate_detection, size_divisor=size_divisor)


def build_test_loader(cfg: Config, dataset, rank: int = 0, world_size: int = 1):
    indices = list(range(rank, len(dataset), world_size))
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=cfg.data.test_batch_size, shuffle=False,
        num_workers=cfg.data.num_workers, collate_fn=_collate(cfg.data.size_divisor), worker_init_fn=ignore_stop_signals,
    ), indices


def build_optimizer(cfg: Config, model: nn.Module, world_size: int = 1,
                    weighting: Optional[WeightingStrategy] = None) -> Tuple[torch.optim.Optimizer, float]:
    """SGD or AdamW over the model's trainable parameters, plus any learnable loss-weighting parameters
    (uncertainty weighting's log-variances), which get no weight decay."""
    o = cfg.optimizer
    # the effective batch: images per micro-batch x micro-batches per step (train.accumulate) x processes
    effective = cfg.data.batch_size * cfg.train.accumulate * world_size
    lr = o.lr * (effective / o.base_batch_size if o.scale_lr else 1.0)
    params = [p for p in model.parameters() if p.requires_grad]
    extra = list(weighting.parameters()) if weighting is not None else []
    # biases and norm parameters get no weight decay only under AdamW; SGD follows mmdetection (decay on all)
    if o.type == "sgd":
        groups = [{"params": params, "weight_decay": o.weight_decay}]
        opt = torch.optim.SGD
        kwargs = {"momentum": o.momentum}
    else:
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": o.weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        opt, kwargs = torch.optim.AdamW, {}
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    return opt(groups, lr=lr, **kwargs), lr


def schedule_length(cfg: Config, iters_per_epoch: int) -> Tuple[int, List[int]]:
    """Total iterations and the LR step iterations."""
    t = cfg.train
    if t.max_iters is not None:
        return t.max_iters, [int(s) for s in t.lr_steps]
    return t.epochs * iters_per_epoch, [int(round(s * iters_per_epoch)) for s in t.lr_steps]


def build_scheduler(cfg: Config, optimizer, steps: List[int]):
    t = cfg.train

    def factor(it: int) -> float:
        f = t.lr_gamma ** sum(it >= s for s in steps)
        if it < t.warmup_iters:  # linear warmup from warmup_ratio to 1
            f *= t.warmup_ratio + (1 - t.warmup_ratio) * it / t.warmup_iters
        return f

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError([f"device '{name}' was requested but CUDA is not available here; set device: cpu or auto"])
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError([f"device '{name}': this machine has {torch.cuda.device_count()} CUDA device(s)"])
    return device


def default_work_dir(cfg_path: str) -> str:
    return os.path.join("work_dirs", os.path.splitext(os.path.basename(cfg_path))[0])
