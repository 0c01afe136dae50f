"""Mask branch building blocks for Mask R-CNN: the FCN mask head, mask targets, the mask loss and pasting.

Boxes are (x1, y1, x2, y2) in continuous pixel coordinates: pixel ``i`` covers ``[i, i + 1)`` and its centre
is ``i + 0.5``. A RoI's ``S x S`` mask grid splits the box into equal cells; cell ``j`` of a box ``[x1, x2]``
has its centre at ``x1 + (j + 0.5) * (x2 - x1) / S`` (and likewise along y). Targets (``mask_targets``)
and pasting (``paste_masks``) both use this frame, so a predicted mask maps back onto the pixels it was
trained against.

- ``MaskHead``: ``[R, in_channels, 14, 14]`` RoI features -> ``[R, num_classes, 28, 28]`` logits.
- ``mask_targets``: gt masks cropped to the positive RoIs and resized to ``S x S``, in one ``roi_align`` call.
- ``mask_loss``: per-pixel binary cross-entropy on each RoI's own class channel.
- ``paste_masks``: ``[D, S, S]`` probabilities -> ``[D, H, W]`` boolean masks in the output image.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

# Memory bound for one chunk of ``paste_masks``: the sampling grid (8 bytes per pixel), the sampled
# float values (4) and the boolean result and in-box mask (1 + 1), about 16 bytes per output pixel.
PASTE_CHUNK_BYTES = 256 * 2 ** 20
_PASTE_BYTES_PER_PIXEL = 16


class MaskHead(nn.Module):
    """FCN mask head (He et al. 2017; mmdetection's ``FCNMaskHead``, torchvision's ``MaskRCNNHeads``).

    ``num_convs`` 3x3 convolutions with ReLU, a 2x2 stride-2 transposed convolution with ReLU, and a 1x1
    predictor with one output per class. ``forward(x [R, in_channels, h, w]) -> [R, num_classes, 2h, 2w]``
    logits (14x14 RoI features give 28x28 masks). Every (transposed) convolution is initialised with
    Kaiming-normal (fan_out, relu) weights and zero biases, as mmdetection and torchvision do.
    """

    def __init__(self, in_channels: int, num_classes: int, conv_channels: int = 256, num_convs: int = 4):
        super().__init__()
        if num_classes < 1 or num_convs < 0:
            raise ValueError(f"need num_classes >= 1 and num_convs >= 0, got {num_classes} and {num_convs}")
        self.num_classes = num_classes
        layers: List[nn.Module] = []
        for i in range(num_convs):
            layers += [nn.Conv2d(in_channels if i == 0 else conv_channels, conv_channels, 3, padding=1),
                       nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        last = conv_channels if num_convs > 0 else in_channels
        self.upsample = nn.ConvTranspose2d(last, conv_channels, 2, stride=2)
        self.predictor = nn.Conv2d(conv_channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(x)
        x = F.relu(self.upsample(x), inplace=True)
        return self.predictor(x)


def mask_targets(gt_masks: List[Tensor], rois: Tensor, roi_image: Tensor, roi_gt: Tensor, size: int = 28,
                 *, sampling_ratio: int = 0) -> Tensor:
    """Binary mask targets of the positive RoIs: each RoI's gt mask cropped to the RoI and resized.

    Args:
        gt_masks: per image a [M_i, h_i, w_i] (uint8 or bool, 0/1) tensor in the (resized) input frame,
            aligned with that image's gt boxes.
        rois: [R, 4] positive RoIs (x1, y1, x2, y2) in input pixels.
        roi_image: [R] index of each RoI's image in the batch.
        roi_gt: [R] index of each RoI's matched gt within its image.
        size: output side S.
        sampling_ratio: ``roi_align`` samples per bin and axis; 0 (default, as mmdetection) adapts it to
            ``ceil(roi side / S)``, so every bin averages the mask over its whole area.
    Returns:
        float32 [R, S, S] in {0, 1}, on ``rois.device``.

    All images' masks are padded into one [sum M_i, 1, Hmax + 2, Wmax + 2] float tensor (one zero pixel
    around every mask, so that outside its own image a mask reads as background whatever the sizes of the
    other images in the batch) and cropped with a single ``roi_align(aligned=True)`` call that uses the
    global mask index ``offset[image] + gt`` as the RoI batch index.

    Why ``>= 0.5``: with ``aligned=True`` a mask pixel's value sits at the pixel centre, so bilinear
    interpolation of a 0/1 raster passes 0.5 exactly half-way between an inside and an outside pixel centre,
    i.e. on the pixel boundary that is the object's edge. Thresholding at 0.5 therefore puts the target's
    edge where the rasterised object's edge is, neither growing nor shrinking it; when a bin averages
    several samples, 0.5 is the majority vote "at least half of the bin is object". mmdetection binarises
    the same way (torchvision keeps the soft values instead).
    """
    device = rois.device
    r = rois.shape[0]
    if r == 0:
        return torch.zeros(0, size, size, dtype=torch.float32, device=device)
    counts = [int(m.shape[0]) for m in gt_masks]
    hmax = max(int(m.shape[-2]) for m in gt_masks)
    wmax = max(int(m.shape[-1]) for m in gt_masks)
    with torch.no_grad():
        padded = torch.zeros(sum(counts), 1, hmax + 2, wmax + 2, dtype=torch.float32, device=device)
        start = 0
        for m, n in zip(gt_masks, counts):  # one copy per image: the masks differ in shape
            if n:
                padded[start:start + n, 0, 1:1 + m.shape[-2], 1:1 + m.shape[-1]] = m.to(device=device,
                                                                                       dtype=torch.float32)
            start += n
        offsets = torch.tensor([0] + counts[:-1], dtype=torch.long).cumsum(0).to(device)
        index = offsets[roi_image.long()] + roi_gt.long()
        # +1: the pad pixel shifts every mask one pixel right and down
        boxes = torch.cat([index[:, None].to(torch.float32), rois.detach().to(torch.float32) + 1.0], dim=1)
        crops = roi_align(padded, boxes, (size, size), spatial_scale=1.0, sampling_ratio=sampling_ratio,
                          aligned=True)
        return (crops[:, 0] >= 0.5).to(torch.float32)


def mask_loss(logits: Tensor, targets: Tensor, labels: Tensor) -> Tensor:
    """Mean binary cross-entropy (with logits) between each RoI's own-class mask and its target.

    Args:
        logits: [R, C, S, S] mask logits.
        targets: [R, S, S] float targets in {0, 1}.
        labels: [R] 0-based class of each positive RoI; only that channel gets a loss (and a gradient).
    Returns:
        float32 scalar, the mean over R * S * S elements, computed in float32 even under autocast. With
        R = 0 it is ``logits.sum() * 0``: zero, yet still connected to the head's parameters so that
        DistributedDataParallel sees them used.
    """
    if logits.shape[0] == 0:
        return logits.float().sum() * 0.0
    picked = logits[torch.arange(logits.shape[0], device=logits.device), labels.long()]
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return F.binary_cross_entropy_with_logits(picked.float(), targets.to(device=logits.device,
                                                                             dtype=torch.float32))


def paste_masks(probs: Tensor, boxes: Tensor, image_hw: Tuple[int, int], threshold: float = 0.5,
                chunk_size: Optional[int] = None) -> Tensor:
    """Paste box-frame mask probabilities into the image and binarise them.

    Args:
        probs: [D, S, S] probabilities of each detection's own class, in its box frame.
        boxes: [D, 4] (x1, y1, x2, y2) in the output image's pixels.
        image_hw: (H, W) of the output image.
        threshold: a pixel is foreground when the interpolated probability is ``>= threshold``.
        chunk_size: detections per ``grid_sample`` call; default: as many as keep a chunk's buffers under
            ``PASTE_CHUNK_BYTES`` (about 16 bytes per output pixel).
    Returns:
        bool [D, H, W] on ``probs.device``.

    Pixel (y, x) is sampled at its centre (x + 0.5, y + 0.5): the box ``[x1, x2] x [y1, y2]`` is mapped onto
    the S x S grid with cell centres at ``x1 + (j + 0.5) * w / S`` and the probability is interpolated
    bilinearly (``grid_sample``, ``align_corners=False``). Pixels whose centre is outside the half-open box
    ``[x1, x2) x [y1, y2)`` are False. Inside the box, within half a cell of its edge (beyond the outermost
    cell centres), the outermost cells' values are extended (``padding_mode="border"``) rather than faded
    towards zero, because the targets (``mask_targets``) label those edge cells for the area up to the box
    edge; detectron2 and mmdetection pad with zeros there instead, which shrinks large masks slightly.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    d = probs.shape[0]
    device = probs.device
    out = torch.zeros(d, h, w, dtype=torch.bool, device=device)
    if d == 0 or h == 0 or w == 0:
        return out
    if chunk_size is None:
        chunk_size = max(1, PASTE_CHUNK_BYTES // (_PASTE_BYTES_PER_PIXEL * h * w))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    probs = probs.to(torch.float32)
    boxes = boxes.to(device=device, dtype=torch.float32)
    px = torch.arange(w, device=device, dtype=torch.float32) + 0.5  # pixel centres
    py = torch.arange(h, device=device, dtype=torch.float32) + 0.5
    for start in range(0, d, chunk_size):  # a loop over chunks of detections, not over detections
        p = probs[start:start + chunk_size]
        b = boxes[start:start + chunk_size]
        n = p.shape[0]
        x1, y1, x2, y2 = (b[:, k:k + 1] for k in range(4))
        bw = (x2 - x1).clamp(min=1e-6)
        bh = (y2 - y1).clamp(min=1e-6)
        # normalised grid coordinates: -1 and +1 are the outer edges of the first and last cells
        gx = (px[None, :] - x1) / bw * 2.0 - 1.0  # [n, W]
        gy = (py[None, :] - y1) / bh * 2.0 - 1.0  # [n, H]
        grid = torch.stack([gx[:, None, :].expand(n, h, w), gy[:, :, None].expand(n, h, w)], dim=-1)
        vals = F.grid_sample(p[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
        in_x = (px[None, :] >= x1) & (px[None, :] < x2)  # [n, W]
        in_y = (py[None, :] >= y1) & (py[None, :] < y2)  # [n, H]
        out[start:start + n] = (vals >= threshold) & in_y[:, :, None] & in_x[:, None, :]
    return out


def paste_masks_torchvision(probs: Tensor, boxes: Tensor, image_hw: Tuple[int, int], threshold: float = 0.5,
                            chunk_size: Optional[int] = None) -> Tensor:
    """``paste_masks`` the way torchvision's Mask R-CNN pastes (``paste_masks_in_image``), batched.

    The S x S mask is padded by one zero cell on each side, the box is grown by ``(S + 2) / S`` about its
    centre and truncated to integer pixels ``[x0, x1] x [y0, y1]`` (both ends included), and the padded mask
    is resized bilinearly (``align_corners=False``) to ``(y1 - y0 + 1) x (x1 - x0 + 1)`` pixels placed there.
    Here each pixel samples that resize directly (``grid_sample`` at the source position the resize would
    use), so no per-detection loop is needed. A pixel is foreground when its value is ``> threshold``
    (torchvision returns the probabilities; its COCO evaluation thresholds them at 0.5). Returns bool
    [D, H, W]."""
    h, w = int(image_hw[0]), int(image_hw[1])
    d, s = probs.shape[0], probs.shape[-1]
    device = probs.device
    out = torch.zeros(d, h, w, dtype=torch.bool, device=device)
    if d == 0 or h == 0 or w == 0:
        return out
    chunk_size = chunk_size or max(1, PASTE_CHUNK_BYTES // (_PASTE_BYTES_PER_PIXEL * h * w))
    padded = F.pad(probs.to(torch.float32), (1, 1, 1, 1))[:, None]  # [D, 1, S + 2, S + 2]
    grow = float(s + 2) / s
    b = boxes.to(device=device, dtype=torch.float32)
    half = (b[:, 2:] - b[:, :2]) * 0.5 * grow
    centre = (b[:, 2:] + b[:, :2]) * 0.5
    corners = torch.cat([centre - half, centre + half], dim=1).to(torch.int64)  # truncation toward zero
    size = (corners[:, 2:] - corners[:, :2] + 1).clamp(min=1)  # [D, 2] (w, h) of the resized mask
    px = torch.arange(w, device=device)
    py = torch.arange(h, device=device)
    n_in = s + 2
    for start in range(0, d, chunk_size):
        sl = slice(start, start + chunk_size)
        c, sz, n = corners[sl], size[sl], padded[sl].shape[0]
        jx = px[None, :] - c[:, 0:1]  # [n, W] column inside the resized mask
        jy = py[None, :] - c[:, 1:2]
        # the resize's source position of output index j: (j + 0.5) * in / out - 0.5, never below 0
        sx = ((jx + 0.5) * (n_in / sz[:, 0:1].to(torch.float32)) - 0.5).clamp(min=0)
        sy = ((jy + 0.5) * (n_in / sz[:, 1:2].to(torch.float32)) - 0.5).clamp(min=0)
        gx, gy = (2 * sx + 1) / n_in - 1, (2 * sy + 1) / n_in - 1
        grid = torch.stack([gx[:, None, :].expand(n, h, w), gy[:, :, None].expand(n, h, w)], dim=-1)
        vals = F.grid_sample(padded[sl], grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
        in_x = (jx >= 0) & (px[None, :] <= c[:, 2:3]) & (jx < sz[:, 0:1])
        in_y = (jy >= 0) & (py[None, :] <= c[:, 3:4]) & (jy < sz[:, 1:2])
        out[sl] = (vals > threshold) & in_y[:, :, None] & in_x[:, None, :]
    return out
