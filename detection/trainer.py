"""One training step and a small iteration-based trainer with hooks.

The loop is ``before_train``, then per step ``before_step`` -> forward/weighting/backward ->
``after_backward`` -> optimizer step -> ``after_step``, then ``after_train``. Hooks read and write the
trainer's public attributes (``iter``, ``epoch``, ``last``...). Everything stateful exposes
``state_dict()``; ``Trainer.state_dict()`` collects it for checkpoints.

Non-finite guard (``check_finite``): a step whose raw losses are not all finite is skipped before the
weighting records them (so ALWA's window stays clean; its gradients are discarded), and a step whose gradients are not finite is skipped
before the optimizer (fp16 leaves that to its GradScaler). Skipped steps are counted with the offending
keys (``StepOutput.skipped``); a finite raw loss above ``max_loss`` counts as diverged and is skipped the same
way. After ``max_bad_steps`` consecutive ones, training stops with ``FloatingPointError`` after the
``after_train`` hooks ran (the checkpoint hook keeps the last periodic checkpoint and writes the stopping state
to a file of its own). The guard costs one host read of a few flags per step (two without fp16), all-reduced
so that every rank takes the same decision.

Ctrl-C or SIGTERM (``detection.signals``) stops after the current step: the hooks run, the checkpoint hook writes
that iteration, and ``TrainingInterrupted`` names the file (under DDP the flag is shared by one tiny all-reduce
per step).
"""
from __future__ import annotations

import contextlib
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from detection import dist as dist_utils
from detection.batch import autocast, move_batch
from detection.signals import StopSignals, TrainingInterrupted
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
    extra term of the weighting; they sum to ``total``) and those weights."""

    raw: Dict[str, Tensor]
    total: Tensor
    weighted: Dict[str, Tensor] = field(default_factory=dict)
    weights: Dict[str, Union[float, Tensor]] = field(default_factory=dict)
    skipped: Optional[List[str]] = None  # offending loss keys ("gradients") when the step was skipped


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
        return StepOutput(raw, total, terms, weights, skipped=["gradients"])
    if scaler is not None:
        scaler.step(optimizer)  # skips the update itself when fp16 gradients overflowed
        scaler.update()
    else:
        optimizer.step()
    return StepOutput(raw, total, terms, weights)


class Trainer:
    def __init__(self, model: nn.Module, optimizer, scheduler, weighting: WeightingStrategy, loader, sampler,
                 max_iters: int, device: torch.device, amp: str = "off", grad_clip: Optional[float] = None,
                 hooks: Optional[List[HookBase]] = None, check_finite: bool = True, max_bad_steps: int = 5,
                 channels_last: bool = False, max_loss: Optional[float] = None, accumulate: int = 1):
        self.model, self.optimizer, self.scheduler, self.weighting = model, optimizer, scheduler, weighting
        self.loader, self.sampler = loader, sampler
        self.max_iters, self.device, self.amp, self.grad_clip = max_iters, device, amp, grad_clip
        # an optimizer step takes `accumulate` batches of the sampler; an epoch's leftover batches are not used
        self.accumulate = int(accumulate)
        self.iters_per_epoch = len(sampler) // self.accumulate
        if self.iters_per_epoch < 1:
            raise ValueError(f"the sampler has {len(sampler)} batches per epoch, fewer than one optimizer step of "
                             f"{self.accumulate} accumulated batches")
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
        self.iter = 0
        self.epoch = 0
        self.last: Optional[StepOutput] = None
        self.data_time = 0.0
        self.check_finite, self.max_bad_steps, self.channels_last = check_finite, max_bad_steps, channels_last
        self.max_loss = max_loss  # a finite raw loss above it is skipped as diverged (None: no limit)
        self.last_checkpoint: Optional[str] = None  # set by the checkpoint hook when it writes one
        self.bad_steps = 0  # skipped steps in total
        # why train() stopped: None (max_iters reached), "non_finite" (the guard stopped it, weights finite),
        # "interrupted" (a stop signal, after a whole step) or "error" (any other exception); set before the
        # after_train hooks run
        self.stop_reason: Optional[str] = None
        self._stop_request: Optional[str] = None  # a hook's request to end after this step (early stopping)
        self.consecutive_bad = 0
        self.first_bad = 0  # the iteration of the first step of the current run of skipped steps
        self.hooks: List[HookBase] = []
        for h in hooks or []:
            self.register(h)

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
                if self.check_finite:  # the guard kept the weights finite: they may be checkpointed
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
            self.sampler.set_epoch(self.epoch, start_batch=offset * self.accumulate)
            tic = time.perf_counter()
            group: List = []
            for batch in self._batches(signals):
                group.append(batch)
                if len(group) < self.accumulate:
                    continue
                self.data_time = time.perf_counter() - tic
                self.run_step(group)
                group = []
                if self.iter >= self.max_iters or self._stop_request is not None:
                    break
                if any_rank(signals.requested is not None, self.device):  # every rank stops at the same step
                    raise TrainingInterrupted(signals.requested or "a signal to another rank", self.iter)
                tic = time.perf_counter()

    def run_step(self, group: List) -> None:
        """One optimizer step on a list of ``accumulate`` loader batches (one without accumulation). Always a
        list: a pinned-memory loader may hand each batch over as a list itself (``[images, targets]``)."""
        self._call("before_step")
        micro = [move_batch(b, self.device, self.channels_last) for b in group]
        self.last = train_step(self.model, micro, self.weighting, self.optimizer, self.scaler, self.amp,
                               self.grad_clip, after_backward=lambda: self._call("after_backward"),
                               check_finite=self.check_finite, max_loss=self.max_loss)
        # a skipped step still advances the schedule: the data position and the LR stay in step with the plan
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()" when step 1 was skipped
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.scheduler.step()
        self.iter += 1
        if self.last.skipped:
            self.bad_steps += 1
            self.consecutive_bad += 1
            if self.consecutive_bad == 1:  # it ran on the weights of the iteration before
                self.first_bad = self.iter
        else:
            self.consecutive_bad = 0
        self._call("after_step")
        if self.last.skipped and self.consecutive_bad >= self.max_bad_steps:
            raise FloatingPointError(
                f"{self.consecutive_bad} consecutive steps with non-finite values (iterations {self.first_bad}-"
                f"{self.iter}; at the last: {', '.join(self.last.skipped)}: not finite, or above train.max_loss). "
                f"Lower the learning rate, check the data, or raise train.max_bad_steps")

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        model = self.model.module if hasattr(self.model, "module") else self.model
        state = {"iter": self.iter, "model": model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "weighting": self.weighting.state_dict(),
                 "bad_steps": self.bad_steps}
        hooks = {name: s for name, s in ((type(h).__name__, h.state_dict()) for h in self.hooks) if s}
        if hooks:
            state["hooks"] = hooks
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        model = self.model.module if hasattr(self.model, "module") else self.model
        model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.weighting.load_state_dict(state["weighting"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.iter = int(state["iter"])
        self.bad_steps = int(state.get("bad_steps", 0))
        for h in self.hooks:
            if type(h).__name__ in state.get("hooks", {}):
                h.load_state_dict(state["hooks"][type(h).__name__])
