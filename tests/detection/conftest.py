"""A tiny RetinaNet config on generated shapes data, shared by the end-to-end engine tests."""
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




@pytest.fixture
def tiny_cfg(finished):
    """The tiny config of ``finished`` (test modules may define their own)."""
    return finished[0]


@pytest.fixture
def trained(finished):
    """The work dir of ``finished``: tests that write into it copy it first."""
    return finished[1]
