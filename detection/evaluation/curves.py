"""Precision-recall curves of a VOC evaluation, one panel per class, as a PNG (matplotlib: the plot extra)."""
from __future__ import annotations

import math
import os
from typing import Dict

from detection.evaluation.voc import voc_map


def plot_voc_pr_curves(per_image: Dict, out_dir: str) -> str:
    """``out_dir/pr_curves.png`` from the per-image detections and ground truth a VOC evaluation keeps
    (``evaluate_voc``'s ``per_image``): each class's precision against recall at IoU ``iou_thr``, its AP in
    the title (the 11-point or area AP of that evaluation). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = per_image["classes"]
    result = voc_map(per_image["detections"], per_image["annotations"], len(names), per_image["iou_thr"],
                     per_image["metric"], per_image["legacy_coords"], names, curves=True)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax, name, curve, ap in zip(axes.flat, names, result["curves"], result["AP"]):
        if curve is None:
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=ax.transAxes)
        else:
            rec, prec = curve
            ax.plot(rec, prec, lw=1.2)
        ax.set_title(f"{name}: AP {ap:.3f}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"VOC precision-recall at IoU {per_image['iou_thr']} (mAP {result['mAP']:.4f}, "
                 f"{per_image['metric']})", fontsize=10)
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "pr_curves.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
