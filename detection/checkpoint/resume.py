"""``--resume``: continue the run saved in ``checkpoints/last.pth`` exactly, and refuse what would not.

The rule: resume continues the saved run. The checkpoint carries the run's resolved config; every setting
that the checkpoint fixes (model, data and augmentation, optimizer, schedule, weighting, seed) must be the
same in the config given now, or the resume is an error that names each changed key with both values.
``--allow-config-change`` applies the changes instead: the optimizer's learning rate, momentum and weight
decay and the schedule are rebuilt from the new config from the checkpoint's iteration on. Settings that do
not change what is trained (``FREE``: run length, logging, checkpointing, evaluation, device, data root,
workers) may always change. A different class list is always refused, both lists shown.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from detection.checkpoint.io import CheckpointError, load_checkpoint
from detection.config.loader import ConfigError, config_to_dict

# dotted keys (or prefixes ending in ".") that may differ between the checkpoint's config and the resume's
FREE = ("train.max_iters", "train.epochs", "train.log_interval", "train.checkpoint_interval",
        "train.keep_checkpoints", "train.eval_after", "train.progress", "train.cudnn_benchmark",
        "train.channels_last", "train.check_finite", "train.max_bad_steps", "train.max_loss", "device", "data.root",
        "data.coco_image_dir", "data.num_workers", "data.test_batch_size", "data.test_sets", "eval.",
        "model.test.", "model.rpn.test_proposals.", "model.mask_head.mask_thr", "model.backbone.pretrained",
        "model.init_from", "model.init_class_map", "train.eval_interval", "train.eval_unit", "train.best_metric",
        "train.early_stop_patience", "train.tensorboard")
# what --allow-config-change cannot apply: the random streams continue from the checkpoint
NOT_APPLIED = {"seed": "the random streams continue from the checkpoint's"}


def _flatten(tree, prefix: str = "") -> Dict[str, object]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _free(key: str) -> bool:
    return any(key == f or (f.endswith(".") and key.startswith(f)) for f in FREE)


def config_changes(saved: dict, current: dict) -> List[Tuple[str, object, object]]:
    """``(key, saved value, current value)`` of every setting that differs and is not ``FREE``."""
    a, b = _flatten(saved), _flatten(current)
    missing = object()
    return [(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
            if a.get(k, missing) != b.get(k, missing) and not _free(k)]


def _with_defaults(saved: dict, ckpt: str) -> dict:
    """The saved config with today's defaults for keys it predates (a checkpoint written before a key existed
    ran with the behaviour that key's default keeps); as saved when it no longer validates."""
    from detection.config.loader import config_from_tree
    from detection.config.schema import Config

    try:
        return config_to_dict(config_from_tree(Config, saved, {"": f"{ckpt} (its saved config)"}))
    except ConfigError:
        return saved


def _show(value) -> str:
    return "(not set)" if type(value) is object else repr(value)


def check_resume(state: dict, ckpt: str, cfg, classes: Sequence[str], allow: bool,
                 world: int = 1) -> List[Tuple[str, object, object]]:
    """The changes ``--resume`` will apply (empty: none); an error for changes without ``allow`` and for a
    different class list. A different number of processes counts as a change when the learning rate is
    scaled with the total batch (``optimizer.scale_lr``)."""
    saved_classes = state.get("classes")
    if saved_classes is not None and list(saved_classes) != list(classes):
        raise ConfigError([f"--resume: {ckpt} was trained on the classes {list(saved_classes)}, this config's "
                           f"training data has {list(classes)}: the labels would not mean the same; resume with "
                           f"the same class list (and order), or train in a new --work-dir"])
    if "config" not in state:
        return []
    changes = config_changes(_with_defaults(state["config"], ckpt), config_to_dict(cfg))
    saved_world = state.get("world_size")
    if saved_world is not None and saved_world != world and cfg.optimizer.scale_lr:
        changes.append(("processes (optimizer.scale_lr scales the lr with them)", saved_world, world))
    if changes and not allow:
        lines = [f"  {k}: {_show(old)} in the checkpoint, {_show(new)} now" for k, old, new in changes]
        raise ConfigError([f"--resume: this config differs from the run saved in {ckpt} (iteration "
                           f"{state.get('iter')}) in settings the checkpoint fixes:"] + lines +
                          ["resume continues the saved run: undo the change(s), or pass --allow-config-change to "
                           "apply them from the checkpoint's iteration on"])
    return changes


def apply_changes(optimizer, scheduler, lr: float, cfg) -> None:
    """After loading a checkpoint with ``--allow-config-change``: the new config's learning rate (``lr``,
    already scaled), momentum (SGD), weight decay and schedule replace the checkpoint's, from its iteration on.
    The weight decay follows the optimizer builder's groups: the first group decays, the others (norms and
    biases under AdamW, learnable loss weights) do not. The schedule takes the new base rate and is stepped
    again onto its own iteration, which puts the new schedule's rate there into the groups and into
    ``get_last_lr()`` (public attributes and ``step()`` only)."""
    o = cfg.optimizer
    for i, group in enumerate(optimizer.param_groups):
        group["initial_lr"] = lr
        group["weight_decay"] = o.weight_decay if i == 0 else 0.0
        if "momentum" in group:
            group["momentum"] = o.momentum
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    scheduler.last_epoch -= 1
    scheduler.step()  # its step count comes from the checkpoint (> 1): no "step before optimizer.step()" warning


def _not_applied(key: str, cfg) -> str:
    if key in NOT_APPLIED:
        return NOT_APPLIED[key]
    if key == "optimizer.momentum" and cfg.optimizer.type != "sgd":
        return f"{cfg.optimizer.type} has no momentum"
    return ""


def resume(trainer, owner, cfg, last: str, lr: float, classes: Sequence[str], rank: int, world: int,
           writer: bool, allow: bool) -> None:
    """Load ``last`` into ``trainer`` through ``owner`` (the run's ``TrainingState``) under the rule of this
    module (see the module docstring); ``classes``: the training data's class names."""
    state = load_checkpoint(last)
    changes = check_resume(state, last, cfg, classes, allow, world)
    log = (lambda line: print(line, flush=True)) if writer else (lambda line: None)
    try:
        owner.restore(trainer, state, rank, world, log)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {last} does not fit this run ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:300]})") from None
    if changes:
        apply_changes(trainer.optimizer, owner.scheduler, lr, cfg)
    if writer:
        if "config" not in state:
            print(f"resume: {last} holds no config (written by an older version): its settings are not compared")
        for k, old, new in changes:
            why = _not_applied(k, cfg)
            print(f"resume: --allow-config-change {'does not apply' if why else 'applies'} {k}: {_show(old)} -> "
                  f"{_show(new)}" + (f" ({why})" if why else ""))
        print(f"resumed from {last} at iteration {trainer.iter}")
