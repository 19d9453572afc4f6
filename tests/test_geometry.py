"""Box conventions: conversions, the pixel-centre rule, region-to-pixel maps (vs slow references)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from attnlens import geometry as g
from attnlens.errors import ShapeError


def slow_mask(box, h, w):
    x1, y1, x2, y2 = box
    m = np.zeros((h, w), bool)
    for v in range(h):
        for u in range(w):
            m[v, u] = x1 <= u + 0.5 < x2 and y1 <= v + 0.5 < y2
    return m


def test_conversions_known_answers():
    np.testing.assert_array_equal(g.xywh_to_xyxy([[1, 2, 3, 4]]), [[1, 2, 4, 6]])
    np.testing.assert_array_equal(g.normalized_to_xyxy([[0.5, 0, 1, 0.5]], (10, 20)), [[10, 0, 20, 5]])
    # VOC: xmin=1..xmax=3 inclusive (1-based) covers 0-based columns 0, 1, 2
    box = g.voc_to_xyxy([[1, 1, 3, 2]])[0]
    np.testing.assert_array_equal(slow_mask(box, 3, 4)[0], [True, True, True, False])
    np.testing.assert_array_equal(g.union_box([[0, 1, 2, 3], [1, 0, 5, 2]]), [0, 0, 5, 3])
    with pytest.raises(ShapeError):
        g.union_box(np.zeros((0, 4)))


def test_clip_warns():
    with pytest.warns(UserWarning, match="clipped"):
        out = g.clip_boxes([[-2, 0, 12, 5]], (8, 10))
    np.testing.assert_array_equal(out, [[0, 0, 10, 5]])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(*[st.floats(-2, 12, allow_nan=False)] * 4), min_size=1, max_size=4))
def test_box_masks_match_pixel_centre_rule(raw):
    boxes = np.array(raw, dtype=float)
    masks = g.box_masks(torch.tensor(boxes), (9, 11)).numpy()
    for m, b in zip(masks, boxes):
        np.testing.assert_array_equal(m, slow_mask(b, 9, 11))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(0, 10_000))
def test_regions_to_pixels_vs_slow(n, seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-1, 12, size=(n, 2, 2))
    boxes = np.concatenate([xy.min(1), xy.max(1)], 1)
    w = rng.uniform(-1, 1, size=n)
    h, wd = 10, 12
    masks = [slow_mask(b, h, wd) for b in boxes]
    ref_max = np.zeros((h, wd))
    ref_den = np.zeros((h, wd))
    for v in range(h):
        for u in range(wd):
            cov = [w[r] for r in range(n) if masks[r][v, u]]
            ref_max[v, u] = max(cov) if cov else 0.0
            ref_den[v, u] = sum(w[r] / masks[r].sum() for r in range(n) if masks[r][v, u])
    np.testing.assert_allclose(g.regions_to_pixels(w, boxes, (h, wd), "max"), ref_max, atol=1e-12)
    np.testing.assert_allclose(g.regions_to_pixels(w, boxes, (h, wd), "density"), ref_den, atol=1e-12)
    # batched torch path agrees with the single-map path
    tw = torch.tensor(np.stack([w, w[::-1].copy()]))
    out = g.regions_to_pixels(tw, torch.tensor(boxes), (h, wd), "max")
    np.testing.assert_allclose(out[0].numpy(), ref_max, atol=1e-12)


def test_density_preserves_mass_and_valid_renormalises():
    boxes = np.array([[0, 0, 4, 4], [2, 2, 8, 8], [1, 1, 1, 5]])  # last one is empty
    w = np.array([0.5, 0.3, 0.2])
    m = g.regions_to_pixels(w, boxes, (8, 8), "density")
    assert m.sum() == pytest.approx(0.8)  # the empty box's weight has nowhere to go
    m2 = g.regions_to_pixels(w, boxes, (8, 8), "density", valid=[True, True, False])
    assert m2.sum() == pytest.approx(1.0)


def test_grid_to_pixels_cells():
    w = np.arange(6, dtype=float)  # 2 rows x 3 cols
    m = g.grid_to_pixels(w, (2, 3), (4, 6))
    assert m[0, 0] == 0 and m[0, 5] == 2 and m[3, 0] == 3 and m[3, 5] == 5
    with pytest.raises(ShapeError, match="2x2 grid"):
        g.grid_to_pixels(w, (2, 2), (4, 4))


def test_iou_known():
    assert g.box_iou([[0, 0, 2, 2]], [[0, 0, 2, 2]])[0, 0] == 1.0
    assert g.box_iou([[0, 0, 1, 1]], [[2, 2, 3, 3]])[0, 0] == 0.0
    assert g.box_iou([[0, 0, 0, 0]], [[0, 0, 0, 0]])[0, 0] == 0.0


def test_zero_regions_give_empty_map():
    out = g.regions_to_pixels(np.zeros(0), np.zeros((0, 4)), (3, 5))
    assert out.shape == (3, 5) and not out.any()
    out = g.regions_to_pixels(torch.zeros(2, 0), torch.zeros(2, 0, 4), (3, 5), mode="density")
    assert out.shape == (2, 3, 5) and not out.any()


def test_union_mask_accepts_read_only_boxes():
    boxes = np.array([[0.0, 0.0, 2.0, 2.0]])
    boxes.setflags(write=False)
    assert int(g.union_mask(boxes, (4, 4)).sum()) == 4
