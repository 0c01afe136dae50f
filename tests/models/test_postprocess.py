import torch

from models.postprocess import nms_per_image, rescale_to_original, select_topk_anchors_per_level, select_topk_per_level


def test_nms_per_image_hand_case():
    boxes = torch.tensor([
        [[0.0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [80, 80, 90, 90]],
        [[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]],
    ])
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.01], [0.04, 0.03, 0.02, 0.01, 0.0]])
    labels = torch.tensor([[0, 0, 1, 0, 0], [0, 1, 2, 0, 1]])
    dets = nms_per_image(boxes, scores, labels, score_thr=0.05, iou_thr=0.5, max_per_img=100, num_classes=3)
    # image 0: box 1 overlaps box 0 (IoU 81/100) in the same class -> suppressed; box 2 is another class;
    # box 4 is under the score threshold. Image 1 has nothing above the threshold.
    assert dets[0]["scores"].tolist() == [0.8999999761581421, 0.699999988079071, 0.6000000238418579]
    assert dets[0]["labels"].tolist() == [0, 1, 0]
    assert dets[1]["boxes"].shape == (0, 4)


def test_nms_does_not_mix_images_and_caps_per_image():
    box = torch.tensor([0.0, 0, 10, 10])
    boxes = box.expand(2, 4, 4).clone()
    boxes[:, :, 0] += torch.arange(4) * 20  # disjoint boxes
    boxes[:, :, 2] += torch.arange(4) * 20
    scores = torch.tensor([[0.5, 0.9, 0.7, 0.6], [0.3, 0.2, 0.8, 0.1]])
    labels = torch.zeros(2, 4, dtype=torch.long)
    dets = nms_per_image(boxes, scores, labels, 0.0, 0.5, max_per_img=2, num_classes=1)
    assert [d["scores"].tolist() for d in dets] == [[0.8999999761581421, 0.699999988079071],
                                                     [0.800000011920929, 0.30000001192092896]]


def test_topk_per_level_indices():
    # 2 levels: 3 anchors then 2 anchors, 2 classes
    scores = torch.tensor([[[0.1, 0.9], [0.8, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.05]]])
    vals, idx, labels = select_topk_per_level(scores, [3, 2], k=2)
    assert vals.tolist() == [[0.8999999761581421, 0.800000011920929, 0.699999988079071, 0.6000000238418579]]
    assert idx.tolist() == [[0, 1, 4, 3]] and labels.tolist() == [[1, 0, 0, 1]]


def test_topk_anchors_per_level_ranks_by_best_class_and_keeps_all_classes():
    # same scores: level 1 anchors' best scores 0.9, 0.8, 0.4 -> anchors 0, 1; level 2: 0.6, 0.7 -> 4, 3.
    # The pair ranking above drops anchor 3's class 0 (0.5) and anchor 4's class 1; here both stay candidates.
    scores = torch.tensor([[[0.1, 0.9], [0.8, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.05]]])
    vals, idx, labels = select_topk_anchors_per_level(scores, [3, 2], k=2)
    assert idx.tolist() == [[0, 0, 1, 1, 4, 4, 3, 3]] and labels.tolist() == [[0, 1, 0, 1, 0, 1, 0, 1]]
    torch.testing.assert_close(vals, torch.tensor([[0.1, 0.9, 0.8, 0.2, 0.7, 0.05, 0.5, 0.6]]))
    # k above a level's anchor count takes the whole level
    _, idx, _ = select_topk_anchors_per_level(scores, [3, 2], k=5)
    assert sorted(set(idx[0].tolist())) == [0, 1, 2, 3, 4] and idx.shape == (1, 10)


def test_rescale_to_original():
    dets = [{"boxes": torch.tensor([[10.0, 20, 300, 80]]), "scores": torch.ones(1), "labels": torch.zeros(1)}]
    out = rescale_to_original(dets, torch.tensor([[2.0, 4.0, 2.0, 4.0]]), torch.tensor([[15.0, 100.0]]))
    assert out[0]["boxes"].tolist() == [[5.0, 5.0, 100.0, 15.0]]  # x2 150 and y2 20 clipped to w 100, h 15
