"""Detection preprocessing: keep-ratio resize, horizontal flip, normalise.

Two styles share the scale ``min(min_size / short side, max_size / long side)`` (upscaling allowed):

- ``"mmdet"`` (:class:`DetectionTransform`, the default): albumentations resizes the uint8 image to the
  nearest-pixel size (mmdetection's rule for ``img_scale=(max_size, min_size)``), then normalises. The
  target size depends on the image, so one albumentations ``Compose`` is built per output size and cached.
- ``"torchvision"`` (:class:`TorchvisionTransform`): torchvision's ``GeneralizedRCNNTransform``, to the bit:
  the image is normalised in float first, then resized bilinearly by ``F.interpolate`` with the scale
  factor, which floors the output size.
"""
from __future__ import annotations

import random
from typing import Dict, Sequence, Tuple

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F

# ImageNet's RGB mean / std in 0-255 pixel units (torchvision's 0.485.. / 0.229.. x 255): the one definition of
# the default normalisation (the config's data.mean / data.std use it)
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def keep_ratio_size(h: int, w: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """Output (h, w) under the mmdetection keep-ratio rule, rounded to the nearest pixel."""
    scale = min(min_size / min(h, w), max_size / max(h, w))
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


class DetectionTransform:
    """``(image HxWx3 uint8 RGB, boxes [M,4] x1y1x2y2, labels [M], difficult [M] or None)`` ->
    ``(image [3,h,w] float32, boxes [M,4] float32, labels [M] int64, difficult [M] bool, meta)``.

    Boxes, labels and difficult flags come back in the input order (``difficult=None`` means all False).

    ``meta``: ``img_size`` (h, w), ``scale_factor`` (sx, sy, sx, sy) with original = resized / scale,
    ``flipped``. Boxes are never dropped: a changed box count raises.

    Optional keyword inputs (the COCO path; the return signature stays the same):

    * ``masks``: M uint8 bitmasks [H, W] (list or array [M, H, W]) aligned with ``boxes``. They get the same
      resize (nearest-neighbour sampled at pixel centres) and flip, and come back as
      ``meta["masks"]``, uint8 numpy [M, h, w], in box order.
    * ``ignore_boxes``: [R, 4] x1y1x2y2 regions (COCO crowd objects). They get the same scale and flip,
      clipped to the image like ``boxes``, and come back as ``meta["ignore_boxes"]``, float32 [R, 4].

    A key is added to ``meta`` only when its argument is given (not None)."""

    def __init__(self, train: bool, min_size: int = 800, max_size: int = 1333, flip_prob: float = 0.5,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.train, self.min_size, self.max_size = train, min_size, max_size
        self.flip_prob = flip_prob if train else 0.0
        self.mean, self.std = tuple(mean), tuple(std)
        self._pipelines: Dict[Tuple[int, int], A.Compose] = {}

    def _pipeline(self, h: int, w: int, flip: bool) -> A.Compose:
        key = (h, w, flip)
        if key not in self._pipelines:
            if len(self._pipelines) > 512:
                self._pipelines.clear()
            # masks: nearest-neighbour at pixel centres (INTER_NEAREST_EXACT) so a mask stays aligned with
            # its continuously scaled box; plain INTER_NEAREST samples pixel corners (half-pixel shift)
            steps = [A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST_EXACT)]
            if flip:
                steps.append(A.HorizontalFlip(p=1.0))
            # mean/std are in 0-255 units, so max_pixel_value = 1 leaves the pixels unscaled
            steps.append(A.Normalize(mean=self.mean, std=self.std, max_pixel_value=1.0))
            self._pipelines[key] = A.Compose(
                steps, bbox_params=A.BboxParams(format="pascal_voc", label_fields=["order"], min_area=0.0,
                                                min_visibility=0.0, clip=True))
        return self._pipelines[key]

    def __call__(self, image: np.ndarray, boxes, labels, difficult=None, masks=None, ignore_boxes=None):
        h0, w0 = image.shape[:2]
        h, w = keep_ratio_size(h0, w0, self.min_size, self.max_size)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        n = len(boxes)
        # the loaders drop such boxes (counted in their report); here they would make albumentations raise
        # its own error or, with other settings, drop the box without a word
        inside = np.minimum(boxes[:, 2:], [w0, h0]) - np.maximum(boxes[:, :2], 0)
        bad = np.flatnonzero((inside <= 0).any(axis=1))
        if len(bad):
            raise ValueError(f"box {int(bad[0])} {boxes[bad[0]].tolist()} (of {n}) has no positive width and height "
                             f"inside the {w0} x {h0} image; boxes must keep an area after clipping")
        difficult = np.zeros(n, dtype=bool) if difficult is None else difficult
        # the flip is drawn here (Python's RNG, seeded per DataLoader worker) so that it is known exactly
        flip = self.flip_prob > 0 and random.random() < self.flip_prob
        extra = {}
        if masks is not None:
            masks = _as_mask_array(masks, n, h0, w0)
            if len(masks):  # albumentations cannot stack an empty list of masks
                extra["masks"] = masks
        out = self._pipeline(h, w, flip)(image=image, bboxes=boxes, order=list(range(n)), **extra)
        if len(out["bboxes"]) != n:
            raise ValueError(f"albumentations dropped {n - len(out['bboxes'])} of {n} boxes; boxes must have "
                             f"positive width and height inside the image")
        # albumentations may reorder boxes; 'order' carries each box's original index
        new_boxes = np.zeros((n, 4), dtype=np.float32)
        new_boxes[np.asarray(out["order"], dtype=np.int64)] = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        image_t = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
        sx, sy = w / w0, h / h0
        meta = {"img_size": (h, w), "scale_factor": (sx, sy, sx, sy), "flipped": flip}
        if masks is not None:
            # masks are image-shaped, not reordered by albumentations: index i is still box i
            meta["masks"] = (np.ascontiguousarray(np.asarray(out["masks"], dtype=np.uint8)) if len(masks)
                             else np.zeros((0, h, w), np.uint8))
        if ignore_boxes is not None:
            meta["ignore_boxes"] = _scale_flip_boxes(ignore_boxes, sx, sy, w, h, flip)
        return image_t, new_boxes, np.asarray(labels, dtype=np.int64), np.asarray(difficult, dtype=bool), meta


def _as_mask_array(masks, n: int, h0: int, w0: int) -> np.ndarray:
    """Stack bitmasks into uint8 [M, H0, W0], checking the count and size against boxes and image."""
    arr = np.zeros((0, h0, w0), np.uint8) if len(masks) == 0 else np.asarray(
        np.stack([np.asarray(m) for m in masks]) if isinstance(masks, (list, tuple)) else masks)
    if arr.ndim != 3 or arr.shape[1:] != (h0, w0) or len(arr) != n:
        raise ValueError(f"masks must be [{n}, {h0}, {w0}] (one per box, image-sized), got {arr.shape}")
    return arr.astype(np.uint8, copy=False)


def _scale_flip_boxes(boxes, sx: float, sy: float, w: int, h: int, flip: bool) -> np.ndarray:
    """x1y1x2y2 boxes of the original image -> the resized (and flipped) image of size (h, w).

    Same arithmetic as albumentations applies to ``boxes`` (scale, clip to the image, x' = w - x), but
    done here so that no crowd region can be dropped or reordered."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)
    b = np.clip(b, 0, np.array([w, h, w, h], np.float32))
    if flip:
        b = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=1)
    return b.astype(np.float32)


class TorchvisionTransform(DetectionTransform):
    """:class:`DetectionTransform`'s interface with torchvision's preprocessing: ``image / 255`` normalised by
    ``mean / 255`` and ``std / 255`` in float32, then ``F.interpolate(scale_factor=scale, mode="bilinear",
    recompute_scale_factor=True, align_corners=False)`` (output size ``floor(h * scale)``); boxes scaled by
    the per-axis size ratios (and clipped to the image), masks resized nearest-neighbour the same way."""

    def __call__(self, image: np.ndarray, boxes, labels, difficult=None, masks=None, ignore_boxes=None):
        h0, w0 = image.shape[:2]
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        n = len(boxes)
        scale = min(self.min_size / min(h0, w0), self.max_size / max(h0, w0))
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255)
        mean = torch.tensor([m / 255 for m in self.mean], dtype=torch.float32)[:, None, None]
        std = torch.tensor([s / 255 for s in self.std], dtype=torch.float32)[:, None, None]
        x = F.interpolate(((x - mean) / std)[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                          align_corners=False)[0]
        h, w = x.shape[-2:]
        sx, sy = w / w0, h / h0
        flip = self.flip_prob > 0 and random.random() < self.flip_prob
        ratio = np.array([sx, sy, sx, sy], np.float32)
        new_boxes = np.clip(boxes * ratio, 0, np.array([w, h, w, h], np.float32))
        if flip:
            x = x.flip(-1)
            new_boxes = np.stack([w - new_boxes[:, 2], new_boxes[:, 1], w - new_boxes[:, 0], new_boxes[:, 3]], 1)
        meta = {"img_size": (h, w), "scale_factor": (sx, sy, sx, sy), "flipped": flip}
        if masks is not None:
            m = torch.from_numpy(_as_mask_array(masks, n, h0, w0).copy())
            m = F.interpolate(m[:, None].float(), scale_factor=scale, recompute_scale_factor=True)[:, 0] if n else \
                torch.zeros(0, h, w)
            meta["masks"] = (m.flip(-1) if flip else m).to(torch.uint8).numpy()
        if ignore_boxes is not None:
            meta["ignore_boxes"] = _scale_flip_boxes(ignore_boxes, sx, sy, w, h, flip)
        difficult = np.zeros(n, dtype=bool) if difficult is None else difficult
        return (x.contiguous(), new_boxes.astype(np.float32), np.asarray(labels, dtype=np.int64),
                np.asarray(difficult, dtype=bool), meta)


# data.preprocess -> transform class
PREPROCESS = {"mmdet": DetectionTransform, "torchvision": TorchvisionTransform}


def build_transforms(train: bool, min_size: int = 800, max_size: int = 1333, flip_prob: float = 0.5,
                     mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     style: str = "mmdet") -> DetectionTransform:
    if style not in PREPROCESS:
        raise ValueError(f"preprocess style must be one of {sorted(PREPROCESS)}, got {style!r}")
    return PREPROCESS[style](train, min_size, max_size, flip_prob, mean, std)
