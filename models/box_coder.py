"""Delta (dx, dy, dw, dh) box coder.

Boxes are (x1, y1, x2, y2) with continuous coordinates, widths ``x2 - x1`` (no +1, as mmdetection 2.x).
Deltas of a box ``g`` relative to a reference ``p``::

    dx = (gx - px) / pw,  dy = (gy - py) / ph,  dw = log(gw / pw),  dh = log(gh / ph)

normalised as ``(delta - means) / stds``. RetinaNet uses means 0 and stds 1; Faster R-CNN's RoI head
uses stds (0.1, 0.1, 0.2, 0.2).

On decoding, ``dw`` and ``dh`` are clamped to ``[-scale_clamp, scale_clamp]`` (``clamp="both"``, the
default) or only from above (``clamp="upper"``, torchvision's ``BoxCoder``: a box may shrink without bound).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

# Largest |dw|, |dh| accepted on decoding: a box may grow at most 1000/16 times its anchor,
# which keeps exp() finite for wild early-training predictions.
DEFAULT_SCALE_CLAMP = abs(math.log(16.0 / 1000.0))


class DeltaBoxCoder:
    def __init__(
        self,
        means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        scale_clamp: float = DEFAULT_SCALE_CLAMP,
        clamp: str = "both",
    ):
        if clamp not in ("both", "upper"):
            raise ValueError(f"clamp must be 'both' or 'upper', got {clamp!r}")
        if len(means) != 4 or len(stds) != 4:
            raise ValueError(f"means and stds need 4 values, got {list(means)} and {list(stds)}")
        if any(s <= 0 for s in stds):
            raise ValueError(f"stds must be positive, got {list(stds)}")
        self.means = tuple(float(m) for m in means)
        self.stds = tuple(float(s) for s in stds)
        self.scale_clamp = float(scale_clamp)
        self.clamp = clamp

    def _stats(self, ref: Tensor) -> Tuple[Tensor, Tensor]:
        means = torch.tensor(self.means, dtype=ref.dtype, device=ref.device)
        stds = torch.tensor(self.stds, dtype=ref.dtype, device=ref.device)
        return means, stds

    def encode(self, refs: Tensor, boxes: Tensor) -> Tensor:
        """Deltas of ``boxes`` relative to ``refs``; both [..., 4] (broadcastable), result [..., 4] float32."""
        refs, boxes = refs.float(), boxes.float()
        pw = refs[..., 2] - refs[..., 0]
        ph = refs[..., 3] - refs[..., 1]
        px = refs[..., 0] + 0.5 * pw
        py = refs[..., 1] + 0.5 * ph
        gw = boxes[..., 2] - boxes[..., 0]
        gh = boxes[..., 3] - boxes[..., 1]
        gx = boxes[..., 0] + 0.5 * gw
        gy = boxes[..., 1] + 0.5 * gh
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
        means, stds = self._stats(deltas)
        return (deltas - means) / stds

    def decode(self, refs: Tensor, deltas: Tensor, max_shape: Optional[Tensor] = None) -> Tensor:
        """Boxes from ``deltas`` relative to ``refs``; [..., 4] each (broadcastable), float32 result.

        Args:
            max_shape: optional (h, w) to clip to, a tensor broadcastable to [..., 2] (e.g. [B, 1, 2]
                for per-image sizes when decoding [B, N, 4]).
        """
        refs, deltas = refs.float(), deltas.float()
        means, stds = self._stats(deltas)
        d = deltas * stds + means
        pw = refs[..., 2] - refs[..., 0]
        ph = refs[..., 3] - refs[..., 1]
        px = refs[..., 0] + 0.5 * pw
        py = refs[..., 1] + 0.5 * ph
        low = -self.scale_clamp if self.clamp == "both" else None
        dw = d[..., 2].clamp(low, self.scale_clamp)
        dh = d[..., 3].clamp(low, self.scale_clamp)
        cx = px + d[..., 0] * pw
        cy = py + d[..., 1] * ph
        w = pw * dw.exp()
        h = ph * dh.exp()
        boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
        if max_shape is not None:
            max_shape = max_shape.to(boxes)
            limit = torch.stack([max_shape[..., 1], max_shape[..., 0]] * 2, dim=-1)
            boxes = torch.minimum(boxes.clamp(min=0), limit)
        return boxes
