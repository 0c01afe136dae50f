"""Evaluation metrics for object detection (PASCAL VOC mAP)."""
from .voc import voc_map
