"""Every host synchronisation of a full training step of our RetinaNet and Faster R-CNN with ALWA, by place.

Runs ``--steps`` steps of ``detection.training.trainer.train_step`` (the non-finite guard on, as in training) with
ALWA_2 at interval ``--interval``, built from the paper bases (``configs/_base_/{retinanet,faster_rcnn}_r50_fpn
.yaml``), and lists each synchronising call by its place in our code (file:line and function) with the number
of steps that made it, split into steps that complete an ALWA window and the others. The check FAILS when a
synchronisation inside the weighting (``losses/``) happens on a step that does not complete a window.

On CUDA the synchronisations are those ``torch.cuda.set_sync_debug_mode("warn")`` reports: each is a Python
warning raised from inside the op, and the stack at that moment names our line. A CPU has no such mode; the
host reads made through ``Tensor.item / tolist / cpu / numpy / __bool__ / __float__`` (a spy) stand in, so the
script runs end to end there (gpu_suite.sh --cpu-dry-run), but it then misses data-dependent shapes
(``nonzero``, boolean indexing), which synchronise on a GPU.

Usage: python benchmarks/bench_step_syncs.py [--device cpu|cuda] [--amp off|bf16] [--size 800 1344] [--batch 2]
       [--steps 12] [--interval 5] [--backbone resnet50] [--models retinanet frcnn] [--json PATH]
"""
import os
import traceback
import warnings
from collections import defaultdict

import torch

from _common import ROOT, model_parser, describe, host_read_spy, print_table, random_batch, setup, write_json
from bench_train_step import CONFIGS
from detection import builders, engine
from detection.training.trainer import train_step
from losses.weighting import ALWA, Fixed

# ALWA's pair from the model's loss contract: the head's losses (RetinaNet) or the RPN's (Faster R-CNN)
ALWA_GROUPS = {"retinanet": ("cls", "reg"), "frcnn": ("rpn_cls", "rpn_reg")}


def our_site() -> str:
    """``file:line function`` of the innermost frame of the project (outside benchmarks/) on the live stack."""
    frames = [f for f in traceback.extract_stack()
              if f.filename.startswith(ROOT + os.sep) and os.sep + "benchmarks" + os.sep not in f.filename]
    if not frames:
        return "(outside the project)"
    f = frames[-1]
    return f"{os.path.relpath(f.filename, ROOT)}:{f.lineno} {f.name}"


def record_syncs(fn, device) -> list:
    """Run ``fn()`` and return the place of every synchronisation it made (see the module docstring)."""
    sites = []
    if device.type != "cuda":
        with host_read_spy(lambda name: sites.append(our_site())):
            fn()
        return sites
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        default = warnings.showwarning

        def hook(message, category, filename, lineno, file=None, line=None):
            if "synchroniz" in str(message):
                sites.append(our_site())
            else:
                default(message, category, filename, lineno, file, line)

        warnings.showwarning = hook
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
            torch.cuda.synchronize(device)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sites


def check_model(kind, args, device, images, targets) -> dict:
    cfg = engine.load(CONFIGS[kind], ["model.backbone.pretrained=null", f"model.backbone.name={args.backbone}",
                                      f"data.batch_size={args.batch}"])
    model = builders.build_model(cfg, args.num_classes).to(device).train()
    optimizer, _ = builders.build_optimizer(cfg, model)
    train_step(model, [(images, targets)], Fixed(), optimizer, amp=args.amp)  # warm-up: cuDNN / allocator set-up
    cls_keys, reg_keys = (list(model.loss_contract.groups[g]) for g in ALWA_GROUPS[kind])
    alwa = ALWA(variant=2, interval=args.interval, cls_keys=cls_keys, reg_keys=reg_keys)
    counts = {"boundary": defaultdict(int), "other": defaultdict(int)}
    for step in range(1, args.steps + 1):
        sites = record_syncs(lambda: train_step(model, [(images, targets)], alwa, optimizer, amp=args.amp), device)
        kind_of_step = "boundary" if step % args.interval == 0 else "other"
        for site in sites:
            counts[kind_of_step][site] += 1
    n_boundary = args.steps // args.interval
    n_other = args.steps - n_boundary
    places = sorted(set(counts["boundary"]) | set(counts["other"]))
    bad = [p for p in places if p.startswith("losses" + os.sep) and counts["other"].get(p)]
    rows = [[p, f"{counts['other'].get(p, 0) / max(n_other, 1):.2f}", f"{counts['boundary'].get(p, 0) / max(n_boundary, 1):.2f}"]
            for p in places]
    print_table(["place (file:line function)", f"per other step ({n_other})", f"per window step ({n_boundary})"], rows,
                title=f"{kind}: synchronisations of train_step with ALWA_2, C = {args.interval}, {args.steps} steps:")
    print(f"{kind}: weighting syncs outside window boundaries: {len(bad)} -> {'FAIL' if bad else 'PASS'}\n")
    return {"sites": [{"place": r[0], "per_other_step": float(r[1]), "per_window_step": float(r[2])} for r in rows],
            "weighting_syncs_outside_boundaries": bad, "pass": not bad, "updates": alwa.num_updates,
            "syncs_per_other_step": sum(counts["other"].values()) / max(n_other, 1)}


def main():
    parser = model_parser(__doc__, size=(512,), batch=2, reps=1, warmup=0)
    parser.add_argument("--steps", type=int, default=12, help="recorded training steps per model")
    parser.add_argument("--interval", type=int, default=5, help="ALWA window length C")
    parser.add_argument("--models", nargs="+", default=["retinanet", "frcnn"], choices=["retinanet", "frcnn"])
    args = parser.parse_args()
    device = setup(args)
    hw, images, targets, _ = random_batch(args, device)
    how = 'set_sync_debug_mode("warn")' if device.type == "cuda" else "a host-read spy (CPU: no sync debug mode)"
    print(f"{describe(device, args)}; backbone {args.backbone}-FPN, images {args.batch} x 3 x {hw[0]} x {hw[1]}; "
          f"synchronisations found with {how}\n")
    results = {kind: check_model(kind, args, device, images, targets) for kind in args.models}
    write_json(args.json, {"what": "step_syncs", "device": describe(device, args), "method": how, "amp": args.amp,
                           "batch": args.batch, "steps": args.steps, "interval": args.interval, "models": results})


if __name__ == "__main__":
    main()
