"""Entry points behind scripts/train.py and scripts/eval.py: a run is built here from its config (data, model,
weighting, optimizer, schedule, hooks, checkpoint state), trained by ``detection.training.trainer.Trainer`` and
evaluated by ``detection.evaluation.runner``."""
from __future__ import annotations

import contextlib
import os
import time
from typing import Dict, Optional, Sequence

import torch

from datasets.coco import check_same_categories
from detection import builders
from detection.runtime import dist as dist_utils
from detection.checkpoint import recovery
from detection.checkpoint.init_from import init_from
from detection.checkpoint.io import CheckpointError, CorruptCheckpoint, load_checkpoint, load_weights, seed_everything
from detection.checkpoint.resume import resume as resume_run
from detection.checkpoint.state import TrainingState, checkpoint_config, checkpoint_extra
from detection.config.loader import ConfigError, load_config, save_config
from detection.config.schema import Config
from detection.evaluation.runner import PER_IMAGE, evaluate_dataset, format_metrics, write_metrics
from detection.tools.tensorboard import open_tensorboard
from detection.training.eval_hook import EvalHook, expected_metrics
from detection.training.guard import NonFiniteGuard
from detection.training.hooks import CheckpointHook, LRSchedule, MetricsLogger, WeightingGradSync
from detection.training.trainer import StepPolicy, Trainer
from detection.training.workdir import WorkDirLock, check_writable, clear_diverged, write_diverged


def load(cfg_path: str, overrides: Sequence[str] = ()) -> Config:
    return load_config(Config, cfg_path, overrides)


def setup(cfg: Config):
    device = dist_utils.local_device(builders.resolve_device(cfg.device))
    rank, world = dist_utils.init_from_env(device)
    # each rank gets its own seed so augmentation differs; model init is broadcast by DDP
    seed_everything(cfg.seed + rank)
    # tiny optimizer moments late in training become denormal floats, which are many times slower on
    # CPUs; flushing them to zero changes nothing measurable and keeps the step time flat
    torch.set_flush_denormal(True)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    # cuDNN autotuning pays off only when input shapes repeat (fixed-size inputs); with aspect-ratio grouped
    # batches of varying size it re-tunes on every new shape, hence off by default (as detectron2)
    torch.backends.cudnn.benchmark = bool(cfg.train.cudnn_benchmark and not cfg.deterministic)
    return device, rank, world


def prepare_work_dir(cfg: Config, work_dir: str, rank: int) -> None:
    """Rank 0 generates synthetic data if configured and checks that the work dir and its checkpoint folder
    can be written (before anything trains); all ranks wait. The resolved config is written by
    :func:`save_run_config` once the run is built (a failed resume leaves the folder's config alone)."""
    if rank == 0:
        builders.prepare_data(cfg.data)
        check_writable(work_dir)
        check_writable(os.path.join(work_dir, "checkpoints"))
    dist_utils.barrier()


def save_run_config(cfg: Config, work_dir: str, rank: int) -> None:
    if rank == 0:
        save_config(cfg, os.path.join(work_dir, "config.yaml"))


def _quiet(_: str) -> None:
    pass


