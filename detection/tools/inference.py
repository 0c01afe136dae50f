"""Run a detector on raw images: the config's test-time preprocessing, batching, and detections mapped back
to each image's own pixels.

    model = detection.load_model("checkpoints/last.pth")
    dets = predict(model, [image_rgb_uint8, ...])   # one dict per image: boxes, scores, labels (, masks)

Images are ``H x W x 3`` uint8 RGB arrays of the stored pixels (as ``datasets.read_image(path)`` gives them:
no EXIF rotation, which ``cv2.imread``'s default and PIL's ``exif_transpose`` would apply). Boxes are
(x1, y1, x2, y2) in the input image's pixels, labels index ``model.classes``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

import datasets
from detection import builders
from detection.config.schema import Config


def prepare(images: Sequence[np.ndarray], cfg: Config, transform=None):
    """``(batch [B, 3, H, W], targets)`` for raw images: each preprocessed (``transform``, default ``cfg``'s
    test preprocessing), padded to ``data.size_divisor``, with the ``orig_size`` / ``img_size`` /
    ``scale_factor`` the models use to map boxes back."""
    transform = transform or builders.build_transform(cfg, train=False)
    samples = []
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image {i}: expected an H x W x 3 uint8 RGB array, got {image.dtype} {image.shape}")
        x, _, _, _, meta = transform(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
        samples.append((x, {"orig_size": tuple(image.shape[:2]), "img_size": tuple(meta["img_size"]),
                            "scale_factor": torch.tensor(meta["scale_factor"], dtype=torch.float32)}))
    return datasets.collate_detection(samples, size_divisor=cfg.data.size_divisor)


@torch.no_grad()
def predict(model, images: Sequence[np.ndarray], cfg: Optional[Config] = None, batch_size: int = 4) -> List[Dict]:
    """Detections of ``model`` (eval mode) on raw images, in batches; ``cfg`` defaults to the config
    :func:`detection.load_model` attached (``model.config``)."""
    cfg = cfg or getattr(model, "config", None)
    if cfg is None:
        raise ValueError("predict needs the model's config: load the model with detection.load_model or pass cfg")
    device = next(model.parameters()).device
    transform = builders.build_transform(cfg, train=False)  # once: it caches its resize pipelines
    out: List[Dict] = []
    for start in range(0, len(images), batch_size):
        batch, targets = prepare(images[start:start + batch_size], cfg, transform)
        dets = model(batch.to(device), targets)
        out += [{k: v.cpu() for k, v in d.items()} for d in dets]
    return out
