"""Training-step time (forward, backward, optimizer step) of our RetinaNet and Faster R-CNN against
torchvision's, with equal settings as far as both allow.

Ours: built with ``detection.builders.build_model`` from ``configs/_base_/{retinanet,faster_rcnn}_r50_fpn.yaml``
(``model.backbone.pretrained=null``), stepped by ``detection.training.trainer.train_step`` with a ``Fixed`` weighting
and the optimizer of ``builders.build_optimizer`` (SGD, momentum 0.9, weight decay 1e-4) - the path training
uses. torchvision: ``retinanet_resnet50_fpn`` / ``fasterrcnn_resnet50_fpn`` (weights=None,
weights_backbone=None) with anchors, thresholds and sample sizes taken from our config and a backbone
equal to ours (see ``build_torchvision``), stepped by the same ``train_step`` through a thin adapter
(list of images in, same SGD). Both get the same random images and targets (3-8 boxes per image) and are
timed in one process, interleaved (ours, torchvision, ours, ...). Every setting difference that could not
be removed is printed with the results and listed in benchmarks/README.md.

Targets (issue 7): ours / torchvision <= 0.9x on CPU and <= 0.75x on GPU with bf16.

Usage: python benchmarks/bench_train_step.py [--device cpu|cuda] [--amp off|bf16] [--size 512 | --size 800 1344]
       [--batch 2] [--reps 10] [--warmup 2] [--backbone resnet50|resnet18] [--models retinanet frcnn] [--mfu]
"""
import argparse
import os

import torch
from torch import nn

from _common import (ROOT, TIMING_HEADERS, add_detector_comparison_args, bf16_matmul_peak, comparison_result,
                     count_flops, describe, images_for_ours, interleaved, peak_memory, print_table, random_batch,
                     ratio, setup, summary, timing_cells, to_channels_last, write_json)
from detection import builders, engine
from detection.training.trainer import train_step
from losses.weighting import Fixed

CONFIGS = {k: os.path.join(ROOT, "configs", "_base_", f"{v}_r50_fpn.yaml") for k, v in
           (("retinanet", "retinanet"), ("frcnn", "faster_rcnn"))}
# the paper bases train BN affine parameters, compute P7 from P6 without a ReLU and rank RetinaNet's test-time
# candidates by anchor: torchvision's detectors freeze BN, use the ReLU and rank (anchor, class) pairs, so the
# comparison moves ours to those (COMPARE_OVERRIDES); torchvision's Faster R-CNN hard-codes smooth L1 (beta
# 1/9) in both stages, RoIAlign sampling_ratio=2 and low-quality RPN matches without an IoU floor: our config
# is moved to those values too (the rest already agrees)
COMPARE_OVERRIDES = ["model.backbone.norm=frozen_bn", "model.fpn.p7_relu=true"]
RETINANET_OVERRIDES = ["model.test.pre_nms_rank=pairs"]
FRCNN_OVERRIDES = ["model.rpn.reg_loss=smooth_l1", "model.rpn.smooth_l1_beta=0.1111111111111111",
                   "model.roi_head.reg_loss=smooth_l1", "model.roi_head.smooth_l1_beta=0.1111111111111111",
                   "model.roi_head.sampling_ratio=2", "model.rpn.assigner.min_pos_iou=0.0"]
