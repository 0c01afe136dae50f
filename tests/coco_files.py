"""Writing small COCO-format data sets for tests: one helper, shared by the dataset and the engine tests
(importable from any test file: pytest puts tests/ on the path for tests/conftest.py)."""
import json
import os

import cv2
import numpy as np


def write_coco_set(root, name, data, images=(("a.jpg", (20, 30)), ("b.jpg", (16, 16))), value=100):
    """``root/name/<file>`` images of the given (h, w), filled with ``value``, and ``data`` as
    ``root/annotations/instances_<name>.json``; returns that file's path."""
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for fname, (h, w) in images:
        cv2.imwrite(os.path.join(root, name, fname), np.full((h, w, 3), value, np.uint8))
    path = os.path.join(root, "annotations", f"instances_{name}.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path
