"""Overhead of ALWA over a Fixed weighting on our RetinaNet, and ALWA's host synchronisations.

1. Training step (``detection.training.trainer.train_step``) with ``Fixed`` vs ``ALWA(variant=2, interval=100)``,
   same model, optimizer, images and targets, interleaved (Fixed, ALWA, Fixed, ...): median, IQR, ratio.
2. The weighting call alone on fake loss tensors on the device, in blocks of ``interval`` calls (one ALWA
   window each, boundary included), as time per call and as a share of the Fixed step.
3. Host synchronisation check of the weighting alone:
   - every device: a spy on ``Tensor.item/tolist/cpu/numpy/__bool__/__float__`` (like tests/conftest.py's
     ``host_reads`` fixture) counts host reads over ``--sync-steps`` ALWA calls on fake losses, split into
     window-boundary and other steps (target: 0 reads outside boundaries);
   - CUDA: ``torch.cuda.set_sync_debug_mode("error")`` around every non-boundary weighting call, on fake
     losses and inside real ``train_step(..., check_finite=False)`` steps (the trainer's non-finite guard reads
     one flag per step from the host by design, so it is switched off for this check; it is outside the
     weighting call either way).

Target (issue 7): ALWA step within 1% of Fixed; zero host syncs outside window boundaries.

Usage: python benchmarks/bench_alwa_overhead.py [--device cpu|cuda] [--amp off|bf16] [--size 512] [--batch 2]
       [--reps 20] [--warmup 3] [--backbone resnet50|resnet18] [--interval 100] [--sync-steps 250]
"""

import torch

from _common import (TIMING_HEADERS, model_parser, describe, host_read_spy, interleaved, print_table,
                     random_batch, ratio, setup, summary, timing_cells, write_json)
from bench_train_step import build_ours
from detection.training.trainer import train_step
from losses.weighting import ALWA, Fixed


def make_alwa(interval):
    return ALWA(variant=2, interval=interval, cls_keys=["loss_cls"], reg_keys=["loss_bbox"])


def fake_losses(n, device, gen):
    """``n`` loss dicts of device scalars, made before any timing or checking."""
    vals = (torch.rand(n, 2, generator=gen) * 0.2 + torch.tensor([1.0, 0.5])).to(device)
    return [{"loss_cls": v[0], "loss_bbox": v[1]} for v in vals.unbind(0)]


class SyncChecked:
    """Wraps a fresh weighting: its non-boundary calls run under ``set_sync_debug_mode("error")`` (CUDA).
    Usable as ``weighting(losses)`` and, inside ``train_step``, as ``weigh`` + ``observe`` (one call per step)."""

    def __init__(self, weighting, interval):
        self.weighting, self.interval, self.calls, self.errors = weighting, interval, 0, []

    def _checked(self, fn, fallback, boundary: bool):
        if not boundary:
            torch.cuda.set_sync_debug_mode("error")
        try:
            return fn()
        except RuntimeError as exc:  # the call was cut short: report it, let the step go on
            self.errors.append(f"call {self.calls}: {str(exc).splitlines()[0]}")
            return fallback()
        finally:
            torch.cuda.set_sync_debug_mode("default")

    def __call__(self, losses):
        self.calls += 1
        return self._checked(lambda: self.weighting(losses), lambda: sum(losses.values()),
                             self.calls % self.interval == 0)

    def weigh(self, losses):  # the step's weights are in force before its own observe: never a boundary
        from losses.weighting import Fixed

        return self._checked(lambda: self.weighting.weigh(losses), lambda: Fixed().weigh(losses), False)

    def observe(self, losses):
        self.calls += 1
        self._checked(lambda: self.weighting.observe(losses), lambda: None, self.calls % self.interval == 0)


