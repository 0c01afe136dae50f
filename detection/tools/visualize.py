"""Pictures of detections and ground truth (OpenCV drawing on H x W x 3 uint8 RGB arrays; no plotting library).

Each class has a fixed colour (``class_color``); boxes are drawn 2 px wide with a filled label tag
(``name score``) above the box, masks as a 45% colour overlay with their outline. Ground truth uses the same
colours; difficult objects are drawn dashed, crowd / ignore regions in grey with an ``ignore`` tag.
"""
from __future__ import annotations

import colorsys
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

GREY = (160, 160, 160)


def class_color(label: int) -> Tuple[int, int, int]:
    """A saturated RGB colour per class index, spread around the hue circle (golden-ratio steps)."""
    h = (int(label) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _tag(img: np.ndarray, text: str, x: int, y: int, color) -> None:
    """A filled label with ``text`` whose bottom-left corner is at (x, y), kept inside the image."""
    scale = max(0.35, min(img.shape[:2]) / 900)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = int(min(max(x, 0), max(img.shape[1] - tw - 2, 0)))
    y = int(max(y, th + base + 1))
    cv2.rectangle(img, (x, y - th - base - 1), (x + tw + 2, y), color, -1)
    dark = sum(color) > 380
    cv2.putText(img, text, (x + 1, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0) if dark else (255, 255, 255),
                1, cv2.LINE_AA)


def _dashed_rect(img: np.ndarray, p1, p2, color, thickness: int = 2, dash: int = 6) -> None:
    x1, y1 = p1
    x2, y2 = p2
    for a, b, fixed, horizontal in ((x1, x2, y1, True), (x1, x2, y2, True), (y1, y2, x1, False), (y1, y2, x2, False)):
        for s in range(int(a), int(b), 2 * dash):
            e = min(s + dash, int(b))
            q1, q2 = ((s, fixed), (e, fixed)) if horizontal else ((fixed, s), (fixed, e))
            cv2.line(img, q1, q2, color, thickness)


def draw_detections(image: np.ndarray, boxes, labels, scores, classes: Sequence[str], masks=None,
                    score_thr: float = 0.0) -> np.ndarray:
    """A copy of ``image`` with the detections scoring at least ``score_thr``: boxes [D, 4] (x1, y1, x2, y2
    pixels), labels [D] indexing ``classes``, scores [D], optional bool masks [D, H, W]."""
    out = np.ascontiguousarray(image).copy()
    boxes, labels, scores = np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels), np.asarray(scores)
    keep = np.flatnonzero(scores >= score_thr)
    order = keep[np.argsort(scores[keep], kind="stable")]  # low scores first: the best are drawn on top
    if masks is not None:
        masks = np.asarray(masks, dtype=bool)
        for i in order:
            color = np.array(class_color(labels[i]), np.float32)
            m = masks[i]
            out[m] = (0.55 * out[m] + 0.45 * color).astype(np.uint8)
            contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), 1)
    for i in order:
        color = class_color(labels[i])
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, 2)
        name = classes[labels[i]] if 0 <= labels[i] < len(classes) else str(labels[i])
        _tag(out, f"{name} {scores[i]:.2f}", x1, y1 - 1, color)
    return out


def draw_ground_truth(image: np.ndarray, boxes, labels, classes: Sequence[str], difficult=None,
                      ignore_boxes=None) -> np.ndarray:
    """A copy of ``image`` with ground-truth boxes [M, 4] (labels [M]); ``difficult`` [M] ones dashed,
    ``ignore_boxes`` [R, 4] (crowd regions) in grey."""
    out = np.ascontiguousarray(image).copy()
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    difficult = np.zeros(len(boxes), bool) if difficult is None else np.asarray(difficult, bool)
    for r in np.asarray(ignore_boxes if ignore_boxes is not None else np.zeros((0, 4)), np.float32).reshape(-1, 4):
        x1, y1, x2, y2 = (int(round(v)) for v in r)
        _dashed_rect(out, (x1, y1), (x2, y2), GREY, 1, 3)
        _tag(out, "ignore", x1, y1 - 1, GREY)
    for b, lab, diff in zip(boxes, labels, difficult):
        color = class_color(lab)
        x1, y1, x2, y2 = (int(round(v)) for v in b)
        if diff:
            _dashed_rect(out, (x1, y1), (x2, y2), color)
        else:
            cv2.rectangle(out, (x1, y1), (x2, y2), color, 2)
        _tag(out, classes[lab] + (" (difficult)" if diff else ""), x1, y1 - 1, color)
    return out


def side_by_side(left: np.ndarray, right: np.ndarray, titles: Optional[Tuple[str, str]] = None,
                 gap: int = 8) -> np.ndarray:
    """Two pictures next to each other on a white canvas, each with an optional title strip above it."""
    strip = 22 if titles else 0
    h = max(left.shape[0], right.shape[0]) + strip
    canvas = np.full((h, left.shape[1] + gap + right.shape[1], 3), 255, np.uint8)
    for img, x0, title in ((left, 0, titles and titles[0]), (right, left.shape[1] + gap, titles and titles[1])):
        canvas[strip:strip + img.shape[0], x0:x0 + img.shape[1]] = img
        if title:  # shrunk to the panel's width
            width = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0][0]
            scale = min(0.5, 0.5 * (img.shape[1] - 4) / max(width, 1))
            cv2.putText(canvas, title, (x0 + 2, 16), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def save_picture(path: str, picture: np.ndarray) -> str:
    """Write an RGB picture (the format by the file's extension); an error naming the file if that fails."""
    if not cv2.imwrite(path, np.ascontiguousarray(picture[..., ::-1])):
        raise ValueError(f"cannot write {path}")
    return path


def enlarged(image: np.ndarray, min_side: int = 400):
    """(image, factor): images smaller than ``min_side`` on their long side are enlarged by the integer factor
    that brings them to at least that (nearest neighbour), so that labels drawn on them stay legible."""
    k = max(1, -(-min_side // max(image.shape[:2])))
    if k == 1:
        return image, 1
    return cv2.resize(image, (image.shape[1] * k, image.shape[0] * k), interpolation=cv2.INTER_NEAREST), k
