"""detection.builders: what a run is built from is checked at start-up, before any training step."""
import pytest

from detection import engine
from detection.config.loader import ConfigError


def test_several_coco_test_sets_are_refused_at_start_up():
    from detection import builders

    cfg = engine.load("configs/demo/maskrcnn_shapes_coco_alwa1.yaml", ["data.test_sets=[test,val]"])
    with pytest.raises(ConfigError, match=r"data.test_sets \['test', 'val'\]: COCO evaluation takes one set"):
        builders.build_dataset(cfg, train=False)
