"""The loss-key contract: each model kind declares exactly the keys its training forward returns."""
import pytest
import torch

from detection import builders, engine
from models.contract import LossContract, head_contract, merge_contracts

DEMOS = {"retinanet": "configs/demo/retinanet_shapes_alwa2.yaml", "faster_rcnn": "configs/demo/frcnn_shapes_alwa1.yaml",
         "mask_rcnn": "configs/demo/maskrcnn_shapes_coco_alwa1.yaml"}
SMALL = ["model.fpn.out_channels=16"]


def demo_model(kind, *overrides):
    torch.manual_seed(0)
    cfg = engine.load(DEMOS[kind], SMALL + list(overrides))
    return cfg, builders.build_model(cfg, 3).train()


def one_object(masks=False):
    t = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]]), "labels": torch.tensor([1])}
    if masks:
        t["masks"] = torch.zeros(1, 64, 64, dtype=torch.uint8)
        t["masks"][0, 8:48, 8:40] = 1
    return t


def test_head_contract_whole_and_per_level():
    whole = head_contract("loss_cls", "loss_bbox")
    assert whole.keys == ("loss_cls", "loss_bbox") and whole.level_groups == []
    split = head_contract("loss_cls", "loss_bbox", ["p3", "p4"])
    assert split.keys == ("loss_cls_p3", "loss_bbox_p3", "loss_cls_p4", "loss_bbox_p4")
    assert split.level_groups == [["loss_cls_p3", "loss_cls_p4"], ["loss_bbox_p3", "loss_bbox_p4"]]
    assert split.levels == {"loss_cls": ("loss_cls_p3", "loss_cls_p4"), "loss_bbox": ("loss_bbox_p3", "loss_bbox_p4")}


def test_merged_contract_groups_by_stage():
    c = merge_contracts({"rpn": LossContract(("a", "b"), {"cls": ("a",)}), "roi": LossContract(("c",))})
    assert c.keys == ("a", "b", "c") and c.groups == {"rpn": ("a", "b"), "rpn_cls": ("a",), "roi": ("c",)}


def test_contract_rejects_bad_groups_and_names_the_closest_key():
    with pytest.raises(ValueError, match="unique"):
        LossContract(("a", "a"))
    with pytest.raises(ValueError, match="not among"):
        LossContract(("a",), {"g": ("b",)})
    c = head_contract("loss_cls", "loss_bbox")
    c.check(["loss_cls"], "x")
    with pytest.raises(ValueError, match=r"weighting.cls_keys names loss key\(s\) 'loss_clss' \(did you mean 'loss_cls'\?\)"):
        c.check(["loss_clss"], "weighting.cls_keys")


@pytest.mark.parametrize("per_level", [False, True])
def test_retinanet_returns_exactly_its_contract(per_level):
    cfg, model = demo_model("retinanet", f"model.head.loss_per_level={str(per_level).lower()}")
    losses = model(torch.randn(1, 3, 64, 64), [one_object()])
    levels = [f"p{i}" for i in range(3, 8)]
    expected = [k for n in levels for k in (f"loss_cls_{n}", f"loss_bbox_{n}")] if per_level else ["loss_cls", "loss_bbox"]
    assert list(losses) == list(model.loss_contract.keys) == expected
    from_config = builders.loss_contract(cfg)  # from the config alone, without a model: the hand-written keys too
    assert list(from_config.keys) == expected and from_config == model.loss_contract


@pytest.mark.parametrize("kind", ["faster_rcnn", "mask_rcnn"])
def test_two_stage_returns_exactly_its_contract(kind):
    cfg, model = demo_model(kind)
    losses = model(torch.randn(1, 3, 64, 64), [one_object(masks=kind == "mask_rcnn")])
    expected = ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox") + (("loss_mask",) if kind == "mask_rcnn" else ())
    assert tuple(losses) == model.loss_contract.keys == expected
    assert model.loss_contract.groups["rpn"] == ("loss_rpn_cls", "loss_rpn_bbox")
    from_config = builders.loss_contract(cfg)
    assert from_config.keys == expected and from_config == model.loss_contract
