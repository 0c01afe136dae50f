"""The one evaluation runner: inference over a test set (sharded over ranks when distributed), VOC mAP or COCO
AP from it, the printed summary, and the files a run's evaluation leaves (``eval.json``, ``detections.pkl``).
Training's final and periodic evaluations and scripts/eval.py all call :func:`evaluate_dataset`."""
from __future__ import annotations

import json
import os
import pickle
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from detection import builders
from detection.runtime import dist as dist_utils
from detection.evaluation.bootstrap import DETECTIONS_FILE  # the file its reader, load_run, opens
from detection.evaluation.coco import METRIC_NAMES, coco_evaluate, detections_to_coco, masks_to_rles
from detection.evaluation.voc import voc_map
from detection.config.schema import Config
from detection.runtime.batch import autocast, move_batch


PER_IMAGE = "per_image"  # metrics key of the per-image detections and annotations (not for eval.json)


def _to_host(v):
    """Tensor -> numpy (floating as float32, integer and bool kept); anything else unchanged."""
    if not isinstance(v, torch.Tensor):
        return v
    v = v.detach()
    return (v.float() if v.is_floating_point() else v).cpu().numpy()


def encode_masks(det: Dict) -> Dict:
    """Per-detection converter for ``run_inference``: replaces full-size ``masks`` [D, H0, W0] by
    ``rles`` (D compressed COCO RLEs), so that evaluation never holds every image's masks."""
    if "masks" not in det:
        return det
    det = dict(det)
    det["rles"] = masks_to_rles(det.pop("masks"))
    return det


@torch.no_grad()
def run_inference(model: nn.Module, loader, device: torch.device, amp: str = "off", progress: bool = False,
                  convert: Optional[Callable[[Dict], Dict]] = None) -> List[Dict]:
    """Detections (numpy, original image pixels) for every image of ``loader``, in loader order.

    ``convert`` (optional) maps each image's output dict (tensors) to another dict before it is kept, e.g.
    ``encode_masks``; tensors in its result are moved to numpy, other values (lists of RLEs) kept as is."""
    was_training = model.training
    model.eval()
    out: List[Dict] = []
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc="eval", dynamic_ncols=True, mininterval=1.0)
    for batch in batches:
        images, targets = move_batch(batch, device)
        with autocast(device, amp):
            dets = model(images, targets)
        for d in dets:
            if convert is not None:
                d = convert(d)
            out.append({k: _to_host(v) for k, v in d.items()})
    model.train(was_training)
    return out


def evaluate_voc(model: nn.Module, dataset, cfg: Config, device: torch.device, shard: Tuple[Iterable, List[int]],
                 progress: bool = False) -> Dict:
    """VOC mAP of ``model`` on ``dataset`` (its ``classes`` name the APs). ``shard`` is this rank's
    ``(loader, dataset indices)``; every rank infers its shard, rank 0 gets the metrics."""
    class_names = list(dataset.classes)
    loader, indices = shard
    dets = run_inference(model, loader, device, cfg.train.amp, progress and dist_utils.rank() == 0)
    gathered = dist_utils.all_gather_objects(list(zip(indices, dets)))
    by_index = dict(pair for part in gathered for pair in part)
    order = sorted(by_index)
    detections = [by_index[i] for i in order]
    annotations = [dataset.get_annotation(i) for i in order]
    result = voc_map(detections, annotations, len(class_names), iou_thr=cfg.eval.iou_thr, metric=cfg.eval.metric,
                     legacy_coords=cfg.eval.legacy_coords, class_names=class_names)
    return {
        "mAP": float(result["mAP"]),
        "AP": {name: float(ap) for name, ap in zip(class_names, result["AP"])},
        "metric": cfg.eval.metric,
        "iou_thr": cfg.eval.iou_thr,
        "num_images": len(order),
        # what a paired bootstrap needs (detection/evaluation/bootstrap.py); write_metrics puts it in
        # detections.pkl and keeps it out of eval.json
        PER_IMAGE: {"format": "voc", "detections": detections, "annotations": annotations, "classes": class_names,
                    "iou_thr": cfg.eval.iou_thr, "metric": cfg.eval.metric, "legacy_coords": cfg.eval.legacy_coords},
    }


