import math

import torch

from models.box_coder import DeltaBoxCoder


def test_hand_computed_encoding_with_stds():
    coder = DeltaBoxCoder(stds=(0.1, 0.1, 0.2, 0.2))
    anchor = torch.tensor([[0.0, 0, 10, 10]])
    gt = torch.tensor([[5.0, 5, 15, 25]])
    # centres (5, 5) -> (10, 15); sizes 10x10 -> 10x20: dx 0.5, dy 1, dw 0, dh log 2, then / stds
    expected = torch.tensor([[5.0, 10.0, 0.0, math.log(2) / 0.2]])
    assert torch.allclose(coder.encode(anchor, gt), expected, atol=1e-6)


def test_round_trip_random_boxes():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 500
    wh = torch.rand(200, 2, generator=g) * 200 + 10  # size ratios below the decode clamp (62.5)
    refs = torch.cat([xy, xy + wh], 1)
    xy2 = torch.rand(200, 2, generator=g) * 500
    wh2 = torch.rand(200, 2, generator=g) * 200 + 10
    boxes = torch.cat([xy2, xy2 + wh2], 1)
    for coder in (DeltaBoxCoder(), DeltaBoxCoder(means=(0.1, 0, 0, -0.1), stds=(0.1, 0.1, 0.2, 0.2))):
        back = coder.decode(refs, coder.encode(refs, boxes))
        assert torch.allclose(back, boxes, atol=1e-3)


def test_decode_clamps_scale_and_clips_to_image():
    coder = DeltaBoxCoder()
    ref = torch.tensor([[10.0, 10, 20, 20]])
    huge = coder.decode(ref, torch.tensor([[0.0, 0, 100, 100]]))
    assert torch.isfinite(huge).all()
    # width capped at 10 * 1000/16 = 625
    assert (huge[0, 2] - huge[0, 0]).item() == pytest_approx(625.0)
    clipped = coder.decode(ref[None], torch.tensor([[[0.0, 0, 2, 2]]]), max_shape=torch.tensor([[[30.0, 40.0]]]))
    assert clipped.tolist() == [[[0.0, 0.0, 40.0, 30.0]]]


def pytest_approx(v):
    import pytest

    return pytest.approx(v, rel=1e-4)
