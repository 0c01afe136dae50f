"""Anchor generation for FPN detectors.

Boxes are (x1, y1, x2, y2) in the padded input image's pixel coordinates. Anchors of level ``l`` are
centred at ``((j + center_offset) * stride_l, (i + center_offset) * stride_l)`` for feature-map cell
``(i, j)``; ``center_offset = 0`` reproduces mmdetection 2.x and torchvision, 0.5 puts the centre in
the middle of the cell.

Within a cell, anchors are ordered ratio-major then scale (``a = r * S + s``), and over a level the
order is ``(i, j, a)``.

``style="torchvision"`` reproduces torchvision's ``AnchorGenerator`` to the bit: each anchor size
``base_size * scale`` is truncated to an integer, the cell anchors are computed in float32 and rounded to
whole pixels, and each level's stride is inferred per axis as ``padded image size // feature size`` (at
800 x 1216, P6 and P7 get strides 61 x 64 and 114 x 121 instead of 64 and 128). ``"mmdet"`` (the default)
keeps exact sizes and nominal strides. Heads must lay out their predictions the same way: a conv output of shape
``[B, A * K, H, W]`` is permuted to ``[B, H, W, A, K]`` and flattened, see ``flatten_level_outputs``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor


class AnchorGenerator:
    """Generates anchors for several feature levels and caches them by (sizes, device, dtype).

    Args:
        strides: stride in pixels of each level, e.g. (8, 16, 32, 64, 128) for P3-P7.
        base_sizes: anchor base size per level (defaults to ``octave_base_scale * stride``).
        octave_base_scale: base size in units of the stride (RetinaNet: 4).
        scales_per_octave: number of scales ``2 ** (k / scales_per_octave)`` per level (RetinaNet: 3).
        scales: explicit scale multipliers; overrides the octave parameters (Faster R-CNN RPN: (8,)).
        ratios: height / width ratios.
        center_offset: see module docstring.
        style: ``"mmdet"`` or ``"torchvision"``, see module docstring.
    """

    STYLES = ("mmdet", "torchvision")

    def __init__(
        self,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        octave_base_scale: float = 4.0,
        scales_per_octave: int = 3,
        scales: Sequence[float] | None = None,
        base_sizes: Sequence[float] | None = None,
        center_offset: float = 0.0,
        style: str = "mmdet",
    ):
        if style not in self.STYLES:
            raise ValueError(f"anchor style must be one of {self.STYLES}, got {style!r}")
        if not strides:
            raise ValueError("AnchorGenerator needs at least one stride")
        if scales is None:
            scales = [octave_base_scale * 2 ** (k / scales_per_octave) for k in range(scales_per_octave)]
        if base_sizes is not None and len(base_sizes) != len(strides):
            raise ValueError(f"base_sizes has {len(base_sizes)} entries but strides has {len(strides)}")
        if any(r <= 0 for r in ratios) or any(s <= 0 for s in scales):
            raise ValueError(f"ratios {list(ratios)} and scales {list(scales)} must be positive")
        self.strides = [int(s) for s in strides]
        self.ratios = [float(r) for r in ratios]
        self.scales = [float(s) for s in scales]
        self.base_sizes = [float(b) for b in base_sizes] if base_sizes is not None else [float(s) for s in self.strides]
        self.center_offset = float(center_offset)
        self.style = style
        self._cache: Dict[Tuple, Tuple[Tensor, List[int]]] = {}

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.ratios) * len(self.scales)

    def cell_anchors(self, level: int) -> Tensor:
        """Anchors of one cell centred at the origin, shape [A, 4] in float64 (exact sizes, ``"mmdet"``) or
        whole pixels (``"torchvision"``: integer sizes, float32 arithmetic, rounded half to even)."""
        size = self.base_sizes[level]
        if self.style == "torchvision":
            sizes = torch.tensor([float(int(size * s)) for s in self.scales], dtype=torch.float32)
            h_ratio = torch.tensor(self.ratios, dtype=torch.float32).sqrt()
            ws = ((1.0 / h_ratio)[:, None] * sizes[None, :]).reshape(-1)
            hs = (h_ratio[:, None] * sizes[None, :]).reshape(-1)
            return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round().double()
        ratios = torch.tensor(self.ratios, dtype=torch.float64)
        scales = torch.tensor(self.scales, dtype=torch.float64)
        h_ratio = ratios.sqrt()
        w_ratio = 1.0 / h_ratio
        ws = (size * w_ratio[:, None] * scales[None, :]).reshape(-1)
        hs = (size * h_ratio[:, None] * scales[None, :]).reshape(-1)
        return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=1)

    def level_strides(self, sizes: Sequence[Tuple[int, int]], image_size: Optional[Tuple[int, int]]):
        """(stride_y, stride_x) of each level: the nominal stride, or with ``style="torchvision"`` and the
        padded ``image_size`` (H, W) known, ``(H // h, W // w)`` for a feature map of size (h, w)."""
        if self.style != "torchvision" or image_size is None:
            return [(s, s) for s in self.strides]
        return [(int(image_size[0]) // int(h), int(image_size[1]) // int(w)) for h, w in sizes]

    def grid_anchors(self, sizes: Sequence[Tuple[int, int]], device, dtype=torch.float32,
                     image_size: Optional[Tuple[int, int]] = None) -> Tuple[Tensor, List[int]]:
        """All anchors for feature maps of the given (H, W) sizes; ``image_size`` is the padded input's (H, W),
        used by ``style="torchvision"`` to infer the strides.

        Returns:
            anchors: [sum_l H_l * W_l * A, 4], levels concatenated in order.
            counts: number of anchors per level.
        """
        if len(sizes) != len(self.strides):
            raise ValueError(f"got {len(sizes)} feature maps for {len(self.strides)} anchor strides")
        strides = self.level_strides(sizes, image_size)
        key = (tuple(tuple(int(v) for v in s) for s in sizes), tuple(strides), str(device), dtype)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        per_level = []
        for level, ((h, w), (stride_y, stride_x)) in enumerate(zip(sizes, strides)):
            ys = (torch.arange(h, dtype=torch.float64) + self.center_offset) * stride_y
            xs = (torch.arange(w, dtype=torch.float64) + self.center_offset) * stride_x
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
            per_level.append((shifts + self.cell_anchors(level)[None]).reshape(-1, 4))
        anchors = torch.cat(per_level).to(device=device, dtype=dtype)
        counts = [a.shape[0] for a in per_level]
        if len(self._cache) > 64:  # varying input sizes: keep the cache bounded
            self._cache.clear()
        self._cache[key] = (anchors, counts)
        return anchors, counts

    def __call__(self, features: Sequence[Tensor], image_size: Optional[Tuple[int, int]] = None
                 ) -> Tuple[Tensor, List[int]]:
        """Anchors for the feature maps [B, C, h_l, w_l] of a padded input of size ``image_size`` (H, W)."""
        sizes = [tuple(f.shape[-2:]) for f in features]
        return self.grid_anchors(sizes, features[0].device, torch.float32, image_size)


def flatten_level_outputs(outputs: Sequence[Tensor], k: int) -> Tensor:
    """[B, A*K, H, W] per level -> [B, sum_l H*W*A, K], matching the anchor order of AnchorGenerator."""
    flat = []
    for x in outputs:
        b, _, h, w = x.shape
        flat.append(x.view(b, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, k))
    return torch.cat(flat, dim=1)


def level_index(counts: List[int], device) -> Tensor:
    """[N] FPN level (0 = first) of each anchor of the concatenated levels with ``counts`` anchors each
    (filled on the device: no host-to-device copy of ``counts``)."""
    return torch.cat([torch.full((n,), lvl, dtype=torch.long, device=device) for lvl, n in enumerate(counts)])


def level_groups(counts: List[int], device, per_level: bool):
    """``(groups, num_groups)`` for a per-group normaliser (the IoU-balanced losses' Z): each anchor's FPN
    level [N] and the number of levels when ``per_level``, else ``(None, 1)`` (one group: the batch)."""
    return (level_index(counts, device), len(counts)) if per_level else (None, 1)
