"""Validation during training: periodic test-set evaluation, the best checkpoint, early stopping.

Every ``every`` iterations (and at the last one) the hook evaluates the model on the test set (each rank its
shard, as the final evaluation does), writes ``{"iter", "epoch", "eval": metrics, "best": ...}`` into
``metrics.jsonl``, saves ``checkpoints/best.pth`` when ``metric`` improved (higher is better: mAP, AP ...),
and asks the trainer to stop after ``patience`` evaluations without improvement (0: never). Its state (best
value and iteration, evaluations since) is part of every checkpoint, so an exact resume keeps the
best-so-far.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional

from detection.config import ConfigError
from detection.trainer import HookBase

BEST_FILE = "best.pth"


def numeric_metrics(metrics: Dict) -> Dict[str, float]:
    """The scalar metrics of an evaluation (mAP, AP, AP50 ...; per-class APs as ``AP/<class>``)."""
    out = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
           and k not in ("num_images", "iou_thr")}
    if isinstance(metrics.get("AP"), dict):
        out.update({f"AP/{name}": float(v) for name, v in metrics["AP"].items()})
    return out


class EvalHook(HookBase):
    def __init__(self, evaluate: Callable[[], Dict], every: int, metric: str, patience: int = 0,
                 save_best: Optional[Callable[[str], None]] = None, write: Optional[Callable[[dict], None]] = None,
                 on_eval: Optional[Callable[[int, Dict[str, float]], None]] = None,
                 log: Callable[[str], None] = print):
        if every < 1:
            raise ValueError(f"evaluation interval must be >= 1 iteration, got {every}")
        self.evaluate, self.every, self.metric, self.patience = evaluate, every, metric, patience
        self.save_best, self.write, self.on_eval, self.log = save_best, write, on_eval, log
        self.best: Optional[float] = None
        self.best_iter: Optional[int] = None
        self.since_best = 0
        self.last_metrics: Optional[Dict] = None  # the full metrics of the last evaluation
        self.last_iter: Optional[int] = None

    def after_step(self):
        t = self.trainer
        if t.iter % self.every == 0 or t.iter >= t.max_iters:
            self.run()

    def run(self) -> Dict:
        t = self.trainer
        metrics = self.evaluate()
        values = numeric_metrics(metrics)
        if self.metric not in values:
            raise ConfigError([f"train.best_metric {self.metric!r} is not among the evaluation's metrics "
                               f"{sorted(k for k in values if '/' not in k)}"])
        value = values[self.metric]
        improved = math.isfinite(value) and (self.best is None or value > self.best)
        if improved:
            self.best, self.best_iter, self.since_best = value, t.iter, 0
            if self.save_best is not None:
                self.save_best(BEST_FILE)
        else:
            self.since_best += 1
        self.last_metrics, self.last_iter = metrics, t.iter
        record = {"iter": t.iter, "epoch": t.epoch, "eval": values,
                  "best": {"metric": self.metric, "value": self.best, "iter": self.best_iter}}
        if self.write is not None:
            self.write(record)
        if self.on_eval is not None:
            self.on_eval(t.iter, values)
        if self.patience and self.since_best >= self.patience and t.iter < t.max_iters:
            t.request_stop("early_stop")
            self.log(f"early stop at iteration {t.iter}: {self.metric} has not improved on {self.best:.4f} "
                  f"(iteration {self.best_iter}) for {self.since_best} evaluations")
        return metrics

    def state_dict(self) -> dict:
        return {"best": self.best, "best_iter": self.best_iter, "since_best": self.since_best}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_iter = state.get("best"), state.get("best_iter")
        self.since_best = int(state.get("since_best", 0))