def build_trainer(cfg: Config, work_dir: str, device: torch.device, rank: int = 0, world: int = 1,
                  resume: bool = False, allow_config_change: bool = False, resume_from: Optional[str] = None) -> Trainer:
    """Data, model (DDP-wrapped when distributed), weighting, optimizer, schedule, hooks, and the checkpoint
    state when resuming (``detection.checkpoint.resume``: a changed setting the checkpoint fixes is an error unless
    ``allow_config_change``) from ``checkpoints/last.pth``, or from ``resume_from`` (which must exist).
    ``trainer.model`` is the (wrapped) model; the class names are ``trainer.classes``."""
    if resume_from is not None and not os.path.isfile(resume_from):
        raise FileNotFoundError(f"--resume-from: checkpoint {resume_from} does not exist")
    resume = resume or resume_from is not None
    writer = rank == 0
    train_set = builders.build_dataset(cfg, train=True)
    names = list(train_set.classes)
    if writer:  # the bad-input summary (boxes clipped / dropped, empty images) before any training step
        print(train_set.summary(), flush=True)
    # every split the run will read is parsed and checked now, not after hours of training
    test_set = builders.build_dataset(cfg, train=False) if cfg.train.eval_after or cfg.train.eval_interval else None
    if test_set is not None:
        builders.check_test_classes(train_set, test_set)
    loader, sampler = builders.build_train_loader(cfg, train_set, rank, world)
    model = builders.build_model(cfg, len(names))
    last = resume_from or _last(work_dir)
    if cfg.model.init_from and not (resume and os.path.exists(last)):  # a resume restores every weight anyway
        init_from(model, cfg.model.init_from, names, cfg.model.init_class_map, log=print if writer else _quiet)
    contract = model.loss_contract
    # the weighting is checked against the model's loss keys before anything trains
    weighting = builders.build_weighting(cfg, contract).to(device)
    if cfg.train.sync_bn and world > 1:
        if device.type != "cuda":
            raise ConfigError(["train.sync_bn needs CUDA devices (SyncBatchNorm has no CPU implementation); "
                               "set it to false for CPU runs"])
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device, memory_format=torch.channels_last) if cfg.train.channels_last else model.to(device)
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    weight_params = list(weighting.parameters())
    optimizer, lr = builders.build_optimizer(cfg, model, world, weighting)
    steps_per_epoch = len(sampler) // cfg.train.accumulate  # optimizer steps: accumulate batches each
    if steps_per_epoch < 1:
        raise ConfigError([f"train.accumulate={cfg.train.accumulate} needs at least that many batches per epoch; "
                           f"the training set gives {len(sampler)}"])
    max_iters, steps = builders.schedule_length(cfg, steps_per_epoch)
    scheduler = builders.build_scheduler(cfg, optimizer, steps)

    category_ids = getattr(getattr(train_set, "dataset", train_set), "cat_ids", None)  # COCO-format data
    state = TrainingState(scheduler, checkpoint_extra(cfg, names, world, category_ids))
    board = open_tensorboard(os.path.join(work_dir, "tensorboard")) if cfg.train.tensorboard and writer else None
    logger = MetricsLogger(os.path.join(work_dir, "metrics.jsonl") if writer else None, cfg.train.log_interval,
                           cfg.train.progress, contract, board)
    checkpoints = CheckpointHook(os.path.join(work_dir, "checkpoints"), cfg.train.checkpoint_interval, state,
                                 writer=writer, keep=cfg.train.keep_checkpoints)
    # the schedule first: the logger, the evaluation and the checkpoint see the step's learning rate
    hooks = [LRSchedule(scheduler), logger, checkpoints]
    if world > 1 and weight_params:
        hooks.insert(0, WeightingGradSync(weight_params))
    if cfg.train.eval_interval:  # before the checkpoint hook: a checkpoint of that step holds its evaluation
        hooks.insert(hooks.index(checkpoints),
                     _eval_hook(cfg, model, test_set, device, rank, world, steps_per_epoch, checkpoints, logger, board))
    t = cfg.train
    policy = StepPolicy(max_iters, device, t.amp, cfg.optimizer.grad_clip, t.accumulate, t.channels_last,
                        NonFiniteGuard(t.check_finite, t.max_loss, t.max_bad_steps))
    trainer = Trainer(ddp_model, optimizer, weighting, loader, policy, hooks)
    trainer.classes, trainer.test_set = names, test_set
    if resume and os.path.exists(last):
        resume_run(trainer, state, cfg, last, lr, names, rank, world, writer, allow_config_change)
    elif resume and writer:
        print(f"--resume: no checkpoint at {last}, starting from scratch")
    if writer:
        print(f"training {cfg.model.type} ({cfg.model.backbone.name}) for {max_iters} iterations "
              f"({steps_per_epoch} per epoch, {world} process(es) x {cfg.data.batch_size} images"
              f"{f' x {cfg.train.accumulate} accumulated' if cfg.train.accumulate > 1 else ''}, lr {lr:g}, "
              f"weighting {cfg.weighting.type}) in {work_dir}")
    return trainer


