"""Typed config sections: one model section per detector kind, one weighting section per type, renamed keys,
and a type changed over a base config; the range checks of the settings."""
import pytest

from detection import builders, engine
from detection.config.loader import ConfigError
from detection.config.schema import ALWAConfig, DWAConfig, FasterRCNNConfig, FixedConfig, MaskRCNNConfig, RetinaNetConfig, RLOConfig

RETINA = "configs/demo/retinanet_shapes_alwa2.yaml"
FRCNN = "configs/demo/frcnn_shapes_alwa1.yaml"


def error(path, *overrides):
    with pytest.raises(ConfigError) as e:
        engine.load(path, list(overrides))
    return str(e.value)


def test_each_kind_gets_its_own_section():
    assert type(engine.load(RETINA).model) is RetinaNetConfig
    assert type(engine.load(FRCNN).model) is FasterRCNNConfig
    assert type(engine.load("configs/demo/maskrcnn_shapes_coco_alwa1.yaml").model) is MaskRCNNConfig


def test_a_two_stage_key_in_a_retinanet_config_names_the_kind_and_the_closest_key():
    msg = error(RETINA, "model.roi_head.fc_channels=8")
    assert "key 'model.roi_head' (from --set) does not apply to model.type 'retinanet'" in msg
    assert "it is a key of faster_rcnn / mask_rcnn" in msg and "did you mean 'model.head'?" in msg


def test_a_retinanet_key_in_a_faster_rcnn_config_names_the_kind_and_the_closest_key():
    msg = error(FRCNN, "model.head.num_convs=1")
    assert "key 'model.head' (from --set) does not apply to model.type 'faster_rcnn' (it is a key of retinanet)" in msg
    assert "did you mean 'model.roi_head'?" in msg
    # RetinaNet's pre-NMS ranking is not a Faster R-CNN test setting, and a mask head needs mask_rcnn
    assert "model.test.pre_nms_rank" in error(FRCNN, "model.test.pre_nms_rank=anchors")
    assert "it is a key of mask_rcnn" in error(FRCNN, "model.mask_head.num_convs=1")


@pytest.mark.parametrize("path,key,closest", [
    (RETINA, "model.head.num_conv=1", "model.head.num_convs"),
    (FRCNN, "model.rpn.feat_chanels=8", "model.rpn.feat_channels"),
    (FRCNN, "model.roi_head.reg_los=giou", "model.roi_head.reg_loss"),
])
def test_misspelled_keys_per_kind_name_the_closest_key(path, key, closest):
    assert f"did you mean '{closest}'?" in error(path, key)


def test_renamed_keys_say_the_new_name():
    assert "key 'model.loss.reg' (from --set) was renamed: use 'model.loss.reg_loss'" in error(RETINA, "model.loss.reg=giou")
    assert "use 'model.loss.reg_loss_weight'" in error(RETINA, "model.loss.reg_weight=2")


def test_weighting_sections_hold_their_own_defaults():
    cfg = engine.load(RETINA)
    assert type(cfg.weighting) is ALWAConfig
    rlo = engine.load(RETINA, ["weighting={_delete_: true, type: rlo}"]).weighting
    dwa = engine.load(RETINA, ["weighting={_delete_: true, type: dwa}"]).weighting
    assert type(rlo) is RLOConfig and rlo.temperature == 1.0
    assert type(dwa) is DWAConfig and dwa.temperature == 2.0 and dwa.keys is None
    # the defaults are the builder's: DWA over every loss of the model
    assert builders.build_weighting(engine.load(RETINA, ["weighting={_delete_: true, type: dwa}"])).configured_keys() == [
        "loss_cls", "loss_bbox"]


def test_a_type_changed_over_a_base_drops_the_old_types_keys_with_a_note(capsys):
    cfg = engine.load(RETINA, ["weighting.type=fixed", "weighting.weights.loss_cls=0.5"])
    assert type(cfg.weighting) is FixedConfig and cfg.weighting.weights == {"loss_cls": 0.5}
    (note,) = cfg._config_notes
    assert "weighting.type changed to 'fixed' (by --set) replaces the keys of the previous type" in note
    assert "weighting.cls_keys" in note and "weighting.interval" in note and RETINA in note


def test_keys_given_with_the_new_type_that_do_not_apply_stay_errors():
    msg = error(RETINA, "weighting.type=fixed", "weighting.momentum=0.5")
    assert "key 'weighting.momentum' (from --set) does not apply to weighting.type 'fixed' (it is a key of avw)" in msg


