"""Inference over a dataset and VOC evaluation, sharded over ranks when distributed."""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

from detection import dist as dist_utils
from detection.evaluation.voc import voc_map
from detection.schema import Config
from detection.trainer import AMP_DTYPES, move_batch


@torch.no_grad()
def run_inference(model: nn.Module, loader, device: torch.device, amp: str = "off", progress: bool = False) -> List[Dict]:
    """Detections (numpy, original image pixels) for every image of ``loader``, in loader order."""
    was_training = model.training
    model.eval()
    dtype = AMP_DTYPES[amp]
    out: List[Dict] = []
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc="eval", dynamic_ncols=True, mininterval=1.0)
    for batch in batches:
        images, targets = move_batch(batch, device)
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
            dets = model(images, targets)
        out.extend({k: v.float().cpu().numpy() if k != "labels" else v.cpu().numpy() for k, v in d.items()} for d in dets)
    model.train(was_training)
    return out


def evaluate_voc(model: nn.Module, dataset, cfg: Config, device: torch.device, class_names: List[str],
                 progress: bool = False) -> Dict:
    """VOC mAP of ``model`` on ``dataset``; every rank infers its shard, rank 0 gets the metrics."""
    from detection.builders import build_test_loader

    world = torch.distributed.get_world_size() if dist_utils.is_dist() else 1
    loader, indices = build_test_loader(cfg, dataset, dist_utils.rank(), world)
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
    }
