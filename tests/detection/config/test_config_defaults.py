"""One definition per model default: the config's ``model.test`` and ``model.rpn.*_proposals`` sections are the
models' own settings classes, so a config left at its defaults builds the settings a model takes when given none."""
import dataclasses
import functools

import pytest

from detection import builders
from detection.config import schema
from detection.config.schema import BackboneConfig, Config, FasterRCNNConfig, FPNConfig, MaskRCNNConfig, RetinaNetConfig
from models.mask_rcnn import MaskRCNN
from models.postprocess import DenseDetectConfig, DetectConfig
from models.retinanet import RetinaNet
from models.roi_heads import RoIHeads
from models.rpn import ProposalConfig, RegionProposalNetwork


def default_config(model_section) -> Config:
    """Defaults but for a small backbone and, for the two-stage detectors, their FPN (P2-P6)."""
    fpn = FPNConfig() if model_section is RetinaNetConfig else FPNConfig(in_levels=[2, 3, 4, 5], extra="maxpool")
    return Config(model=model_section(backbone=BackboneConfig(name="resnet18"), fpn=fpn))


@functools.lru_cache(maxsize=None)
def default_model(model_section):
    """The model of :func:`default_config`, built once for this file's tests (they only read it)."""
    return builders.build_model(default_config(model_section), 3)


@pytest.mark.parametrize("section,own", [(schema.TestConfig, DetectConfig), (schema.DenseTestConfig, DenseDetectConfig),
                                         (schema.ProposalsConfig, ProposalConfig)])
def test_schema_sections_write_no_field_or_default_of_their_own(section, own):
    # inherited fields are the base's own Field objects: a field written again in the schema is a new one
    assert issubclass(section, own) and dataclasses.fields(section) == dataclasses.fields(own)


def test_a_default_retinanet_config_builds_the_models_default_test_settings():
    model = default_model(RetinaNetConfig)
    assert model.test_cfg == RetinaNet(model.backbone, model.head, model.anchor_generator, model.loss).test_cfg


@pytest.mark.parametrize("section", [FasterRCNNConfig, MaskRCNNConfig])
def test_a_default_two_stage_config_builds_the_models_default_settings(section):
    model = default_model(section)
    rpn, roi = model.rpn, model.roi_heads
    default_rpn = RegionProposalNetwork(rpn.head, rpn.anchor_generator, rpn.loss)
    assert (rpn.train_proposals, rpn.test_proposals) == (default_rpn.train_proposals, default_rpn.test_proposals)
    assert roi.test_cfg == RoIHeads(roi.extractor, roi.box_head).test_cfg
    # model.type's has_masks picks the mask branch, the model class and the loss contract
    masks = section is MaskRCNNConfig
    assert isinstance(model, MaskRCNN) == masks and (roi.mask_branch is not None) == masks
    assert ("loss_mask" in builders.loss_contract(default_config(section)).keys) == masks


def _settings(loss):
    """The assignment, sampling and box-coding numbers of a head loss (plain values, comparable)."""
    a, s, coder = loss.assigner, loss.sampler, loss.box_loss.coder
    return ((a.pos_iou_thr, a.neg_iou_thr, a.min_pos_iou, a.low_quality_match, a.ignore_iof_thr),
            (s.num, s.pos_fraction), tuple(coder.means), tuple(coder.stds))


@pytest.mark.parametrize("section", [FasterRCNNConfig, MaskRCNNConfig])
def test_the_default_rpn_and_roi_losses_are_the_configs_defaults(section):
    """mmdetection's RPN / RoI head numbers are written twice (the models' ``default_rpn_loss`` /
    ``default_roi_loss`` for a model built without a config, the schema's ``rpn`` / ``roi_head`` sections):
    this keeps the two equal."""
    from models.roi_heads import default_roi_loss
    from models.rpn import default_rpn_loss

    model = default_model(section)
    assert _settings(model.rpn.loss) == _settings(default_rpn_loss())
    assert _settings(model.roi_heads.loss) == _settings(default_roi_loss())
