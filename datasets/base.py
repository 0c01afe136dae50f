"""What the VOC and COCO loaders share: records parsed once at construction, the start-up file check,
the repair summary, image reading with the size check, the transform call and the target dict.

A subclass fills ``self.records`` (dicts with at least ``path``, ``width``, ``height``, ``image_id``,
``boxes``, ``labels``), ``self.classes``, ``self.sets``, ``self.root``, ``self.report`` and
``self.transforms``, and names its format in ``FORMAT``.
"""
from __future__ import annotations

import os
import stat
from typing import List, Optional, Tuple

import cv2
import numpy as np
import torch

from .exif import SHOWN, exif_orientation
from .report import DataError, missing_files_error


# A JPEG ends with the end-of-image marker FF D9. Entropy-coded data byte-stuffs every FF, so the marker
# cannot occur by chance; a file cut short (an interrupted copy) lacks it, yet OpenCV still decodes it,
# filling the missing rows with grey and warning on stderr without naming the file. Some writers pad after
# the marker, hence a search in the tail rather than a test of the last 2 bytes.
_JPEG_SOI, _JPEG_EOI, _TAIL = b"\xff\xd8", b"\xff\xd9", 1024


def file_problem(path: str) -> Optional[str]:
    """What is wrong with an existing image file before decoding (``None``: nothing): 0 bytes, or a JPEG
    without its end marker. Two small reads: the first bytes and the last KiB."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - _TAIL))
            tail = f.read()
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror or exc})"
    if size == 0:
        return f"{path}: empty file (0 bytes)"
    if head == _JPEG_SOI and _JPEG_EOI not in tail:
        return f"{path}: truncated JPEG (no end-of-image marker); the decoder fills the missing part with grey"
    return None


def decode_stored(path: str) -> Optional[np.ndarray]:
    """BGR uint8 [H, W, 3] of the pixels as stored (``None``: undecodable). OpenCV would apply the EXIF
    orientation tag by default; boxes refer to the stored pixels (``datasets/exif.py``), so every image this
    project reads (training, evaluation, predict, browse, check_data) goes through here."""
    return cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)


def read_image(path: str) -> np.ndarray:
    """RGB uint8 [H, W, 3], the stored pixels (no EXIF rotation); a clear error naming the file for missing,
    empty, truncated (JPEG) or undecodable files."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path} does not exist")
    problem = file_problem(path)
    if problem:
        raise DataError(f"image {problem}")
    img = decode_stored(path)
    if img is None:
        raise DataError(f"image {path} is unreadable or corrupt")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def size_mismatch(path: str, stored_wh: Tuple[int, int], annotated_wh: Tuple[int, int], fmt: str) -> Optional[str]:
    """The message for an image whose stored size is not its annotation's (``None``: they agree). When the file
    carries an EXIF orientation tag the message names it: the usual cause is an annotation made on the view a
    viewer shows, which this project does not read."""
    if tuple(stored_wh) == tuple(annotated_wh):
        return None
    (w0, h0), (w, h) = stored_wh, annotated_wh
    message = f"{path} is {w0}x{h0} (w x h) as stored but its {fmt + ' ' if fmt else ''}annotation says {w}x{h}"
    tag = exif_orientation(path)
    if tag != 1:
        shown = (h0, w0) if tag >= 5 else (w0, h0)  # tags 5-8 swap width and height
        fits = "is that of the shown view" if shown == (w, h) else "matches neither the stored nor the shown view"
        message += (f"; the file carries EXIF orientation {tag} (viewers show it {SHOWN[tag]}) and the annotation's "
                    f"size {fits}: boxes refer to the stored pixels, which this project reads (annotate the stored "
                    f"image, or save the pixels turned and without the tag)")
    return message


class DetectionRecords(torch.utils.data.Dataset):
    FORMAT = ""

    def _check_loaded(self) -> None:
        """No images at all, or missing image files, stop construction (one stat per image, so that one run
        names every gap instead of a crash at the first missing file hours into training)."""
        if not self.records:
            raise DataError(f"no images listed in {self.sets} under {self.root}")
        missing, empty = self._scan_files()
        if missing:
            raise missing_files_error(missing, len(self.records), f"{self.sets} under {self.root}")
        if empty:
            shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            raise DataError(f"{len(empty)} of {len(self.records)} images of {self.sets} under {self.root} are "
                            f"empty (0 bytes): {shown}")

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

    def _scan_files(self) -> Tuple[List[str], List[str]]:
        """Paths of the listed images that are missing, and of those of 0 bytes: one ``stat`` per image."""
        missing, empty = [], []
        for r in self.records:
            try:
                st = os.stat(r["path"])
            except OSError:
                missing.append(r["path"])
                continue
            if not stat.S_ISREG(st.st_mode):
                missing.append(r["path"])
            elif st.st_size == 0:
                empty.append(r["path"])
        return missing, empty

    def check_files(self) -> List[str]:
        """Paths of listed images that are missing (empty when all exist)."""
        return self._scan_files()[0]

    def _read(self, r: dict) -> np.ndarray:
        image = read_image(r["path"])
        problem = size_mismatch(r["path"], image.shape[1::-1], (r["width"], r["height"]), self.FORMAT)
        if problem:
            raise DataError(f"image {problem}")
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
