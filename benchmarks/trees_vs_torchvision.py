"""Our RetinaNet against torchvision's on the trees data: same tiles, recipe, image sizes and evaluation.

    python benchmarks/trees_vs_torchvision.py [--cfg configs/demo/retinanet_trees_mnv2.yaml] [--seeds 0 1 2]
        [--work-root work_dirs/trees_vs_torchvision] [--set key=value ...]

For each seed, two runs of the same config through the same engine (``detection.engine.train``): ours, and
torchvision's ``torchvision.models.detection.RetinaNet`` put in place of our model. Everything else is shared:
the data loader (the config's resizing, normalisation, flips and batches), the optimiser and its parameter
groups, the warmup and lr steps, gradient clipping, the trainer loop and the VOC evaluation. The torchvision
detector is built from the config's numbers: a MobileNetV2-FPN backbone from the same ImageNet file (its
``features`` with FrozenBatchNorm2d, C3 / C4 / C5 taps at blocks 6 / 13 / 18, LastLevelP6P7 from C5, the
config's frozen blocks), the config's anchor sizes and ratios, IoU thresholds, head width, GroupNorm groups
and test settings. Its own transform is neutralised (the batch arrives resized and normalised) and its boxes
are mapped back to the original pixels as ours are. torchvision's loss is its own: per image, divided by
that image's positives (our ``model.loss.pos_norm: image``).

Prints one row per run (mAP, training seconds from ``eval.json``) and a summary: mean mAP of each with a 95%
t-interval over seeds, the paired difference, and the ratio of training times (ours / torchvision). Runs
already finished under ``--work-root`` are read back, not retrained. Take the times on an idle machine.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys
from unittest import mock

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detection import builders, engine  # noqa: E402
from models.backbone import MobileNetBody, hub_weights_path, MOBILENETS  # noqa: E402

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


class TorchvisionRetinaNet(nn.Module):
    """torchvision's RetinaNet behind our model's interface: ``model(images [B, 3, H, W], targets)`` returns
    ``{"loss_cls", "loss_bbox"}`` in training and, in eval, our detections (boxes in original pixels through
    each target's ``scale_factor`` / ``orig_size``, 0-based labels)."""

    def __init__(self, tv: nn.Module, loss_contract):
        super().__init__()
        self.tv = tv
        self.loss_contract = loss_contract

    def forward(self, images, targets=None):
        if self.training:
            tv_targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
            out = self.tv(list(images.unbind(0)), tv_targets)
            return {"loss_cls": out["classification"], "loss_bbox": out["bbox_regression"]}
        dets = self.tv(list(images.unbind(0)))
        results = []
        for d, t in zip(dets, targets):
            boxes = d["boxes"] / torch.as_tensor(t["scale_factor"], dtype=torch.float32, device=d["boxes"].device)
            h, w = t["orig_size"]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            results.append({"boxes": boxes, "scores": d["scores"], "labels": d["labels"]})
        return results


def build_torchvision(cfg, num_classes: int, contract) -> nn.Module:
    """torchvision's RetinaNet with the config's backbone, anchors, head and test settings."""
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.retinanet import RetinaNetHead
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    m = cfg.model
    if m.backbone.name != "mobilenet_v2" or m.fpn.extra != "p6p7" or m.backbone.norm != "frozen_bn":
        raise SystemExit("error: this peer is built for mobilenet_v2, fpn.extra p6p7 and norm frozen_bn")
    # the same file and the same taps as ours: MobileNetBody reads the file, torchvision's modules hold it
    ours = MobileNetBody("mobilenet_v2", "frozen_bn", m.backbone.frozen_stages, m.backbone.pretrained)
    net = MOBILENETS["mobilenet_v2"][0](weights=None, norm_layer=FrozenBatchNorm2d)
    net.features.load_state_dict(ours.features.state_dict())
    for a, b in zip(net.features.parameters(), ours.features.parameters()):
        a.requires_grad_(b.requires_grad)
    taps = {str(i): str(k) for k, i in enumerate(ours.ends[1:])}  # C3, C4, C5
    in_channels = ours.channels[1:]
    backbone = BackboneWithFPN(net.features, taps, in_channels, m.fpn.out_channels,
                               extra_blocks=LastLevelP6P7(in_channels[-1], m.fpn.out_channels))
    a = m.anchors
    sizes = tuple(tuple(int(a.octave_base_scale * s * 2 ** (k / a.scales_per_octave)) for k in range(a.scales_per_octave))
                  for s in a.strides)
    anchors = AnchorGenerator(sizes, (tuple(a.ratios),) * len(sizes))
    if m.head.feat_channels != m.fpn.out_channels or not 1 <= m.head.num_convs <= 4:
        raise SystemExit("error: torchvision's head has up to 4 convolutions as wide as the FPN: set model.head."
                         "num_convs <= 4 and feat_channels = fpn.out_channels")
    groups = min(32, m.head.feat_channels // 4) or 1  # our head's GroupNorm rule
    norm = functools.partial(nn.GroupNorm, groups) if m.head.norm == "gn" else None
    head = RetinaNetHead(m.fpn.out_channels, anchors.num_anchors_per_location()[0], num_classes, norm_layer=norm)
    for branch in (head.classification_head, head.regression_head):  # its tower, cut to the config's depth
        branch.conv = branch.conv[:m.head.num_convs]
    tv = RetinaNet(backbone, num_classes, min_size=1, max_size=10 ** 6, image_mean=[0.0] * 3, image_std=[1.0] * 3,
                   anchor_generator=anchors, head=head, fg_iou_thresh=m.assigner.pos_iou_thr,
                   bg_iou_thresh=m.assigner.neg_iou_thr, score_thresh=m.test.score_thr, nms_thresh=m.test.nms_iou,
                   topk_candidates=m.test.pre_nms_top_k, detections_per_img=m.test.max_per_img)
    # the loader already resized and normalised the batch: torchvision's transform only batches it
    tv.transform.resize = lambda image, target=None: (image, target)
    tv.transform.normalize = lambda image: image
    return TorchvisionRetinaNet(tv, contract)


def run(cfg_path: str, work_dir: str, overrides, peer: bool) -> dict:
    done = os.path.join(work_dir, "eval.json")
    if os.path.isfile(done):
        with open(done) as f:
            return json.load(f)
    if not peer:
        return engine.train(cfg_path, work_dir, overrides=overrides)
    ours_build = builders.build_model

    def build(cfg, num_classes):
        return build_torchvision(cfg, num_classes, ours_build(cfg, num_classes).loss_contract)

    with mock.patch.object(builders, "build_model", build):
        return engine.train(cfg_path, work_dir, overrides=overrides)


def interval(values):
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, T975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="configs/demo/retinanet_trees_mnv2.yaml")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--work-root", default="work_dirs/trees_vs_torchvision")
    p.add_argument("--set", nargs="*", default=[], dest="overrides", help="config overrides for both")
    a = p.parse_args(argv)
    cfg = engine.load(a.cfg, a.overrides)
    if not os.path.isfile(hub_weights_path("mobilenet_v2", cfg.model.backbone.pretrained or "torchvision",
                                           MOBILENETS["mobilenet_v2"][1])):
        raise SystemExit("error: the MobileNetV2 ImageNet file is missing: python scripts/fetch_weights.py")
    ours = builders.build_model(cfg, 1)
    peer = build_torchvision(cfg, 1, ours.loss_contract)
    counts = [sum(p.numel() for p in m.parameters() if p.requires_grad) for m in (ours, peer)]
    print(f"trainable parameters: ours {counts[0]:,}, torchvision {counts[1]:,}")
    if counts[0] != counts[1]:
        print("warning: the two detectors differ in their trainable parameters: not like with like")
    rows = []
    for seed in a.seeds:  # interleaved, so that a slow spell of the machine hits both
        for name in ("ours", "torchvision"):
            wd = os.path.join(a.work_root, name, f"seed{seed}")
            m = run(a.cfg, wd, list(a.overrides) + [f"seed={seed}", "train.progress=false"], name == "torchvision")
            rows.append((name, seed, m["mAP"], m["train_time_s"]))
            print(f"{name:12s} seed {seed}: mAP {m['mAP']:.4f}, training {m['train_time_s']:.0f} s", flush=True)
    print(f"\n{a.cfg}, seeds {a.seeds}, {torch.get_num_threads()} threads")
    for name in ("ours", "torchvision"):
        maps = [r[2] for r in rows if r[0] == name]
        mean, half = interval(maps)
        secs = [r[3] for r in rows if r[0] == name]
        print(f"{name:12s} mAP {mean:.4f} ± {half:.4f} (95% t over seeds: {', '.join(f'{v:.4f}' for v in maps)}); "
              f"training {statistics.fmean(secs):.0f} s per run")
    diffs = [o[2] - t[2] for o, t in zip(rows[0::2], rows[1::2])]
    mean, half = interval(diffs)
    ratio = sum(r[3] for r in rows[0::2]) / sum(r[3] for r in rows[1::2])
    print(f"ours - torchvision: {mean:+.4f} ± {half:.4f} (paired by seed); training time ratio {ratio:.2f}x")


if __name__ == "__main__":
    main()