# (phase, text): phase "train" for training only, "all" for training and inference
DIFFERENCES = {
    "both": [
        ("all", "input: torchvision takes a list of images and copies them into a padded batch inside "
                "GeneralizedRCNNTransform, whose resize and normalisation are replaced by identities (default "
                "--tv-transform identity; 'native' keeps them with min_size/max_size = the image size, mean 0, "
                "std 1); ours takes the padded batch made by the data loader"),
        ("all", "torchvision regenerates the anchors on every call; ours caches them per feature-map size"),
        ("all", "anchor boxes: torchvision rounds the base anchors to integer coordinates; ours keeps exact "
                "sizes (same sizes, ratios and centres otherwise)"),
        ("train", "torchvision validates the targets of every image (a host read each)"),
        ("all", "weight init of heads and FPN extras differs (no effect on the work done)"),
        ("all", "ours folds each frozen BatchNorm into the convolution before it (models.backbone.FoldedConv2d, "
                "same result up to rounding); torchvision applies FrozenBatchNorm2d as a separate multiply-add"),
    ],
    "retinanet": [
        ("train", "torchvision computes the losses per image in a Python loop; ours for the batch at once"),
        ("train", "low-quality matches: torchvision gives such an anchor its own best ground truth, ours the "
                  "ground truth it is best for (mmdetection's rule); the same anchors become positive"),
        ("all", "torchvision thresholds scores before the per-level top-k, ours after (same detections)"),
    ],
    "frcnn": [
        ("train", "our config is moved to torchvision's losses: smooth L1 beta 1/9 in the RPN and RoI head "
                  "(ours: L1), RoIAlign sampling_ratio 2 (ours: adaptive), RPN min_pos_iou 0 (ours: 0.3)"),
        ("all", "RoIAlign aligned=True (ours) vs aligned=False (torchvision, not configurable); same cost"),
        ("all", "box predictor: torchvision regresses C+1 classes (background included), ours C"),
        ("train", "torchvision samples anchors and RoIs per image with randperm; ours for the batch at once"),
        ("train", "images under about 256 px give fewer than 512 RoI candidates: torchvision then runs its box "
                  "head on fewer RoIs, ours on 512 padded slots per image (FLOPs equal from 256 px on)"),
    ],
}


def build_ours(kind, args, device, overrides=()):
    cfg = engine.load(CONFIGS[kind], ["model.backbone.pretrained=null", f"model.backbone.name={args.backbone}",
                                      f"data.batch_size={args.batch}"] + COMPARE_OVERRIDES
                      + (FRCNN_OVERRIDES if kind == "frcnn" else RETINANET_OVERRIDES) + list(overrides))
    model = builders.build_model(cfg, args.num_classes).to(device).train()
    optimizer, lr = builders.build_optimizer(cfg, model)
    return cfg, model, optimizer, lr


