"""Detection data: VOC and COCO loaders, synthetic shapes generator, trees photograph builder, transforms,
collate and samplers.

Imports nothing from the project's other packages. ``IS_DETECTION_DATASETS`` lets the engine tell this
package from the PyPI package that is also called ``datasets``.
"""
from .coco import COCO_CLASSES, COCODataset, ann_to_mask, load_coco_json
from .collate import collate_detection
from .report import DataError, DataReport
from .samplers import GroupedBatchSampler, RepeatDataset, SeededAugmentation
from .shapes import make_shapes
from .trees import build_trees
from .transforms import IMAGENET_MEAN, IMAGENET_STD, DetectionTransform, build_transforms, keep_ratio_size
from .base import DetectionRecords, read_image
from .voc import VOC_CLASSES, VOCDataset, parse_voc_xml

IS_DETECTION_DATASETS = True

__all__ = [
    "IS_DETECTION_DATASETS", "IMAGENET_MEAN", "IMAGENET_STD", "DataError", "DetectionRecords", "DataReport", "COCO_CLASSES", "VOC_CLASSES", "VOCDataset", "COCODataset", "DetectionTransform", "GroupedBatchSampler", "RepeatDataset", "SeededAugmentation",
    "ann_to_mask", "build_transforms", "build_trees", "load_coco_json", "collate_detection", "keep_ratio_size", "make_shapes", "parse_voc_xml", "read_image",
]
