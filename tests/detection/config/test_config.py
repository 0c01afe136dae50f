"""Tests for detection.config.loader, using a small toy schema defined here."""

import textwrap
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Tuple

import pytest
import yaml

from detection.config.loader import (
    ConfigError, apply_overrides, build_config, config_to_dict, get_by_path,
    load_config, load_yaml_tree, save_config,
)


# ------------------------------------------------------------- toy schema

@dataclass
class BackboneCfg:
    name: str = "resnet50"
    depth: int = 50
    frozen_stages: Optional[int] = None
    norm: Literal["bn", "gn", "none"] = "bn"


@dataclass
class ModelCfg:
    num_classes: int  # required
    backbone: BackboneCfg = field(default_factory=BackboneCfg)
    anchor_sizes: Tuple[int, ...] = (32, 64)
    input_size: Tuple[int, int] = (512, 512)
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DataCfg:
    classes: List[str] = field(default_factory=list)
    root: str = "data"
    flip: bool = True
    mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass
class TrainCfg:
    lr: float = 0.01
    max_iters: int = 1000
    warmup_iters: int = 0
    milestones: list[int] = field(default_factory=list)
    loss_weights: Dict[str, float] = field(default_factory=dict)
    amp: bool = False

    def __post_init__(self):
        if self.warmup_iters > self.max_iters:
            raise ValueError("warmup_iters must not exceed max_iters")


@dataclass
class WeightingCfg:
    cls_keys: List[str] = field(default_factory=list)


