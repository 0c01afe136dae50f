"""Validate a config's data without training (behind ``scripts/check_data.py``).

The data sets are built exactly as training builds them (``builders.build_dataset``), so the start-up
errors and the bad-input summaries are the ones a training run would give. Corrupt image files can
only be found by decoding them, which training does lazily (a corrupt file stops it with an error
naming the file, possibly hours in); ``decode=True`` decodes every image up front and lists *all*
corrupt or truncated files and all images whose size differs from their annotation, and notes the images
that carry an EXIF orientation tag (pixels are read as stored, never turned by the tag).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional

from datasets import DataError
from datasets.base import decode_stored, file_problem, size_mismatch
from datasets.exif import SHOWN, exif_orientation
from detection import builders
from detection.config.schema import Config


def check_image(path: str, width: int, height: int, fmt: str = "") -> Optional[str]:
    """Decode one image as training would (the stored pixels); ``None`` when it is fine, else the problem
    (naming ``path``; an EXIF orientation tag is named when the size differs, ``datasets.base.size_mismatch``)."""
    problem = file_problem(path)  # empty, truncated: what read_image refuses before decoding
    if problem:
        return problem
    image = decode_stored(path)
    if image is None:
        return f"{path}: corrupt, cannot be decoded"
    return size_mismatch(path, image.shape[1::-1], (width, height), fmt)


def decode_images(dataset, name: str, workers: int = 4, log: Callable[[str], None] = print) -> List[str]:
    """Decode every image of ``dataset`` (threads: OpenCV releases the GIL), logging progress about
    every 10% (and at the end), then the images that carry an EXIF orientation tag (a note: they are read as
    stored, as their boxes should be, but an annotation tool may have shown them turned); returns all problems
    found, in data set order."""
    records, fmt = dataset.records, dataset.FORMAT
    n, step = len(records), max(100, len(records) // 10)  # about 10 lines for a large set, 1 for a tiny one
    problems: List[str] = []
    tagged: List[str] = []

    def work(r):
        return check_image(r["path"], r["width"], r["height"], fmt), exif_orientation(r["path"])

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i, ((problem, tag), r) in enumerate(zip(pool.map(work, records), records), 1):
            if problem is not None:
                problems.append(problem)
            if tag != 1:
                tagged.append(f"{r['path']} ({tag}: shown {SHOWN[tag]})")
            if i % step == 0 or i == n:
                log(f"  {name}: decoded {i}/{n} images, {len(problems)} bad")
    if tagged:
        shown = ", ".join(tagged[:5]) + (f" and {len(tagged) - 5} more" if len(tagged) > 5 else "")
        log(f"  {name}: note: {len(tagged)} image(s) carry an EXIF orientation tag; they are read as stored, "
            f"which is what their boxes must refer to (check that your annotation tool did not show them turned): "
            f"{shown}")
    return problems


def check_data(cfg: Config, decode: bool = False, workers: Optional[int] = None,
               log: Callable[[str], None] = print) -> int:
    """Build the training and test sets of ``cfg``, log their summaries (and decoding problems with
    ``decode``); returns the number of errors (0: the data is ready to train on)."""
    workers = workers or min(8, os.cpu_count() or 1)
    try:
        builders.prepare_data(cfg.data)  # shapes data is generated on first use, as in training
    except ValueError as exc:  # e.g. the root holds shapes data made with other parameters
        log(f"ERROR preparing the data: {exc}")
        return 1
    errors = 0
    for name, train in (("train", True), ("test", False)):
        try:
            dataset = builders.build_dataset(cfg, train=train)
        except (DataError, FileNotFoundError) as exc:
            log(f"{name} set: ERROR {exc}")
            errors += 1
            continue
        log(f"{name} set: {dataset.summary()}")
        if decode:
            problems = decode_images(dataset, name, workers, log)
            for problem in problems:
                log(f"  ERROR {problem}")
            errors += len(problems)
    log(f"{errors} error(s)" + ("" if decode else "; image files were not decoded (use --decode to check them)"))
    return errors
