"""The GPU suite's CPU dry run: every step of benchmarks/gpu_suite.sh runs at tiny sizes and lands in the
summary, so the suite cannot rot between the sessions that are lent a GPU."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = ["syncs", "train_bf16_b2", "train_bf16_b1", "train_fp32_b2", "train_fp32_b1", "infer_bf16_b2", "infer_fp32_b2",
         "alwa", "demo_bf16", "demo_fp16"]


def test_cpu_dry_run_runs_every_step_and_writes_the_summary(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="2")
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_suite.sh"), str(out), "--cpu-dry-run"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["log.txt", "results.json", "summary.md"]  # the device brings back <= 8 files
    results = json.load(open(out / "results.json"))
    assert list(results) == STEPS
    assert all(r["status"] == "ok" and r["data"] for r in results.values()), {k: r["status"] for k, r in results.items()}
    # the sync listing names the trainer's one read per step and ALWA's reads only at window boundaries
    syncs = results["syncs"]["data"]["models"]
    for model in ("retinanet", "frcnn"):
        assert syncs[model]["pass"] and syncs[model]["updates"] == 2
        places = {s["place"].split(":")[0]: s for s in syncs[model]["sites"]}
        assert places["detection/trainer.py"]["per_other_step"] >= 1
        assert places["losses/weighting/window.py"]["per_other_step"] == 0 and places["losses/weighting/window.py"]["per_window_step"] > 0
    train = results["train_fp32_b2"]["data"]["results"]
    assert {(r["model"], r["impl"]) for r in train} == {(m, i) for m in ("retinanet", "frcnn") for i in ("ours", "torchvision")}
    assert all(r["median_s"] > 0 and r["mfu"] > 0 for r in train)
    for name in ("demo_bf16", "demo_fp16"):
        demo = results[name]["data"]
        assert demo["finite"] and demo["skipped_steps"] == 0 and demo["iter"] == 4 and 0 <= demo["mAP"] <= 1
    summary = open(out / "summary.md").read()
    assert summary.startswith("GPU suite (CPU dry run, tiny sizes): ")
    assert summary.count("| ok |") == 2 + 4 * 2 + 2 * 2 + 1 + 2  # one row per model and measurement
    assert "FAIL" not in summary
    log = open(out / "log.txt").read()
    assert all(f"===== {name}:" in log for name in STEPS)


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