@dataclass
class Cfg:
    model: ModelCfg  # required section
    data: DataCfg = field(default_factory=DataCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    seed: Optional[int] = None
    weighting: Optional[WeightingCfg] = None


def write(tmp_path, name, text):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def errors_of(tmp_path, text, overrides=()):
    path = write(tmp_path, "cfg.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(Cfg, path, overrides)
    return path, str(info.value)


@pytest.fixture
def chain(tmp_path):
    """base_model + base_train <- mid <- sub/child (two levels, list of bases)."""
    paths = {
        "model": write(tmp_path, "base_model.yaml", """
            model:
              num_classes: 80
              backbone: {name: resnet50, depth: 50, norm: gn}
              anchor_sizes: [32, 64, 128]
            """),
        "train": write(tmp_path, "base_train.yaml", """
            train: {lr: 0.02, max_iters: 1000, milestones: [600, 800]}
            data: {classes: [a, b, c]}
            """),
        "mid": write(tmp_path, "mid.yaml", """
            _base_: [base_model.yaml, base_train.yaml]
            model:
              backbone: {depth: 101}
            train: {milestones: [700]}
            """),
        "child": write(tmp_path, "sub/child.yaml", """
            _base_: ../mid.yaml
            model: {num_classes: 3}
            train: {lr: 0.01}
            data: {classes: [x]}
            """),
    }
    return paths


# ------------------------------------------------------------ inheritance

def test_two_level_inheritance_with_list_of_bases(chain):
    tree, _ = load_yaml_tree(chain["child"])
    assert tree == {
        "model": {
            "num_classes": 3,
            "backbone": {"name": "resnet50", "depth": 101, "norm": "gn"},
            "anchor_sizes": [32, 64, 128],
        },
        "train": {"lr": 0.01, "max_iters": 1000, "milestones": [700]},
        "data": {"classes": ["x"]},
    }
    cfg = load_config(Cfg, chain["child"])
    assert cfg.model.backbone == BackboneCfg(name="resnet50", depth=101, norm="gn")
    assert cfg.train.milestones == [700]  # replaced, not [600, 800, 700]
    assert cfg.data.classes == ["x"]


def test_later_base_in_list_wins_and_child_wins_over_bases(tmp_path):
    write(tmp_path, "a.yaml", "train: {lr: 0.1, max_iters: 10}\n")
    write(tmp_path, "b.yaml", "train: {lr: 0.2}\n")
    child = write(tmp_path, "c.yaml", "_base_: [a.yaml, b.yaml]\ntrain: {max_iters: 30}\n")
    tree, _ = load_yaml_tree(child)
    assert tree == {"train": {"lr": 0.2, "max_iters": 30}}


def test_delete_replaces_base_mapping(chain, tmp_path):
    child = write(tmp_path, "del.yaml", """
        _base_: mid.yaml
        model:
          backbone: {_delete_: true, name: vgg}
        """)
    tree, prov = load_yaml_tree(child)
    assert tree["model"]["backbone"] == {"name": "vgg"}
    assert "model.backbone.depth" not in prov and "model.backbone.norm" not in prov
    assert prov["model.backbone"] == child
    cfg = load_config(Cfg, child)
    assert cfg.model.backbone == BackboneCfg(name="vgg", depth=50, norm="bn")
    assert cfg.model.num_classes == 80


def test_provenance_tracks_file_that_last_set_each_key(chain):
    _, prov = load_yaml_tree(chain["child"])
    assert prov["model.backbone.name"] == chain["model"]
    assert prov["model.backbone.depth"] == chain["mid"]
    assert prov["model.num_classes"] == chain["child"]
    assert prov["train.max_iters"] == chain["train"]
    assert prov["train.milestones"] == chain["mid"]
    assert prov[""] == chain["child"]


def test_scalar_replacing_mapping_drops_stale_provenance(chain, tmp_path):
    child = write(tmp_path, "null.yaml", "_base_: mid.yaml\nmodel: {backbone: null}\n")
    tree, prov = load_yaml_tree(child)
    assert tree["model"]["backbone"] is None
    assert prov["model.backbone"] == child
    assert not [k for k in prov if k.startswith("model.backbone.")]
    assert load_config(Cfg, child).model.backbone == BackboneCfg()  # null section -> defaults


def test_one_e_minus_three_is_a_float(tmp_path):
    path = write(tmp_path, "f.yaml", "model: {num_classes: 1}\ntrain: {lr: 1e-3}\n")
    assert load_config(Cfg, path).train.lr == 0.001


# --------------------------------------------------------------- overrides

def test_overrides(chain):
    tree, prov = load_yaml_tree(chain["child"])
    apply_overrides(tree, prov, [
        "train.max_iters=100", "train.lr=0.5", "model.backbone.name=resnet18",
        "data.classes=[a,b]", "weighting.cls_keys=[loss_cls]", "seed=7",
    ])
    assert tree["train"] == {"lr": 0.5, "max_iters": 100, "milestones": [700]}
    assert tree["model"]["backbone"]["name"] == "resnet18"
    assert tree["data"]["classes"] == ["a", "b"]
    assert tree["weighting"] == {"cls_keys": ["loss_cls"]}
    assert prov["train.max_iters"] == "--set"
    assert prov["weighting.cls_keys"] == "--set"
    assert prov["train.milestones"] == chain["mid"]
    cfg = build_config(Cfg, tree, prov)
    assert cfg.weighting == WeightingCfg(cls_keys=["loss_cls"])
    assert (cfg.train.lr, cfg.train.max_iters, cfg.seed) == (0.5, 100, 7)


def test_override_int_for_float_and_null(chain):
    cfg = load_config(Cfg, chain["child"], ["train.lr=1", "model.backbone.frozen_stages=null"])
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float
    assert cfg.model.backbone.frozen_stages is None


@pytest.mark.parametrize("bad", ["train.max_iters", "=3", "train..lr=1"])
def test_malformed_override(bad):
    with pytest.raises(ValueError) as info:
        apply_overrides({}, {}, [bad])
    assert str(info.value) == f"malformed override '{bad}': expected KEY=VALUE, e.g. --set train.max_iters=100"


def test_error_from_override_names_set(chain):
    with pytest.raises(ConfigError) as info:
        load_config(Cfg, chain["child"], ["train.lr=abc"])
    assert str(info.value) == "key 'train.lr' (from --set) expects float, got str 'abc'"


# ------------------------------------------------------------ validation

@pytest.mark.parametrize("text,expected", [
    # a misspelled key, nested or at the top, names the closest valid key; an unrelated one lists them all
    ("model: {num_classes: 1}\ntrain: {max_iter: 5}\n",
     "unknown key 'train.max_iter' (from {path}); did you mean 'train.max_iters'?"),
    ("model: {num_classes: 1, backbone: {nmae: r18}}\n",
     "unknown key 'model.backbone.nmae' (from {path}); did you mean 'model.backbone.name'?"),
    ("model: {num_classes: 1}\ntrian: {lr: 0.1}\n", "unknown key 'trian' (from {path}); did you mean 'train'?"),
    ("model: {num_classes: 1}\nzzz: 1\n",
     "unknown key 'zzz' (from {path}); valid keys are: model, data, train, seed, weighting"),
    # a required key or section that is missing
    ("model: {backbone: {depth: 18}}\n", "missing required key 'model.num_classes' (from {path})"),
    ("train: {lr: 0.1}\n", "missing required key 'model' (from {path})"),
    # an optional field still has a type
    ("model: {num_classes: 1}\nseed: x\n", "key 'seed' (from {path}) expects int, got str 'x'"),
])
def test_one_error_names_the_key_and_the_file(tmp_path, text, expected):
    path, msg = errors_of(tmp_path, text)
    assert msg == expected.format(path=path)


def test_unknown_key_names_the_base_file(chain, tmp_path):
    base = write(tmp_path, "typo_base.yaml", "model: {num_classes: 1}\ntrain: {max_iter: 5}\n")
    child = write(tmp_path, "typo_child.yaml", "_base_: typo_base.yaml\ntrain: {lr: 0.1}\n")
    with pytest.raises(ConfigError) as info:
        load_config(Cfg, child)
    assert str(info.value) == f"unknown key 'train.max_iter' (from {base}); did you mean 'train.max_iters'?"


def test_wrong_type(tmp_path):
    path, msg = errors_of(tmp_path, "model: {num_classes: 1}\ntrain: {lr: abc}\n")
    assert msg == f"key 'train.lr' (from {path}) expects float, got str 'abc'"


def test_literal_lists_allowed_values(tmp_path):
    path, msg = errors_of(tmp_path, "model: {num_classes: 1, backbone: {norm: ln}}\n")
    assert msg == f"key 'model.backbone.norm' (from {path}) expects one of 'bn', 'gn', 'none', got str 'ln'"


@pytest.mark.parametrize("text, expected", [
    ("data: {flip: 1}", "key 'data.flip' ({src}) expects bool, got int 1"),
    ("data: {flip: 'yes'}", "key 'data.flip' ({src}) expects bool, got str 'yes'"),
    ("train: {max_iters: true}", "key 'train.max_iters' ({src}) expects int, got bool True"),
    ("train: {max_iters: 2.0}", "key 'train.max_iters' ({src}) expects int, got float 2.0"),
])
def test_bool_and_int_strictness(tmp_path, text, expected):
    path, msg = errors_of(tmp_path, "model: {num_classes: 1}\n" + text + "\n")
    assert msg == expected.format(src=f"from {path}")


def test_int_accepted_for_float_and_tuples_converted(tmp_path):
    path = write(tmp_path, "ok.yaml", """
        model: {num_classes: 2, anchor_sizes: [16, 32, 64], input_size: [640, 480]}
        data: {mean: [1, 2.5, 3]}
        train: {lr: 1, loss_weights: {cls: 1, box: 2.5}}
        """)
    cfg = load_config(Cfg, path)
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float
    assert cfg.model.anchor_sizes == (16, 32, 64)
    assert cfg.model.input_size == (640, 480)
    assert cfg.data.mean == (1.0, 2.5, 3.0) and type(cfg.data.mean[0]) is float
    assert cfg.train.loss_weights == {"cls": 1.0, "box": 2.5}


def test_fixed_tuple_length_and_item_errors(tmp_path):
    path, msg = errors_of(tmp_path, """
        model: {num_classes: 1, input_size: [1, 2, 3]}
        data: {classes: [a, 3]}
        train: {loss_weights: {box: x}}
        """)
    assert msg.splitlines() == [
        f"key 'model.input_size' (from {path}) expects 2 items, got 3",
        f"key 'data.classes[1]' (from {path}) expects str, got int 3",
        f"key 'train.loss_weights.box' (from {path}) expects float, got str 'x'",
    ]


def test_optional_fields(tmp_path):
    path = write(tmp_path, "o.yaml", "model: {num_classes: 1, backbone: {frozen_stages: 2}}\nseed: null\n")
    cfg = load_config(Cfg, path)
    assert cfg.model.backbone.frozen_stages == 2 and cfg.seed is None and cfg.weighting is None


def test_all_errors_reported_together(tmp_path):
    path, msg = errors_of(tmp_path, """
        model: {backbone: {norm: ln}}
        train: {max_iter: 5, lr: abc}
        data: {flip: 'no'}
        """)
    assert msg.splitlines() == [
        f"missing required key 'model.num_classes' (from {path})",
        f"key 'model.backbone.norm' (from {path}) expects one of 'bn', 'gn', 'none', got str 'ln'",
        f"key 'data.flip' (from {path}) expects bool, got str 'no'",
        f"unknown key 'train.max_iter' (from {path}); did you mean 'train.max_iters'?",
        f"key 'train.lr' (from {path}) expects float, got str 'abc'",
    ]
    with pytest.raises(ConfigError) as info:
        load_config(Cfg, path)
    assert len(info.value.errors) == 5 and isinstance(info.value, ValueError)


def test_post_init_error_wrapped_with_section_path(tmp_path):
    path, msg = errors_of(tmp_path, "model: {num_classes: 1}\ntrain: {max_iters: 10, warmup_iters: 20}\n")
    assert msg == f"section 'train' (from {path}): warmup_iters must not exceed max_iters"


# ----------------------------------------------------------- file errors

def test_cyclic_base(tmp_path):
    a = write(tmp_path, "a.yaml", "_base_: b.yaml\n")
    b = write(tmp_path, "b.yaml", "_base_: [a.yaml]\n")
    with pytest.raises(ValueError) as info:
        load_yaml_tree(a)
    assert str(info.value) == f"cyclic _base_ chain: {a} -> {b} -> {a}"


def test_missing_base_names_referencing_file(tmp_path):
    child = write(tmp_path, "child.yaml", "_base_: nope/base.yaml\n")
    missing = str(tmp_path / "nope" / "base.yaml")
    with pytest.raises(FileNotFoundError) as info:
        load_yaml_tree(child)
    assert str(info.value) == f"config file not found: {missing} (referenced by _base_ in {child})"
    with pytest.raises(FileNotFoundError) as info:
        load_yaml_tree(tmp_path / "absent.yaml")
    assert str(info.value) == f"config file not found: {tmp_path / 'absent.yaml'}"


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "model:\n  num_classes: 1\n  backbone: [a, b\ntrain: {}\n")
    with pytest.raises(ValueError) as info:
        load_yaml_tree(path)
    assert str(info.value).startswith(f"invalid YAML in {path}, line 4: ")


def test_top_level_must_be_mapping(tmp_path):
    path = write(tmp_path, "list.yaml", "- a\n- b\n")
    with pytest.raises(ValueError) as info:
        load_yaml_tree(path)
    assert str(info.value) == f"{path}: top level must be a mapping, got list"


# ---------------------------------------------------- saving and helpers

def test_save_load_round_trip(chain, tmp_path):
    cfg = load_config(Cfg, chain["child"], ["weighting.cls_keys=[loss_cls]", "data.root='1e-3'"])
    assert cfg._config_path == chain["child"]
    assert cfg._config_tree["weighting"] == {"cls_keys": ["loss_cls"]}
    out = tmp_path / "out" / "resolved.yaml"
    save_config(cfg, out)
    text = out.read_text()
    assert text.splitlines()[0] == "model:"  # schema order, not sorted
    assert load_config(Cfg, out) == cfg
    plain = config_to_dict(cfg)
    assert plain["model"]["anchor_sizes"] == [32, 64, 128]  # tuple -> list
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain


def test_get_by_path(chain):
    cfg = load_config(Cfg, chain["child"])
    assert get_by_path(cfg, "model.backbone.depth") == 101
    assert get_by_path(cfg, "model.anchor_sizes.2") == 128
    assert get_by_path({"a": {"b": 1}}, "a.b") == 1
    with pytest.raises(KeyError, match="no key 'nope' in path 'model.nope'"):
        get_by_path(cfg, "model.nope")
