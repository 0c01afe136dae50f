"""``scripts/browse_data.py``'s work: pictures of a data set's ground truth, as annotated or as the model sees it
after the training transforms, and the loader's report of the boxes it clipped or dropped."""
from __future__ import annotations

import os
import random
from typing import List

import numpy as np

from detection.config.schema import Config


def _denormalise(image, mean, std) -> np.ndarray:
    """[3, h, w] normalised float tensor (mean / std in 0-255 units) -> h x w x 3 uint8 RGB."""
    x = image.numpy().transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def browse(cfg: Config, out_dir: str, split: str = "train", augmented: bool = False, n: int = 16,
           shuffle: bool = False, seed: int = 0) -> List[str]:
    """Write ``n`` pictures of ``split`` (``train`` or ``test``) to ``out_dir`` plus ``report.txt`` (the data
    set's summary: boxes clipped or dropped, empty images); returns the picture paths. ``augmented`` draws the
    transformed training input (resize, flip; de-normalised) with its boxes, else the original image with the
    annotation: difficult objects dashed, crowd / ignore regions grey."""
    from detection import builders
    from detection.tools.visualize import draw_ground_truth, enlarged, save_picture

    if split not in ("train", "test"):
        raise ValueError(f"--split must be train or test, got {split!r}")
    builders.prepare_data(cfg.data)
    dataset = builders.build_dataset(cfg, train=split == "train")
    dataset = getattr(dataset, "dataset", dataset)  # the images themselves, not data.repeat's passes
    classes = list(dataset.classes)
    order = list(range(len(dataset)))
    if shuffle:
        random.Random(seed).shuffle(order)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.txt"), "w") as f:
        f.write(dataset.summary() + "\n")
    written = []
    random.seed(seed)  # the flips of --augmented
    for i in order[:n]:
        r = dataset.records[i]
        if augmented:
            image, target = dataset[i]
            image, boxes, labels = _denormalise(image, cfg.data.mean, cfg.data.std), target["boxes"].numpy(), \
                target["labels"].numpy()
            difficult = target["difficult"].numpy()
            ignore = target["ignore_boxes"].numpy() if "ignore_boxes" in target else None
        else:
            image, boxes, labels, difficult, ignore = (dataset._read(r), r["boxes"], r["labels"], r.get("difficult"),
                                                       r.get("ignore_boxes"))
        image, f = enlarged(image)  # small images are drawn enlarged: legible labels
        picture = draw_ground_truth(image, np.asarray(boxes, np.float32) * f, labels, classes, difficult,
                                    None if ignore is None else np.asarray(ignore, np.float32) * f)
        written.append(save_picture(os.path.join(out_dir, os.path.splitext(os.path.basename(r["path"]))[0] + ".png"),
                                    picture))
    return written
