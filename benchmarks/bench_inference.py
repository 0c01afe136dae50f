"""Inference throughput (eval mode, images/s) of our RetinaNet and Faster R-CNN against torchvision's.

The models are built exactly as in ``bench_train_step.py`` (same config, backbone, anchors, thresholds;
see the differences it prints), put in eval mode and called as ``detection.evaluation.runner.run_inference`` calls
ours: under ``torch.no_grad()`` and the ``--amp`` autocast, with per-image metadata targets for ours, and
the detections moved to the host (numpy) for both. Interleaved (ours, torchvision, ours, ...).

Random weights put the scores near the prior (RetinaNet 0.01, Faster R-CNN about 1 / (C + 1)), under the
configured 0.05 threshold: by default the score threshold is 0 for both models, so that post-processing
does its full work (RetinaNet: 1000 candidates per level, Faster R-CNN: every proposal x class, a worst
case); ``--score-thr 0.05`` restores the configured value.

Usage: python benchmarks/bench_inference.py [--device cpu|cuda] [--amp off|bf16] [--size 512 | --size 800 1344]
       [--batch 2] [--reps 10] [--warmup 2] [--backbone resnet50|resnet18] [--models retinanet frcnn] [--score-thr 0]
"""
import argparse

import torch

from _common import (TIMING_HEADERS, add_detector_comparison_args, comparison_result, describe, images_for_ours,
                     interleaved, peak_memory, print_table, random_batch, ratio, setup, summary, timing_cells,
                     to_channels_last, write_json)
from bench_train_step import build_ours, build_torchvision, print_differences


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_detector_comparison_args(parser)
    parser.add_argument("--score-thr", type=float, default=0.0, help="score threshold of both models")
    args = parser.parse_args()
    device = setup(args)
    hw, images, _, _ = random_batch(args, device, with_targets=False)
    metas = [{"img_size": hw, "orig_size": hw, "scale_factor": torch.ones(4)} for _ in range(args.batch)]
    dtype = torch.bfloat16 if args.amp == "bf16" else None
    print(f"{describe(device, args)}; backbone {args.backbone}-FPN, images {args.batch} x 3 x {hw[0]} x {hw[1]}, "
          f"score threshold {args.score_thr}, {args.reps} reps after {args.warmup} warmup, interleaved; "
          f"channels_last {args.channels_last}\n")
    images_ours = images_for_ours(args, images)

    def infer(model, targets, counts, inputs):
        def run():
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                dets = model(inputs, targets)
            counts.append([len(d["scores"]) for d in dets])
            return [{k: (v.float() if v.dtype == torch.bfloat16 else v).cpu().numpy() for k, v in d.items()} for d in dets]
        return run

    rows, results = [], []
    for kind in args.models:
        cfg, ours, _, _ = build_ours(kind, args, device, [f"model.test.score_thr={args.score_thr}"])
        tv = build_torchvision(kind, cfg, args, hw, device)
        ours, tv = to_channels_last(args, ours, tv)
        ours.eval()
        tv.eval()
        counts = {"ours": [], "torchvision": []}
        fns = {"ours": infer(ours, metas, counts["ours"], images_ours),
               "torchvision": infer(tv, None, counts["torchvision"], images)}
        times = interleaved(fns, args.reps, args.warmup, device)
        memory = {k: peak_memory(fn, device) for k, fn in fns.items()}
        for name in times:
            med = summary(times[name])["median"]
            rows.append([kind, name, *timing_cells(times[name]), f"{args.batch / med:.2f}",
                         f"{sum(counts[name][-1]) / args.batch:.0f}", memory[name]["text"],
                         ratio(times["ours"], times["torchvision"]) if name == "ours" else ""])
            results.append(comparison_result(kind, name, times, args.batch, memory[name]))
        del ours, tv
    print_table(["model", "impl", *TIMING_HEADERS, "img/s", "dets/img", "peak memory", "ours/tv"], rows,
                title="Inference per batch (forward + post-processing + detections to host):")
    write_json(args.json, {"what": "inference", "device": describe(device, args), "amp": args.amp,
                           "batch": args.batch, "size": list(hw), "results": results})
    print("Differences that remain:")
    print_differences(args.models, ("all",))


if __name__ == "__main__":
    main()
