"""Helpers for the torchvision-import tests: torchvision detectors with random but non-trivial weights
(BN statistics measured on images, class biases that give detections) and matching of two detection lists."""
from __future__ import annotations

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from detection.checkpoint.convert import COCO_CATEGORY_IDS, TORCHVISION_SLOTS

UNUSED = sorted(set(range(TORCHVISION_SLOTS)) - set(COCO_CATEGORY_IDS) - {0})


def smooth_images(sizes, seed=0):
    """uint8 RGB images of the given (h, w): upsampled noise, so features vary across the image."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in sizes:
        low = torch.rand(1, 3, h // 8 + 1, w // 8 + 1, generator=g)
        img = nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0]
        out.append((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    return out


def calibrate_bn(model, images, v1: bool):
    """BN running statistics from a train-mode pass of the body over ``images`` (non-trivial mean / var),
    random affine maps; torchvision's COCO_V1 loaders run BN with eps 0, as ``v1`` does here."""
    body = model.backbone.body
    norms = [m for m in body.modules() if isinstance(m, nn.BatchNorm2d)]
    g = torch.Generator().manual_seed(1)
    for m in norms:
        m.momentum = None  # cumulative average: the statistics of the pass below
        m.reset_running_stats()
        with torch.no_grad():
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
            m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    batch = torch.stack([torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in images])
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    body.train()
    with torch.no_grad():
        body((batch - mean) / std)
    if v1:  # torchvision's COCO_V1 models: FrozenBatchNorm2d with eps 0
        freeze_bn(model)


def freeze_bn(module):
    """Replace every BatchNorm2d by a FrozenBatchNorm2d (eps 0) with the same statistics, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=0.0)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_bn(child)


def tv_model(arch: str, images, min_size: int, max_size: int, seed: int = 0):
    """torchvision's ``arch`` in eval mode, random weights (weights=None, weights_backbone=None) made
    detection-like: calibrated BN, class biases giving scores above 0.05, the 11 unused COCO slots silenced."""
    torch.manual_seed(seed)
    fn = getattr(torchvision.models.detection, arch)
    model = fn(weights=None, weights_backbone=None, num_classes=TORCHVISION_SLOTS, min_size=min_size,
               max_size=max_size)
    calibrate_bn(model, images_for_bn(images), v1=not arch.endswith("_v2"))
    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for name, m in model.named_modules():  # the v2 FPN and box head BNs: random statistics
            if isinstance(m, nn.BatchNorm2d) and not name.startswith("backbone.body"):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
        if arch.startswith("retinanet"):
            bias = model.head.classification_head.cls_logits.bias.view(-1, TORCHVISION_SLOTS)
            bias.copy_(-3.0 + 2.5 * torch.rand(bias.shape, generator=g))
            bias[:, [0] + UNUSED] = -30.0  # slot 0 (never a target in RetinaNet) and the unused ids
        else:
            bias = model.roi_heads.box_predictor.cls_score.bias
            bias.copy_(torch.rand(bias.shape, generator=g))
            bias[torch.tensor(COCO_CATEGORY_IDS[:6])] += 3.0
            bias[UNUSED] = -30.0
    return model.eval()


def tv_small_retinanet(images, min_size: int, max_size: int, channels: int = 64, seed: int = 0):
    """What ``retinanet_resnet50_fpn`` assembles (torchvision's RetinaNet class: its anchors, matcher, head and
    losses) on a ResNet-18 trunk with a ``channels``-wide FPN and head, so that training steps are fast on a
    CPU: FrozenBatchNorm2d (eps 0) with statistics measured on ``images``, stem and layer1 frozen (as its
    trainable_backbone_layers=3), P6 from P5, the head's own prior-probability init. Class slot 0 and the 11
    unused COCO ids are silenced: our converted model has no rows for them, so their focal loss must be ~0."""
    torch.manual_seed(seed)
    trunk = torchvision.models.resnet18(weights=None)
    widths = [trunk.layer2[0].conv1.out_channels, trunk.layer3[0].conv1.out_channels,
              trunk.layer4[0].conv1.out_channels]
    backbone = BackboneWithFPN(trunk, {"layer2": "0", "layer3": "1", "layer4": "2"}, widths, channels,
                               extra_blocks=LastLevelP6P7(channels, channels))
    model = RetinaNet(backbone, TORCHVISION_SLOTS, min_size=min_size, max_size=max_size)
    calibrate_bn(model, images_for_bn(images), v1=True)
    for name, p in model.backbone.body.named_parameters():
        p.requires_grad_(name.startswith(("layer2", "layer3", "layer4")))
    with torch.no_grad():
        model.head.classification_head.cls_logits.bias.view(-1, TORCHVISION_SLOTS)[:, [0] + UNUSED] = -30.0
    return model


def images_for_bn(images):
    """Equal-size crops of the test images for the BN statistics pass."""
    h = min(i.shape[0] for i in images)
    w = min(i.shape[1] for i in images)
    return [i[:h, :w] for i in images]


def tv_detections(model, images):
    with torch.no_grad():
        return model([torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in images])


def to_our_labels(tv_labels):
    index = {c: i for i, c in enumerate(COCO_CATEGORY_IDS)}
    return torch.tensor([index[int(c)] for c in tv_labels], dtype=torch.long)


def unmatched(ref: dict, ours: dict, box_tol: float = 1e-3, score_tol: float = 1e-5) -> int:
    """Detections of ``ref`` (torchvision, labels already ours) without a partner in ``ours`` of the same label,
    boxes within ``box_tol`` px and score within ``score_tol``, pairing each of ours at most once, plus the
    difference in count (so 0 means the two lists are the same detections, in any order of equal scores)."""
    if len(ref["boxes"]) == 0 or len(ours["boxes"]) == 0:
        return abs(len(ref["boxes"]) - len(ours["boxes"]))
    close = ((ref["labels"][:, None] == ours["labels"][None, :])
             & ((ref["boxes"][:, None, :] - ours["boxes"][None, :, :]).abs().amax(-1) <= box_tol)
             & ((ref["scores"][:, None] - ours["scores"][None, :]).abs() <= score_tol))
    taken = torch.zeros(close.shape[1], dtype=torch.bool)
    missing = 0
    for row in close:  # greedy is enough: candidates are near-identical, at most a few per row
        free = (row & ~taken).nonzero()
        if len(free):
            taken[free[0, 0]] = True
        else:
            missing += 1
    return missing + abs(len(ref["boxes"]) - len(ours["boxes"]))
