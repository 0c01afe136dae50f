"""How long a table's run is: training images, iterations and images seen for a layout, and the one line
``scripts/reproduce.py --dry-run`` prints per run (with a note when the layout is not the paper's)."""
from __future__ import annotations

import os
from typing import Dict

from detection.experiments.tables import Table

# training images of the standard splits, for the estimate when the data are not on this machine
STANDARD_SPLIT_SIZES = {"VOC2007/trainval": 5011, "VOC2012/trainval": 11540, "VOC2007/test": 4952,
                        "train2017": 118287, "val2017": 5000}


def count_train_images(cfg) -> tuple:
    """``(images, how)``: training images before ``data.repeat`` and after ``data.train_fraction``, counted
    from the VOC split files or the shapes settings when possible, else the standard split sizes; ``how`` is
    ``"counted"``, ``"standard split size"`` or ``"unknown"`` (images None)."""
    d = cfg.data
    if d.shapes is not None:
        n, how = d.shapes.num_train, "counted"
    else:
        n, how = 0, "counted"
        for s in d.train_sets:
            split = os.path.join(d.root, *s.split("/")[:-1], "ImageSets", "Main", s.split("/")[-1] + ".txt")
            if d.format == "voc" and os.path.isfile(split):
                with open(split) as f:
                    n += sum(1 for line in f if line.strip())
            elif s in STANDARD_SPLIT_SIZES:
                n, how = n + STANDARD_SPLIT_SIZES[s], "standard split size"
            else:
                return None, "unknown"
    return max(1, round(n * d.train_fraction)), how


def schedule_estimate(cfg, processes: int) -> Dict:
    """Iterations and images seen of a run with ``processes`` processes (0 or 1: one): ``data.repeat`` passes
    per epoch, ``data.batch_size`` images per process and step; approximate (each orientation group drops
    its last partial batch)."""
    procs = max(1, processes)
    per_step = cfg.data.batch_size * procs
    images, how = count_train_images(cfg)
    if cfg.train.max_iters is not None:
        iters = cfg.train.max_iters
    elif images is None:
        return {"iters": None, "images_seen": None, "per_step": per_step, "images": None, "how": how}
    else:
        iters = cfg.train.epochs * max(1, images * cfg.data.repeat // per_step)
    return {"iters": iters, "images_seen": iters * per_step, "per_step": per_step, "images": images, "how": how}


def describe_schedule(cfg, processes: int, table: Table, est: Dict) -> str:
    """One line for --dry-run from a :func:`schedule_estimate`: iterations, images seen, layout, and a note
    when the layout is not the paper's."""
    procs = max(1, processes)
    layout = f"{procs} x {cfg.data.batch_size} images per step"
    if est["iters"] is None:
        text = f"{layout}; iterations unknown (training set size unknown)"
    else:
        source = "" if est["how"] == "counted" else f", {est['how']}"
        text = (f"≈ {est['iters']:,} iterations, {est['images_seen']:,} images seen "
                f"({est['images']:,} training images{source} x {cfg.data.repeat} per epoch x "
                f"{cfg.train.epochs if cfg.train.max_iters is None else 'max_iters'}); {layout}")
    paper = (table.gpus, table.images_per_gpu)
    if (procs, cfg.data.batch_size) != paper:
        text += (f" (the paper: {paper[0]} x {paper[1]}; the lr follows the total batch linearly"
                 + (", and ALWA's per-process statistics see a different number of images"
                    if cfg.weighting.type == "alwa" and not cfg.weighting.sync else "") + ")")
    return text
