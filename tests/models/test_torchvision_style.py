"""The torchvision-style options, each against torchvision's own implementation or a hand-computed case."""
import numpy as np
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.poolers import LevelMapper

from datasets import collate_detection
from datasets.transforms import TorchvisionTransform
from models.anchors import AnchorGenerator
from models.assigner import MaxIoUAssigner
from models.box_coder import DeltaBoxCoder
from models.mask_head import paste_masks_torchvision
from models.roi_heads import map_roi_levels


def test_torchvision_cell_anchors_by_hand():
    gen = AnchorGenerator(strides=(8,), ratios=(0.5, 1.0, 2.0), octave_base_scale=4, scales_per_octave=3,
                          style="torchvision")
    cell = gen.cell_anchors(0)
    # sizes int(32 * 2^(k/3)) = 32, 40, 50; ratio 0.5: w = 32 * sqrt(2) = 45.25 -> half 22.63 -> 23, h half 11.31 -> 11
    assert cell[0].tolist() == [-23.0, -11.0, 23.0, 11.0]
    assert cell[1].tolist() == [-28.0, -14.0, 28.0, 14.0]  # 40: half-sides 28.28 and 14.14
    assert cell[4].tolist() == [-20.0, -20.0, 20.0, 20.0]  # ratio 1, size 40
    assert cell[5].tolist() == [-25.0, -25.0, 25.0, 25.0]  # ratio 1, size 50 (int(50.8) = 50)
    mm = AnchorGenerator(strides=(8,), style="mmdet").cell_anchors(0)
    assert mm[5, 2].item() == pytest.approx(32 * 2 ** (2 / 3) / 2)  # exact sizes without the style


def test_torchvision_strides_come_from_the_padded_size():
    gen = AnchorGenerator(style="torchvision")
    sizes = [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)]  # P3-P7 of an 800 x 1216 input
    assert gen.level_strides(sizes, (800, 1216))[3:] == [(61, 64), (114, 121)]
    assert AnchorGenerator().level_strides(sizes, (800, 1216))[3:] == [(64, 64), (128, 128)]


