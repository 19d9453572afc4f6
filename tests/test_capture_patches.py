"""patch_boxes: patch cells of a patch model back to original-image boxes."""
from __future__ import annotations

import math

import numpy as np
import pytest

from attnlens.capture import patch_boxes
from attnlens.errors import ShapeError


def forward_point(x: float, y: float, steps, size):
    """Reference: push one original-image point through the transform chain, step by step."""
    h, w = size
    for op, arg in steps:
        if op == "resize":
            nh, nw = arg
            x, y, h, w = x * nw / w, y * nh / h, nh, nw
        elif op == "resize_shorter":
            if h <= w:
                nh, nw = arg, int(arg * w / h)
            else:
                nh, nw = int(arg * h / w), arg
            x, y, h, w = x * nw / w, y * nh / h, nh, nw
        elif op == "center_crop":
            ch, cw = arg
            top, left = int(round((h - ch) / 2)), int(round((w - cw) / 2))
            x, y, h, w = x - left, y - top, ch, cw
        elif op == "crop":
            top, left, ch, cw = arg
            x, y, h, w = x - left, y - top, ch, cw
        elif op == "pad":
            top, left, bottom, right = arg
            x, y, h, w = x + left, y + top, h + top + bottom, w + left + right
        elif op == "pad_square":
            side = max(h, w)
            top, left = ((side - h) // 2, (side - w) // 2) if arg == "center" else (0, 0)
            x, y, h, w = x + left, y + top, side, side
    return x, y, (h, w)


def test_known_answers():
    # shorter side to 8, then centre crop 8x8: (10, 20) -> (8, 16) -> crop left 4
    r = patch_boxes((2, 2), {"resize_shorter": 8, "center_crop": (8, 8)}, (10, 20))
    np.testing.assert_allclose(r.boxes[0], [5, 0, 10, 5])
    np.testing.assert_allclose(r.boxes[3], [10, 5, 15, 10])
    # pad to a square (centred), then resize: top padding of 5 rows
    r = patch_boxes((2, 2), [("pad_square", "center"), ("resize", (4, 4))], (10, 20))
    np.testing.assert_allclose(r.boxes, [[0, 0, 10, 5], [10, 0, 20, 5], [0, 5, 10, 10], [10, 5, 20, 10]])
    # a cell wholly in padding comes back empty
    r = patch_boxes((2, 1), {"pad": (10, 0, 0, 0)}, (10, 10))
    np.testing.assert_allclose(r.boxes, [[0, 0, 10, 0], [0, 0, 10, 10]])
    assert r.areas.tolist() == [0.0, 100.0]
    # no transform: the grid over the image itself
    r = patch_boxes((1, 2), None, (4, 6))
    np.testing.assert_allclose(r.boxes, [[0, 0, 3, 4], [3, 0, 6, 4]])
    assert r.labels == ("r0c0", "r0c1") and r.image_size == (4, 6)


@pytest.mark.parametrize("steps, size, grid", [
    ([("resize", (24, 24))], (37, 53), (3, 4)),
    ([("resize_shorter", 20), ("center_crop", (16, 16))], (30, 47), (4, 4)),
    ([("resize_shorter", 20), ("center_crop", (16, 16))], (47, 30), (2, 4)),
    ([("pad_square", "center"), ("resize", (12, 12))], (9, 25), (3, 3)),
    ([("pad_square", "topleft"), ("resize", (12, 12))], (25, 9), (4, 2)),
    ([("pad", (2, 3, 1, 0)), ("crop", (1, 1, 10, 12)), ("resize", (20, 24))], (11, 13), (5, 6)),
    ([("center_crop", (30, 30))], (20, 26), (3, 5)),  # a crop larger than the image pads
])
def test_every_pixel_lands_in_its_cells_box(steps, size, grid):
    boxes = patch_boxes(grid, steps, size)
    rows, cols = grid
    _, _, (fh, fw) = forward_point(0.0, 0.0, steps, size)
    h, w = size
    for v in range(h):
        for u in range(w):
            cx, cy = u + 0.5, v + 0.5
            x, y, _ = forward_point(cx, cy, steps, size)
            if not (0 <= x < fw and 0 <= y < fh):
                continue  # cropped away
            i, j = int(math.floor(y / (fh / rows))), int(math.floor(x / (fw / cols)))
            x1, y1, x2, y2 = boxes.boxes[i * cols + j]
            assert x1 - 1e-9 <= cx <= x2 + 1e-9 and y1 - 1e-9 <= cy <= y2 + 1e-9, (u, v, i, j)
    assert np.all(boxes.boxes[:, [0, 2]] <= w) and np.all(boxes.boxes[:, [1, 3]] <= h) and np.all(boxes.boxes >= 0)


def test_bad_transforms():
    with pytest.raises(ShapeError, match="unknown image transform step 'rotate'"):
        patch_boxes((2, 2), {"rotate": 90}, (10, 10))
    with pytest.raises(ShapeError, match="patch grid"):
        patch_boxes((0, 2), None, (10, 10))
    with pytest.raises(ShapeError, match="pad_square"):
        patch_boxes((2, 2), {"pad_square": "left"}, (10, 10))
    with pytest.raises(ShapeError, match="empty image"):
        patch_boxes((2, 2), {"crop": (0, 0, 0, 5)}, (10, 10))
