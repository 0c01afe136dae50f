"""Every weighting scheme is a config switch: the builder maps keys to the strategy and its settings."""
import math
import os

import pytest
import torch

from detection import builders, engine
from losses.weighting.level import AVW, RLO
from losses.weighting.multitask import DWA, UncertaintyWeighting
from losses.weighting import ALWA, Fixed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "configs/demo/retinanet_shapes_alwa2.yaml")


def load(*overrides):
    return engine.load(DEMO, list(overrides))


def test_alwa_from_the_demo_config():
    w = builders.build_weighting(load())
    assert isinstance(w, ALWA) and (w.variant, w.interval) == (2, 100)


def test_fixed_weights():
    w = builders.build_weighting(load("weighting.type=fixed", "weighting.weights.loss_bbox=2.5"))
    assert isinstance(w, Fixed) and w.weights == {"loss_bbox": 2.5}


def test_avw_and_rlo_default_to_retinanet_level_groups():
    cfg = load("weighting.type=avw", "model.head.loss_per_level=true", "weighting.interval=50", "weighting.w_max=3")
    w = builders.build_weighting(cfg)
    assert isinstance(w, AVW) and w.interval == 50
    assert w.groups == [[f"loss_cls_p{i}" for i in range(3, 8)], [f"loss_bbox_p{i}" for i in range(3, 8)]]
    rlo = builders.build_weighting(load("weighting.type=rlo", "model.head.loss_per_level=true",
                                        "weighting.schemes=[equal,avw]"))
    assert isinstance(rlo, RLO) and len(rlo.policy) == 2


def test_per_level_scheme_without_per_level_losses_is_an_error():
    with pytest.raises(ValueError, match="loss_per_level"):
        builders.build_weighting(load("weighting.type=avw"))


def test_multitask_baselines_and_learnable_parameters_in_the_optimizer():
    cfg = load("weighting.type=uncertainty", "weighting.init_log_var=0.5")
    w = builders.build_weighting(cfg)
    assert isinstance(w, UncertaintyWeighting)
    params = list(w.parameters())
    assert len(params) == 2 and all(math.isclose(p.item(), 0.5) for p in params)
    model = torch.nn.Linear(2, 2)
    opt, _ = builders.build_optimizer(cfg, model, 1, w)
    in_opt = [p for g in opt.param_groups for p in g["params"]]
    assert all(any(p is q for q in in_opt) for p in params)
    assert opt.param_groups[-1]["weight_decay"] == 0.0
    dwa = builders.build_weighting(load("weighting.type=dwa", "weighting.keys=[loss_cls,loss_bbox]"))
    assert isinstance(dwa, DWA)


def test_unknown_scheme_is_a_config_error():
    from detection.config.loader import ConfigError

    with pytest.raises(ConfigError, match="weighting.type"):
        load("weighting.type=alwa3")
