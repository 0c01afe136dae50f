"""Batched post-processing for dense detectors: per-level top-k, decoding, batched NMS, per-image cap.

Everything runs on the whole batch at once: top-k is taken per (image, level) with one ``topk`` call
per level, and NMS runs once over all images with ``image * num_classes + label`` as the group index.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Literal, Optional, Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms


@dataclass(frozen=True)
class DetectConfig:
    """Test-time settings of a detector: score threshold, class-wise NMS IoU, detections kept per image and the
    smallest box side kept. The single definition of these defaults: the config's ``model.test`` uses it."""

    score_thr: float = 0.05
    nms_iou: float = 0.5
    max_per_img: int = 100
    min_box_size: float = 0.0  # detections with a side below this (input pixels) are dropped (torchvision R-CNN: 0.01)


@dataclass(frozen=True)
class DenseDetectConfig(DetectConfig):
    """:class:`DetectConfig` of dense heads (RetinaNet), plus the ``pre_nms_top_k`` candidates per FPN level."""

    pre_nms_top_k: int = 1000  # per FPN level
    # per level, the top pre_nms_top_k (anchor, class) pairs, or the top anchors by their best class score with
    # all their classes (mmdetection 2.x's nms_pre, the ALWA configs)
    pre_nms_rank: Literal["pairs", "anchors"] = "pairs"


def select_topk_per_level(scores: Tensor, counts: Sequence[int], k: int):
    """Top-k (anchor, class) pairs per image and level.

    Args:
        scores: [B, N, C] class probabilities, anchors of all levels concatenated.
        counts: number of anchors per level (sum = N).
    Returns:
        values [B, K], anchor indices [B, K] into N, labels [B, K]; K = sum_l min(k, N_l * C).
    """
    b, _, c = scores.shape
    vals, idxs, labels = [], [], []
    start = 0
    for n in counts:
        level = scores[:, start:start + n, :].reshape(b, n * c)
        v, i = level.topk(min(k, n * c), dim=1)
        vals.append(v)
        idxs.append(torch.div(i, c, rounding_mode="floor") + start)
        labels.append(i % c)
        start += n
    return torch.cat(vals, 1), torch.cat(idxs, 1), torch.cat(labels, 1)


def select_topk_anchors_per_level(scores: Tensor, counts: Sequence[int], k: int):
    """Top-k anchors per image and level ranked by each anchor's best class score, with all their classes
    (mmdetection 2.x's ``nms_pre``: the score threshold and NMS then see every class of those anchors).

    Args:
        scores: [B, N, C] class probabilities, anchors of all levels concatenated.
        counts: number of anchors per level (sum = N).
    Returns:
        values [B, K * C], anchor indices [B, K * C] into N, labels [B, K * C]; K = sum_l min(k, N_l).
    """
    b, _, c = scores.shape
    idxs = []
    start = 0
    for n in counts:
        top = scores[:, start:start + n, :].amax(dim=2).topk(min(k, n), dim=1).indices
        idxs.append(top + start)
        start += n
    anchor_idx = torch.cat(idxs, 1)  # [B, K]
    values = scores.gather(1, anchor_idx[..., None].expand(-1, -1, c))  # [B, K, C]
    labels = torch.arange(c, device=scores.device).expand_as(values)
    return values.flatten(1), anchor_idx[..., None].expand_as(values).flatten(1), labels.flatten(1)


def image_metas(targets: Optional[List[Dict]], batch: int, padded_hw, device) -> tuple:
    """Per-image valid (h, w) [B, 2], scale factors [B, 4] and original (h, w) [B, 2].

    Without targets the whole padded image is valid and coordinates are not rescaled."""
    if targets is None:
        hw = torch.tensor(padded_hw, dtype=torch.float32, device=device).expand(batch, 2)
        return hw, torch.ones(batch, 4, device=device), hw
    img = torch.tensor([t.get("img_size", padded_hw) for t in targets], dtype=torch.float32, device=device)
    scale = torch.stack([torch.as_tensor(t.get("scale_factor", [1.0] * 4), dtype=torch.float32) for t in targets]).to(device)
    orig = torch.tensor([t.get("orig_size", t.get("img_size", padded_hw)) for t in targets], dtype=torch.float32, device=device)
    return img, scale, orig


