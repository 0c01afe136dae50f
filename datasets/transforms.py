"""albumentations pipelines for detection: keep-ratio resize, horizontal flip, normalise.

The resize follows mmdetection's rule for ``img_scale=(max_size, min_size)``:
``scale = min(min_size / short side, max_size / long side)`` (upscaling allowed). The target size depends
on the image, so one albumentations ``Compose`` is built per output size and cached.
"""
from __future__ import annotations

import random
from typing import Dict, Sequence, Tuple

import albumentations as A
import cv2
import numpy as np
import torch


def keep_ratio_size(h: int, w: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """Output (h, w) under the mmdetection keep-ratio rule, rounded to the nearest pixel."""
    scale = min(min_size / min(h, w), max_size / max(h, w))
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


class DetectionTransform:
    """``(image HxWx3 uint8 RGB, boxes [M,4] x1y1x2y2, labels [M], difficult [M] or None)`` ->
    ``(image [3,h,w] float32, boxes [M,4] float32, labels [M] int64, difficult [M] bool, meta)``.

    Boxes, labels and difficult flags come back in the input order (``difficult=None`` means all False).

    ``meta``: ``img_size`` (h, w), ``scale_factor`` (sx, sy, sx, sy) with original = resized / scale,
    ``flipped``. Boxes are never dropped: a changed box count raises."""

    def __init__(self, train: bool, min_size: int = 800, max_size: int = 1333, flip_prob: float = 0.5,
                 mean: Sequence[float] = (123.675, 116.28, 103.53), std: Sequence[float] = (58.395, 57.12, 57.375)):
        self.train, self.min_size, self.max_size = train, min_size, max_size
        self.flip_prob = flip_prob if train else 0.0
        self.mean, self.std = tuple(mean), tuple(std)
        self._pipelines: Dict[Tuple[int, int], A.Compose] = {}

    def _pipeline(self, h: int, w: int, flip: bool) -> A.Compose:
        key = (h, w, flip)
        if key not in self._pipelines:
            if len(self._pipelines) > 512:
                self._pipelines.clear()
            steps = [A.Resize(h, w, interpolation=cv2.INTER_LINEAR)]
            if flip:
                steps.append(A.HorizontalFlip(p=1.0))
            # mean/std are in 0-255 units, so max_pixel_value = 1 leaves the pixels unscaled
            steps.append(A.Normalize(mean=self.mean, std=self.std, max_pixel_value=1.0))
            self._pipelines[key] = A.Compose(
                steps, bbox_params=A.BboxParams(format="pascal_voc", label_fields=["order"], min_area=0.0,
                                                min_visibility=0.0, clip=True))
        return self._pipelines[key]

    def __call__(self, image: np.ndarray, boxes, labels, difficult=None):
        h0, w0 = image.shape[:2]
        h, w = keep_ratio_size(h0, w0, self.min_size, self.max_size)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        n = len(boxes)
        difficult = np.zeros(n, dtype=bool) if difficult is None else difficult
        # the flip is drawn here (Python's RNG, seeded per DataLoader worker) so that it is known exactly
        flip = self.flip_prob > 0 and random.random() < self.flip_prob
        out = self._pipeline(h, w, flip)(image=image, bboxes=boxes, order=list(range(n)))
        if len(out["bboxes"]) != n:
            raise ValueError(f"albumentations dropped {n - len(out['bboxes'])} of {n} boxes; boxes must have "
                             f"positive width and height inside the image")
        # albumentations may reorder boxes; 'order' carries each box's original index
        new_boxes = np.zeros((n, 4), dtype=np.float32)
        new_boxes[np.asarray(out["order"], dtype=np.int64)] = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        image_t = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
        sx, sy = w / w0, h / h0
        meta = {"img_size": (h, w), "scale_factor": (sx, sy, sx, sy), "flipped": flip}
        return image_t, new_boxes, np.asarray(labels, dtype=np.int64), np.asarray(difficult, dtype=bool), meta


def build_transforms(train: bool, min_size: int = 800, max_size: int = 1333, flip_prob: float = 0.5,
                     mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)) -> DetectionTransform:
    return DetectionTransform(train, min_size, max_size, flip_prob, mean, std)
