"""RetinaNet losses on tiny inputs: empty images, per-level split, overfitting a small batch."""
import math

import pytest
import torch

from models.anchors import AnchorGenerator
from models.assigner import MaxIoUAssigner
from models.backbone import BackboneFPN, build_body
from models.box_coder import DeltaBoxCoder
from models.box_loss import BoxRegressionLoss
from models.head_loss import BCE, DenseHeadLoss, IoUBalanced
from models.postprocess import DenseDetectConfig
from models.retinanet import RetinaHead, RetinaNet


def tiny(reg_loss="l1", per_level=False, seed=0, norm="batch"):
    torch.manual_seed(seed)
    bb = BackboneFPN(build_body("resnet18", "bn", -1, None), 32, [3, 4, 5], "p6p7")
    head = RetinaHead(32, 3, 9, 32, 1, norm="gn")
    loss = DenseHeadLoss(MaxIoUAssigner(), BoxRegressionLoss(reg_loss, DeltaBoxCoder(), 0.11), norm=norm)
    return RetinaNet(bb, head, AnchorGenerator(octave_base_scale=2), loss, loss_per_level=per_level)


def target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.long)}


EMPTY = target([], [])
ONE = target([[8, 8, 40, 48]], [1])


@pytest.mark.parametrize("reg_loss", ["l1", "smooth_l1", "giou", "ciou"])
def test_all_empty_batch_gives_zero_bbox_loss_and_finite_grads(reg_loss):
    model = tiny(reg_loss)
    losses = model(torch.randn(2, 3, 64, 64), [EMPTY, EMPTY])
    assert set(losses) == {"loss_cls", "loss_bbox"}
    assert losses["loss_bbox"].item() == 0.0 and torch.isfinite(losses["loss_cls"])
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # every trainable parameter takes part in the graph (DDP needs no unused parameters)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_mixed_batch_normalises_by_positives():
    """Both losses are divided by the positives of the whole batch: one object in one of two identical images
    gives the same box loss as the object in both (P / P vs 2P / 2P); a per-image mean would halve it."""
    model = tiny()
    model.backbone.eval()  # BN batch statistics would couple the images; the head's GroupNorm is per sample
    x = torch.randn(1, 3, 64, 64).expand(2, -1, -1, -1)
    half = model(x, [ONE, EMPTY])
    full = model(x, [ONE, ONE])
    assert half["loss_bbox"] > 0
    torch.testing.assert_close(half["loss_bbox"], full["loss_bbox"], rtol=1e-5, atol=1e-7)
    # the empty image adds only negatives, the second object's positives double the numerator and normaliser
    assert not torch.allclose(half["loss_cls"], full["loss_cls"])


def test_batch_and_image_normalisers_by_hand():
    """Six disjoint 10 px anchors per image; image 1's object is anchor 0 (1 positive), image 2's three are
    anchors 1-3 (3 positives); no anchor is ignored. At logit 0 every anchor's BCE is ln 2, so each image's
    classification sum is 6 ln 2. Box deltas 0.25 (image 1) and 0.5 (image 2) on targets 0 give L1 sums of
    1 (one positive x 4 x 0.25) and 6 (three x 4 x 0.5).
    batch: cls 12 ln 2 / 4 = 3 ln 2, box 7 / 4 = 1.75;
    image: cls (6 ln 2 / 1 + 6 ln 2 / 3) / 2 = 4 ln 2, box (1 / 1 + 6 / 3) / 2 = 1.5."""
    anchors = torch.tensor([[20.0 * i, 0.0, 20.0 * i + 10, 10.0] for i in range(6)])
    targets = [target(anchors[:1].tolist(), [0]), target(anchors[1:4].tolist(), [0, 0, 0])]
    cls = torch.zeros(2, 6, 1)
    reg = torch.tensor([0.25, 0.5])[:, None, None].expand(2, 6, 4)
    expected = {"batch": (3.0, 1.75), "image": (4.0, 1.5)}
    for norm, (cls_ln2, box) in expected.items():
        loss = DenseHeadLoss(MaxIoUAssigner(), BoxRegressionLoss("l1", DeltaBoxCoder()), BCE, norm=norm)
        per_cls, per_box, num = loss(cls, reg, anchors, None, targets)
        assert num.tolist() == (4.0 if norm == "batch" else [1.0, 3.0])
        assert loss.reduce(per_cls, num).item() == pytest.approx(cls_ln2 * math.log(2), rel=1e-6)
        assert loss.reduce(per_box, num).item() == pytest.approx(box, rel=1e-6)
    # an image without objects divides by 1 (torchvision's max(1, n)): its negatives' sum counts in full
    loss = DenseHeadLoss(MaxIoUAssigner(), BoxRegressionLoss("l1", DeltaBoxCoder()), BCE, norm="image")
    per_cls, per_box, num = loss(cls, reg, anchors, None, [targets[0], EMPTY])
    assert num.tolist() == [1.0, 1.0]
    assert loss.reduce(per_cls, num).item() == pytest.approx(6 * math.log(2), rel=1e-6)  # (6 + 6) ln 2 / 2
    assert loss.reduce(per_box, num).item() == pytest.approx(0.5, rel=1e-6)  # (1 / 1 + 0 / 1) / 2
    with pytest.raises(ValueError, match="norm must be one of"):
        DenseHeadLoss(MaxIoUAssigner(), BoxRegressionLoss("l1", DeltaBoxCoder()), norm="images")


