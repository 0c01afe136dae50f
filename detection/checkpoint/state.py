"""The one owner of a run's checkpoint state: what a checkpoint holds, how it is assembled and how it is restored.

A training checkpoint (``checkpoints/last.pth``) is a dict of

- ``iter``: the iteration it was written at; it is also the loader's position (the sampler restarts epoch
  ``iter // iters_per_epoch`` at that epoch's optimizer step ``iter % iters_per_epoch``, i.e. at its batch
  ``(iter % iters_per_epoch) * train.accumulate``);
- ``model`` (unwrapped from DDP), ``optimizer``, ``scheduler`` (``LambdaLR.state_dict()``), ``scaler`` (fp16
  only), ``weighting`` (rank 0's), ``bad_steps`` (the non-finite guard's count) and ``hooks`` (``{hook class
  name: its state}`` for hooks with state, e.g. the evaluation hook's best value);
- ``rng`` (rank 0's Python, NumPy, torch and CUDA generators) and, under DDP, ``per_rank``: every rank's RNG
  and weighting state (each rank's open loss window; its own λ with per-process ALWA statistics);
- what makes it self-describing (:func:`checkpoint_extra`): ``config`` (the resolved config), ``classes``,
  ``world_size`` and, for COCO-format data, ``category_ids``.

A weights-only checkpoint (:func:`weights_checkpoint`, what ``convert`` writes) holds ``model`` and the
self-describing entries. :class:`TrainingState` writes and reads the whole layout for the checkpoint hook and
``--resume``; :func:`load_model` rebuilds a detector from either kind, :func:`read_weights` gives
``init_from`` the tensors and class names of either kind.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from detection import builders
from detection.checkpoint.io import load_checkpoint, load_weights, rng_state, set_rng_state
from detection.config.loader import ConfigError, config_from_tree, config_to_dict
from detection.config.schema import Config
from detection.runtime import dist as dist_utils


def checkpoint_extra(cfg: Config, classes, world: int = 1, category_ids=None) -> dict:
    """What makes a checkpoint self-describing: the resolved config, the class names, the number of
    processes that trained it, and for COCO-format data the category id of each class."""
    extra = {"config": config_to_dict(cfg), "classes": list(classes), "world_size": world}
    if category_ids is not None:
        extra["category_ids"] = [int(c) for c in category_ids]
    return extra


def weights_checkpoint(model: torch.nn.Module, cfg: Config, classes, category_ids=None, **entries) -> dict:
    """A checkpoint of weights only: the model's tensors, :func:`checkpoint_extra` and ``entries`` (e.g.
    ``converted_from``)."""
    return {"model": _unwrap(model).state_dict(), **checkpoint_extra(cfg, classes, category_ids=category_ids),
            **entries}


def read_weights(path: str) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """The ``model`` tensors and the class names (empty when it holds none) of a checkpoint."""
    state = load_checkpoint(path)
    return state["model"], list(state.get("classes") or [])


def checkpoint_config(state: dict, ckpt: str, overrides: Sequence[str] = ()) -> Config:
    """The resolved config saved in a checkpoint, with ``overrides`` applied (errors name the checkpoint)."""
    if "config" not in state:
        raise ConfigError([f"checkpoint {ckpt} holds no config (written before checkpoints carried one): "
                           f"give the config it was trained with, --cfg CFG"])
    return config_from_tree(Config, state["config"], {"": f"{ckpt} (its saved config)"}, overrides, ckpt)


def load_model(path: str, device="cpu", overrides: Sequence[str] = ()) -> torch.nn.Module:
    """The eval-mode detector of a checkpoint written by scripts/train.py, built from the config saved in it
    (``overrides`` change e.g. ``model.test.score_thr``) and on ``device``; ``model.classes`` are its class
    names and ``model.config`` that config. Pretrained backbone files are not read: every weight comes from the
    checkpoint."""
    state = load_checkpoint(path)
    cfg = checkpoint_config(state, path, list(overrides) + ["model.backbone.pretrained=null"])
    classes = list(state.get("classes") or builders.class_names(cfg))
    model = builders.build_model(cfg, len(classes))
    load_weights(model, state, path)
    model.classes = classes
    model.config = cfg  # for detection.tools.inference.predict: the preprocessing the model was built with
    model.category_ids = state.get("category_ids")  # COCO-format training data (or a converted file): their ids
    return model.to(torch.device(device)).eval()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


class TrainingState:
    """Assembles a trainer's checkpoint (:meth:`capture`) and puts one back (:meth:`restore`), in the layout of
    this module's docstring. ``scheduler``: the run's learning-rate schedule (the trainer steps it through the
    ``LRSchedule`` hook); ``extra``: the self-describing entries (:func:`checkpoint_extra`)."""

    def __init__(self, scheduler, extra: Optional[dict] = None):
        self.scheduler, self.extra = scheduler, dict(extra or {})

    def capture(self, trainer, writer: bool = True) -> Optional[dict]:
        """The trainer's state now. Under DDP a collective (every rank's RNG and weighting state is gathered):
        every rank calls it; the others (``writer`` False) get None."""
        per_rank = None
        if dist_utils.is_dist():
            per_rank = dist_utils.all_gather_objects({"rng": rng_state(), "weighting": trainer.weighting.state_dict()})
        if not writer:
            return None
        state = {"iter": trainer.iter, "model": _unwrap(trainer.model).state_dict(),
                 "optimizer": trainer.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "weighting": trainer.weighting.state_dict(), "bad_steps": trainer.guard.bad_steps}
        if trainer.scaler is not None:
            state["scaler"] = trainer.scaler.state_dict()
        hooks = {name: s for name, s in ((type(h).__name__, h.state_dict()) for h in trainer.hooks) if s}
        if hooks:
            state["hooks"] = hooks
        state.update(self.extra)
        state["rng"] = rng_state()
        if per_rank is not None:
            state["per_rank"] = per_rank
        return state

    def restore(self, trainer, state: dict, rank: int = 0, world: int = 1,
                log: Callable[[str], None] = lambda line: None) -> None:
        """Everything ``capture`` saved, into ``trainer`` (and this object's scheduler); then this process's RNG
        and weighting state (:meth:`restore_rank`). ``log``: where the one line about a changed process count
        goes (the writer rank's print; nothing elsewhere)."""
        _unwrap(trainer.model).load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        trainer.weighting.load_state_dict(state["weighting"])
        if trainer.scaler is not None and "scaler" in state:
            trainer.scaler.load_state_dict(state["scaler"])
        trainer.iter = int(state["iter"])
        trainer.guard.bad_steps = int(state.get("bad_steps", 0))
        for h in trainer.hooks:
            if type(h).__name__ in state.get("hooks", {}):
                h.load_state_dict(state["hooks"][type(h).__name__])
        self.restore_rank(trainer, state, rank, world, log)

    @staticmethod
    def restore_rank(trainer, state: dict, rank: int, world: int,
                     log: Callable[[str], None] = lambda line: None) -> None:
        """This process's RNG and weighting state: the saved ones of the same rank when the checkpoint was written
        by as many processes (exact resume), else rank 0's (a different process count cannot continue the same
        random streams; said so)."""
        per_rank = state.get("per_rank")
        if world == 1 and not per_rank:
            if "rng" in state:
                set_rng_state(state["rng"])
            return
        if per_rank and len(per_rank) == world:
            set_rng_state(per_rank[rank]["rng"])
            trainer.weighting.load_state_dict(per_rank[rank]["weighting"])
            return
        saved = len(per_rank) if per_rank else 1
        if "rng" in state and world == 1:
            set_rng_state(state["rng"])
        log(f"resume: the checkpoint was written by {saved} process(es), this run has {world}: every process "
            f"continues from rank 0's weighting state with fresh random streams (not an exact resume)")
