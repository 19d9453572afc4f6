"""regions_to_pixels (re-exported as attnlens.metrics.regions_to_pixels), box accuracy and top-1
region hit against slow, obviously-correct loops."""
from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnlens.metrics as M


def ref_inside(box, r, c):
    x1, y1, x2, y2 = box
    return x1 <= c + 0.5 < x2 and y1 <= r + 0.5 < y2


def ref_regions_to_pixels(w, boxes, size, mode, valid=None):
    h, wd = size
    w = np.asarray(w, dtype=float).copy()
    if valid is not None:
        total = w.sum()
        w = np.where(valid, w, 0.0)
        if w.sum() != 0:
            w = w * total / w.sum()
    out = np.zeros((h, wd))
    areas = [sum(ref_inside(b, r, c) for r in range(h) for c in range(wd)) for b in boxes]
    for r in range(h):
        for c in range(wd):
            cover = [i for i, b in enumerate(boxes) if ref_inside(b, r, c)]
            if mode == "max":
                out[r, c] = max(w[i] for i in cover) if cover else 0.0
            else:
                out[r, c] = sum(w[i] / areas[i] for i in cover)
    return out


coord = st.floats(-2, 9, allow_nan=False).map(lambda v: round(v * 2) / 2)   # half pixels: boundary cases
box = st.tuples(coord, coord, coord, coord).map(lambda b: (min(b[0], b[2]), min(b[1], b[3]),
                                                           max(b[0], b[2]), max(b[1], b[3])))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(box, st.floats(0, 1), st.booleans()), min_size=1, max_size=4),
       st.sampled_from(["max", "density"]), st.integers(1, 3))
def test_regions_to_pixels_matches_loop(regions, mode, n):
    boxes = np.array([r[0] for r in regions])
    w = np.array([r[1] for r in regions])
    valid = np.array([r[2] for r in regions])
    ref = ref_regions_to_pixels(w, boxes, (6, 7), mode, valid)
    out = M.regions_to_pixels(np.tile(w, (n, 1)), boxes, (6, 7), mode=mode, valid=np.tile(valid, (n, 1)))
    assert out.shape == (n, 6, 7)
    for o in out:
        np.testing.assert_allclose(o, ref, atol=1e-12)
    single = M.regions_to_pixels(torch.tensor(w), torch.tensor(boxes), (6, 7), mode=mode, valid=torch.tensor(valid))
    assert isinstance(single, torch.Tensor)
    np.testing.assert_allclose(single.numpy(), ref, atol=1e-12)


def test_density_preserves_mass():
    w = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 12], [3, 3, 4, 4]])
    m = M.regions_to_pixels(w, boxes, (16, 24), mode="density")
    assert abs(float(m.sum()) - 1.0) < 1e-12


# --------------------------------------------------------------------------- box accuracy reference
def ref_components(binary):
    """8-connected components by flood fill, labelled in raster order of their first pixel."""
    h, w = binary.shape
    lab = np.zeros((h, w), int)
    k = 0
    for r in range(h):
        for c in range(w):
            if binary[r, c] and not lab[r, c]:
                k += 1
                stack = [(r, c)]
                lab[r, c] = k
                while stack:
                    y, x = stack.pop()
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            yy, xx = y + dy, x + dx
                            if 0 <= yy < h and 0 <= xx < w and binary[yy, xx] and not lab[yy, xx]:
                                lab[yy, xx] = k
                                stack.append((yy, xx))
    return lab, k


def ref_iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def ref_box_accuracy(m, gt, thr=0.5, method="component"):
    gt = [g for g in gt if g[2] > g[0] and g[3] > g[1]]
    if not gt or m.max() <= 0:
        return float("nan")
    lab, k = ref_components(m >= thr * m.max())
    if method == "component":
        sizes = [(lab == i).sum() for i in range(1, k + 1)]
        keep = 1 + max(range(k), key=lambda i: (sizes[i], -i))
    else:
        flat = int(np.argmax(m))
        keep = lab.reshape(-1)[flat]
    rr, cc = np.nonzero(lab == keep)
    box = (cc.min(), rr.min(), cc.max() + 1, rr.max() + 1)
    ub = (min(g[0] for g in gt), min(g[1] for g in gt), max(g[2] for g in gt), max(g[3] for g in gt))
    return float(ref_iou(box, ub) >= 0.5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=48, max_size=48), st.lists(box, min_size=0, max_size=2),
       st.sampled_from(["component", "peak"]))
def test_box_accuracy_matches_loop(vals, gt, method):
    m = np.array(vals, dtype=float).reshape(6, 8)
    gt = np.array(gt, dtype=float).reshape(-1, 4)
    out = M.box_accuracy(torch.tensor(m)[None], [gt], method=method)[0].item()
    ref = ref_box_accuracy(m, list(gt), method=method)
    assert (math.isnan(out) and math.isnan(ref)) or out == ref


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(box, st.integers(0, 3), st.booleans()), min_size=1, max_size=5),
       st.lists(box, min_size=1, max_size=2), st.sampled_from([0.3, 0.5]))
def test_top1_region_hit_matches_loop(regions, gt, tau):
    boxes = torch.tensor([r[0] for r in regions], dtype=torch.float64)
    w = torch.tensor([[float(r[1]) for r in regions]])
    valid = torch.tensor([[r[2] for r in regions]])
    out = M.top1_region_hit(w, boxes, [np.array(gt)], iou_threshold=tau, valid=valid)[0].item()
    cand = [i for i in range(len(regions)) if regions[i][2]]
    gt_ok = [g for g in gt if g[2] > g[0] and g[3] > g[1]]
    if not gt_ok or not cand:
        assert math.isnan(out)
        return
    best = max(cand, key=lambda i: (regions[i][1], -i))     # first maximum among valid regions
    assert out == float(any(ref_iou(regions[best][0], g) >= tau for g in gt_ok))


def test_grid_to_pixels_nearest_cell():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])     # 2 rows x 3 cols, raster order
    out = M.grid_to_pixels(w, (2, 3), (4, 6))
    assert out.shape == (1, 4, 6)
    assert out[0].tolist() == [[1, 1, 2, 2, 3, 3], [1, 1, 2, 2, 3, 3], [4, 4, 5, 5, 6, 6], [4, 4, 5, 5, 6, 6]]
