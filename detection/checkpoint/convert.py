"""Import torchvision's COCO detectors: their state dicts mapped onto our modules, as self-describing checkpoints.

torchvision and this codebase build the same networks (torchvision's ResNet bodies and FPN are used as they
are), so a conversion is a renaming of keys plus one change of layout: torchvision's classifiers have 91 COCO
slots (index = COCO category id, 11 of them unused, background at 0 in the R-CNNs) where ours have the 80
categories in category-id order (background last in the R-CNNs). The class-dependent rows are gathered in
that order: RetinaNet's ``cls_logits`` (anchor-major, ``[A * 91]`` -> ``[A * 80]``), the R-CNN box classifier
(``[91]`` -> ``[80 + 1]``) and class-specific box regression (``[91 * 4]`` -> ``[80 * 4]``), and the mask
logits (``[91]`` -> ``[80]``).

Dropping the unused slots changes nothing for sigmoid classifiers except that they no longer compete for
the top-k and per-image caps. For the R-CNNs' softmax it renormalises over the 81 remaining rows: the
scores differ from torchvision's by the probability the model gives the unused slots (trained to be ~0).

The settings that make the outputs equal torchvision's (anchors, frozen-BN epsilon, RoIAlign, decoding,
post-processing, preprocessing) are in ``configs/torchvision/<arch>.yaml``; the converted checkpoint
carries that config, the 80 class names and their category ids, so ``scripts/eval.py --ckpt`` needs
nothing else.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor

import datasets
from detection import builders
from detection.checkpoint.io import save_checkpoint
from detection.config.loader import load_config
from detection.checkpoint.state import weights_checkpoint
from detection.checkpoint.init_from import class_row_index
from detection.config.schema import Config
from models.faster_rcnn import FasterRCNN
from models.retinanet import RetinaNet

# the 80 COCO category ids, in the order of our labels (ascending id, as COCO's annotation files list them)
COCO_CATEGORY_IDS: List[int] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33,
    34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
    62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]
TORCHVISION_SLOTS = 91

# arch -> (torchvision builder name, published COCO val2017 AP: box, mask)
ARCHS: Dict[str, Tuple[str, Tuple[float, ...]]] = {
    "retinanet_resnet50_fpn": ("retinanet_resnet50_fpn", (36.4,)),
    "retinanet_resnet50_fpn_v2": ("retinanet_resnet50_fpn_v2", (41.5,)),
    "fasterrcnn_resnet50_fpn": ("fasterrcnn_resnet50_fpn", (37.0,)),
    "fasterrcnn_resnet50_fpn_v2": ("fasterrcnn_resnet50_fpn_v2", (46.7,)),
    "maskrcnn_resnet50_fpn": ("maskrcnn_resnet50_fpn", (37.9, 34.6)),
}

# torchvision key -> ours: (pattern, replacement), first match wins; both torchvision layouts are accepted
# (files saved before its version-2 heads name convs ``conv.{i}.weight`` / ``mask_fcn{i}``, not ``.0.0``)
_BODY = [(r"^backbone\.body\.conv1\.", "backbone.body.stem.0."), (r"^backbone\.body\.bn1\.", "backbone.body.stem.1."),
         (r"^backbone\.body\.layer(\d)\.", lambda m: f"backbone.body.stages.{int(m.group(1)) - 1}."),
         (r"^backbone\.fpn\.", "backbone.fpn.")]
_RPN = [(r"^rpn\.head\.conv\.(?:0\.0\.)?", "rpn.head.conv."), (r"^rpn\.head\.cls_logits\.", "rpn.head.obj."),
        (r"^rpn\.head\.bbox_pred\.", "rpn.head.reg.")]
# the v2 RPN head's second conv, and its box head: 4 x (conv, BN) at box_head.{i}.{0,1}, flatten (4), FC (5)
_RPN_V2 = [(r"^rpn\.head\.conv\.1\.0\.", "rpn.head.extra_convs.0.")]
_BOX_V2 = [(r"^roi_heads\.box_head\.([0-3])\.([01])\.",
            lambda m: f"roi_heads.box_head.convs.{3 * int(m.group(1)) + int(m.group(2))}."),
           (r"^roi_heads\.box_head\.5\.", "roi_heads.box_head.fcs.0.")]
_BOX = [(r"^roi_heads\.box_head\.fc6\.", "roi_heads.box_head.fc1."),
        (r"^roi_heads\.box_head\.fc7\.", "roi_heads.box_head.fc2."),
        (r"^roi_heads\.box_predictor\.cls_score\.", "roi_heads.box_head.cls."),
        (r"^roi_heads\.box_predictor\.bbox_pred\.", "roi_heads.box_head.reg.")]
_MASK = [(r"^roi_heads\.mask_head\.(?:(\d)\.0|mask_fcn(\d))\.",
          lambda m: f"roi_heads.mask_branch.head.convs.{2 * (int(m.group(1)) if m.group(1) else int(m.group(2)) - 1)}."),
         (r"^roi_heads\.mask_predictor\.conv5_mask\.", "roi_heads.mask_branch.head.upsample."),
         (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.", "roi_heads.mask_branch.head.predictor.")]


def _retina_head(gn: bool) -> list:
    """RetinaNet head keys. torchvision's tower conv ``i`` is ``conv.{i}.0`` (its GroupNorm ``conv.{i}.1``); ours
    sit at ``3i`` (``3i + 1``) with GN, else ``2i``. Files saved before torchvision's version-2 heads name
    them ``conv.{2i}`` (a plain conv / ReLU sequence), which is our index already."""
    step = 3 if gn else 2
    rules = []
    for tv, ours in (("classification_head", "cls_tower"), ("regression_head", "reg_tower")):
        rules += [(rf"^head\.{tv}\.conv\.(\d+)\.([01])\.",
                   lambda m, ours=ours: f"head.{ours}.{step * int(m.group(1)) + int(m.group(2))}."),
                  (rf"^head\.{tv}\.conv\.(\d+)\.(?=weight|bias)", rf"head.{ours}.\1.")]
    return rules + [(r"^head\.classification_head\.cls_logits\.", "head.cls_out."),
                    (r"^head\.regression_head\.bbox_reg\.", "head.reg_out.")]


def rename(key: str, rules) -> str:
    """Our name of torchvision's ``key`` by the first matching rule; KeyError when none matches."""
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key, count=1)
        if n:
            return new
    raise KeyError(key)


