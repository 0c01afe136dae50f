"""``scripts/predict.py``'s work: run one checkpoint (or two, side by side) on image files, draw the
detections, and write them in COCO results format.

``predictions.json`` is a list of ``{"image_id", "file_name", "category_id", "category", "bbox": [x, y, w, h],
"score"}`` (plus ``"segmentation"``, COCO RLE, for Mask R-CNN): image ids are 1, 2, ... in the sorted input
order, category ids the training data's (COCO-format data and converted torchvision files) or ``label + 1``.
"""
from __future__ import annotations

import glob
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def find_images(spec: str) -> List[str]:
    """Image files of ``spec``: one file, a folder (its images, not recursive) or a glob pattern; sorted."""
    if os.path.isdir(spec):
        paths = [os.path.join(spec, f) for f in os.listdir(spec) if f.lower().endswith(IMAGE_EXTENSIONS)]
    elif os.path.isfile(spec):
        paths = [spec]
    else:
        paths = [p for p in glob.glob(spec, recursive=True) if p.lower().endswith(IMAGE_EXTENSIONS)]
    if not paths:
        raise FileNotFoundError(f"--input {spec}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found there")
    names = [os.path.basename(p) for p in paths]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"--input {spec}: several images are named {dup[:3]}; the pictures are saved under the "
                         f"input's name, so give one folder at a time")
    return sorted(paths)


def coco_results(dets: Dict, image_id: int, file_name: str, classes: Sequence[str],
                 category_ids: Optional[Sequence[int]], score_thr: float) -> List[Dict]:
    """COCO results entries of one image's detections scoring at least ``score_thr``."""
    from pycocotools import mask as mask_utils

    out = []
    boxes, scores, labels = dets["boxes"].tolist(), dets["scores"].tolist(), dets["labels"].tolist()
    masks = dets.get("masks")
    for i, (b, s, lab) in enumerate(zip(boxes, scores, labels)):
        if s < score_thr:
            continue
        entry = {"image_id": image_id, "file_name": file_name,
                 "category_id": int(category_ids[lab]) if category_ids else int(lab) + 1,
                 "category": classes[lab], "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s)}
        if masks is not None:
            rle = mask_utils.encode(np.asfortranarray(masks[i].numpy().astype(np.uint8)))
            entry["segmentation"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
        out.append(entry)
    return out


UNREADABLE_FILE = "unreadable.txt"


def _read_chunk(paths: Sequence[str], ids: Sequence[int], stop_on_error: bool, failed: List[str]):
    """The images of ``paths`` that can be read, with their ids; an unreadable one is reported on stderr and
    appended to ``failed`` (or, with ``stop_on_error``, stops the run with the reader's error)."""
    from datasets import DataError, read_image

    good = []
    for path, image_id in zip(paths, ids):
        try:
            good.append((path, image_id, read_image(path)))
        except (DataError, OSError) as exc:
            if stop_on_error:
                raise
            failed.append(f"{path}: {exc}")
            print(f"skipped: {exc}", file=sys.stderr, flush=True)
    return good


def run(ckpt: str, inputs: str, out_dir: str, score_thr: float = 0.3, device: str = "auto",
        compare: Optional[str] = None, batch_size: int = 4, progress: bool = True,
        stop_on_error: bool = False) -> List[str]:
    """Pictures in ``out_dir`` (one per input, under its name) and ``out_dir/predictions.json``; returns the
    picture paths. With ``compare`` each picture shows ``ckpt``'s detections beside ``compare``'s. An image
    that cannot be read is skipped, said on stderr and listed in ``out_dir/unreadable.txt`` (the others are
    still drawn; image ids stay the inputs' positions), unless ``stop_on_error``."""
    from tqdm import tqdm

    from detection import builders
    from detection.checkpoint.state import load_model
    from detection.tools.inference import predict
    from detection.tools.visualize import draw_detections, enlarged, save_picture, side_by_side

    if batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {batch_size}")
    paths = find_images(inputs)
    os.makedirs(out_dir, exist_ok=True)
    if any(os.path.samefile(os.path.dirname(os.path.abspath(p)), out_dir) for p in paths):
        raise ValueError(f"--out {out_dir} holds the input images: the pictures, saved under the inputs' names, "
                         f"would replace them; choose another folder")
    dev = builders.resolve_device(device)
    # the model's own test threshold becomes --score-thr: it keeps what the user asks to see, no more, no less
    overrides = [f"model.test.score_thr={score_thr}"]
    models = [load_model(ckpt, dev, overrides)] + ([load_model(compare, dev, overrides)] if compare else [])
    if compare and models[0].classes != models[1].classes:
        raise ValueError(f"--compare: {ckpt} has classes {models[0].classes}, {compare} has {models[1].classes}")
    titles = tuple(_run_name(p) for p in ([ckpt, compare] if compare else [ckpt]))
    results, written, failed = [], [], []
    bar = tqdm(total=len(paths), desc="predict", disable=not progress)
    for start in range(0, len(paths), batch_size):
        chunk = _read_chunk(paths[start:start + batch_size], range(start + 1, start + batch_size + 1),
                            stop_on_error, failed)
        images = [image for _, _, image in chunk]
        per_model = [predict(m, images, batch_size=batch_size) for m in models] if images else []
        for k, (path, image_id, image) in enumerate(chunk):
            canvas, f = enlarged(image)  # small images are drawn enlarged: legible labels
            drawn = []
            for model, dets in zip(models, per_model):
                d = dets[k]
                masks = d["masks"].numpy().repeat(f, 1).repeat(f, 2) if "masks" in d else None
                drawn.append(draw_detections(canvas, d["boxes"].numpy() * f, d["labels"].numpy(), d["scores"].numpy(),
                                             model.classes, masks, score_thr))
            picture = side_by_side(drawn[0], drawn[1], titles) if compare else drawn[0]
            written.append(save_picture(os.path.join(out_dir, os.path.basename(path)), picture))
            results += coco_results(per_model[0][k], image_id, os.path.basename(path), models[0].classes,
                                    getattr(models[0], "category_ids", None), score_thr)
        bar.update(min(batch_size, len(paths) - start))
    bar.close()
    with open(os.path.join(out_dir, "predictions.json"), "w") as f:
        json.dump(results, f)
    unreadable = os.path.join(out_dir, UNREADABLE_FILE)
    if failed:
        with open(unreadable, "w") as f:
            f.write("\n".join(failed) + "\n")
        print(f"{len(failed)} of {len(paths)} image(s) could not be read and were skipped: listed in {unreadable}",
              file=sys.stderr, flush=True)
    elif os.path.exists(unreadable):  # from an earlier run into the same folder
        os.unlink(unreadable)
    return written


def _run_name(ckpt: str) -> str:
    """``work_dirs/<run>/checkpoints/last.pth`` -> ``<run>``; any other file -> its name."""
    parts = os.path.normpath(os.path.abspath(ckpt)).split(os.sep)
    return parts[-3] if len(parts) >= 3 and parts[-2] == "checkpoints" else os.path.basename(ckpt)
