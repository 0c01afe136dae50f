"""Images are read as stored, never turned by their EXIF orientation tag: VOC / COCO boxes refer to the stored
pixels. OpenCV's default turned them, silently for a square image tagged 180 degrees (the model trained on
boxes over the wrong pixels); a non-square one failed the size check with an error blaming the annotation."""
import os
import struct

import cv2
import numpy as np
import pytest
import torch

from datasets import DataError, VOCDataset, read_image
from datasets.exif import exif_orientation
from test_bad_input import CFG, REPO, make_voc


def tagged_jpeg(path, rgb: np.ndarray, orientation: int) -> None:
    """A JPEG of ``rgb`` with an APP1 EXIF segment holding only the orientation tag, right after the start
    marker: a little-endian TIFF header, one image directory of one SHORT entry (tag 0x0112)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + b"\0" * 4
    app1 = b"Exif\x00\x00" + tiff
    data = buf.tobytes()
    with open(path, "wb") as f:
        f.write(data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:])


def asymmetric(h, w) -> np.ndarray:
    """Dark blue with a red top-left quarter (on JPEG's 16 px blocks: sharp edges): any turn or mirror moves it."""
    img = np.zeros((h, w, 3), np.uint8)
    img[...] = (20, 30, 160)
    img[: h // 2, : w // 2] = (230, 20, 20)
    return img


def close(a, b) -> bool:
    return a.shape == b.shape and float(np.abs(a.astype(np.float32) - b).mean()) < 3  # JPEG quality 100


@pytest.fixture
def square_180(tmp_path):
    """A VOC tree whose only image is stored 32x32 with orientation 3 (180 degrees) and a box on the block."""
    root = make_voc(tmp_path / "voc", {"a": ((32, 32), [("dog", (1, 1, 16, 16), 0)])})
    make_voc(tmp_path / "voc", {"a": ((32, 32), [("dog", (1, 1, 16, 16), 0)])}, split="test")
    stored = asymmetric(32, 32)
    tagged_jpeg(os.path.join(root, "JPEGImages", "a.jpg"), stored, 3)
    return root, stored


def test_the_test_image_is_one_opencv_would_turn(square_180):
    root, stored = square_180
    path = os.path.join(root, "JPEGImages", "a.jpg")
    assert exif_orientation(path) == 3
    turned = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)  # OpenCV's default: the tag applied
    assert close(turned, stored[::-1, ::-1]) and not close(turned, stored)


def test_loader_and_read_image_give_the_stored_pixels(square_180):
    root, stored = square_180
    assert close(read_image(os.path.join(root, "JPEGImages", "a.jpg")), stored)
    image, target = VOCDataset(root, ["train"], classes=["dog", "cat"])[0]
    assert close(image.numpy().transpose(1, 2, 0).round().astype(np.uint8), stored)
    assert target["boxes"].tolist() == [[0, 0, 16, 16]]  # VOC's (1, 1, 16, 16): the red quarter, as stored
    x1, y1, x2, y2 = (int(v) for v in target["boxes"][0])
    red = image[:, y1:y2, x1:x2].mean((1, 2))
    assert torch.allclose(red, torch.tensor([230.0, 20, 20]), atol=8)  # atol: JPEG's chroma blur at the edge


def test_a_size_mismatch_of_a_turned_image_names_the_tag(tmp_path):
    """Stored 48 wide, 32 high, tagged 6 (shown turned 90 degrees: 32 wide, 48 high), annotated as shown."""
    root = make_voc(tmp_path / "voc", {"a": ((48, 32), [("dog", (1, 1, 8, 8), 0)])})  # (h, w) of the shown view
    path = os.path.join(root, "JPEGImages", "a.jpg")
    tagged_jpeg(path, asymmetric(32, 48), 6)
    with pytest.raises(DataError) as exc:
        VOCDataset(root, ["train"], classes=["dog"])[0]
    assert str(exc.value) == (
        f"image {path} is 48x32 (w x h) as stored but its VOC annotation says 32x48; the file carries EXIF "
        f"orientation 6 (viewers show it turned 90 degrees clockwise) and the annotation's size is that of the shown "
        f"view: boxes refer to the stored pixels, which this project reads (annotate the stored image, or save the "
        f"pixels turned and without the tag)")


def test_check_data_decode_notes_tagged_images_and_names_the_tag_of_a_mismatch(square_180, tmp_path):
    from detection import engine
    from detection.tools.check_data import check_data

    root, _ = square_180
    make_voc(root, {"b": ((48, 32), [("dog", (1, 1, 8, 8), 0)])}, split="test")
    tagged_jpeg(os.path.join(root, "JPEGImages", "b.jpg"), asymmetric(32, 48), 6)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(CFG.format(base=os.path.join(REPO, "configs", "demo", "retinanet_shapes_alwa2.yaml"),
                                   root=root))
    lines = []
    assert check_data(engine.load(str(cfg_path)), decode=True, workers=1, log=lines.append) == 1
    out = "\n".join(lines)
    a, b = (os.path.join(root, "JPEGImages", f"{n}.jpg") for n in "ab")
    assert (f"  train: note: 1 image(s) carry an EXIF orientation tag; they are read as stored, which is what their "
            f"boxes must refer to (check that your annotation tool did not show them turned): {a} (3: shown turned "
            f"180 degrees)") in lines
    assert f"  ERROR {b} is 48x32 (w x h) as stored but its VOC annotation says 32x48; the file carries EXIF " \
           f"orientation 6" in out
    assert out.rstrip().endswith("1 error(s)")


def test_predict_and_browse_read_the_stored_pixels(square_180, tmp_path, monkeypatch):
    import detection.checkpoint.state
    from detection import engine
    from detection.tools import inference
    from detection.tools import visualize
    from detection.tools.browse import browse
    from detection.tools.predict import run

    root, stored = square_180
    seen = {}

    class Fake:
        classes, category_ids = ["dog", "cat"], None

    def fake_predict(model, images, batch_size):
        seen["predict"] = images
        return [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)}
                for _ in images]
    monkeypatch.setattr(detection.checkpoint.state, "load_model", lambda *a, **k: Fake())
    monkeypatch.setattr(inference, "predict", fake_predict)
    run("unused.pth", os.path.join(root, "JPEGImages"), str(tmp_path / "pred"), device="cpu", progress=False)
    assert len(seen["predict"]) == 1 and close(seen["predict"][0], stored)

    def capture(image, *args, **kwargs):
        seen["browse"] = image
        return image
    monkeypatch.setattr(visualize, "draw_ground_truth", capture)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(CFG.format(base=os.path.join(REPO, "configs", "demo", "retinanet_shapes_alwa2.yaml"),
                                   root=root))
    browse(engine.load(str(cfg_path)), str(tmp_path / "browse"), n=1)
    f = seen["browse"].shape[0] // 32  # drawn enlarged by a whole factor
    assert close(seen["browse"][::f, ::f], stored)
