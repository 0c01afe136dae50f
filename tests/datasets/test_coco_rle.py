"""COCO RLEs whose counts do not cover the image: pycocotools decoded a short one from uninitialised memory
(a random mask every epoch) and failed mid-training on a long one. Both are start-up errors now."""
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from datasets import COCODataset, DataError
from datasets.rle import string_counts
from test_bad_input import write_coco
from test_silent_bad_input import _with_segm


def compressed(counts, h=20, w=30) -> str:
    """pycocotools' own compressed string for ``counts`` (it does not check them either)."""
    return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)["counts"].decode("ascii")


def test_string_counts_decodes_pycocotools_strings():
    two_by_two = np.asfortranarray(np.array([[0, 1], [1, 0]], np.uint8))  # column-major: 0, 1, 1, 0
    assert string_counts(mask_utils.encode(two_by_two)["counts"].decode()) == ([1, 2, 1], "")
    # long counts (several 5-bit groups), differences to the count two back that are negative
    counts = [5000, 3, 70000, 1, 2, 40000, 17]
    assert string_counts(compressed(counts, 1, sum(counts))) == (counts, "")
    assert string_counts("0") == ([0], "")
    assert string_counts("[") == (None, "compressed RLE counts that end inside a count")  # 0x2B: continuation


@pytest.mark.parametrize("counts,message", [
    ([0, 100], r"RLE counts covering 100 pixels, fewer than the 600 of a \[20, 30\] image \(pycocotools would fill "
               r"the rest from uninitialised memory\)"),
    ([0, 100, 600], r"RLE counts covering 700 pixels, more than the 600 of a \[20, 30\] image"),
    ([0, 700, -100], r"an RLE with a negative count \(-100\)"),
    ("compressed-short", "RLE counts covering 100 pixels, fewer than the 600"),
    ("compressed-long", "RLE counts covering 700 pixels, more than the 600"),
    ("01~", r"compressed RLE counts with the character '~', outside the RLE alphabet"),
])
@pytest.mark.parametrize("flag", ["with_masks", "check_masks"])
def test_rle_counts_not_covering_the_image_are_start_up_errors(tmp_path, counts, message, flag):
    if counts == "compressed-short":
        counts = compressed([0, 100])
    elif counts == "compressed-long":
        counts = compressed([0, 100, 600])
    path = write_coco(tmp_path, _with_segm({"size": [20, 30], "counts": counts}, crowd=1))
    with pytest.raises(DataError, match=r"annotation 1 \(image 10\) has " + message) as exc:
        COCODataset(str(tmp_path), ["mini"], **{flag: True})
    assert str(exc.value).startswith(f"COCO annotation file {path}: ")
    COCODataset(str(tmp_path), ["mini"])  # a detection-only run does not read masks


@pytest.mark.parametrize("as_string", [False, True])
def test_rle_covering_the_image_trains(tmp_path, as_string):
    counts = [0, 100, 500]
    segm = {"size": [20, 30], "counts": compressed(counts) if as_string else counts}
    write_coco(tmp_path, _with_segm(segm))
    ds = COCODataset(str(tmp_path), ["mini"], with_masks=True)
    mask = ds[0][1]["masks"][0].numpy()
    assert mask.sum() == 100 and mask[:, :5].all() and mask[:, 5:].sum() == 0  # 0 off, 100 on: 5 columns of 20
