"""Trainer hooks: the learning-rate schedule, metrics logging (metrics.jsonl + tqdm), periodic atomic
checkpoints, and the gradient average of learnable loss weights under DDP."""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Dict, Optional

import torch

from detection.runtime import dist as dist_utils
from detection.checkpoint.io import WriteError, save_checkpoint, write_failure
from detection.checkpoint.state import TrainingState
from detection.training.trainer import HookBase
from models.contract import LossContract


def keep_records_upto(path: str, last_iter: int) -> int:
    """Rewrite the JSON-lines log ``path`` (atomically) with only its records of iterations <= ``last_iter``:
    the state a run starting at ``last_iter`` continues from. Later records (a run killed after its last
    checkpoint, or an earlier run of the same work dir when starting from scratch) and unreadable lines
    (a line cut off by a kill) would otherwise mix with the new run's. Returns how many lines were removed."""
    if not os.path.isfile(path):
        return 0
    kept, dropped, unterminated = [], 0, False
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                ok = int(json.loads(line)["iter"]) <= last_iter
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                dropped += 1
            elif line.endswith("\n"):
                kept.append(line)
            else:  # a kill between a record and its newline: the next record must not be glued onto it
                kept.append(line + "\n")
                unterminated = True
    if dropped or unterminated:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return dropped