def class_layout(arch: str, state: Dict[str, Tensor]) -> Dict[str, tuple]:
    """The class-dependent tensors of our model of ``arch`` (the models' own ``class_layout_for``), RetinaNet's
    anchors per location read from torchvision's classifier."""
    if arch.startswith("retinanet"):
        bias = state.get("head.classification_head.cls_logits.bias")
        return RetinaNet.class_layout_for(0 if bias is None else bias.shape[0] // TORCHVISION_SLOTS)
    return FasterRCNN.class_layout_for(arch.startswith("maskrcnn"))


def _class_rows(name: str, value: Tensor, layout: Dict[str, tuple], arch: str) -> Tensor:
    """Our rows of a class-dependent tensor (by its new ``name``) gathered from torchvision's 91 slots: its
    blocks of 91 slots (slot = category id, background at 0) become blocks of our 80 classes (+ background
    last), the order ``detection.checkpoint.init_from.class_row_index`` gives."""
    if name not in layout:
        return value
    outer, inner, background = layout[name]
    n, expected = (value.shape[0] if value.dim() else 0), outer * TORCHVISION_SLOTS * inner
    if n != expected or n == 0:
        raise ValueError(f"{arch}: {name} has {n} rows, not {outer} block(s) of torchvision's {TORCHVISION_SLOTS} "
                         f"COCO slots (a model trained with another class count cannot be converted to COCO's 80)")
    slots = list(COCO_CATEGORY_IDS) + ([0] if background else [])
    return value.index_select(0, class_row_index((outer, inner, False), TORCHVISION_SLOTS, slots)).clone()


def convert_state_dict(arch: str, state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Our state dict of the torchvision ``arch`` state dict ``state`` (BN ``num_batches_tracked`` dropped)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}, choose from {sorted(ARCHS)}")
    rules = list(_BODY)
    if arch.startswith("retinanet"):
        rules += _retina_head(gn=arch.endswith("_v2"))
    else:
        v2 = _RPN_V2 + _BOX_V2 if arch.endswith("_v2") else []
        rules += v2 + _RPN + _BOX + (_MASK if arch.startswith("maskrcnn") else [])
    layout = class_layout(arch, state)
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        try:
            new = rename(key, rules)
        except KeyError:
            raise ValueError(f"{arch}: torchvision key {key!r} has no counterpart here; is the file a "
                             f"{arch} state dict?") from None
        out[new] = _class_rows(new, value, layout, arch)
    return out


def read_torchvision_file(path: str) -> Dict[str, Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"torchvision weights {path} do not exist (nothing is downloaded: give the local "
                                f"file, e.g. $TORCH_HOME/hub/checkpoints/retinanet_resnet50_fpn_coco-eeacb38b.pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read torchvision weights {path}: {exc}") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict (a mapping of names to tensors)")
    return state


def convert(arch: str, src: str, dst: str, preset: str, overrides=(), log: Callable[[str], None] = print) -> Config:
    """Convert torchvision's ``arch`` file ``src`` into our checkpoint ``dst`` built from ``preset`` (a config
    path); the model is built and loaded strictly before anything is written."""
    state = convert_state_dict(arch, read_torchvision_file(src))
    cfg = load_config(Config, preset, list(overrides) + ["model.backbone.pretrained=null"])
    classes = list(datasets.COCO_CLASSES)
    model = builders.build_model(cfg, len(classes))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # plain BN (v2): a counter only
    if missing or unexpected:
        raise ValueError(f"{arch}: the converted weights do not fit the model of {preset}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    save_checkpoint(weights_checkpoint(model, cfg, classes, COCO_CATEGORY_IDS, converted_from={
        "source": "torchvision", "arch": arch, "file": os.path.basename(src)}), dst)
    log(f"{arch}: {len(state)} tensors from {src} -> {dst} (80 COCO classes; config {preset})")
    return cfg
