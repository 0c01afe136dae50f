"""Batching of detection samples: images padded bottom/right to a common, divisible size."""
from __future__ import annotations

import math
from typing import List, Tuple

import torch


def collate_detection(batch: List[Tuple[torch.Tensor, dict]], size_divisor: int = 32, pad_value: float = 0.0):
    """``[(image [3, h_i, w_i], target), ...]`` -> ``(images [B, 3, H, W], [target, ...])``.

    H and W are the largest h_i and w_i rounded up to a multiple of ``size_divisor``, so that every FPN
    level has an integer size. Padding sits right and below, so box coordinates are unchanged."""
    if not batch:
        raise ValueError("collate_detection got an empty batch")
    images = [img for img, _ in batch]
    h = max(img.shape[1] for img in images)
    w = max(img.shape[2] for img in images)
    if size_divisor and size_divisor > 1:
        h = int(math.ceil(h / size_divisor) * size_divisor)
        w = int(math.ceil(w / size_divisor) * size_divisor)
    out = images[0].new_full((len(images), images[0].shape[0], h, w), pad_value)
    for i, img in enumerate(images):
        out[i, :, : img.shape[1], : img.shape[2]].copy_(img)
    return out, [t for _, t in batch]
