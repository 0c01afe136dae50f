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

from detection.config.loader import ConfigError
from detection.training.trainer import HookBase

BEST_FILE = "best.pth"


def numeric_metrics(metrics: Dict) -> Dict[str, float]:
    """The scalar metrics of an evaluation (mAP, AP, AP50 ...; per-class APs as ``AP/<class>``, COCO masks'
    as ``segm_AP/<class>``)."""
    out = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
           and k not in ("num_images", "iou_thr")}
    for key, prefix in (("AP", "AP"), ("per_class_AP", "AP"), ("segm_per_class_AP", "segm_AP")):
        if isinstance(metrics.get(key), dict):
            out.update({f"{prefix}/{name}": float(v) for name, v in metrics[key].items()})
    return out


def expected_metrics(data_format: str, masks: bool, classes) -> list:
    """The names ``numeric_metrics`` gives for an evaluation of this kind (to check ``train.best_metric`` when
    the run is built, not at its first evaluation)."""
    if data_format == "voc":
        return ["mAP"] + [f"AP/{c}" for c in classes]
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"] + [f"AP/{c}" for c in classes]
    return names + ([f"segm_{n}" for n in names[:6]] + [f"segm_AP/{c}" for c in classes] if masks else [])


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

    def _out_of_patience(self) -> bool:
        return bool(self.patience) and self.since_best >= self.patience and self.trainer.iter < self.trainer.max_iters

    def before_train(self):
        t = self.trainer
        if self._out_of_patience():  # resumed after its stop
            self.log(f"early stop: the run stopped at iteration {t.iter} ({self.metric} not improved on "
                     f"{self.best:.4f} of iteration {self.best_iter} for {self.since_best} evaluations); raise "
                     f"train.early_stop_patience to train on")
            t.request_stop("early_stop")

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
        if self._out_of_patience():
            t.request_stop("early_stop")
            self.log(f"early stop at iteration {t.iter}: {self.metric} has not improved on {self.best:.4f} "
                     f"(iteration {self.best_iter}) for {self.since_best} evaluations")
        return metrics

    def state_dict(self) -> dict:
        return {"best": self.best, "best_iter": self.best_iter, "since_best": self.since_best}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_iter = state.get("best"), state.get("best_iter")
        self.since_best = int(state.get("since_best", 0))