@pytest.mark.parametrize("rpn", [False, True])
def test_torchvision_anchors_equal_torchvisions(rpn):
    if rpn:
        ours = AnchorGenerator(strides=(4, 8, 16, 32, 64), scales=(8.0,), style="torchvision")
        tv = TVAnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
        image, strides = (416, 608), (4, 8, 16, 32, 64)
    else:
        ours = AnchorGenerator(style="torchvision")
        sizes = tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in [32, 64, 128, 256, 512])
        tv = TVAnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
        image, strides = (416, 608), (8, 16, 32, 64, 128)
    feats, h, w = [], image[0], image[1]
    for s in strides:  # conv sizes: ceil halving, as stride-2 convs with padding 1 give
        h, w = (image[0] // s, image[1] // s) if s <= 32 else ((h + 1) // 2, (w + 1) // 2)
        feats.append(torch.zeros(1, 1, h, w))
    expected = tv(ImageList(torch.zeros(1, 3, *image), [image]), feats)[0]
    got, _ = ours(feats, image)
    assert torch.equal(got, expected)


def test_upper_clamp_lets_boxes_shrink_without_bound():
    ref = torch.tensor([[-50.0, -50.0, 50.0, 50.0]])  # centred: no cancellation in x2 - x1
    deltas = torch.tensor([[0.0, 0.0, -10.0, 10.0]])
    both = DeltaBoxCoder().decode(ref, deltas)
    upper = DeltaBoxCoder(clamp="upper").decode(ref, deltas)
    clip = abs(np.log(16 / 1000))
    assert (both[0, 2] - both[0, 0]).item() == pytest.approx(100 * np.exp(-clip), rel=1e-5)
    assert (upper[0, 2] - upper[0, 0]).item() == pytest.approx(100 * np.exp(-10.0), rel=1e-4)
    assert (upper[0, 3] - upper[0, 1]).item() == pytest.approx(100 * np.exp(clip), rel=1e-5)  # still capped above


def test_low_quality_target_anchor_gives_the_anchor_its_own_best_ground_truth():
    gts = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [4.0, 0.0, 12.0, 10.0]]])
    anchors = torch.tensor([[3.0, 0.0, 11.0, 10.0], [4.0, 0.0, 12.0, 10.0]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    # IoU(a0, g0) = 70 / 110 = 0.636 (g0's best), IoU(a0, g1) = 70 / 90 = 0.778, IoU(a1, g1) = 1 (g1's best),
    # IoU(a1, g0) = 60 / 120 = 0.5; with pos_iou_thr 0.9 only a1 is a plain positive
    by_gt = MaxIoUAssigner(0.9, 0.2, 0.0, True)(anchors, gts, valid)
    by_anchor = MaxIoUAssigner(0.9, 0.2, 0.0, True, low_quality_target="anchor")(anchors, gts, valid)
    assert by_gt.gt_index[0].tolist() == [0, 1]  # a0 goes to the gt it is the best match of (mmdetection)
    assert by_anchor.gt_index[0].tolist() == [1, 1]  # a0 goes to its own best gt (torchvision's Matcher)
    with pytest.raises(ValueError, match="low_quality_target"):
        MaxIoUAssigner(low_quality_target="best")


def test_torchvision_level_rule_equals_its_level_mapper():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2000, 2, generator=g) * 500
    side = torch.cat([torch.rand(1900, 2, generator=g) * 600 + 1,
                      torch.tensor([[112.0, 112.0], [111.99993, 111.99993], [224.0, 224.0], [448.0, 448.0]] * 25)])
    boxes = torch.cat([xy, xy + side], 1)
    mapper = LevelMapper(k_min=2, k_max=5)
    assert torch.equal(map_roi_levels(boxes, 4, 56.0, "torchvision"), mapper([boxes]))
    # the two rules disagree right below a boundary: 1e-6 inside or outside the log
    edge = torch.tensor([[0.0, 0.0, 111.99993, 111.99993]])
    assert map_roi_levels(edge, 4, 56.0, "torchvision").item() == 1
    assert map_roi_levels(edge, 4, 56.0, "mmdet").item() == 0


def test_torchvision_paste_equals_paste_masks_in_image():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(150, 28, 28, generator=g)
    xy = torch.rand(150, 2, generator=g) * 60
    wh = torch.rand(150, 2, generator=g) * 40 + 0.2
    boxes = torch.cat([xy, xy + wh], 1).clamp(max=torch.tensor([90.0, 70.0, 90.0, 70.0]))
    expected = paste_masks_in_image(probs[:, None], boxes, (70, 90))[:, 0] > 0.5
    got = paste_masks_torchvision(probs, boxes, (70, 90), chunk_size=7)
    assert expected.sum() > 10000 and torch.equal(got, expected)


def test_torchvision_preprocessing_equals_generalized_rcnn_transform():
    rng = np.random.RandomState(0)
    images = [(rng.rand(h, w, 3) * 255).astype(np.uint8) for h, w in [(237, 391), (300, 260)]]
    t = TorchvisionTransform(False, 320, 512)
    samples = []
    for img in images:
        x, boxes, _, _, meta = t(img, [[10.0, 20.0, 50.0, 60.0]], [0])
        samples.append((x, meta))
        sx, sy = meta["scale_factor"][:2]
        assert boxes[0].tolist() == pytest.approx([10 * sx, 20 * sy, 50 * sx, 60 * sy])
    batch, metas = collate_detection(samples, size_divisor=32)
    tv = GeneralizedRCNNTransform(320, 512, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]).eval()
    expected, _ = tv([torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in images])
    assert [tuple(m["img_size"]) for m in metas] == expected.image_sizes
    assert torch.equal(batch, expected.tensors)
