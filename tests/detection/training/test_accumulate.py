"""train.accumulate: N micro-batches of b images give the step of one batch of N * b (same normalisers), and
the weighting sees one step's mean raw losses."""
import copy

import pytest
import torch

from detection import builders, engine
from detection.config.loader import config_from_tree
from detection.config.schema import Config
from detection.training.trainer import train_step
from losses.weighting import ALWA, Fixed


def tiny_model():
    torch.manual_seed(0)
    tree = {"model": {"type": "retinanet", "backbone": {"name": "resnet18", "pretrained": None, "norm": "bn",
                                                        "frozen_stages": -1},
                      "fpn": {"out_channels": 16}, "anchors": {"octave_base_scale": 2},
                      "head": {"feat_channels": 16, "num_convs": 1, "norm": "gn"}}}
    return builders.build_model(config_from_tree(Config, tree, {"": "test"}), 3)


def batch():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 64, generator=g)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[20.0, 10.0, 60.0, 50.0], [2.0, 2.0, 12.0, 12.0]]), "labels": torch.tensor([0, 2])}]
    return images, targets


@pytest.mark.parametrize("make", [lambda: Fixed({"loss_cls": 0.7}), lambda: ALWA(variant=2, interval=3)])
def test_two_micro_batches_equal_one_double_batch(make):
    model_a = tiny_model()
    model_b = copy.deepcopy(model_a)
    images, targets = batch()
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1)
    w_a, w_b = make(), make()
    # one batch of 2b images = the b images twice: the same BN statistics and loss normalisers as each half
    out_a = train_step(model_a, [(images, targets), (images, targets)], w_a, opt_a)
    out_b = train_step(model_b, [(torch.cat([images, images]), targets + targets)], w_b, opt_b)
    for (name, pa), pb in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.allclose(pa, pb, rtol=1e-4, atol=1e-6), name
    assert torch.allclose(out_a.total, out_b.total, rtol=1e-5)
    assert all(torch.allclose(out_a.raw[k], out_b.raw[k], rtol=1e-5) for k in out_b.raw)
    sa, sb = w_a.state_dict(), w_b.state_dict()
    if "window" in sa:  # ALWA recorded one row (one optimizer step), equal to the double batch's
        assert sa["count"] == sb["count"] == 1 and sa["steps_seen"] == 1
        assert torch.allclose(sa["window"], sb["window"], rtol=1e-5)


@pytest.mark.slow
def test_trainer_takes_accumulate_batches_per_step_and_scales_the_lr(tmp_path, write_tiny_retinanet, capsys):
    cfg_path = write_tiny_retinanet(tmp_path)
    overrides = ["train.accumulate=3", "train.max_iters=2", "train.eval_after=false", "train.progress=false",
                 "train.log_interval=1", "data.batch_size=2", "optimizer.scale_lr=true"]
    cfg = engine.load(cfg_path, overrides)
    builders.prepare_data(cfg.data)
    trainer = engine.build_trainer(cfg, str(tmp_path / "w"), torch.device("cpu"))
    assert trainer.iters_per_epoch == 6 // 3  # 12 images / 2 per batch = 6 batches -> 2 optimizer steps
    _, lr = builders.build_optimizer(cfg, trainer.model)
    assert lr == pytest.approx(0.001 * 2 * 3 / 4)  # base lr x (2 images x 3 micro-batches) / base batch 4
    seen = []
    trainer.weighting.observe = lambda raw, _orig=trainer.weighting.observe: (seen.append(raw), _orig(raw))
    trainer.train()
    assert trainer.iter == 2 and len(seen) == 2  # the weighting observed once per optimizer step
    assert "x 3 accumulated" in capsys.readouterr().out
