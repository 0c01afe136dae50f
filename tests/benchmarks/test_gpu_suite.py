"""The GPU suite's CPU dry run: the steps of benchmarks/gpu_suite.sh run at tiny sizes and land in the summary,
so the suite cannot rot between the sessions that are lent a GPU. What is checked is what the steps produce,
never how fast: the dry run has no time limits (a CPU without bf16 instructions runs bf16 12x slower)."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import gpu_suite  # noqa: E402

STEPS = ["syncs", "train_bf16_b2", "train_bf16_b1", "train_fp32_b2", "train_fp32_b1", "infer_bf16_b2", "infer_fp32_b2",
         "alwa", "demo_bf16", "demo_fp16"]
# one step per script (the others run the same script with another precision or batch): the test's share of
# the suite; every step's command is checked by test_the_plan_...
RUN = ["syncs", "train_fp32_b1", "infer_fp32_b2", "alwa", "demo_bf16"]


def test_the_plan_has_every_step_with_its_precision_and_no_time_limit_on_a_cpu(tmp_path):
    gpu_names = [n.replace("_b2", "_b8").replace("_b1", "_b2") for n in STEPS]  # batches 8 and 2 on the GPU
    for dry in (True, False):
        steps = gpu_suite.plan(dry, str(tmp_path))
        assert [s.name for s in steps] == (STEPS if dry else gpu_names)
        # the names this test uses below: each GPU step under its dry-run name
        argv = {dry_name: s.argv for dry_name, s in zip(STEPS, steps)}
        amp = {n: a[a.index("--amp") + 1] if "--amp" in a else a[a.index("--set") + 1:] for n, a in argv.items()}
        for name in ("train_fp32_b2", "train_fp32_b1", "infer_fp32_b2"):
            assert amp[name] == "off"
        # on the GPU each step measures what its name says; on a CPU bf16 benchmarks run fp32 (titled so)
        for name in ("syncs", "train_bf16_b2", "train_bf16_b1", "infer_bf16_b2", "alwa"):
            assert amp[name] == ("off" if dry else "bf16"), name
        assert ("train.amp=off" if dry else "train.amp=bf16") in amp["demo_bf16"]
        assert ("train.amp=off" if dry else "train.amp=fp16") in amp["demo_fp16"]
        titles = {dry_name: s.title for dry_name, s in zip(STEPS, steps)}
        assert ("(fp32 on the CPU)" in titles["train_bf16_b2"]) == dry
        assert all(s.timeout >= 900 for s in steps) if dry else all(s.timeout <= 150 for s in steps)
        assert all(s.json_path for s in steps if not s.name.startswith("demo"))


@pytest.mark.slow
def test_cpu_dry_run_runs_the_steps_and_writes_the_summary(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="2")
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_suite.sh"), str(out), "--cpu-dry-run",
                           "--only", *RUN], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["log.txt", "results.json", "summary.md"]  # the device brings back <= 8 files
    results = json.load(open(out / "results.json"))
    assert list(results) == RUN
    assert all(r["status"] == "ok" and r["data"] for r in results.values()), {k: r["status"] for k, r in results.items()}
    # the sync listing names the trainer's one read per step and ALWA's reads only at window boundaries
    syncs = results["syncs"]["data"]["models"]
    for model in ("retinanet", "frcnn"):
        assert syncs[model]["pass"] and syncs[model]["updates"] == 2
        places = {s["place"].split(":")[0]: s for s in syncs[model]["sites"]}
        assert places["detection/training/trainer.py"]["per_other_step"] >= 1
        assert places["losses/weighting/window.py"]["per_other_step"] == 0 and places["losses/weighting/window.py"]["per_window_step"] > 0
    train = results["train_fp32_b1"]["data"]["results"]
    assert {(r["model"], r["impl"]) for r in train} == {(m, i) for m in ("retinanet", "frcnn") for i in ("ours", "torchvision")}
    assert all(r["median_s"] > 0 and r["mfu"] > 0 for r in train)
    demo = results["demo_bf16"]["data"]
    assert demo["finite"] and demo["skipped_steps"] == 0 and demo["iter"] == 4 and 0 <= demo["mAP"] <= 1
    summary = open(out / "summary.md").read()
    assert summary.startswith("GPU suite (CPU dry run, tiny sizes): ")
    assert summary.count("| ok |") == 2 + 2 + 2 + 1 + 1  # one row per model and measurement
    assert "FAIL" not in summary
    log = open(out / "log.txt").read()
    assert all(f"===== {name}:" in log for name in RUN)


def test_unknown_step_and_missing_cuda_are_clear_errors(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    bad = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "gpu_suite.py"), str(tmp_path), "--cpu-dry-run",
                          "--only", "nope"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown steps ['nope']" in bad.stderr
    import torch

    if not torch.cuda.is_available():
        gpu = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "gpu_suite.py"), str(tmp_path)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert gpu.returncode == 2 and "CUDA is not available" in gpu.stderr
