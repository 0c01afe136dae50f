"""One training step, and a small iteration-based trainer with hooks.

The loop is ``before_train``, then per step ``before_step`` -> forward, weighting, backward (``train_step``)
-> ``after_backward`` -> optimizer step -> ``after_step``, then ``after_train``. The step's result
(``StepOutput``: raw and weighted losses, the weights, ALWA's completed windows) is ``trainer.last``; hooks
read it and the trainer's public attributes (``iter``, ``epoch``, ``lr``...), never the weighting (the
checkpoint's ``TrainingState`` does: the weighting is part of a run's state). The
learning-rate schedule is a hook (``hooks.LRSchedule``, stepped first after every step, skipped steps
included); the non-finite guard is a policy of its own (``guard.NonFiniteGuard``, part of ``StepPolicy``). A
checkpoint's state is assembled by ``detection.checkpoint.state``, not here.

Ctrl-C or SIGTERM (``detection.runtime.signals``) stops after the current step: the hooks run, the checkpoint
hook writes that iteration, and ``TrainingInterrupted`` names the file (under DDP the flag is shared by one
tiny all-reduce per step).
"""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from detection.runtime import dist as dist_utils
from detection.runtime.batch import autocast, move_batch
from detection.runtime.signals import StopSignals, TrainingInterrupted
from detection.training.guard import NonFiniteGuard
from losses.weighting import WeightingStrategy


class HookBase:
    """Hooks with state return it from ``state_dict()`` (part of every checkpoint) and take it back in
    ``load_state_dict()``."""

    trainer: "Trainer"

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def before_train(self): ...

    def before_step(self): ...

    def after_backward(self): ...

    def after_step(self): ...

    def after_train(self): ...


@dataclass
class StepOutput:
    """Detached results of one step, still on the device (reading them is the logger's job): the raw losses,
    the total that was backpropagated, its terms (each loss times the weight it had in this step, plus any
    extra term of the weighting; they sum to ``total``), those weights, and the records of the weighting's
    statistics windows that this step completed (ALWA; plain values)."""

    raw: Dict[str, Tensor]
    total: Tensor
    weighted: Dict[str, Tensor] = field(default_factory=dict)
    weights: Dict[str, Union[float, Tensor]] = field(default_factory=dict)
    skipped: Optional[List[str]] = None  # offending loss keys ("gradients") when the step was skipped
    windows: List[dict] = field(default_factory=list)