@pytest.mark.parametrize("norm", ["batch", "image"])
def test_per_level_losses_sum_to_totals(norm):
    x = torch.randn(2, 3, 64, 64)
    t = [ONE, target([[30, 2, 62, 20], [0, 0, 10, 10]], [0, 2])]
    whole = tiny(norm=norm)(x, t)
    split = tiny(per_level=True, norm=norm)(x, t)
    assert sorted(split) == sorted([f"loss_{k}_p{l}" for k in ("cls", "bbox") for l in range(3, 8)])
    assert torch.allclose(sum(v for k, v in split.items() if k.startswith("loss_cls")), whole["loss_cls"], rtol=1e-5)
    assert torch.allclose(sum(v for k, v in split.items() if k.startswith("loss_bbox")), whole["loss_bbox"], rtol=1e-5)


def test_loss_falls_when_overfitting_two_images(overfit):
    model = tiny("giou")
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    t = [ONE, target([[30, 2, 62, 20]], [0])]
    first, total = overfit(model, x, t, 25)
    assert total.item() < 0.5 * first


def test_eval_output_contract():
    model = tiny().eval()
    torch.nn.init.zeros_(model.head.cls_out.bias)  # scores near 0.5, not the 0.01 prior: detections survive
    with torch.no_grad():
        dets = model(torch.randn(3, 3, 64, 64), [dict(img_size=(64, 64), scale_factor=torch.full((4,), 0.5),
                                                     orig_size=(128, 128))] * 3)
    assert len(dets) == 3
    for d in dets:
        assert set(d) == {"boxes", "scores", "labels"}
        assert d["boxes"].shape[1] == 4 and 0 < d["boxes"].shape[0] == d["scores"].shape[0] <= 100
        assert (d["boxes"] <= 128).all() and (d["boxes"] >= 0).all()
        assert (d["labels"] >= 0).all() and (d["labels"] < 3).all()
        assert (d["scores"][:-1] >= d["scores"][1:]).all()


def test_unknown_regression_loss():
    with pytest.raises(ValueError, match="unknown regression loss 'iuo'"):
        tiny("iuo")


def _losses_with(eta=None, lam=None, reg_loss="smooth_l1"):
    model = tiny(reg_loss)
    model.loss.iou_balanced = IoUBalanced(eta, lam)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    return model, model(images, [ONE, target([[30, 4, 60, 30], [2, 30, 20, 62]], [0, 2])])


def test_iou_balanced_classification_keeps_the_summed_loss_and_moves_gradient():
    plain_model, plain = _losses_with()
    model, balanced = _losses_with(eta=1.5)
    assert torch.allclose(balanced["loss_cls"], plain["loss_cls"], rtol=1e-5)
    assert torch.equal(balanced["loss_bbox"], plain["loss_bbox"])
    g_plain = torch.autograd.grad(plain["loss_cls"], plain_model.head.cls_out.weight)[0]
    g_bal = torch.autograd.grad(balanced["loss_cls"], model.head.cls_out.weight)[0]
    assert not torch.allclose(g_plain, g_bal)


def test_iou_balanced_regression_scales_by_iou_power():
    _, plain = _losses_with()
    _, zero = _losses_with(lam=0.0)
    _, balanced = _losses_with(lam=1.5)
    assert torch.allclose(zero["loss_bbox"], plain["loss_bbox"])
    # IoUs of an untrained head's boxes are in (0, 1): the weighted loss is smaller but not zero
    assert 0 < balanced["loss_bbox"].item() < plain["loss_bbox"].item()
    assert torch.equal(balanced["loss_cls"], plain["loss_cls"])


def test_iou_balanced_normaliser_keeps_each_levels_sum_or_only_the_total():
    """``iou_balanced_norm: level`` (the released code) keeps every level's focal-loss sum; ``batch`` keeps
    only the total, moving loss between levels."""
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    gts = [ONE, target([[30, 4, 60, 30], [2, 30, 20, 62], [0, 0, 63, 63]], [0, 2, 1])]
    out = {}
    for name, eta, norm in (("plain", None, "level"), ("level", 1.5, "level"), ("batch", 1.5, "batch")):
        model = tiny("smooth_l1", per_level=True)
        model.loss.iou_balanced = IoUBalanced(eta, None, norm)
        out[name] = model(images, gts)
    cls_keys = [k for k in out["plain"] if k.startswith("loss_cls_")]
    for k in cls_keys:
        torch.testing.assert_close(out["level"][k], out["plain"][k], rtol=1e-5, atol=1e-7)
    total = {n: sum(out[n][k] for k in cls_keys) for n in out}
    torch.testing.assert_close(total["batch"], total["plain"], rtol=1e-5, atol=1e-7)
    assert max(abs(out["batch"][k] - out["plain"][k]).item() for k in cls_keys) > 1e-4


def test_regression_loss_weight_scales_only_the_box_loss():
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    gts = [ONE, target([[30, 4, 60, 30]], [0])]
    plain = tiny("smooth_l1")(images, gts)
    model = tiny("smooth_l1")
    model.loss.box_loss.weight = 2.34
    weighted = model(images, gts)
    torch.testing.assert_close(weighted["loss_bbox"], 2.34 * plain["loss_bbox"])
    assert torch.equal(weighted["loss_cls"], plain["loss_cls"])


def test_pre_nms_rank_anchors_keeps_every_class_of_the_top_anchors():
    model = tiny().eval()
    model.test_cfg = DenseDetectConfig(pre_nms_rank="anchors", pre_nms_top_k=5, score_thr=0.0, max_per_img=1000, nms_iou=1.0)
    with torch.no_grad():
        dets = model(torch.randn(1, 3, 64, 64))
    # nothing suppressed (NMS at IoU 1): 5 anchors x 3 classes per level, 5 levels
    assert dets[0]["boxes"].shape[0] == 5 * 3 * 5
    assert sorted(torch.bincount(dets[0]["labels"]).tolist()) == [25, 25, 25]
