"""The trainer on a tiny in-memory overfit set: the loss falls, hooks fire in order, state round-trips."""
import json
import math

import pytest
import torch

from detection.checkpoint.state import TrainingState
from detection.training.hooks import LRSchedule, MetricsLogger, keep_records_upto
from detection.training.trainer import HookBase, StepPolicy, Trainer, train_step
from losses.weighting import ALWA, Fixed
from models.anchors import AnchorGenerator
from models.assigner import MaxIoUAssigner
from models.backbone import BackboneFPN, build_body
from models.box_coder import DeltaBoxCoder
from models.box_loss import BoxRegressionLoss
from models.head_loss import DenseHeadLoss
from models.retinanet import RetinaHead, RetinaNet


class ListSampler:
    """Stands in for GroupedBatchSampler: a fixed number of batches per epoch, resumable."""

    def __init__(self, n):
        self.n, self.start = n, 0

    def set_epoch(self, epoch, start_batch=0):
        self.start = start_batch

    def __len__(self):
        return self.n


class Loader:
    def __init__(self, batches, sampler):
        self.batches, self.batch_sampler = batches, sampler

    def __iter__(self):
        return iter(self.batches[self.batch_sampler.start:])


def make_trainer(max_iters, weighting, hooks=(), amp="off", size=64):
    torch.manual_seed(0)
    bb = BackboneFPN(build_body("resnet18", "bn", -1, None), 16, [3, 4, 5], "p6p7")
    loss = DenseHeadLoss(MaxIoUAssigner(), BoxRegressionLoss("l1", DeltaBoxCoder(), 0.11))
    model = RetinaNet(bb, RetinaHead(16, 2, 9, 16, 1, norm="gn"), AnchorGenerator(octave_base_scale=2), loss)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, size, size, generator=g)
    targets = [{"boxes": torch.tensor([[8.0, 8, 40, 48]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]  # one empty image
    sampler = ListSampler(2)
    loader = Loader([(images, targets), (images.flip(-1), targets)], sampler)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    # a schedule that moves after step 4: a round trip that does not restore it continues at the wrong rate
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0 if it < 4 else 0.9)
    trainer = Trainer(model, opt, weighting, loader, StepPolicy(max_iters, amp=amp), [LRSchedule(sched), *hooks])
    trainer.state = TrainingState(sched)  # for the round trips below
    return trainer


class Recorder(HookBase):
    def __init__(self):
        self.events, self.totals = [], []

    def before_train(self):
        self.events.append("before_train")

    def before_step(self):
        self.events.append("before_step")

    def after_backward(self):
        # gradients exist, the optimizer has not stepped yet
        assert any(p.grad is not None for p in self.trainer.model.parameters())
        self.events.append("after_backward")

    def after_step(self):
        self.events.append("after_step")
        self.totals.append(float(self.trainer.last.total))

    def after_train(self):
        self.events.append("after_train")


def test_loss_falls_on_tiny_overfit_set():
    rec = Recorder()
    trainer = make_trainer(30, Fixed(), [rec])
    trainer.train()
    assert trainer.iter == 30 and trainer.epoch == 14
    first, last = sum(rec.totals[:4]) / 4, sum(rec.totals[-4:]) / 4
    assert last < 0.5 * first, (first, last)


def test_hook_order():
    rec = Recorder()
    make_trainer(2, Fixed(), [rec]).train()
    step = ["before_step", "after_backward", "after_step"]
    assert rec.events == ["before_train"] + step * 2 + ["after_train"]


def test_state_dict_round_trip_continues_identically():
    ref = make_trainer(6, ALWA(interval=2))
    ref.train()
    a = make_trainer(3, ALWA(interval=2))
    a.train()
    state = a.state.capture(a)
    b = make_trainer(6, ALWA(interval=2))
    b.state.restore(b, state)
    assert b.iter == 3
    b.train()
    for p, q in zip(ref.model.parameters(), b.model.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    assert b.weighting.lambda_cls == ref.weighting.lambda_cls


def test_metrics_logger_records(tmp_path):
    import json

    path = tmp_path / "m.jsonl"
    make_trainer(4, Fixed({"loss_cls": 0.5}), [MetricsLogger(str(path), interval=2, progress=False)]).train()
    rows = [json.loads(line) for line in open(path)]
    assert [r["iter"] for r in rows] == [2, 4]
    for r in rows:
        assert r["loss"] > 0 and set(r["weighted"]) == {"loss_cls", "loss_bbox"}
        assert r["weights"] == {"loss_cls": 0.5, "loss_bbox": 1.0}
        assert r["weighted"]["loss_cls"] == pytest.approx(0.5 * r["loss_cls"], rel=1e-6)  # the mean of 0.5 x L
        assert r["weighted"]["loss_bbox"] == pytest.approx(r["loss_bbox"], rel=1e-6)
        assert r["loss"] == pytest.approx(sum(r["weighted"].values()), rel=1e-6)


def test_metrics_log_continues_from_the_resumed_iteration(tmp_path, capsys):
    import json

    path = tmp_path / "m.jsonl"
    first = make_trainer(4, ALWA(interval=2), [MetricsLogger(str(path), interval=2, progress=False)])
    first.train()
    with open(path, "a") as f:  # what a run killed after its checkpoint at 4 leaves: iteration 6, a cut line
        f.write(json.dumps({"iter": 6, "loss": -1.0}) + "\n" + '{"iter": 8, "lo')
    resumed = make_trainer(6, ALWA(interval=2), [MetricsLogger(str(path), interval=2, progress=False)])
    resumed.state.restore(resumed, first.state.capture(first))
    resumed.train()
    rows = [json.loads(line) for line in open(path)]
    assert [r["iter"] for r in rows] == [2, 4, 6] and rows[2]["loss"] > 0
    assert "2 record(s) after iteration 4" in capsys.readouterr().out
    with open(path, "w") as f:  # a whole record whose newline was never written is kept, and terminated
        f.write(json.dumps({"iter": 2, "loss": 1.0}))
    assert keep_records_upto(str(path), 2) == 0
    assert open(path).read() == json.dumps({"iter": 2, "loss": 1.0}) + "\n"
    # starting from scratch in the same work dir begins a new log
    make_trainer(2, Fixed(), [MetricsLogger(str(path), interval=1, progress=False)]).train()
    assert [json.loads(line)["iter"] for line in open(path)] == [1, 2]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_and_resumes_its_scaler(amp):
    # 128 px, not 64: at 64 px P7 is computed from a 1 x 1 map, and oneDNN's bf16 weight gradient of a
    # stride-2 3 x 3 conv on a 1 x 1 input is non-finite in about 1 call in 10 (torch 2.15, CPU; measured in
    # isolation). The trainer's guard skips such steps and counts them, which this test would misread.
    trainer = make_trainer(3, ALWA(interval=2), amp=amp, size=128)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    seen = []
    trainer.model.head.cls_out.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    trainer.train()
    # the convolutions ran in autocast: every call of the head's last conv (5 levels x 3 steps)
    assert len(seen) == 15 and set(seen) == {{"bf16": torch.bfloat16, "fp16": torch.float16}[amp]}
    assert torch.isfinite(trainer.last.total) and trainer.last.total.dtype == torch.float32
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert trainer.guard.bad_steps == 0
    state = trainer.state.capture(trainer)
    assert ("scaler" in state) == (amp == "fp16")  # fp16 alone needs loss scaling
    if amp == "fp16":
        trainer.scaler.update(new_scale=1024.0)
        other = make_trainer(3, ALWA(interval=2), amp=amp, size=128)
        other.state.restore(other, trainer.state.capture(trainer))
        assert other.scaler.get_scale() == 1024.0


def test_non_finite_loss_stops_with_the_key(tmp_path):
    import pytest

    class Poison(HookBase):
        def after_step(self):
            self.trainer.last.raw["loss_bbox"] = torch.tensor(float("nan"))

    logger = MetricsLogger(str(tmp_path / "m.jsonl"), interval=1, progress=False)
    trainer = make_trainer(3, Fixed(), [Poison(), logger])
    with pytest.raises(FloatingPointError, match="iteration 1: .*loss_bbox"):
        trainer.train()


def test_metrics_logger_reads_the_host_only_at_log_points(tmp_path, host_reads):
    from types import SimpleNamespace

    from detection.training.trainer import StepOutput
    from losses.weighting.multitask import UncertaintyWeighting

    # learned weights live on the device: reading them per step would synchronise a GPU every step
    weighting = UncertaintyWeighting(["loss_cls", "loss_bbox"])
    logger = MetricsLogger(str(tmp_path / "m.jsonl"), interval=3, progress=False)
    logger.trainer = SimpleNamespace(max_iters=6, iter=0, epoch=0, lr=0.1, data_time=0.0, weighting=weighting,
                                     stop_reason=None)
    logger.before_train()
    raw = {"loss_cls": torch.tensor(2.0), "loss_bbox": torch.tensor(1.0)}
    calls = host_reads()
    for it in (1, 2):
        logger.trainer.iter = it
        logger.trainer.last = StepOutput(raw, weighting(raw).detach())
        logger.after_step()
    assert calls == []
    logger.trainer.iter = 3
    logger.after_step()
    assert calls  # the log point reads once
    logger.after_train()


def test_metrics_logger_std_over_the_interval(tmp_path):
    import json
    import statistics

    class Values(HookBase):
        def __init__(self):
            self.raw, self.weighted = [], []

        def after_step(self):
            out = self.trainer.last
            self.raw.append(out.raw["loss_cls"].item())
            self.weighted.append(self.trainer.weighting.weighted(out.raw)["loss_cls"].item())

    values = Values()
    path = tmp_path / "m.jsonl"
    make_trainer(5, ALWA(interval=2), [values, MetricsLogger(str(path), interval=5, progress=False)]).train()
    row = json.loads(open(path).readline())
    assert abs(row["loss_cls"] - statistics.mean(values.raw)) < 1e-6
    assert abs(row["std"]["loss_cls"] - statistics.stdev(values.raw)) < 1e-4
    assert abs(row["weighted_std"]["loss_cls"] - statistics.stdev(values.weighted)) < 1e-4


class NaNAt(torch.nn.Module):
    """Wraps a detector; makes ``key`` NaN (or the gradients NaN with a finite loss) at the given calls."""

    def __init__(self, model, calls, key="loss_bbox", grads=False):
        super().__init__()
        self.model, self.calls, self.key, self.grads, self.n = model, set(calls), key, grads, 0

    def forward(self, images, targets):
        losses = self.model(images, targets)
        self.n += 1
        if self.n in self.calls:
            if self.grads:  # d sqrt(u)/du = inf at u = 0, times du/dp = 0: NaN gradients, finite loss
                losses[self.key] = losses[self.key] + torch.sqrt(self.model.head.cls_out.bias.sum() * 0.0)
            else:
                losses[self.key] = losses[self.key] * float("nan")
        return losses


def guarded(max_iters, calls, tmp_path, grads=False, max_bad_steps=5):
    import os

    from detection.training.hooks import CheckpointHook

    trainer = make_trainer(max_iters, ALWA(interval=2), [MetricsLogger(str(tmp_path / "m.jsonl"), interval=2,
                                                                        progress=False)])
    trainer.register(CheckpointHook(str(tmp_path / "ckpt"), 100, trainer.state))
    trainer.model = NaNAt(trainer.model, calls, grads=grads)
    trainer.guard.max_bad_steps = max_bad_steps
    return trainer, os.path.join(str(tmp_path / "ckpt"), "last.pth")


def test_non_finite_loss_step_is_skipped_and_counted(tmp_path):
    import json

    trainer, _ = guarded(4, {2}, tmp_path)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert trainer.iter == 4 and trainer.guard.bad_steps == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    # ALWA's window never saw the NaN: λ is finite
    assert all(v == v for v in trainer.weighting.weights.values())
    rows = [json.loads(line) for line in open(tmp_path / "m.jsonl")]
    assert rows[0]["skipped_steps"] == 1 and rows[0]["skipped_keys"] == {"loss_bbox": 1}
    assert "skipped_steps" not in rows[1] and all(v == v for v in rows[0]["weighted"].values())


def test_a_skipped_step_advances_the_schedule_before_later_hooks_run(tmp_path):
    """Step 4 is skipped (NaN loss); the schedule (factor 0.9 from iteration 4 on) still advances, and a hook
    registered after LRSchedule sees the rate of that iteration on every step."""
    trainer, _ = guarded(5, {4}, tmp_path)
    seen = []

    class Rate(HookBase):
        def after_step(self):
            seen.append((self.trainer.iter, self.trainer.lr, bool(self.trainer.last.skipped)))

    trainer.register(Rate())
    trainer.train()
    assert seen == [(1, 3e-3, False), (2, 3e-3, False), (3, 3e-3, False), (4, pytest.approx(2.7e-3), True),
                    (5, pytest.approx(2.7e-3), False)]


def test_skipped_step_leaves_weights_and_optimizer_untouched(tmp_path):
    trainer, _ = guarded(1, {1}, tmp_path)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    # parameters unchanged (BatchNorm buffers do move: the forward pass ran)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert trainer.optimizer.state_dict()["state"] == {}


def test_non_finite_gradients_are_skipped(tmp_path):
    trainer, _ = guarded(3, {2}, tmp_path, grads=True)
    trainer.train()
    assert trainer.guard.bad_steps == 1 and trainer.last.skipped is None
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_consecutive_bad_steps_stop_after_a_checkpoint(tmp_path):
    import os

    import pytest

    from detection.checkpoint.io import load_checkpoint

    trainer, ckpt = guarded(10, {3, 4, 5, 6}, tmp_path, max_bad_steps=3)
    with pytest.raises(FloatingPointError, match="3 consecutive steps .*iterations 3-5; at the last: loss_bbox"):
        trainer.train()
    # the stopping state has a file of its own: it never replaces last.pth, the last periodic checkpoint (none
    # yet here, checkpoint interval 100)
    assert not os.path.exists(ckpt)
    state = load_checkpoint(os.path.join(os.path.dirname(ckpt), "nonfinite_iter_0000005.pth"))
    assert state["iter"] == 5 and state["bad_steps"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


class ScriptedLosses(torch.nn.Module):
    """Returns scripted raw losses (times a parameter that lr 0 keeps at 1), one entry per call."""

    def __init__(self, cls, reg):
        super().__init__()
        self.p = torch.nn.Parameter(torch.ones(()))
        self.cls, self.reg, self.t = cls, reg, 0

    def forward(self, images, targets):
        i, self.t = self.t, self.t + 1
        return {"loss_cls": self.p * self.cls[i], "loss_bbox": self.p * self.reg[i]}


def scripted_trainer(weighting, n, hooks):
    model = ScriptedLosses([1.0, 3.0, 1.0, 3.0] + [1.0, 2.0] * n, [1.0, 2.0] * n)
    sampler = ListSampler(n)
    batch = (torch.zeros(1, 3, 8, 8), [{}])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    return Trainer(model, opt, weighting, Loader([batch] * n, sampler), StepPolicy(n), hooks)


def test_logged_weighted_losses_are_the_ones_backpropagated_at_window_boundaries(tmp_path):
    """One record per step, ALWA_2 with C = 4 on cls [1, 3, 1, 3, 1, 2, 1, 2, ...], reg [1, 2, ...]: the first
    window's stds are sqrt(4/3) and sqrt(1/3), so λcls becomes 0.5 after step 4 and stays (0.5 * sqrt(1/3) <
    sqrt(1/3) later); step 4 itself is weighted with λ 1 and must be logged so (a weighting recomputed after
    the step would log 0.5 * 3 there)."""
    import json

    path = tmp_path / "m.jsonl"
    scripted_trainer(ALWA(variant=2, interval=4), 12, [MetricsLogger(str(path), interval=1, progress=False)]).train()
    rows = [json.loads(line) for line in open(path)]
    assert [r["iter"] for r in rows] == list(range(1, 13))
    assert [r["weights"]["loss_cls"] for r in rows] == [1.0] * 4 + [0.5] * 8
    for r in rows:
        assert r["loss"] == pytest.approx(sum(r["weighted"].values()), abs=1e-6)
        assert r["weighted"]["loss_cls"] == pytest.approx(r["weights"]["loss_cls"] * r["loss_cls"], abs=1e-6)
        assert r["weighted"]["loss_bbox"] == pytest.approx(r["loss_bbox"], abs=1e-6)
    assert rows[3]["weighted"]["loss_cls"] == pytest.approx(3.0) and rows[3]["loss"] == pytest.approx(5.0)


def test_logged_terms_of_learned_weights_sum_to_the_total(tmp_path):
    import json

    from losses.weighting.multitask import UncertaintyWeighting

    path = tmp_path / "m.jsonl"
    weighting = UncertaintyWeighting(["loss_cls", "loss_bbox"], init_log_var=0.5)
    scripted_trainer(weighting, 4, [MetricsLogger(str(path), interval=1, progress=False)]).train()
    rows = [json.loads(line) for line in open(path)]
    assert [r["iter"] for r in rows] == [1, 2, 3, 4]  # the checks below cover every step
    for r in rows:
        assert set(r["weighted"]) == {"loss_cls", "loss_bbox", "log_var/loss_cls", "log_var/loss_bbox"}
        assert r["loss"] == pytest.approx(sum(r["weighted"].values()), abs=1e-6)
        assert r["weights"]["loss_cls"] == pytest.approx(math.exp(-0.5))  # lr 0: s stays at 0.5
        assert r["weighted"]["log_var/loss_cls"] == pytest.approx(0.5)


def test_an_error_mid_run_still_closes_the_log_and_leaves_the_last_checkpoint(tmp_path):
    """after_train hooks run in ``finally``: an exception in step 3 closes the metrics file and the progress
    bar, and the periodic checkpoint of iteration 2 is not overwritten with the interrupted state."""
    import os

    from detection.checkpoint.io import load_checkpoint
    from detection.training.hooks import CheckpointHook

    logger = MetricsLogger(str(tmp_path / "m.jsonl"), 1, progress=True)

    class Boom(HookBase):
        def before_step(self):
            if self.trainer.iter == 2:
                raise RuntimeError("data went away")

    trainer = make_trainer(4, Fixed(), hooks=[logger, Boom()])
    trainer.register(CheckpointHook(str(tmp_path / "ckpt"), 2, trainer.state))
    with pytest.raises(RuntimeError, match="data went away"):
        trainer.train()
    assert trainer.stop_reason == "error"
    assert logger._file.closed and logger._bar.disable  # tqdm marks a closed bar disabled
    assert load_checkpoint(os.path.join(tmp_path, "ckpt", "last.pth"))["iter"] == 2
    assert [json.loads(line)["iter"] for line in open(tmp_path / "m.jsonl")] == [1, 2]


def test_batches_handed_over_as_lists_are_one_batch():
    """A pinned-memory DataLoader of older torch turns each (images, targets) tuple into a list: it is still one
    batch, not two micro-batches (which failed on the first step)."""
    trainer = make_trainer(2, Fixed())
    trainer.loader.batches = [list(b) for b in trainer.loader.batches]
    trainer.train()
    assert trainer.iter == 2 and trainer.last.skipped is None


def test_a_non_finite_micro_batch_skips_the_whole_accumulated_step():
    from losses.weighting import ALWA

    class Losses(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, images, targets):
            return {"loss_cls": self.w * images.sum(), "loss_bbox": self.w * 2}

    model = Losses()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    alwa = ALWA(variant=2, interval=3)
    good, bad = torch.ones(1, 3, 2, 2), torch.full((1, 3, 2, 2), float("nan"))
    out = train_step(model, [(good, [{}]), (bad, [{}])], alwa, opt)
    assert out.skipped == ["loss_cls"] and model.w.item() == 1.0 and model.w.grad is None
    assert alwa.state_dict()["count"] == 0  # the weighting observed nothing
    out = train_step(model, [(good, [{}]), (good, [{}])], alwa, opt)
    assert out.skipped is None and alwa.state_dict()["count"] == 1 and model.w.item() < 1.0


def test_a_finite_loss_that_explodes_counts_as_diverged(tmp_path):
    """A loss of 1e7 trained on to exit 0; above train.max_loss it is skipped like a non-finite one."""
    from detection.training.trainer import train_step
    from losses.weighting import Fixed

    p = torch.nn.Parameter(torch.ones(()))
    opt = torch.optim.SGD([p], lr=0.1)
    model = lambda images, targets: {"loss_cls": p * 1e7, "loss_bbox": p}  # noqa: E731
    out = train_step(model, [(torch.zeros(1, 3, 8, 8), [{}])], Fixed(), opt, max_loss=1e4)
    assert out.skipped == ["loss_cls"] and p.item() == 1.0
    assert train_step(model, [(torch.zeros(1, 3, 8, 8), [{}])], Fixed(), opt).skipped is None


def test_a_loader_that_fails_after_a_stop_request_is_the_interruption():
    """A scheduler's SIGTERM to the whole job also ends the loader workers: the trainer stops as interrupted."""
    from detection.runtime.signals import StopSignals, TrainingInterrupted
    from detection.training.trainer import Trainer

    class Dying:
        def __iter__(self):
            yield "batch"
            raise RuntimeError("DataLoader worker (pid 7) exited unexpectedly")

    trainer = Trainer.__new__(Trainer)
    trainer.loader, trainer.iter = Dying(), 4
    signals = StopSignals()
    batches = trainer._batches(signals)
    assert next(batches) == "batch"
    signals.requested = "SIGTERM"
    with pytest.raises(TrainingInterrupted, match="interrupted by SIGTERM at iteration 4"):
        next(batches)
    fresh = trainer._batches(StopSignals())
    next(fresh)
    with pytest.raises(RuntimeError, match="exited unexpectedly"):  # without a stop request: the error itself
        next(fresh)
