"""The GPU suite: every measurement a lent GPU can give us, in one command, within a time budget.

    bash benchmarks/gpu_suite.sh OUT_DIR                 # on the GPU machine (about 8 minutes on one H200)
    bash benchmarks/gpu_suite.sh OUT_DIR --cpu-dry-run   # the same steps at tiny sizes on a CPU (under 2 minutes)

Steps, in order of importance (each a subprocess with its own time limit; the suite stops starting steps when
its deadline is near and marks the rest "skipped (no time)"):

1. ``syncs``      every host synchronisation of a full training step with ALWA, by place in our code (RetinaNet
                  and Faster R-CNN; bf16, 1344 x 800, batch 2); FAIL if the weighting syncs outside a window
                  boundary (``bench_step_syncs.py``).
2. ``train_*``    training step of ours vs torchvision, RetinaNet and Faster R-CNN, at 1344 x 800 (1333 x 800
                  padded to 32), bf16 and fp32, batch 8 and 2, with MFU and peak memory (``bench_train_step.py``).
3. ``infer_*``    inference of ours vs torchvision, bf16 and fp32, batch 8 (``bench_inference.py``).
4. ``alwa``       ALWA vs Fixed step time, the weighting call's overhead, host reads and the
                  ``set_sync_debug_mode("error")`` check around non-boundary ALWA calls (``bench_alwa_overhead.py``).
5. ``demo_*``     300 iterations of the RetinaNet demo config in bf16 and fp16 on the GPU, then its evaluation:
                  finite losses, skipped steps, time, mAP, peak memory (``scripts/train.py``).

Outputs (few files, as the device tool brings back at most 8): ``OUT_DIR/summary.md`` (one Markdown table
with the ratios, the targets and every step's status), ``OUT_DIR/results.json`` (every step's numbers) and
``OUT_DIR/log.txt`` (every step's command and output). Work dirs and generated data go to a temporary folder.
Nothing is installed here: ``gpu_suite.sh`` installs wheels carried in ``.whl/`` (benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
BENCH = os.path.join(ROOT, "benchmarks")
DEMO = os.path.join(ROOT, "configs", "demo", "retinanet_shapes_alwa2.yaml")


@dataclass
class Step:
    name: str
    title: str
    argv: List[str]
    timeout: float  # seconds
    json_path: Optional[str] = None  # what the step writes for the summary
    work_dir: Optional[str] = None  # demo runs: the training work dir
    result: Dict = field(default_factory=dict)


def _bench(script: str, *args: str) -> List[str]:
    return [sys.executable, os.path.join(BENCH, script), *args]


def _stand_in(label: str, cpu_amp: Dict[str, str]) -> str:
    """The title's note when the dry run measures another precision than the step's name says."""
    return " (fp32 on the CPU)" if cpu_amp.get(label) == "off" and label != "fp32" else ""


def plan(dry_run: bool, tmp: str) -> List[Step]:
    """The steps: full sizes on CUDA, or tiny sizes on the CPU with the same commands otherwise."""
    if dry_run:
        common = ["--device", "cpu", "--backbone", "resnet18", "--size", "64", "--threads", "2"]
        big, small, reps = "2", "1", ["--reps", "1", "--warmup", "1"]
        demo_iters, demo_extra = 4, ["device=cpu", "data.shapes.num_train=16", "data.shapes.num_val=2",
                                     "data.shapes.num_test=8", "data.num_workers=0", "model.fpn.out_channels=16",
                                     "model.head.feat_channels=16", "model.head.num_convs=1",
                                     "data.shapes.image_size=64", "data.min_size=64", "data.max_size=64"]
        syncs = ["--steps", "6", "--interval", "3"]
        alwa = ["--reps", "2", "--warmup", "1", "--sync-steps", "20", "--interval", "5"]
        # CPU autocast: fp16 convolutions are slow there, and bf16 ones too on CPUs without bf16 instructions
        # (12x fp32 on a 2-core AMD EPYC): the dry run checks the steps in fp32 (the tests cover autocast)
        cpu_amp = {"fp16": "off", "bf16": "off"}
        # the dry run checks that every step works, not how fast: its limits only catch a hang, on any CPU
        t_short, t_long = 900, 900
    else:
        common = ["--device", "cuda", "--size", "800", "1344"]
        big, small, reps = "8", "2", ["--reps", "8", "--warmup", "3"]
        demo_iters, demo_extra = 300, ["device=cuda", "data.num_workers=8"]
        syncs = ["--steps", "12", "--interval", "5"]
        alwa = ["--reps", "20", "--warmup", "3", "--sync-steps", "250", "--interval", "100"]
        cpu_amp = {}
        t_short, t_long = 90, 150
    steps = [Step("syncs", "host synchronisations of a training step", _bench("bench_step_syncs.py", *common, "--amp",
                                                                              cpu_amp.get("bf16", "bf16"), "--batch",
                                                                              small, *syncs), t_short)]
    precisions = {"bf16": "bf16", "fp32": "off"}  # name -> --amp
    for label, amp in precisions.items():
        for batch in (big, small):
            steps.append(Step(f"train_{label}_b{batch}", f"training step, {label}{_stand_in(label, cpu_amp)}, batch "
                              f"{batch}", _bench("bench_train_step.py", *common, "--amp", cpu_amp.get(label, amp),
                                                 "--batch", batch, *reps, "--mfu"), t_long))
    for label, amp in precisions.items():
        steps.append(Step(f"infer_{label}_b{big}", f"inference, {label}{_stand_in(label, cpu_amp)}, batch {big}",
                          _bench("bench_inference.py", *common, "--amp", cpu_amp.get(label, amp), "--batch", big,
                                 *reps), t_short))
    steps.append(Step("alwa", "ALWA overhead and sync check", _bench("bench_alwa_overhead.py", *common, "--amp",
                                                                     cpu_amp.get("bf16", "bf16"), "--batch", big,
                                                                     *alwa), t_short))
    for amp in ("bf16", "fp16"):
        work = os.path.join(tmp, f"demo_{amp}")
        used = cpu_amp.get(amp, amp)
        title = f"demo, {demo_iters} iterations, {amp}{_stand_in(amp, cpu_amp)}"
        steps.append(Step(f"demo_{amp}", title, [
            sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--cfg", DEMO, "--work-dir", work, "--set",
            f"train.amp={used}", f"train.max_iters={demo_iters}",
            f"train.lr_steps=[{round(demo_iters * 0.75)},{round(demo_iters * 0.92)}]",
            f"train.warmup_iters={max(1, demo_iters // 6)}", f"train.log_interval={max(1, demo_iters // 12)}",
            f"train.checkpoint_interval={demo_iters}", "train.progress=false", f"data.root={os.path.join(tmp, 'shapes')}",
            *demo_extra], t_long, work_dir=work))
    for s in steps:
        if s.work_dir is None:
            s.json_path = os.path.join(tmp, f"{s.name}.json")
            s.argv += ["--json", s.json_path]
    return steps


def run_step(step: Step, budget: float, log) -> None:
    """Run one step within ``min(step.timeout, budget)`` seconds; fills ``step.result``."""
    limit = min(step.timeout, budget)
    log.write(f"\n===== {step.name}: {step.title}\n$ {shlex.join(step.argv)}\n")
    log.flush()
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    try:
        proc = subprocess.run(step.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=limit)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        status = f"timed out after {limit:.0f} s"
    step.result = {"status": status, "seconds": round(time.perf_counter() - t0, 1), "command": shlex.join(step.argv)}
    data = None
    if step.json_path and os.path.isfile(step.json_path):
        with open(step.json_path) as f:
            data = json.load(f)
    elif step.work_dir:
        data = demo_result(step.work_dir)
    step.result["data"] = data
    log.write(f"----- {step.name}: {status} in {step.result['seconds']} s\n")
    log.flush()


def demo_result(work: str) -> Optional[Dict]:
    """mAP, time, peak memory and the non-finite record of a demo run, from its eval.json and metrics.jsonl."""
    path = os.path.join(work, "eval.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        ev = json.load(f)
    records = []
    metrics = os.path.join(work, "metrics.jsonl")
    if os.path.isfile(metrics):
        with open(metrics) as f:
            records = [json.loads(line) for line in f if line.strip()]
    losses = [r["loss"] for r in records if "loss" in r]
    return {"mAP": ev.get("mAP"), "train_time_s": ev.get("train_time_s"), "iter": ev.get("iter"),
            "max_memory_allocated_gib": ev.get("max_memory_allocated_gib"),
            "skipped_steps": sum(r.get("skipped_steps", 0) for r in records),
            "finite": bool(losses) and all(v == v and abs(v) != float("inf") for v in losses),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}


def _f(value, fmt: str, missing: str = "-") -> str:
    return missing if value is None else format(value, fmt)


def _gib(value) -> str:
    return "n/a" if value is None else f"{value:.1f} GiB"


def summary_rows(steps: List[Step]) -> List[List[str]]:
    """One Markdown row per measurement: what, ours, reference, ratio, target, memory, status."""
    rows = []
    for s in steps:
        data, status = s.result.get("data"), s.result.get("status", "skipped (no time)")
        if s.name.startswith(("train_", "infer_")) and data:
            by = {(r["model"], r["impl"]): r for r in data["results"]}
            target = "<= 0.75x" if s.name.startswith("train_bf16") else "-"
            for model in ("retinanet", "frcnn"):
                o, t = by.get((model, "ours")), by.get((model, "torchvision"))
                if not o or not t:
                    continue
                mfu = f", MFU {o['mfu'] * 100:.1f}% / {t['mfu'] * 100:.1f}%" if o.get("mfu") is not None else ""
                rows.append([f"{s.title}, {model}", f"{o['median_s'] * 1e3:.1f} ms ({o['img_per_s']:.1f} img/s)",
                             f"{t['median_s'] * 1e3:.1f} ms{mfu}", f"{o['ratio']:.3f}x", target,
                             f"{_gib(o['peak_memory_gib'])} / {_gib(t['peak_memory_gib'])}", status])
        elif s.name == "syncs" and data:
            for model, r in data["models"].items():
                rows.append([f"{s.title}, {model}", f"{r['syncs_per_other_step']:.1f} per step outside windows",
                             data["method"], "-", "0 in the weighting outside window boundaries",
                             "-", status if r["pass"] else f"FAIL: {r['weighting_syncs_outside_boundaries']}"])
        elif s.name == "alwa" and data:
            sync = data.get("sync_errors_outside_boundaries")
            rows.append([s.title, f"step {data['step_ratio']:.3f}x Fixed, call {100 * data['call_overhead_share']:.3f}%",
                         f"host reads outside windows {data['host_reads_elsewhere']}, sync errors "
                         f"{'n/a (CPU)' if sync is None else sync}", f"{data['step_ratio']:.3f}x", "<= 1.01x, 0 syncs",
                         "-", status])
        elif s.name.startswith("demo_") and data:
            rows.append([s.title, f"mAP {_f(data['mAP'], '.4f')}, {_f(data['train_time_s'], '.0f')} s training",
                         f"loss {_f(data['first_loss'], '.3f')} -> {_f(data['last_loss'], '.3f')}, skipped steps "
                         f"{data['skipped_steps']}", "-", "finite, 0 skipped",
                         _gib(data["max_memory_allocated_gib"]), status if data["finite"] else "FAIL: non-finite loss"])
        else:
            rows.append([s.title, "-", "-", "-", "-", "-", status])
    return rows


def write_summary(out_dir: str, steps: List[Step], header: str) -> str:
    head = ["measurement", "ours", "reference / detail", "ratio", "target", "peak memory (ours / ref)", "status"]
    lines = [header, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in summary_rows(steps)]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({s.name: s.result for s in steps}, f, indent=1)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on the CPU: checks that the suite runs")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole suite (default 510 on the GPU, none for the dry run)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these steps (names as in summary.md)")
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    # the GPU suite must fit the lent machine's time; the dry run (a test on CPUs of any speed) has no budget
    budget = args.budget or (float("inf") if args.cpu_dry_run else 510.0)
    if not args.cpu_dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu_suite: CUDA is not available here; use --cpu-dry-run on a CPU", file=sys.stderr)
            return 2
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        steps = plan(args.cpu_dry_run, tmp)
        if args.only is not None:
            unknown = set(args.only) - {s.name for s in steps}
            if unknown:
                print(f"gpu_suite: unknown steps {sorted(unknown)}; steps are {[s.name for s in steps]}", file=sys.stderr)
                return 2
            steps = [s for s in steps if s.name in args.only]
        machine = environment()
        with open(os.path.join(args.out_dir, "log.txt"), "w") as log:
            log.write(machine)
            for step in steps:
                left = budget - (time.perf_counter() - start)
                if left < 15:
                    step.result = {"status": "skipped (no time)"}
                    continue
                print(f"[gpu_suite] {step.name} ({step.title}), up to {min(step.timeout, left):.0f} s", flush=True)
                run_step(step, left, log)
                print(f"[gpu_suite] {step.name}: {step.result['status']} in {step.result['seconds']} s", flush=True)
        took = time.perf_counter() - start
        header = (f"GPU suite{' (CPU dry run, tiny sizes)' if args.cpu_dry_run else ''}: "
                  f"{time.strftime('%Y-%m-%d %H:%M')}, {machine.splitlines()[0]}, {took:.0f} s")
        text = write_summary(args.out_dir, steps, header)
    print(text)
    ok = all(s.result.get("status") == "ok" for s in steps) and "FAIL" not in text
    return 0 if ok else 1


def environment() -> str:
    """One line on the machine (torch, device), then nvidia-smi's GPU list when there is one."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    text = f"torch {torch.__version__}, CUDA {torch.version.cuda}, {device}, Python {sys.version.split()[0]}\n"
    try:
        text += subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        pass
    return text


if __name__ == "__main__":
    sys.exit(main())
