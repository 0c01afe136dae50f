"""The EXIF orientation tag of a JPEG file, read by hand (no imaging library needed).

This project reads the *stored* pixels of every image (``read_image``: ``cv2.IMREAD_IGNORE_ORIENTATION``),
because VOC and COCO boxes refer to them: annotation tools draw on the stored pixels. OpenCV's default would
turn the image by its orientation tag first and leave the boxes on the wrong pixels, silently for a square
image turned by 180 degrees. The tag itself is read only to explain a size mismatch, and for
``check_data.py --decode`` to list the images that carry one. Other formats (PNG, WebP, TIFF) are read as
stored just the same; only their tag is not looked at.
"""
from __future__ import annotations

import struct

_ORIENTATION_TAG = 0x0112
_HEAD = 1 << 17  # the EXIF segment is at most 64 KiB and comes right after the start marker (or after APP0)
# what a viewer shows for each tag value (1: the stored pixels as they are)
SHOWN = {2: "mirrored left-right", 3: "turned 180 degrees", 4: "mirrored top-bottom", 5: "transposed",
         6: "turned 90 degrees clockwise", 7: "transversed", 8: "turned 90 degrees counter-clockwise"}


def exif_orientation(path: str) -> int:
    """The orientation tag (1-8) of a JPEG file; 1 when there is none or the file is no readable JPEG."""
    try:
        with open(path, "rb") as f:
            data = f.read(_HEAD)
    except OSError:
        return 1
    if data[:2] != b"\xff\xd8":
        return 1
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xDA, 0xD9):  # start of the compressed data, or the end: no EXIF segment before
            return 1
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker == 0xE1 and data[pos + 4:pos + 10] == b"Exif\x00\x00":
            return _tiff_orientation(data[pos + 10:pos + 2 + length])
        pos += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    """The orientation entry of the first image directory of a TIFF header (EXIF's container)."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    try:
        (first,) = struct.unpack(order + "I", tiff[4:8])
        (entries,) = struct.unpack(order + "H", tiff[first:first + 2])
        for i in range(entries):
            at = first + 2 + 12 * i
            tag, kind = struct.unpack(order + "HH", tiff[at:at + 4])
            if tag == _ORIENTATION_TAG and kind == 3:  # SHORT: the value sits in the entry itself
                (value,) = struct.unpack(order + "H", tiff[at + 8:at + 10])
                return value if value in SHOWN else 1
    except struct.error:  # a directory cut short: no tag to go by
        return 1
    return 1
