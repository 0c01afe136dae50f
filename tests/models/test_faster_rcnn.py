"""Faster / Mask R-CNN assembled from tiny parts: loss keys, gradients everywhere, empty images, outputs."""
import pytest
import torch

from models.anchors import AnchorGenerator
from models.backbone import BackboneFPN, build_body
from models.faster_rcnn import FasterRCNN
from models.mask_head import MaskHead
from models.mask_rcnn import MaskBranch, MaskRCNN
from models.roi_heads import RoIFeatureExtractor, RoIHeads, TwoFCBoxHead, default_roi_loss
from models.rpn import ProposalConfig, RegionProposalNetwork, RPNHead, default_rpn_loss
from models.sampler import RandomSampler


def tiny(masks=False, reg_loss="l1", seed=0):
    torch.manual_seed(seed)
    backbone = BackboneFPN(build_body("resnet18", "bn", -1, None), 16, [2, 3, 4, 5], "maxpool")
    anchors = AnchorGenerator(strides=[4, 8, 16, 32, 64], ratios=[0.5, 1.0, 2.0], scales=[2.0])
    rpn_loss = default_rpn_loss(reg_loss)
    rpn_loss.sampler = RandomSampler(64, 0.5)
    rpn = RegionProposalNetwork(RPNHead(16, 3, 16), anchors, rpn_loss, ProposalConfig(100, 50, 0.7), ProposalConfig(100, 50, 0.7))
    strides = [4, 8, 16, 32]
    branch = MaskBranch(RoIFeatureExtractor(strides, 14, 1, 14.0), MaskHead(16, 3, 16, 1)) if masks else None
    roi_loss = default_roi_loss(reg_loss)
    roi_loss.sampler = RandomSampler(32, 0.25)
    heads = RoIHeads(RoIFeatureExtractor(strides, 7, 1, 14.0), TwoFCBoxHead(16, 7, 3, 32), roi_loss, mask_branch=branch)
    return (MaskRCNN if masks else FasterRCNN)(backbone, rpn, heads)


def target(boxes, labels, size=(64, 64), masks=True):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    t = {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.long), "img_size": size}
    if masks:
        m = torch.zeros(len(boxes), *size, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
            m[i, y1:y2, x1:x2] = 1
        t["masks"] = m
    return t


ONE = target([[8, 8, 40, 48]], [1])
EMPTY = target([], [])


@pytest.mark.parametrize("masks", [False, True])
@pytest.mark.parametrize("reg_loss", ["l1", "ciou"])
def test_losses_and_gradients_reach_every_parameter(masks, reg_loss):
    model = tiny(masks, reg_loss).train()
    losses = model(torch.randn(2, 3, 64, 64), [ONE, EMPTY])
    expected = {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"} | ({"loss_mask"} if masks else set())
    assert set(losses) == expected
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # DDP without find_unused_parameters needs every trainable parameter in the graph
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


@pytest.mark.parametrize("masks", [False, True])
def test_all_empty_batch(masks):
    model = tiny(masks).train()
    losses = model(torch.randn(2, 3, 64, 64), [EMPTY, EMPTY])
    assert losses["loss_rpn_bbox"].item() == 0.0 and losses["loss_bbox"].item() == 0.0
    if masks:
        assert losses["loss_mask"].item() == 0.0
    sum(losses.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_eval_outputs_in_original_pixels_with_masks():
    model = tiny(True).eval()
    meta = {"img_size": (64, 48), "orig_size": (128, 96), "scale_factor": torch.tensor([0.5] * 4)}
    with torch.no_grad():
        dets = model(torch.randn(2, 3, 64, 64), [meta, {"img_size": (64, 64)}])
    d = dets[0]
    assert set(d) == {"boxes", "scores", "labels", "masks"}
    assert d["masks"].dtype == torch.bool and d["masks"].shape[1:] == (128, 96) and len(d["masks"]) == len(d["boxes"])
    assert (d["boxes"][:, 2] <= 96).all() and (d["boxes"][:, 3] <= 128).all()
    assert dets[1]["masks"].shape[1:] == (64, 64)
    assert (d["labels"] < 3).all() and (d["scores"] >= 0.05).all()


def test_overfits_one_image(overfit):
    model = tiny(False).train()
    images = torch.randn(1, 3, 64, 64)
    first, total = overfit(model, images, [ONE], 40)
    assert total.item() < 0.4 * first
    model.eval()
    with torch.no_grad():
        det = model(images, [{"img_size": (64, 64)}])[0]
    from losses import pairwise_box_iou

    best = det["scores"].argmax()
    assert det["labels"][best].item() == 1
    assert pairwise_box_iou(det["boxes"][best:best + 1], ONE["boxes"]).item() > 0.5


def test_mask_rcnn_needs_a_mask_branch():
    model = tiny(False)
    with pytest.raises(ValueError, match="mask_branch"):
        MaskRCNN(model.backbone, model.rpn, model.roi_heads)


@pytest.mark.parametrize("masks", [False, True])
def test_channels_last_gives_the_same_losses(masks):
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ref = tiny(masks).train()
    torch.manual_seed(1)
    expected = ref(images, [ONE, EMPTY])
    nhwc = tiny(masks).train().to(memory_format=torch.channels_last)
    torch.manual_seed(1)
    got = nhwc(images.contiguous(memory_format=torch.channels_last), [ONE, EMPTY])
    for k, v in expected.items():
        assert torch.allclose(v, got[k], rtol=1e-4, atol=1e-5), k