def test_unknown_type_is_named():
    assert "key 'weighting.type' (from --set) expects one of 'fixed', 'alwa'" in error(RETINA, "weighting.type=alwa3")


def test_a_weighting_key_the_model_does_not_emit_fails_at_build_time():
    cfg = engine.load(FRCNN, ["weighting.cls_keys=[loss_cls_p3]"])
    with pytest.raises(ConfigError, match=r"'loss_cls_p3' \(did you mean 'loss_cls'\?\) that the faster_rcnn model does "
                                          r"not produce; its losses are \['loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox'\]"):
        builders.build_weighting(cfg)
    with pytest.raises(ConfigError, match="loss_mask"):
        builders.build_weighting(engine.load(FRCNN, ["weighting={_delete_: true, type: fixed, weights: {loss_mask: 2}}"]))


def test_a_model_type_changed_over_a_retinanet_config_drops_nested_keys_of_the_old_type():
    """RetinaNet's ``model.test.pre_nms_*`` sit in a section both kinds have: dropped at that depth too;
    keys valid in both (the backbone the demo chose) keep their value."""
    cfg = engine.load(RETINA, ["model.type=faster_rcnn", "weighting={_delete_: true, type: fixed}"])
    assert type(cfg.model) is FasterRCNNConfig and cfg.model.backbone.name == "resnet18"
    notes = " ".join(cfg._config_notes)
    assert "model.test.pre_nms_top_k" in notes and "model.test.pre_nms_rank" in notes and "model.head" in notes


def test_keys_written_with_the_type_change_stay_errors_even_in_a_section_of_the_base():
    # model.head was created by the base file, but its num_convs is written by --set with the new type
    msg = error(RETINA, "model.type=faster_rcnn", "model.head.num_convs=2")
    assert "key 'model.head' (from" in msg and "does not apply to model.type 'faster_rcnn'" in msg


def test_the_same_type_written_again_drops_nothing():
    cfg = engine.load(RETINA, ["weighting.type=alwa"])
    assert cfg._config_notes == [] and cfg.weighting.cls_keys == ["loss_cls"]


def test_dwa_defaults_to_every_loss_of_a_two_stage_model():
    dwa = builders.build_weighting(engine.load(FRCNN, ["weighting={_delete_: true, type: dwa}"]))
    assert dwa.configured_keys() == ["loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"]


def test_retinanet_positive_normaliser_key():
    """model.loss.pos_norm: batch (our default, mmdetection's) or image (the torchvision RetinaNet presets),
    reaching the built loss; another value is a one-line error naming both."""
    assert engine.load(RETINA).model.loss.pos_norm == "batch"
    for preset in ("retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "finetune_voc_retinanet"):
        assert engine.load(f"configs/torchvision/{preset}.yaml").model.loss.pos_norm == "image"
    cfg = engine.load(RETINA, ["model.loss.pos_norm=image"])
    assert builders.build_model(cfg, 3).loss.norm == "image"
    assert error(RETINA, "model.loss.pos_norm=images") == \
        "key 'model.loss.pos_norm' (from --set) expects one of 'batch', 'image', got str 'images'"


@pytest.mark.parametrize("override,message", [
    ("data.batch_size=0", "data.batch_size must be a positive integer"),
    ("data.num_workers=-1", "data.num_workers must be >= 0"),
    ("optimizer.lr=0", "optimizer.lr must be > 0"),
    ("weighting.interval=0", "weighting.interval must be >= 2"),
    ("data.min_size=0", "data.min_size must be a positive image size"),
    ("train.max_iters=-1", "train.max_iters must be >= 1"),
    ("train.checkpoint_interval=-1", "train.checkpoint_interval must be >= 1"),
    ("data.classes=[circle,circle,triangle]", r"data.classes must be free of duplicates \(repeated: \['circle'\]\)"),
    ("device=mps", "device must be auto, cpu, cuda or cuda:N, got 'mps'"),
])
def test_out_of_range_settings_are_config_errors(tiny_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        engine.load(tiny_cfg, [override])


def test_dwa_keeps_its_window_of_one_step():
    cfg = engine.load("configs/demo/retinanet_shapes_alwa2.yaml", ["weighting={_delete_: true, type: dwa, interval: 1}"])
    assert cfg.weighting.interval == 1