def train(cfg_path: str, work_dir: Optional[str] = None, resume: bool = False, overrides: Sequence[str] = (),
          allow_config_change: bool = False, resume_from: Optional[str] = None) -> Dict:
    """Train a model from a config file; returns the evaluation metrics (on rank 0; {} elsewhere). Rank 0
    holds the work dir's lock for the whole run. ``resume_from``: resume from that checkpoint instead of
    ``checkpoints/last.pth``."""
    cfg = load(cfg_path, overrides)
    work_dir = work_dir or builders.default_work_dir(cfg_path)
    device, rank, world = setup(cfg)

    def command(*flags: str, extra: Sequence[str] = ()) -> str:  # this run's command line, for advice
        return recovery.train_command(cfg_path, work_dir, list(overrides) + list(extra), *flags)

    with (WorkDirLock(work_dir) if rank == 0 else contextlib.nullcontext()):
        try:
            return _train(cfg, work_dir, device, rank, world, resume, allow_config_change, command, resume_from)
        except CorruptCheckpoint as exc:  # the checkpoint to resume from: name one that can be read
            if not (resume or resume_from) or exc.path != (resume_from or _last(work_dir)):
                raise
            advice = recovery.corrupt_resume_advice(os.path.join(work_dir, "checkpoints"), command)
            raise CheckpointError(f"{exc}. {advice}") from None
        finally:
            # torchrun's workers leave through an orderly teardown: a restarted attempt's process group (on a
            # prefixed store, detection.runtime.dist) left to the interpreter's exit aborted a rank after its last step
            dist_utils.shutdown()


def _last(work_dir: str) -> str:
    return os.path.join(work_dir, "checkpoints", "last.pth")


