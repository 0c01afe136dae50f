"""A pretrained backbone made here: ResNet-18 trained to classify crops of the synthetic shapes.

No ImageNet weights reach this machine, so the closest stand-in for the paper's ImageNet initialisation is a
backbone pretrained on a classification task drawn from the same generator with its own seed (images the
detector never sees): each object's box, grown to a square with 20% context, is one example of its class,
and square background patches that cover no object are a fourth class. The result is saved in torchvision's
ResNet state-dict layout (``fc`` included), so ``model.backbone.pretrained: PATH`` loads it like the ImageNet
file. Inputs are normalised with the detection configs' ImageNet mean / std.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, Tuple

import cv2
import numpy as np
import torch
import torchvision
from torch import nn

from datasets.shapes import SHAPE_KINDS, render_scene
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

MEAN, STD = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)


def _square(cx: float, cy: float, side: float, w: int, h: int) -> Tuple[int, int, int, int]:
    side = min(max(side, 12.0), float(min(w, h)))
    x1 = int(round(min(max(cx - side / 2, 0), w - side)))
    y1 = int(round(min(max(cy - side / 2, 0), h - side)))
    return x1, y1, x1 + int(side), y1 + int(side)


def make_crops(seed: int, first: int, count: int, size: int = 64, image_size: int = 128,
               background_per_image: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """``(crops uint8 [N, size, size, 3], labels int64 [N])`` from scenes ``first .. first + count - 1`` of
    ``seed``: label 0 background, 1 + k the k-th shape kind."""
    rng = np.random.default_rng([seed, first])
    xs, ys = [], []
    for i in range(first, first + count):
        img, boxes, labels = render_scene(seed, i, image_size)
        h, w = img.shape[:2]
        for (x1, y1, x2, y2), lab in zip(boxes, labels):
            sx1, sy1, sx2, sy2 = _square((x1 + x2) / 2, (y1 + y2) / 2, 1.2 * max(x2 - x1, y2 - y1), w, h)
            xs.append(cv2.resize(img[sy1:sy2, sx1:sx2], (size, size), interpolation=cv2.INTER_AREA))
            ys.append(int(lab) + 1)
        for _ in range(background_per_image):
            for _try in range(20):  # a square that overlaps no object by more than 5% of its area
                side = rng.uniform(16, min(h, w) / 2)
                c = _square(rng.uniform(0, w), rng.uniform(0, h), side, w, h)
                inter = (np.clip(np.minimum(boxes[:, 2], c[2]) - np.maximum(boxes[:, 0], c[0]), 0, None)
                         * np.clip(np.minimum(boxes[:, 3], c[3]) - np.maximum(boxes[:, 1], c[1]), 0, None))
                if (inter <= 0.05 * (c[2] - c[0]) * (c[3] - c[1])).all():
                    xs.append(cv2.resize(img[c[1]:c[3], c[0]:c[2]], (size, size), interpolation=cv2.INTER_AREA))
                    ys.append(0)
                    break
    return np.stack(xs), np.array(ys, np.int64)


def _tensor(crops: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(((crops.astype(np.float32) - MEAN) / STD).transpose(0, 3, 1, 2).copy())


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    hits = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    model.train()
    return hits / len(x)


def pretrain(out: str, steps: int = 600, batch_size: int = 64, lr: float = 2e-3, seed: int = 1234,
             train_scenes: int = 3000, test_scenes: int = 300, size: int = 64,
             log: Callable[[str], None] = print) -> Dict:
    """Train ResNet-18 on shape crops of generator seed ``seed`` for ``steps`` AdamW steps (cosine decay) and
    save its state dict to ``out``; returns ``{"path", "train_acc", "test_acc", "examples", "seconds"}``."""
    tic = time.perf_counter()
    torch.manual_seed(seed)
    xs, ys = make_crops(seed, 0, train_scenes, size)
    xt, yt = make_crops(seed, train_scenes, test_scenes, size)
    x, y, x_test, y_test = _tensor(xs), torch.from_numpy(ys), _tensor(xt), torch.from_numpy(yt)
    log(f"pretrain: {len(x)} training crops, {len(x_test)} test crops ({np.bincount(ys).tolist()} per class: "
        f"background, {', '.join(SHAPE_KINDS)}), made in {time.perf_counter() - tic:.0f} s")
    model = torchvision.models.resnet18(num_classes=1 + len(SHAPE_KINDS))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        xb = x[idx]
        flip = torch.rand(batch_size, generator=g) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        loss = nn.functional.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps:
            log(f"pretrain: step {step}/{steps}, loss {loss.item():.3f}")
    result = {"train_acc": accuracy(model, x[:2000], y[:2000]), "test_acc": accuracy(model, x_test, y_test),
              "examples": len(x), "steps": steps, "seconds": time.perf_counter() - tic, "path": out}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    torch.save(model.state_dict(), out)
    log(f"pretrain: test accuracy {result['test_acc']:.3f} (train {result['train_acc']:.3f}) after {steps} steps, "
        f"{result['seconds']:.0f} s; saved {out}")
    return result