def _all_finite_flags(values: List[Tensor], max_abs: Optional[float] = None) -> List[bool]:
    """Per-tensor finiteness (and ``|v| <= max_abs`` when given), AND-ed over ranks; one host read."""
    flags = torch.stack([torch.isfinite(v).all() if max_abs is None else (torch.isfinite(v) & (v.abs() <= max_abs)).all()
                         for v in values]).float()
    if dist_utils.is_dist():
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
    return [f > 0.5 for f in flags.tolist()]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is set on any rank (one small all-reduce under DDP, none otherwise)."""
    if not dist_utils.is_dist():
        return flag
    t = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0.5)


def _grad_norm(params: List[Tensor]) -> Tensor:
    if not params:
        return torch.zeros(())
    norms = torch._foreach_norm([p.grad for p in params])
    return torch.linalg.vector_norm(torch.stack(norms))


def _mean(dicts: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
    return dicts[0] if len(dicts) == 1 else {k: sum(d[k] for d in dicts) / len(dicts) for k in dicts[0]}


def train_step(model: nn.Module, batches: Sequence[Tuple[Tensor, List[Dict]]], weighting: WeightingStrategy,
               optimizer: torch.optim.Optimizer, scaler: Optional[torch.amp.GradScaler] = None,
               amp: str = "off", grad_clip: Optional[float] = None, after_backward=None,
               check_finite: bool = True, max_loss: Optional[float] = None) -> StepOutput:
    """Forward, weighting, backward for each micro-batch ``(images, targets)`` of ``batches`` (one without
    gradient accumulation), then one optimizer step. AMP is a flag; DDP is whatever ``model`` is (gradients are
    all-reduced on the last micro-batch only).

    Each micro-batch is weighted with the step's weights and backpropagated divided by their number, so the
    gradient is the mean of the micro-batches' gradients; the weighting then observes the step's mean raw
    losses once (ALWA's C counts optimizer steps). ``StepOutput`` holds the means over micro-batches."""
    n = len(batches)
    optimizer.zero_grad(set_to_none=True)
    raws, terms, weights, total = [], [], {}, None
    for i, (images, targets) in enumerate(batches):
        sync = contextlib.nullcontext() if i == n - 1 or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(images.device, amp):
                losses = model(images, targets)
            # the weighting sees float32 losses whatever the autocast dtype
            losses = {k: v.float() for k, v in losses.items()}
            detached = {k: v.detach() for k, v in losses.items()}
            weighted = weighting.weigh(losses)  # records nothing: a skipped step leaves the weighting as it was
            part = weighted.total / n if n > 1 else weighted.total
            if scaler is not None:
                scaler.scale(part).backward()
            else:
                part.backward()
        raws.append(detached)
        terms.append({k: v.detach() for k, v in weighted.terms.items()})
        weights = weighted.weights
        total = part.detach() if total is None else total + part.detach()
    raw = _mean(raws)
    if check_finite:  # every micro-batch's raw losses, one host read for the step, before the weighting observes
        ok = _all_finite_flags([torch.stack([d[k] for d in raws]) for k in raws[0]], max_loss)
        if not all(ok):
            optimizer.zero_grad(set_to_none=True)
            return StepOutput(raw, torch.full((), float("nan"), device=total.device),
                              skipped=[k for k, good in zip(raws[0], ok) if not good])
    weighting.observe(raw)
    windows = weighting.pop_window_records()
    terms = _mean(terms)
    if scaler is not None:
        scaler.unscale_(optimizer)
    if after_backward is not None:
        after_backward()
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if grad_clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    elif check_finite and scaler is None:
        norm = _grad_norm(params)
    if check_finite and scaler is None and not _all_finite_flags([norm])[0]:
        optimizer.zero_grad(set_to_none=True)
        return StepOutput(raw, total, terms, weights, skipped=["gradients"], windows=windows)
    if scaler is not None:
        scaler.step(optimizer)  # skips the update itself when fp16 gradients overflowed
        scaler.update()
    else:
        optimizer.step()
    return StepOutput(raw, total, terms, weights, windows=windows)


@dataclass
class StepPolicy:
    """How the trainer runs: its length and how each optimizer step is taken (``train.*``, ``optimizer.grad_clip``).
    An optimizer step takes ``accumulate`` batches of the loader; an epoch's leftover batches are not used."""

    max_iters: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: str = "off"
    grad_clip: Optional[float] = None
    accumulate: int = 1
    channels_last: bool = False
    guard: NonFiniteGuard = field(default_factory=NonFiniteGuard)


class Trainer:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, weighting: WeightingStrategy, loader,
                 policy: StepPolicy, hooks: Sequence[HookBase] = ()):
        """``loader``: an iterable of ``(images, targets)`` batches whose ``batch_sampler`` has ``len()`` (batches
        per epoch) and ``set_epoch(epoch, start_batch)`` (the position a resumed run continues from)."""
        self.model, self.optimizer, self.weighting = model, optimizer, weighting
        self.loader, self.policy = loader, policy
        self.iters_per_epoch = len(loader.batch_sampler) // policy.accumulate
        if self.iters_per_epoch < 1:
            raise ValueError(f"the sampler has {len(loader.batch_sampler)} batches per epoch, fewer than one "
                             f"optimizer step of {policy.accumulate} accumulated batches")
        self.scaler = torch.amp.GradScaler(policy.device.type) if policy.amp == "fp16" else None
        self.iter = 0
        self.epoch = 0
        self.last: Optional[StepOutput] = None
        self.data_time = 0.0
        self.last_checkpoint: Optional[str] = None  # set by the checkpoint hook when it writes one
        # why train() stopped: None (max_iters reached), "non_finite" (the guard stopped it, weights finite),
        # "interrupted" (a stop signal, after a whole step) or "error" (any other exception); set before the
        # after_train hooks run
        self.stop_reason: Optional[str] = None
        self._stop_request: Optional[str] = None  # a hook's request to end after this step (early stopping)
        self.hooks: List[HookBase] = []
        for h in hooks:
            self.register(h)

    @property
    def max_iters(self) -> int:
        return self.policy.max_iters

    @property
    def guard(self) -> NonFiniteGuard:
        return self.policy.guard

    def register(self, hook: HookBase) -> None:
        hook.trainer = self
        self.hooks.append(hook)

    def _call(self, name: str) -> None:
        for h in self.hooks:
            getattr(h, name)()

    def request_stop(self, reason: str) -> None:
        """End training after the current step, normally (the hooks run; ``stop_reason`` becomes ``reason``)."""
        self._stop_request = reason

    def train(self) -> None:
        self.model.train()
        self._call("before_train")
        self.stop_reason = "error"  # until the loop ends normally, or the guard or a signal stops it
        interrupted = None
        # the handlers stay through the after_train hooks: a second signal during the final checkpoint write
        # stops with the handler's message (the write is atomic: the previous file stays whole)
        with StopSignals() as signals:
            try:
                self._loop(signals)
                self.stop_reason = self._stop_request
            except FloatingPointError:
                if self.guard.enabled:  # the guard kept the weights finite: they may be checkpointed
                    self.stop_reason = "non_finite"
                raise
            except TrainingInterrupted as exc:
                self.stop_reason, interrupted = "interrupted", exc
                raise
            finally:
                # whatever stopped the loop (the end, the guard, a signal, any error), the hooks close the log
                # and the progress bar; the checkpoint hook saves only a state it may save (stop_reason None,
                # "interrupted" or "non_finite"), so after an error the last periodic checkpoint stays as it was;
                # the file named at the stop is the one written now (a write that fails names none)
                self.last_checkpoint = None
                self._after_train()
                if interrupted is not None:
                    interrupted.checkpoint = self.last_checkpoint

    def _after_train(self) -> None:
        """Every hook's ``after_train``, even when one fails: a log that cannot be written (a full disk) must
        not cost the final checkpoint. The first failure is raised when training itself ended well; while
        another exception is on its way (the one to report) it is printed as one line."""
        failure = None
        for h in self.hooks:
            try:
                h.after_train()
            except Exception as exc:
                failure = failure or exc
        if failure is not None and self.stop_reason in (None, "early_stop"):
            raise failure
        if failure is not None:
            print(f"also, while stopping: {type(failure).__name__}: {failure}", file=sys.stderr, flush=True)

    def _batches(self, signals: StopSignals):
        """The loader's batches; a loader failure after a stop request (a scheduler's SIGTERM to the whole job
        also ends the loader workers) is the interruption, between two whole steps."""
        it = iter(self.loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except Exception:
                if signals.requested is None:
                    raise
                raise TrainingInterrupted(signals.requested, self.iter) from None
            yield batch

    def _loop(self, signals: StopSignals) -> None:
        while self.iter < self.max_iters and self._stop_request is None:
            self.epoch, offset = divmod(self.iter, self.iters_per_epoch)
            self.loader.batch_sampler.set_epoch(self.epoch, start_batch=offset * self.policy.accumulate)
            tic = time.perf_counter()
            group: List = []
            for batch in self._batches(signals):
                group.append(batch)
                if len(group) < self.policy.accumulate:
                    continue
                self.data_time = time.perf_counter() - tic
                self.run_step(group)
                group = []
                if self.iter >= self.max_iters or self._stop_request is not None:
                    break
                if any_rank(signals.requested is not None, self.policy.device):  # every rank stops at the same step
                    raise TrainingInterrupted(signals.requested or "a signal to another rank", self.iter)
                tic = time.perf_counter()

    def run_step(self, group: List) -> None:
        """One optimizer step on a list of ``accumulate`` loader batches (one without accumulation). Always a
        list: a pinned-memory loader may hand each batch over as a list itself (``[images, targets]``)."""
        self._call("before_step")
        p = self.policy
        micro = [move_batch(b, p.device, p.channels_last) for b in group]
        self.last = train_step(self.model, micro, self.weighting, self.optimizer, self.scaler, p.amp, p.grad_clip,
                               after_backward=lambda: self._call("after_backward"), check_finite=self.guard.enabled,
                               max_loss=self.guard.max_loss)
        self.iter += 1
        self.guard.count(self.last.skipped, self.iter)
        self._call("after_step")  # the schedule first (a skipped step advances it too), then log, evaluation, save
        self.guard.check(self.last.skipped, self.iter)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]
