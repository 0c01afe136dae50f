"""Evaluation: the one runner (runner: inference over a test set, metrics, eval.json), PASCAL VOC mAP (voc),
COCO AP (coco, pycocotools), paired bootstraps (bootstrap, coco_bootstrap) and PR curves (curves)."""
from .coco import coco_evaluate, detections_to_coco, masks_to_rles
from .voc import voc_map

__all__ = ["coco_evaluate", "detections_to_coco", "masks_to_rles", "voc_map"]