def evaluate_coco(model: nn.Module, dataset, cfg: Config, device: torch.device, shard: Tuple[Iterable, List[int]],
                  progress: bool = False, iou_types: Optional[Sequence[str]] = None) -> Dict:
    """COCO AP of ``model`` on a single-set ``COCODataset``; every rank infers its shard, rank 0 runs
    COCOeval and all ranks return its metrics.

    Masks are RLE-encoded per image right after inference (``encode_masks``), so memory holds RLEs only.
    ``iou_types`` defaults to ``("bbox", "segm")`` when the model's outputs have ``masks``, else ``("bbox",)``.

    Returns a flat dict (for eval.json): bbox ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``; with segm
    also ``segm_AP``, ``segm_AP50``, ... ``segm_APl``; floats in [0, 1], -1.0 where pycocotools finds no
    ground truth (an area range); plus ``iou_types`` (list), ``num_images`` and ``summary`` (COCOeval's
    summary tables as text, one per IoU type). ``shard``: this rank's ``(loader, dataset indices)``."""
    loader, indices = shard
    dets = run_inference(model, loader, device, cfg.train.amp, progress and dist_utils.rank() == 0,
                         convert=encode_masks)
    gathered = dist_utils.all_gather_objects(list(zip(indices, dets)))
    out: Dict = {}
    if dist_utils.rank() == 0:
        by_index = dict(pair for part in gathered for pair in part)
        order = sorted(by_index)
        detections = [by_index[i] for i in order]
        image_ids = [dataset.image_ids[i] for i in order]
        types = tuple(iou_types) if iou_types is not None else (
            ("bbox", "segm") if any("rles" in d for d in detections) else ("bbox",))
        results = detections_to_coco(detections, image_ids, dataset.cat_ids)
        metrics, summaries = coco_evaluate(dataset.coco, results, types, img_ids=image_ids, return_summary=True,
                                           backend=cfg.eval.coco_backend)
        out = {name: metrics["bbox"][name] for name in METRIC_NAMES} if "bbox" in metrics else {}
        if "bbox" in metrics:
            out["per_class_AP"] = metrics["bbox"]["per_class"]
        if "segm" in metrics:
            out.update({f"segm_{name}": metrics["segm"][name] for name in METRIC_NAMES})
            out["segm_per_class_AP"] = metrics["segm"]["per_class"]
        out.update(iou_types=list(types), num_images=len(order),
                   summary="".join(f"{t}:\n{summaries[t]}" for t in types))
        # what a paired bootstrap of box AP needs (detection/evaluation/coco_bootstrap.py): written to
        # detections.pkl beside eval.json, boxes only
        from detection.evaluation.coco_bootstrap import gt_for_bootstrap

        out[PER_IMAGE] = {"format": "coco", "gt": gt_for_bootstrap(dataset.coco, image_ids),
                          "results": [{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in results],
                          "classes": list(dataset.classes)}
    # COCOeval runs once; the other ranks receive its result
    return dist_utils.all_gather_objects(out)[0]


def evaluate_dataset(model, dataset, cfg: Config, device, rank: int = 0, world: int = 1, progress: bool = False) -> Dict:
    """VOC mAP for VOC data, COCO AP (bbox, and segm for Mask R-CNN) for COCO data; each of ``world``
    processes infers its shard of the test set (this one: ``rank``)."""
    shard = builders.build_test_loader(cfg, dataset, rank, world)
    if cfg.data.format == "coco":
        return evaluate_coco(model, dataset, cfg, device, shard, progress=progress)
    return evaluate_voc(model, dataset, cfg, device, shard, progress=progress)


def format_metrics(metrics: Dict) -> str:
    if "mAP" not in metrics:  # COCO
        names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
        lines = [metrics.get("summary", "").rstrip()]
        for cls, ap in metrics.get("per_class_AP", {}).items():
            segm = metrics.get("segm_per_class_AP", {}).get(cls)
            lines.append(f"{cls:>14s}  AP {ap:.4f}" + (f"  segm AP {segm:.4f}" if segm is not None else ""))
        for prefix, label in (("", "bbox"), ("segm_", "segm")):
            if f"{prefix}AP" in metrics:
                lines.append(f"COCO {label}: " + "  ".join(f"{n} {metrics[prefix + n]:.4f}" for n in names)
                             + f"  on {metrics.get('num_images')} images")
        return "\n".join(line for line in lines if line)
    lines = [f"{name:>14s}  AP {ap:.4f}" for name, ap in metrics.get("AP", {}).items()]
    lines.append(f"VOC mAP@{metrics.get('iou_thr', 0.5)} ({metrics.get('metric')}): {metrics['mAP']:.4f} "
                 f"on {metrics.get('num_images')} images")
    return "\n".join(lines)


def write_metrics(metrics: Dict, path: str) -> None:
    """``eval.json`` (the metrics without the COCO summary text and the per-image data) and
    ``detections.pkl`` beside it: every image's detections and ground truth (COCO: box results and box
    ground truth), for scripts/significance.py."""
    per_image = metrics.pop(PER_IMAGE, None)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({k: v for k, v in metrics.items() if k != "summary"}, f, indent=2)
    if per_image is not None:
        with open(os.path.join(os.path.dirname(os.path.abspath(path)), DETECTIONS_FILE), "wb") as f:
            pickle.dump(per_image, f, protocol=pickle.HIGHEST_PROTOCOL)