class TorchvisionAdapter(nn.Module):
    """``model(images [B, 3, H, W], targets)`` for a torchvision detector, so ``train_step`` drives it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, targets=None):
        return self.model(list(images.unbind(0)), targets)


def build_torchvision(kind, cfg, args, hw, device):
    from torchvision.models.detection import fasterrcnn_resnet50_fpn, retinanet_resnet50_fpn
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    m = cfg.model
    common = dict(weights=None, weights_backbone=None, min_size=min(hw), max_size=max(hw),
                  image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])
    # the builders pick BatchNorm2d and 5 trainable stages when no backbone weights are given; ours (and
    # torchvision with weights_backbone) use FrozenBatchNorm2d and train 3 stages: swap in that backbone
    frozen = dict(backbone_name=args.backbone, weights=None, norm_layer=FrozenBatchNorm2d,
                  trainable_layers=5 - 1 - m.backbone.frozen_stages)
    if kind == "retinanet":
        a = m.anchors
        sizes = tuple(tuple(a.octave_base_scale * s * 2 ** (k / a.scales_per_octave) for k in range(a.scales_per_octave))
                      for s in a.strides)
        c5 = 512 if args.backbone in ("resnet18", "resnet34") else 2048
        tv = retinanet_resnet50_fpn(
            num_classes=args.num_classes, anchor_generator=AnchorGenerator(sizes, (tuple(a.ratios),) * len(sizes)),
            fg_iou_thresh=m.assigner.pos_iou_thr, bg_iou_thresh=m.assigner.neg_iou_thr,
            score_thresh=m.test.score_thr, nms_thresh=m.test.nms_iou, topk_candidates=m.test.pre_nms_top_k,
            detections_per_img=m.test.max_per_img, **common)
        # P6 from C5 as in our config (mmdetection; torchvision's v2 RetinaNet does the same)
        tv.backbone = resnet_fpn_backbone(returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(c5, 256), **frozen)
    else:
        r, h = m.rpn, m.roi_head
        sizes = tuple((r.anchors.scales[0] * s,) for s in r.anchors.strides)
        tv = fasterrcnn_resnet50_fpn(
            num_classes=args.num_classes + 1,
            rpn_anchor_generator=AnchorGenerator(sizes, (tuple(r.anchors.ratios),) * len(sizes)),
            rpn_pre_nms_top_n_train=r.train_proposals.pre_nms_top_k,
            rpn_post_nms_top_n_train=r.train_proposals.post_nms_top_k,
            rpn_pre_nms_top_n_test=r.test_proposals.pre_nms_top_k, rpn_post_nms_top_n_test=r.test_proposals.post_nms_top_k,
            rpn_nms_thresh=r.train_proposals.nms_iou, rpn_fg_iou_thresh=r.assigner.pos_iou_thr,
            rpn_bg_iou_thresh=r.assigner.neg_iou_thr, rpn_batch_size_per_image=r.sampler.num,
            rpn_positive_fraction=r.sampler.pos_fraction, box_batch_size_per_image=h.sampler.num,
            box_positive_fraction=h.sampler.pos_fraction, box_fg_iou_thresh=h.assigner.pos_iou_thr,
            box_bg_iou_thresh=h.assigner.neg_iou_thr, box_score_thresh=m.test.score_thr,
            box_nms_thresh=m.test.nms_iou, box_detections_per_img=m.test.max_per_img,
            bbox_reg_weights=tuple(1.0 / s for s in h.coder.stds), **common)
        tv.backbone = resnet_fpn_backbone(**frozen)  # C2-C5 + max-pool P6, as ours
    if args.tv_transform == "identity":
        tv.transform.resize = lambda image, target=None: (image, target)
        tv.transform.normalize = lambda image: image
    return TorchvisionAdapter(tv).to(device)


def tv_targets(kind, targets):
    # torchvision's two-stage models reserve label 0 for the background
    return [{"boxes": t["boxes"], "labels": t["labels"] + (1 if kind == "frcnn" else 0)} for t in targets]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_detector_comparison_args(parser)
    parser.add_argument("--no-check-finite", action="store_true",
                        help="skip train_step's non-finite guard (one host read of a few flags per step)")
    parser.add_argument("--lr", type=float, default=1e-4,
                        help="SGD learning rate of both (no effect on the work; small keeps random-weight steps finite)")
    parser.add_argument("--mfu", action="store_true", help="FLOPs per image and MFU vs a measured bf16 matmul peak")
    args = parser.parse_args()
    device = setup(args)
    hw, images, targets, _ = random_batch(args, device)
    check = not args.no_check_finite
    print(f"{describe(device, args)}; backbone {args.backbone}-FPN, images {args.batch} x 3 x {hw[0]} x {hw[1]}, "
          f"{args.num_classes} classes, boxes/image {[len(t['labels']) for t in targets]}, "
          f"{args.reps} reps after {args.warmup} warmup, interleaved; non-finite guard {'on' if check else 'off'}; "
          f"channels_last {args.channels_last}\n")
    images_ours = images_for_ours(args, images)
    peak = None
    # CPU: a small matmul (bf16 has no fast path on many CPUs: n=2048 took minutes on a 2-core AMD EPYC);
    # MFU on a CPU is indicative only
    if args.mfu:
        peak = bf16_matmul_peak(device) if device.type == "cuda" else bf16_matmul_peak(device, n=512, reps=3)
    rows, mfu_rows, skipped, fixed, results = [], [], {}, Fixed(), []  # Fixed: all weights 1, the plain sum
    for kind in args.models:
        cfg, ours, opt_ours, _ = build_ours(kind, args, device)
        lr = args.lr
        for group in opt_ours.param_groups:
            group["lr"] = lr
        tv = build_torchvision(kind, cfg, args, hw, device)
        ours, tv = to_channels_last(args, ours, tv)
        opt_tv = torch.optim.SGD([p for p in tv.parameters() if p.requires_grad], lr=lr,
                                 momentum=cfg.optimizer.momentum, weight_decay=cfg.optimizer.weight_decay)
        n_ours = sum(p.numel() for p in ours.parameters() if p.requires_grad)
        n_tv = sum(p.numel() for p in tv.parameters() if p.requires_grad)
        variants = {"ours": (ours, opt_ours, targets), "torchvision": (tv, opt_tv, tv_targets(kind, targets))}
        skipped.update({(kind, k): 0 for k in variants})

        def make_step(name, model, opt, tgts):
            def step():
                out = train_step(model, [(images_ours if name == "ours" else images, tgts)], fixed, opt, amp=args.amp,
                                 check_finite=check)
                skipped[(kind, name)] += bool(out.skipped)
            return step

        steps = {k: make_step(k, *v) for k, v in variants.items()}
        times = interleaved(steps, args.reps, args.warmup, device)
        memory = {k: peak_memory(fn, device) for k, fn in steps.items()}
        for name in variants:
            med = summary(times[name])["median"]
            rows.append([kind, name, f"{(n_ours if name == 'ours' else n_tv) / 1e6:.1f}M", *timing_cells(times[name]),
                         f"{args.batch / med:.2f}", memory[name]["text"],
                         ratio(times["ours"], times["torchvision"]) if name == "ours" else ""])
            results.append(comparison_result(kind, name, times, args.batch, memory[name]))
        if peak is not None:
            for name, (model, _, tgts) in variants.items():
                def fwd_bwd(model=model, tgts=tgts):
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16"):
                        sum(model(images, tgts).values()).backward()
                flops = count_flops(fwd_bwd) / args.batch
                model.zero_grad(set_to_none=True)
                ips = args.batch / summary(times[name])["median"]
                mfu_rows.append([kind, name, f"{flops / 1e9:.1f}", f"{ips:.2f}", f"{100 * flops * ips / peak:.1f}%"])
                next(r for r in results if r["model"] == kind and r["impl"] == name).update(
                    gflop_per_img=flops / 1e9, mfu=flops * ips / peak)
        del ours, tv, opt_ours, opt_tv
    print_table(["model", "impl", "trainable", *TIMING_HEADERS, "img/s", "peak memory", "ours/tv"], rows,
                title="Training step (forward + backward + SGD step), per step:")
    write_json(args.json, {"what": "train_step", "device": describe(device, args), "amp": args.amp,
                           "batch": args.batch, "size": list(hw), "results": results,
                           "skipped_steps": {f"{k[0]}/{k[1]}": v for k, v in skipped.items()},
                           "bf16_peak_tflops": None if peak is None else peak / 1e12})
    if any(skipped.values()):
        print(f"WARNING: steps skipped by the non-finite guard (timings not comparable): {skipped}\n")
    if peak is not None:
        print_table(["model", "impl", "GFLOP/img (fwd+bwd)", "img/s", "MFU"], mfu_rows,
                    title=f"MFU against a measured bf16 matmul peak of {peak / 1e12:.1f} TFLOP/s "
                          f"(FlopCounterMode: matmuls and convolutions only):")
    target = "0.75x with bf16 on GPU" if device.type == "cuda" else "0.9x on CPU"
    print(f"Target (issue 7): ours/tv <= {target}. Differences that remain:")
    print_differences(args.models, ("train", "all"))


def print_differences(models, phases):
    for kind in ["both"] + list(models):
        for phase, text in DIFFERENCES[kind]:
            if phase in phases:
                print(f"  [{kind}] {text}")


if __name__ == "__main__":
    main()