def _train(cfg: Config, work_dir: str, device, rank: int, world: int, resume: bool, allow_config_change: bool,
           command, resume_from: Optional[str] = None) -> Dict:
    writer = rank == 0
    if writer:
        for note in getattr(cfg, "_config_notes", []):
            print(f"config: {note}", flush=True)
    prepare_work_dir(cfg, work_dir, rank)
    if writer:  # under the work dir's lock: no running write owns these temp files
        recovery.remove_debris(os.path.join(work_dir, "checkpoints"))
    trainer = build_trainer(cfg, work_dir, device, rank, world, resume, allow_config_change, resume_from)
    test_set = trainer.test_set if cfg.train.eval_after else None
    save_run_config(cfg, work_dir, rank)
    model = trainer.model.module if world > 1 else trainer.model
    weighting = trainer.weighting
    if writer:
        clear_diverged(work_dir)
    start = time.perf_counter()
    try:
        trainer.train()
    except FloatingPointError as exc:
        message = f"{exc}. {_restart_hint(trainer, cfg, work_dir, command)}"
        if writer:
            write_diverged(work_dir, trainer.iter, trainer.last.skipped if trainer.last else None, message)
        # every rank stops at the same step; the others wait for rank 0's record and checkpoint, otherwise
        # their early exit makes torchrun stop rank 0 before it has written them
        dist_utils.barrier()
        raise FloatingPointError(message) from None
    train_time = time.perf_counter() - start

    metrics: Dict = {}
    if test_set is not None:
        hook = next((h for h in trainer.hooks if isinstance(h, EvalHook)), None)
        if hook is not None and hook.last_iter == trainer.iter:  # the last step was just evaluated
            metrics = dict(hook.last_metrics)
        else:
            metrics = evaluate_dataset(model, test_set, cfg, device, rank, world, progress=cfg.train.progress)
        if hook is not None:  # eval.json is the final state; best.pth's evaluation is named beside it
            metrics["best"] = {"metric": hook.metric, "value": hook.best, "iter": hook.best_iter}
        # the layout the run trained with: ALWA's statistics depend on the images per process (and the ranks
        # pooled or not), so reproduce.py --collect reports it beside the numbers
        metrics.update({"iter": trainer.iter, "train_time_s": train_time, "weights": weighting.weights,
                        "world_size": world, "images_per_process": cfg.data.batch_size})
        if device.type == "cuda":  # training and evaluation of this process
            metrics["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        if writer:
            write_metrics(metrics, os.path.join(work_dir, "eval.json"))
            print(format_metrics(metrics))
    return metrics if writer else {}


def _eval_hook(cfg: Config, model, test_set, device, rank: int, world: int, steps_per_epoch: int, checkpoints,
               logger, board) -> EvalHook:
    """Validation during training (``train.eval_interval``): the test set every N iterations or epochs."""
    t = cfg.train
    every = t.eval_interval * (steps_per_epoch if t.eval_unit == "epochs" else 1)
    metric = t.best_metric or ("mAP" if cfg.data.format == "voc" else "AP")
    known = expected_metrics(cfg.data.format, cfg.model.has_masks, list(test_set.classes))
    if metric not in known:
        raise ConfigError([f"train.best_metric {metric!r} is not a metric of this evaluation; choose from "
                           f"{[k for k in known if '/' not in k]} or a class's AP/<class>"])
    on_eval = None
    if board is not None:
        def on_eval(it, values):
            board.evaluation(it, values)
            board.pictures(it, model, test_set, cfg, device)
    return EvalHook(lambda: evaluate_dataset(model, test_set, cfg, device, rank, world), every, metric,
                    t.early_stop_patience, checkpoints.save, logger.write_record, on_eval,
                    log=print if rank == 0 else _quiet)


def _restart_hint(trainer: Trainer, cfg: Config, work_dir: str, command) -> str:
    """Where a run stopped by the non-finite guard can continue from (``detection.checkpoint.recovery``), and the file
    that holds the state at the stop."""
    stop = f" The state at the stop is in {trainer.last_checkpoint}." if trainer.last_checkpoint else ""
    # the guard knows its first skipped step; the metrics logger's non-finite average (check_finite off)
    # only that it lies in the last log interval
    first = trainer.guard.first_bad if trainer.guard.consecutive else trainer.iter - cfg.train.log_interval + 1
    return recovery.restart_advice(os.path.join(work_dir, "checkpoints"), first, cfg.optimizer.lr, command) + stop


def evaluate(cfg_path: Optional[str], ckpt: str, out: Optional[str] = None, overrides: Sequence[str] = (),
             plots: Optional[str] = None) -> Dict:
    """Evaluate a checkpoint on its config's test set. ``cfg_path`` None: the config saved in the checkpoint
    (with ``overrides``); a given config file wins over it. ``plots``: a folder for the VOC precision-recall
    curves (``pr_curves.png``)."""
    state = load_checkpoint(ckpt)
    cfg = load(cfg_path, overrides) if cfg_path else checkpoint_config(state, ckpt, overrides)
    device, rank, world = setup(cfg)
    test_set = builders.build_dataset(cfg, train=False)
    names = list(test_set.classes)
    if "classes" in state and list(state["classes"]) != names:
        raise CheckpointError(f"checkpoint {ckpt} was trained on classes {list(state['classes'])}, the test set has "
                              f"{names}")
    trained_ids, test_ids = state.get("category_ids"), getattr(test_set, "cat_ids", None)
    if trained_ids is not None and test_ids is not None and list(trained_ids) != list(test_ids):
        # the rule training applies to its own test file (builders.check_test_classes)
        check_same_categories(f"checkpoint {ckpt}", dict(zip(names, trained_ids)), test_set.files[0],
                              test_set.categories)
    model = builders.build_model(cfg, len(names)).to(device)
    load_weights(model, state, ckpt)
    metrics = evaluate_dataset(model, test_set, cfg, device, rank, world, progress=cfg.train.progress)
    metrics["checkpoint"] = os.path.abspath(ckpt)
    if rank == 0:
        print(format_metrics(metrics))
        if plots and (metrics.get(PER_IMAGE) or {}).get("format") == "voc":
            from detection.evaluation.curves import plot_voc_pr_curves  # matplotlib only when asked

            print(f"precision-recall curves: {plot_voc_pr_curves(metrics[PER_IMAGE], plots)}")
        elif plots:
            print("--plots: precision-recall curves are drawn for VOC evaluations (COCO: see per-class AP)")
        if out:
            write_metrics(metrics, out)
    metrics.pop(PER_IMAGE, None)
    return metrics


