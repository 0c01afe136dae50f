"""Shared by the tests of tests/detection and its subfolders: a tiny RetinaNet config on generated shapes data
(and its finished run) for the end-to-end engine tests, a loss poisoner for the non-finite paths, and exact
equality of two runs' states."""
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY_RETINANET = """
_base_: {base}
model:
  backbone: {{name: resnet18, pretrained: null, norm: bn, frozen_stages: -1}}
  fpn: {{out_channels: 16}}
  anchors: {{octave_base_scale: 2}}
  head: {{feat_channels: 16, num_convs: 1, norm: gn}}
data:
  root: {root}
  train_sets: [train]
  test_sets: [test]
  shapes: {{num_train: 12, num_val: 2, num_test: 6, image_size: 64, seed: 3}}
  min_size: 64
  max_size: 64
  batch_size: 4
  test_batch_size: 4
  num_workers: 0
optimizer: {{type: adamw, lr: 0.001, base_batch_size: 4}}
train: {{max_iters: 6, lr_steps: [5], warmup_iters: 2, log_interval: 2, checkpoint_interval: 3, progress: false}}
weighting: {{type: alwa, variant: 2, interval: 2}}
"""


@pytest.fixture(scope="session")
def write_tiny_retinanet():
    """``write(directory) -> path`` of ``directory/tiny.yaml``, its shapes data under ``directory/shapes``
    (generated on first use): 12 training and 6 test images of 64 px, 6 iterations, ALWA_2 with C = 2."""
    def write(directory) -> str:
        path = os.path.join(str(directory), "tiny.yaml")
        with open(path, "w") as f:
            f.write(TINY_RETINANET.format(base=os.path.join(REPO, "configs/_base_/retinanet_r50_fpn.yaml"),
                                          root=os.path.join(str(directory), "shapes")))
        return path
    return write


@pytest.fixture(scope="module")
def finished(tmp_path_factory, write_tiny_retinanet):
    """(tiny config, work dir of its finished 6-iteration run without evaluation), once per test module."""
    from detection import engine

    cfg = write_tiny_retinanet(tmp_path_factory.mktemp("tiny"))
    work = str(tmp_path_factory.mktemp("finished"))
    engine.train(cfg, work, overrides=["train.eval_after=false"])
    return cfg, work




@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory, write_tiny_retinanet):
    """The tiny config alone, nothing trained (a test that needs the trained run takes ``finished``, whose
    config is ``finished[0]``, or ``trained``)."""
    return write_tiny_retinanet(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def trained(finished):
    """The work dir of ``finished``: tests that write into it copy it first."""
    return finished[1]


@pytest.fixture
def poison_from_step():
    """``poison_from_step(monkeypatch, step, factor)``: every model engine.train builds multiplies its losses by
    ``factor`` from training forward ``step`` on."""
    def poison(monkeypatch, step, factor):
        from detection import builders

        calls = {"n": 0}

        def hook(module, inputs, output):
            calls["n"] += 1
            return {k: v * factor for k, v in output.items()} if calls["n"] >= step and module.training else output

        real_build = builders.build_model

        def build(cfg, n):
            model = real_build(cfg, n)
            model.register_forward_hook(hook)
            return model

        monkeypatch.setattr(builders, "build_model", build)
    return poison


def exactly_equal(x, y) -> bool:
    """Exact equality of nested dicts / lists of tensors and plain values."""
    import torch

    if torch.is_tensor(x):
        return torch.is_tensor(y) and x.shape == y.shape and torch.equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(exactly_equal(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(exactly_equal(a, b) for a, b in zip(x, y))
    return x == y


@pytest.fixture
def same():
    """``same(x, y)``: exact equality of nested dicts / lists of tensors and plain values (the states of an
    interrupted and an uninterrupted run, rank by rank)."""
    return exactly_equal
