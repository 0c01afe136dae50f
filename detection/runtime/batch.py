"""Moving a collated batch to the device, and the autocast setting shared by training and inference."""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import Tensor

# train.amp -> the autocast dtype (None: full precision)
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str):
    """The autocast context of ``train.amp`` on ``device`` (disabled for ``"off"``)."""
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def move_batch(batch, device: torch.device, channels_last: bool = False) -> Tuple[Tensor, List[Dict]]:
    """``(images [B, 3, H, W], targets)`` on ``device``: every tensor of every target moves (boxes, labels,
    ignore regions, masks, image sizes, ...), other values (file names, ids) stay as they are."""
    images, targets = batch
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    moved = [{k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in t.items()}
             for t in targets]
    return images, moved