def nms_per_image(
    boxes: Tensor, scores: Tensor, labels: Tensor, score_thr: float, iou_thr: float, max_per_img: int,
    num_classes: int, min_size: float = 0.0,
) -> List[Dict[str, Tensor]]:
    """Class-wise NMS for a batch of candidates and a per-image cap.

    Args:
        boxes: [B, K, 4]; scores: [B, K]; labels: [B, K] (0-based).
        min_size: candidates with a side below it are dropped, as those under ``score_thr``.
    Returns:
        one dict per image with boxes [D, 4], scores [D], labels [D], sorted by descending score.
    """
    b, k = scores.shape
    image = torch.arange(b, device=scores.device)[:, None].expand(b, k)
    keep = scores > score_thr
    if min_size > 0:
        keep &= ((boxes[..., 2:] - boxes[..., :2]) >= min_size).all(-1)
    boxes, scores, labels, image = boxes[keep], scores[keep], labels[keep], image[keep]
    kept = batched_nms(boxes, scores, image * num_classes + labels, iou_thr)  # sorted by score
    image = image[kept]
    # stable sort by image keeps descending score within an image; rank inside the image caps it
    order = torch.sort(image, stable=True).indices
    kept, image = kept[order], image[order]
    counts = torch.bincount(image, minlength=b)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(image.numel(), device=image.device) - first[image]
    capped = rank < max_per_img
    kept, image = kept[capped], image[capped]
    sizes = torch.bincount(image, minlength=b).tolist()
    return [
        {"boxes": bx, "scores": sc, "labels": lb}
        for bx, sc, lb in zip(boxes[kept].split(sizes), scores[kept].split(sizes), labels[kept].split(sizes))
    ]


def rescale_to_original(dets: List[Dict[str, Tensor]], scale: Tensor, orig_hw: Tensor) -> List[Dict[str, Tensor]]:
    """Divide boxes by each image's scale factor [B, 4] and clip to its original (h, w) [B, 2]."""
    for i, det in enumerate(dets):
        boxes = det["boxes"] / scale[i]
        h, w = orig_hw[i, 0], orig_hw[i, 1]
        boxes = torch.stack(
            [boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1
        )
        det["boxes"] = boxes
    return dets


def nms_padded(
    boxes: Tensor, scores: Tensor, groups: Tensor, valid: Tensor, iou_thr: float, max_per_img: int, num_groups: int,
):
    """NMS inside each (image, group) for a batch of candidates, results padded to a common count.

    Args:
        boxes: [B, K, 4]; scores: [B, K]; groups: [B, K] integer group ids in [0, num_groups) (e.g. FPN level);
        valid: [B, K] bool, candidates that may be kept.
    Returns:
        boxes [B, P, 4], scores [B, P] (descending per image), valid [B, P]; P = most kept in one image
        (at least 1), capped at ``max_per_img``. Padding slots hold zeros and ``valid`` False.
    """
    b, k = scores.shape
    image = torch.arange(b, device=scores.device)[:, None].expand(b, k)
    flat = valid.reshape(-1).nonzero().squeeze(1)  # the one host sync: NMS output sizes are data-dependent
    fb, fs, fi = boxes.reshape(-1, 4)[flat], scores.reshape(-1)[flat], image.reshape(-1)[flat]
    fg = groups.reshape(-1)[flat]
    kept = batched_nms(fb, fs, fi * num_groups + fg, iou_thr)
    img = fi[kept]
    order = torch.sort(img, stable=True).indices  # by image, descending score inside each image
    kept, img = kept[order], img[order]
    counts = torch.bincount(img, minlength=b)
    rank = torch.arange(img.numel(), device=img.device) - (torch.cumsum(counts, 0) - counts)[img]
    keep = rank < max_per_img
    kept, img, rank = kept[keep], img[keep], rank[keep]
    p = max(1, min(max_per_img, int(counts.max()) if b else 0))
    out_boxes = boxes.new_zeros(b, p, 4)
    out_scores = scores.new_zeros(b, p)
    out_valid = torch.zeros(b, p, dtype=torch.bool, device=scores.device)
    out_boxes[img, rank] = fb[kept]
    out_scores[img, rank] = fs[kept]
    out_valid[img, rank] = True
    return out_boxes, out_scores, out_valid
