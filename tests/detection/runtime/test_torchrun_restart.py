"""End-to-end: a worker lost under ``torchrun --max-restarts 1 ... --resume``. Rank 0 is killed with SIGKILL
after a checkpoint and before the end; torchrun stops rank 1 and starts both again; they continue from the
checkpoint (rank 0 takes over the dead process's work-dir lock) and end with the weights and each rank's ALWA
state of an uninterrupted run. The restarted workers used to read the killed ones' addresses from torchrun's
shared store, and failed to connect or waited for them (see detection.runtime.dist._attempt_store)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_ddp import CASES, COMMON, NO_TORCHRUN  # runtime/ is on sys.path (pytest's default import mode)

from detection.checkpoint.io import load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
SETTINGS = ["model.backbone.name=mobilenet_v3_small", "weighting.sync=false", "train.max_iters=8",
            "train.lr_steps=[6]", "train.checkpoint_interval=2", "train.log_interval=1"]


def command(work, root):
    cfg, extra = CASES["retinanet"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
            os.path.join(REPO, "scripts", "train.py"), "--cfg", os.path.join(REPO, cfg), "--work-dir", str(work),
            "--resume", "--set", f"data.root={root}", *COMMON, *extra, *SETTINGS]


def worker(agent: int, rank: int) -> int:
    """The pid of torchrun's worker of ``rank``."""
    for task in os.listdir(f"/proc/{agent}/task"):
        with open(f"/proc/{agent}/task/{task}/children") as f:
            for pid in map(int, f.read().split()):
                with open(f"/proc/{pid}/environ", "rb") as env:
                    if f"RANK={rank}".encode() in env.read().split(b"\0"):
                        return pid
    raise LookupError(f"no worker of rank {rank}")


KNOWN_ABORT = "terminate called without an active exception"


@pytest.mark.slow
@pytest.mark.e2e
@NO_TORCHRUN
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="finds the worker through /proc")
def test_a_worker_killed_under_torchrun_restarts_and_ends_like_an_uninterrupted_run(tmp_path, same):
    root = tmp_path / "shapes"
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    done = subprocess.run(command(ref, root), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and KNOWN_ABORT in done.stderr:
        # the same known defect in the run that nobody killed (seen under pytest -n 2): a rank aborts at exit
        pytest.xfail(f"a rank of the uninterrupted run aborted at exit ('{KNOWN_ABORT}')")
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(command(killed, root), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        last = killed / "checkpoints" / "last.pth"
        deadline = time.time() + 240
        while not last.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        os.kill(worker(proc.pid, 0), signal.SIGKILL)
        out, _ = proc.communicate(timeout=240)  # a restart that waits for the dead workers hangs for 30 min
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode != 0 and KNOWN_ABORT in out:
        # known defect, open: in about 1 of 4 runs a rank trains to its last step and then aborts at exit
        # (exit -6), which torchrun counts as a failure (with no restart left, or, in the uninterrupted run
        # above, it restarts and the restarted rank aborts again). Only that failure is expected; any other
        # outcome fails the test
        pytest.xfail(f"a restarted rank aborted at exit ('{KNOWN_ABORT}')")
    assert proc.returncode == 0, out[-4000:]
    assert "taking over the lock of process" in out and "resumed from" in out, out[-4000:]  # it did restart

    a, b = load_checkpoint(str(ref / "checkpoints" / "last.pth")), load_checkpoint(str(last))
    assert a["iter"] == b["iter"] == 8
    unequal = [k for k, v in a["model"].items() if not torch.equal(v, b["model"][k])]
    assert not unequal, f"{len(unequal)} of {len(a['model'])} model tensors differ, e.g. {unequal[:3]}"
    assert same(a["optimizer"], b["optimizer"])
    for r in (0, 1):  # each rank's own λ (per-process statistics) and open window
        assert same(a["per_rank"][r]["weighting"], b["per_rank"][r]["weighting"]), r
    assert a["per_rank"][0]["weighting"]["lambda_cls"] != a["per_rank"][1]["weighting"]["lambda_cls"]
    assert [f for f in os.listdir(killed / "checkpoints")] == ["last.pth"]  # no temp file of the killed write