def main():
    parser = model_parser(__doc__, size=(512,), batch=2, reps=20, warmup=3)
    parser.add_argument("--interval", type=int, default=100, help="ALWA window length C")
    parser.add_argument("--sync-steps", type=int, default=250, help="ALWA calls for the host-read checks")
    parser.add_argument("--no-check-finite", action="store_true", help="timed steps without the non-finite guard")
    args = parser.parse_args()
    device = setup(args)
    hw, images, targets, gen = random_batch(args, device)
    print(f"{describe(device, args)}; RetinaNet {args.backbone}-FPN, images {args.batch} x 3 x {hw[0]} x {hw[1]}, "
          f"ALWA_2 interval {args.interval}, {args.reps} reps after {args.warmup} warmup, interleaved\n")

    # 1. full training steps
    _, model, optimizer, _ = build_ours("retinanet", args, device)
    weightings = {"Fixed": Fixed(), "ALWA": make_alwa(args.interval)}
    check = not args.no_check_finite
    step = {k: (lambda w=w: train_step(model, [(images, targets)], w, optimizer, amp=args.amp, check_finite=check))
            for k, w in weightings.items()}
    times = interleaved(step, args.reps, args.warmup, device)
    rows = [[k, *timing_cells(times[k]), ratio(times[k], times["Fixed"])] for k in times]
    print_table(["weighting", *TIMING_HEADERS, "vs Fixed"], rows,
                title=f"Training step (non-finite guard {'on' if check else 'off'}):")
    del model, optimizer

    # 2. the weighting call alone, one window per block
    losses = fake_losses(args.interval, device, gen)
    blocks = {k: (lambda w=w: [w(d) for d in losses]) for k, w in
              {"Fixed": Fixed(), "ALWA": make_alwa(args.interval)}.items()}
    call = interleaved(blocks, max(args.reps, 5), 1, device)
    fixed_step = summary(times["Fixed"])["median"]
    rows = []
    for k, ts in call.items():
        per_call = summary(ts)["median"] / args.interval
        rows.append([k, f"{per_call * 1e6:.1f}", f"{100 * per_call / fixed_step:.3f}%"])
    extra = (summary(call["ALWA"])["median"] - summary(call["Fixed"])["median"]) / args.interval
    print_table(["weighting", "us per call (median over windows)", "share of Fixed step"], rows,
                title=f"Weighting call alone on device scalars, blocks of {args.interval} calls (boundary included):")
    print(f"ALWA - Fixed per call: {extra * 1e6:.1f} us = {100 * extra / fixed_step:.3f}% of the Fixed step "
          f"(target: < 1%)\n")
    result = {"what": "alwa_overhead", "device": describe(device, args), "amp": args.amp, "batch": args.batch,
              "step_ratio": summary(times["ALWA"])["median"] / summary(times["Fixed"])["median"],
              "call_overhead_share": extra / fixed_step}

    # 3a. host reads of the weighting alone (spy), any device
    alwa, n = make_alwa(args.interval), args.sync_steps
    losses = fake_losses(n, device, gen)
    at_boundary, elsewhere = [], []
    with host_read_spy() as calls:
        for i, d in enumerate(losses, 1):
            before = len(calls)
            alwa(d)
            (at_boundary if i % args.interval == 0 else elsewhere).extend(calls[before:])
    windows = n // args.interval
    print_table(["ALWA calls", "windows", "reads at boundaries", "reads per window", "reads elsewhere", "result"],
                [[n, windows, len(at_boundary), f"{len(at_boundary) / max(windows, 1):.1f}", len(elsewhere),
                  "PASS" if not elsewhere and alwa.num_updates == windows else "FAIL"]],
                title="Host reads of the ALWA call alone (Tensor.item/tolist/cpu/numpy/__bool__/__float__ spy):")
    if elsewhere:
        print(f"  non-boundary reads: {sorted(set(elsewhere))}\n")
    result.update(host_reads_at_boundaries=len(at_boundary), host_reads_elsewhere=len(elsewhere),
                  windows=windows, updates=alwa.num_updates)

    # 3b. CUDA sync debug mode around non-boundary calls
    if device.type != "cuda":
        print("torch.cuda.set_sync_debug_mode check: skipped (needs a CUDA device)")
        write_json(args.json, {**result, "sync_errors_outside_boundaries": None})
        return
    checked = SyncChecked(make_alwa(args.interval), args.interval)
    for d in fake_losses(n, device, gen):
        checked(d)
    _, model, optimizer, _ = build_ours("retinanet", args, device)
    in_step = SyncChecked(make_alwa(args.interval), args.interval)
    for _ in range(min(args.reps, args.interval - 1)):
        train_step(model, [(images, targets)], in_step, optimizer, amp=args.amp, check_finite=False)
    rows = [["fake losses", checked.calls, len(checked.errors)],
            ["train_step(check_finite=False)", in_step.calls, len(in_step.errors)]]
    print_table(["weighting calls", "calls", "sync errors outside boundaries"], rows,
                title='torch.cuda.set_sync_debug_mode("error") around non-boundary ALWA calls '
                      "(train_step's own one-flag-per-step guard is off for this check):")
    for e in checked.errors[:3] + in_step.errors[:3]:
        print(f"  {e}")
    print("PASS" if not checked.errors and not in_step.errors else "FAIL")
    write_json(args.json, {**result, "sync_errors_outside_boundaries": len(checked.errors) + len(in_step.errors)})


if __name__ == "__main__":
    main()