class LRSchedule(HookBase):
    """Steps the learning-rate schedule after every step, a skipped one included: the data position and the
    learning rate stay in step with the plan. Registered before every hook that reads ``trainer.lr`` or saves
    (the logger, the evaluation and checkpoint hooks), so that they see this step's schedule; its state is
    saved by ``detection.checkpoint.state.TrainingState``."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def after_step(self):
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()" when step 1 was skipped
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.scheduler.step()


class MetricsLogger(HookBase):
    """Averages raw losses, weighted losses and the total over each log interval, with their standard
    deviation over the interval's steps (``std``, ``weighted_std``: the spread the paper's Figures 3 and 6
    plot per window).

    Sums stay on the device between log points; the host reads them once per interval. A non-finite
    average stops training with the offending keys named. Every rank takes part in the reduction; only
    the writer (rank 0) writes ``metrics.jsonl`` and shows the progress bar."""

    def __init__(self, path: Optional[str], interval: int, progress: bool = True,
                 contract: Optional[LossContract] = None, tensorboard=None):
        self.path, self.interval, self.progress = path, max(1, interval), progress
        self.tensorboard = tensorboard  # a detection.tools.tensorboard.TensorBoard (rank 0), or None
        # the model's loss keys and groups, written into every record (plots and comparisons read them)
        self.contract = contract
        self._contract_written = False
        self._sums: Dict[str, torch.Tensor] = {}
        self._squares: Dict[str, torch.Tensor] = {}
        self._count = 0
        self._skipped = 0
        self._skipped_keys: Dict[str, int] = {}
        self._weights: Dict[str, float] = {}
        self._windows: list = []  # window records of the interval, written with it as "alwa_windows"
        self._file = None
        self._bar = None
        self._tic = 0.0
        self._data_time = 0.0

    def before_train(self):
        if self.path is not None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            dropped = keep_records_upto(self.path, self.trainer.iter)
            if dropped:
                print(f"{self.path}: {dropped} record(s) after iteration {self.trainer.iter} (from an earlier or "
                      f"interrupted run of this work dir) removed", flush=True)
            self._file = open(self.path, "a", buffering=1)
            if self.progress:
                from tqdm import tqdm

                self._bar = tqdm(total=self.trainer.max_iters, initial=self.trainer.iter, desc="train",
                                 dynamic_ncols=True, mininterval=1.0)
        self._tic = time.perf_counter()

    def after_step(self):
        t = self.trainer
        out = t.last
        if self._bar is not None:
            self._bar.update(1)
        if out.skipped:  # a skipped step's values are not finite: count it, keep it out of the averages
            self._skipped += 1
            for k in out.skipped:
                self._skipped_keys[k] = self._skipped_keys.get(k, 0) + 1
        else:
            self._accumulate(out)
        # the statistics windows completed at this step (ALWA): plain values, no host read here
        self._windows.extend({"iter": t.iter, **w} for w in out.windows)
        if t.iter % self.interval == 0 or t.iter >= t.max_iters:
            self.flush()

    def _accumulate(self, out):
        t = self.trainer
        # the step's own terms: what was backpropagated, with the weights of that step (at an ALWA window
        # boundary the weighting has already moved on to the next step's λ)
        entries = {"loss": out.total, **out.raw, **{"weighted/" + k: v for k, v in out.weighted.items()}}
        self._weights = out.weights
        for k, v in entries.items():
            v = v.detach().float()
            self._sums[k] = self._sums[k] + v if k in self._sums else v.clone()
            self._squares[k] = self._squares[k] + v * v if k in self._squares else v * v
        self._count += 1
        self._data_time += t.data_time

    def flush(self):
        t = self.trainer
        if self._count == 0:  # every step of the interval was skipped
            record = {"iter": t.iter, "epoch": t.epoch, "lr": t.lr, "skipped_steps": self._skipped,
                      "skipped_keys": dict(self._skipped_keys)}
            if self._windows:
                record["alwa_windows"], self._windows = self._windows, []
            self.write_record(record)
            self._skipped, self._skipped_keys = 0, {}
            self._tic = time.perf_counter()
            return
        keys = list(self._sums)
        stacked = torch.stack([self._sums[k] for k in keys] + [self._squares[k] for k in keys]) / self._count
        # the last entry: this rank's count of ALWA windows in the interval, so that every rank knows whether
        # any rank has windows to gather below (one collective decision, no extra round trip)
        stacked = torch.cat([stacked, stacked.new_tensor([float(len(self._windows))])])
        moments = dist_utils.all_reduce_mean(stacked).tolist()  # one host read per interval
        any_windows = moments.pop() > 0
        values = dict(zip(keys, moments[: len(keys)]))
        n = self._count * (torch.distributed.get_world_size() if dist_utils.is_dist() else 1)
        stds = {k: math.sqrt(max(sq - values[k] ** 2, 0.0) * n / (n - 1)) if n > 1 else 0.0
                for k, sq in zip(keys, moments[len(keys):])}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            self._sums, self._squares, self._count = {}, {}, 0
            raise FloatingPointError(f"non-finite loss at iteration {t.iter}: {', '.join(bad)} "
                                     f"(values {[values[k] for k in bad]}); lower the learning rate or check the data")
        elapsed = time.perf_counter() - self._tic
        raw_keys = [k for k in keys if k != "loss" and not k.startswith("weighted/")]
        record = {"iter": t.iter, "epoch": t.epoch, "lr": t.lr, "loss": values.pop("loss")}
        record.update({k: values[k] for k in raw_keys})
        record["weighted"] = {k[len("weighted/"):]: v for k, v in values.items() if k.startswith("weighted/")}
        # λ of the interval's last recorded step (the weights its weighted losses were computed with)
        record["weights"] = {k: float(v) for k, v in self._weights.items()}
        record["std"] = {k: stds[k] for k in raw_keys}
        record["weighted_std"] = {k[len("weighted/"):]: v for k, v in stds.items() if k.startswith("weighted/")}
        record["time"] = elapsed / self._count
        record["data_time"] = self._data_time / self._count
        record["eta_s"] = record["time"] * (t.max_iters - t.iter)
        if self._skipped:
            record["skipped_steps"], record["skipped_keys"] = self._skipped, dict(self._skipped_keys)
        if any_windows and dist_utils.is_dist():
            # every rank's windows (with weighting.sync: false each process has its own statistics and λ);
            # "alwa_windows" stays rank 0's
            record["alwa_windows_by_rank"] = dist_utils.all_gather_objects(self._windows)
        if self._windows:  # one entry per ALWA window completed in the interval: what it compared, what it did
            record["alwa_windows"], self._windows = self._windows, []
        if self.contract is not None and not self._contract_written:  # once per run: its first record
            record["contract"] = self.contract.to_record()
            self._contract_written = True
        self.write_record(record)
        if self.tensorboard is not None:
            self.tensorboard.training_record(record)
        if self._bar is not None:
            label = (self.contract or LossContract(tuple(raw_keys))).label
            shown = {k: f"{record[k]:.3f}" for k in ["loss"] + [k for k in record["weighted"]][:3]}
            shown.update({f"w_{label(k)}": f"{v:.3f}" for k, v in record["weights"].items() if v != 1.0})
            self._bar.set_postfix(shown, refresh=False)
        self._sums, self._squares, self._count, self._data_time = {}, {}, 0, 0.0
        self._skipped, self._skipped_keys = 0, {}
        self._tic = time.perf_counter()

    def write_record(self, record: dict) -> None:
        """Append one record to metrics.jsonl (the writer rank only; e.g. the evaluation hook's)."""
        if self._file is not None and not self._file.closed:
            try:
                self._file.write(json.dumps(record) + "\n")
            except OSError as exc:  # e.g. a full disk: reported once, and the file is not written to again
                self._abandon()
                raise write_failure(self.path, exc) from None

    def _close(self) -> None:
        try:
            self._file.close()
        except OSError as exc:
            self._file = None
            raise write_failure(self.path, exc) from None

    def _abandon(self) -> None:
        file, self._file = self._file, None
        try:
            file.close()  # its buffered text fails to be written a second time
        except OSError:
            pass

    def after_train(self):
        try:
            # after an error under DDP the other ranks may be mid-step: the interval's averages need a
            # collective they would never join, so the partial interval is not written
            on_error_dist = self.trainer.stop_reason == "error" and dist_utils.is_dist()
            if (self._count or self._skipped) and not on_error_dist:  # stopped between log points
                self.flush()
            if self._file is not None and not self._file.closed:
                self._close()
        except (FloatingPointError, WriteError):
            if self.trainer.stop_reason in (None, "early_stop"):
                raise
            # already stopping on an error: the last interval is not written, that error is reported
        finally:
            if self._file is not None and not self._file.closed:
                self._abandon()
            if self._bar is not None:
                self._bar.close()
            if self.tensorboard is not None:
                self.tensorboard.close()


class CheckpointHook(HookBase):
    """Writes ``checkpoints/last.pth`` atomically every ``interval`` iterations and at the end (rank 0).

    With ``keep > 1`` each checkpoint is written as ``iter_NNNNNNN.pth`` and ``last.pth`` is atomically
    re-pointed at it (a hard link, so the data is written once), and only the newest ``keep`` of those
    files are kept."""

    def __init__(self, folder: str, interval: int, state: TrainingState, writer: bool = True, keep: int = 1):
        if keep < 1:
            raise ValueError(f"keep must be >= 1 checkpoints, got {keep}")
        self.folder, self.interval, self.writer, self.keep = folder, max(1, interval), writer, keep
        self.state = state  # what a checkpoint holds (the run's scheduler among it), assembled in one place

    def save(self, name: Optional[str] = None):
        """Write the trainer's state: ``last.pth`` (and ``iter_NNNNNNN.pth`` with ``keep > 1``), or, with
        ``name``, only that file in the folder (``last.pth`` untouched)."""
        state = self.state.capture(self.trainer, self.writer)  # a collective under DDP: every rank takes part
        if not self.writer:
            return
        last = os.path.join(self.folder, "last.pth")
        if name is not None or self.keep == 1:
            path = last if name is None else os.path.join(self.folder, name)
            save_checkpoint(state, path)
            self.trainer.last_checkpoint = path
            return
        path = os.path.join(self.folder, f"iter_{self.trainer.iter:07d}.pth")
        save_checkpoint(state, path)
        tmp = os.path.join(self.folder, f".last_{os.getpid()}.pth")
        try:
            os.link(path, tmp)
        except OSError:  # file systems without hard links: a second (atomic) write
            save_checkpoint(state, tmp)
        os.replace(tmp, last)
        self.trainer.last_checkpoint = last
        numbered = sorted(f for f in os.listdir(self.folder) if f.startswith("iter_") and f.endswith(".pth"))
        for old in numbered[: -self.keep]:
            os.unlink(os.path.join(self.folder, old))

    def after_step(self):
        t = self.trainer
        # during a run of skipped steps the weights are the ones that gave bad losses: last.pth keeps the state
        # from before them
        if t.iter % self.interval == 0 and t.iter < t.max_iters and not t.guard.consecutive:
            self.save()

    def after_train(self):
        reason = self.trainer.stop_reason
        if reason in (None, "interrupted", "early_stop"):  # a whole step's state: what --resume continues from
            self.save()
        elif reason == "non_finite":
            # the weights that gave non-finite (or diverged) losses: kept for inspection, but never in place of
            # the last periodic checkpoint, the good state a resume with a lower learning rate starts from
            self.save(f"nonfinite_iter_{self.trainer.iter:07d}.pth")
        # after an error the state may be half-updated: the last periodic checkpoint is left as it was


class WeightingGradSync(HookBase):
    """Averages the gradients of learnable loss-weighting parameters (e.g. uncertainty weighting's
    log-variances) over ranks after backward: they live outside the DDP module, so DDP does not."""

    def __init__(self, params):
        self.params = list(params)

    def after_backward(self):
        for p in self.params:
            if p.grad is not None:
                p.grad.copy_(dist_utils.all_reduce_mean(p.grad))
