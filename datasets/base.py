"""What the VOC and COCO loaders share: records parsed once at construction, the start-up file check,
the repair summary, image reading with the size check, the transform call and the target dict.

A subclass fills ``self.records`` (dicts with at least ``path``, ``width``, ``height``, ``image_id``,
``boxes``, ``labels``), ``self.classes``, ``self.sets``, ``self.root``, ``self.report`` and
``self.transforms``, and names its format in ``FORMAT``.
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

import cv2
import numpy as np
import torch

from .report import DataError, missing_files_error


def read_image(path: str) -> np.ndarray:
    """RGB uint8 [H, W, 3]; a clear error for missing or undecodable files."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path} does not exist")
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"image {path} is unreadable or corrupt")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class DetectionRecords(torch.utils.data.Dataset):
    FORMAT = ""

    def _check_loaded(self) -> None:
        """No images at all, or missing image files, stop construction (one stat per image, so that one run
        names every gap instead of a crash at the first missing file hours into training)."""
        if not self.records:
            raise DataError(f"no images listed in {self.sets} under {self.root}")
        missing = self.check_files()
        if missing:
            raise missing_files_error(missing, len(self.records), f"{self.sets} under {self.root}")

    def summary(self) -> str:
        """What was repaired or skipped (``report``), one line per non-zero counter, under a header."""
        boxes = sum(len(r["labels"]) for r in self.records)
        subset = getattr(self, "subset_note", "")
        return self.report.summary(f"{self.FORMAT} data {'+'.join(self.sets)} under {self.root}: "
                                   f"{len(self.records)} images, {boxes} boxes{subset}")

    def keep_fraction(self, fraction: float, seed: int = 0) -> None:
        """Keep a random ``fraction`` of the images (at least one), in their listed order. The choice depends
        only on the listing and ``seed``, so runs that differ in their training seed train on the same
        subset. The summary line says how many were kept."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        total = len(self.records)
        keep = max(1, round(total * fraction))
        if keep == total:
            return
        g = torch.Generator().manual_seed(seed)
        chosen = sorted(torch.randperm(total, generator=g)[:keep].tolist())
        self.records = [self.records[i] for i in chosen]
        self.subset_note = f" (a fixed random {keep} of {total}: data.train_fraction={fraction:g})"

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def aspect_ratios(self) -> List[float]:
        """Width / height per image, from the annotations (no image decoding)."""
        return [r["width"] / r["height"] for r in self.records]

    def check_files(self) -> List[str]:
        """Paths of listed images that are missing (empty when all exist)."""
        return [r["path"] for r in self.records if not os.path.isfile(r["path"])]

    def _read(self, r: dict) -> np.ndarray:
        image = read_image(r["path"])
        h0, w0 = image.shape[:2]
        if (w0, h0) != (r["width"], r["height"]):
            raise DataError(f"image {r['path']} is {w0}x{h0} (w x h) but its {self.FORMAT} annotation says "
                            f"{r['width']}x{r['height']}")
        return image

    def _transform(self, r: dict, image: np.ndarray, boxes, labels, difficult, **extra) -> Tuple:
        """``(image [3, h, w] float32, boxes, labels, difficult, meta)`` through ``transforms`` (or as is)."""
        if self.transforms is None:
            h0, w0 = image.shape[:2]
            image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
            return image, boxes, labels, difficult, {"img_size": (h0, w0), "scale_factor": (1.0,) * 4,
                                                     "flipped": False, **extra}
        try:
            return self.transforms(image, boxes, labels, difficult, **extra)
        except ValueError as exc:  # albumentations' box errors do not say which image
            raise ValueError(f"transforms failed on {r['path']}: {exc}") from exc

    @staticmethod
    def _target(r: dict, orig_hw, meta: dict, boxes, labels, difficult: Optional[np.ndarray]) -> dict:
        return {
            "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64)),
            "difficult": (torch.zeros(len(labels), dtype=torch.bool) if difficult is None
                          else torch.as_tensor(np.asarray(difficult, dtype=bool))),
            "image_id": r["image_id"],
            "orig_size": tuple(orig_hw),
            "img_size": tuple(meta["img_size"]),
            "scale_factor": torch.tensor(meta["scale_factor"], dtype=torch.float32),
            "flipped": bool(meta["flipped"]),
        }
