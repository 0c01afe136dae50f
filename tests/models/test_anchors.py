import math

import torch

from models.anchors import AnchorGenerator, flatten_level_outputs


def test_cell_anchors_by_hand():
    gen = AnchorGenerator(strides=[8], ratios=[0.5, 1.0, 2.0], octave_base_scale=4, scales_per_octave=1)
    cell = gen.cell_anchors(0)
    # base 32: ratio h/w = 0.5 -> w = 32 * sqrt(2), h = 32 / sqrt(2); areas stay 32^2
    w, h = 32 * math.sqrt(2), 32 / math.sqrt(2)
    assert torch.allclose(cell[0], torch.tensor([-w / 2, -h / 2, w / 2, h / 2], dtype=torch.float64))
    assert torch.allclose(cell[1], torch.tensor([-16.0, -16, 16, 16], dtype=torch.float64))
    areas = (cell[:, 2] - cell[:, 0]) * (cell[:, 3] - cell[:, 1])
    assert torch.allclose(areas, torch.full((3,), 1024.0, dtype=torch.float64))


def test_octave_scales():
    gen = AnchorGenerator(strides=[16], ratios=[1.0], octave_base_scale=4, scales_per_octave=3)
    widths = (gen.cell_anchors(0)[:, 2] - gen.cell_anchors(0)[:, 0]).tolist()
    assert widths == [64 * 2 ** (k / 3) for k in range(3)]


def test_grid_order_and_offsets():
    gen = AnchorGenerator(strides=[8, 16], ratios=[1.0, 2.0], scales=[1.0], center_offset=0.5)
    anchors, counts = gen.grid_anchors([(2, 3), (1, 2)], "cpu")
    assert counts == [2 * 3 * 2, 1 * 2 * 2] and anchors.shape == (16, 4)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    # level 0, cell (i=1, j=2), anchor a=1 -> index (1 * 3 + 2) * 2 + 1 = 11; centre ((2.5) * 8, 1.5 * 8)
    assert centres[11].tolist() == [20.0, 12.0]
    # level 1 starts at 12: cell (0, 1), a=0 -> 12 + 2; centre (1.5 * 16, 0.5 * 16)
    assert centres[14].tolist() == [24.0, 8.0]


def test_cache_returns_same_tensor():
    gen = AnchorGenerator()
    a1, _ = gen.grid_anchors([(4, 4), (2, 2), (1, 1), (1, 1), (1, 1)], "cpu")
    a2, _ = gen.grid_anchors([(4, 4), (2, 2), (1, 1), (1, 1), (1, 1)], "cpu")
    assert a1 is a2


def test_flatten_matches_anchor_order():
    # value at channel a*K + k, position (i, j) encodes (i, j, a, k); flattening must give (i, j, a) rows
    b, a, k, h, w = 2, 3, 4, 2, 5
    x = torch.zeros(b, a * k, h, w)
    for ai in range(a):
        for ki in range(k):
            for i in range(h):
                for j in range(w):
                    x[:, ai * k + ki, i, j] = 1000 * i + 100 * j + 10 * ai + ki
    flat = flatten_level_outputs([x], k)
    assert flat.shape == (b, h * w * a, k)
    row = (1 * w + 3) * a + 2  # (i=1, j=3, a=2)
    assert flat[1, row].tolist() == [1000 + 300 + 20 + kk for kk in range(k)]


def test_level_index_of_concatenated_levels():
    from models.anchors import level_index

    assert level_index([2, 1, 3], "cpu").tolist() == [0, 0, 1, 2, 2, 2]
    assert level_index([0, 2], "cpu").tolist() == [1, 1]
