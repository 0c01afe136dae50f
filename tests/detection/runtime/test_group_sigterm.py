"""SIGTERM to the whole process group (SLURM preemption, ``timeout``) with data-loader workers: the workers
used to die of it, and torch raised "DataLoader worker (pid N) is killed by signal: Terminated" in the middle
of the step, before any checkpoint (7 of 8 tries). Now the workers leave the signal to the main process."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from detection.checkpoint.io import load_checkpoint
from detection.runtime.signals import ignore_stop_signals

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


class Numbers(torch.utils.data.Dataset):
    def __len__(self):
        return 10 ** 6

    def __getitem__(self, i):
        return torch.tensor(i)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" in f.read()
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="SIGTERM keeps its default without sigwaitinfo")
def test_workers_ignore_a_sigterm_of_others_but_not_the_loaders_own_shutdown():
    loader = torch.utils.data.DataLoader(Numbers(), batch_size=2, num_workers=1, persistent_workers=True,
                                         worker_init_fn=ignore_stop_signals)
    it = iter(loader)
    next(it)
    worker = it._workers[0]
    subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # another process: the group's SIGTERM
    time.sleep(0.3)
    assert worker.is_alive() and next(it).tolist() == [2, 3]  # still serving, no error in the main process
    worker.terminate()  # what the loader's shutdown does to a worker that does not leave in time
    worker.join(5)
    assert worker.exitcode == 0
    pids = [w.pid for w in it._workers]
    del it, loader  # the loader's normal shutdown ends the others
    deadline = time.time() + 10
    while not all(_gone(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    assert all(_gone(p) for p in pids)


@pytest.mark.slow
def test_sigterm_to_the_process_group_writes_a_checkpoint(tmp_path, write_tiny_retinanet):
    """scripts/train.py with 2 loader workers in a session of its own, SIGTERM to the group after a few steps,
    twice (the race hit 7 of 8 tries before: both tries miss it with probability 1/64)."""
    cfg = write_tiny_retinanet(tmp_path)
    for attempt in range(2):
        work = tmp_path / f"w{attempt}"
        cmd = [sys.executable, os.path.join(REPO, "scripts", "train.py"), "--cfg", cfg, "--work-dir", str(work),
               "--set", "data.num_workers=2", "train.max_iters=1000", "train.log_interval=1",
               "train.checkpoint_interval=1000", "train.eval_after=false"]
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        metrics = work / "metrics.jsonl"
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2 + attempt:
                break
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        last = work / "checkpoints" / "last.pth"
        assert proc.returncode == 130, err[-3000:]
        assert "Traceback" not in err and "killed by signal" not in err, err[-3000:]
        lines = [line for line in err.splitlines() if "checkpoint written to" in line]
        assert len(lines) == 1 and f"checkpoint written to {last}" in lines[0], err[-3000:]
        assert load_checkpoint(str(last))["iter"] >= 2
        assert sorted(os.listdir(work / "checkpoints")) == ["last.pth"]  # no temp file left
