"""RegionEncoder and ROI-align: against a slow per-box reference, locality, known answers."""
import math

import numpy as np
import pytest
import torch

from attnlens.errors import DTypeError, ShapeError
from attnlens.models.regions import RegionEncoder, box_geometry, roi_align


def _bilinear(fmap: np.ndarray, x: float, y: float, stride: float) -> np.ndarray:
    """grid_sample(align_corners=False, padding_mode='border') at image point (x, y), by hand."""
    c, h, w = fmap.shape
    u = min(max(x / stride - 0.5, 0.0), w - 1)
    v = min(max(y / stride - 0.5, 0.0), h - 1)
    i0, j0 = int(math.floor(u)), int(math.floor(v))
    i1, j1 = min(i0 + 1, w - 1), min(j0 + 1, h - 1)
    fu, fv = u - i0, v - j0
    return ((1 - fu) * (1 - fv) * fmap[:, j0, i0] + fu * (1 - fv) * fmap[:, j0, i1]
            + (1 - fu) * fv * fmap[:, j1, i0] + fu * fv * fmap[:, j1, i1])


def _points(lo: float, hi: float, bins: int, n: int, stride: float) -> list[list[float]]:
    if hi - lo < stride:
        low = high = (lo + hi) / 2
    else:
        low, high = lo + stride / 2, hi - stride / 2
    out = []
    for b in range(bins):
        pts = []
        for j in range(n):
            p = lo + (b + (j + 0.5) / n) * (hi - lo) / bins
            pts.append(min(max(p, low), high))
        out.append(pts)
    return out


def slow_roi_align(features, boxes, output_size, stride, n):
    f = features.double().numpy()
    bx = boxes.double().numpy()
    ph, pw = output_size
    out = np.zeros((bx.shape[0], bx.shape[1], f.shape[1], ph, pw))
    for b in range(bx.shape[0]):
        for r in range(bx.shape[1]):
            x1, y1, x2, y2 = bx[b, r]
            ys, xs = _points(y1, y2, ph, n, stride), _points(x1, x2, pw, n, stride)
            for i in range(ph):
                for j in range(pw):
                    vals = [_bilinear(f[b], x, y, stride) for y in ys[i] for x in xs[j]]
                    out[b, r, :, i, j] = np.mean(vals, axis=0)
    return torch.from_numpy(out)


@pytest.mark.parametrize("stride,n,size", [(1.0, 2, (3, 2)), (4.0, 1, (2, 2)), (2.0, 3, (1, 4))])
def test_roi_align_matches_slow_reference(stride, n, size):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    img_w, img_h = 7 * stride, 6 * stride
    xy1 = torch.rand(2, 5, 2, generator=g, dtype=torch.float64) * torch.tensor([img_w, img_h]) * 0.7
    wh = torch.rand(2, 5, 2, generator=g, dtype=torch.float64) * torch.tensor([img_w, img_h]) * 0.5
    boxes = torch.cat([xy1, (xy1 + wh).minimum(torch.tensor([img_w, img_h]))], dim=-1)
    boxes[0, 0] = torch.tensor([0.0, 0.0, img_w, img_h])  # the whole image
    boxes[1, 1] = torch.tensor([1.0, 1.0, 1.2, 1.1])  # narrower than a cell
    fast = roi_align(feats, boxes, size, stride=stride, sampling_ratio=n)
    ref = slow_roi_align(feats, boxes, size, stride, n)
    assert fast.shape == ref.shape
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)


def test_roi_align_constant_box_known_answer():
    img = torch.zeros(1, 1, 10, 10)
    img[0, 0, 2:6, 3:8] = 7.0  # rows 2..5, cols 3..7
    out = roi_align(img, torch.tensor([[[3.0, 2.0, 8.0, 6.0]]]), (3, 3), stride=1.0, sampling_ratio=2)
    assert torch.equal(out, torch.full((1, 1, 1, 3, 3), 7.0))


def test_pooled_value_depends_only_on_pixels_inside_box():
    g = torch.Generator().manual_seed(1)
    # float64: grid_sample's coordinate round trip leaves ~1e-16 weights on the outside pixels
    img = torch.rand(1, 3, 20, 24, generator=g, dtype=torch.float64)
    boxes = torch.tensor([[[3.0, 4.0, 11.0, 9.0], [0.0, 0.0, 2.0, 1.0], [15.0, 10.0, 24.0, 20.0]]],
                         dtype=torch.float64)
    base = roi_align(img, boxes, (4, 4), stride=1.0, sampling_ratio=2)
    for r in range(boxes.shape[1]):
        x1, y1, x2, y2 = boxes[0, r].long().tolist()
        inside = torch.zeros(20, 24, dtype=torch.bool)
        inside[y1:y2, x1:x2] = True
        changed = torch.where(inside, img, torch.rand(1, 3, 20, 24, generator=g, dtype=torch.float64) * 50)
        again = roi_align(changed, boxes[:, r:r + 1], (4, 4), stride=1.0, sampling_ratio=2)
        torch.testing.assert_close(again[0, 0], base[0, r], rtol=0, atol=1e-12)
        # and it does depend on the pixels inside
        changed_in = torch.where(inside, img + 1.0, img)
        moved = roi_align(changed_in, boxes[:, r:r + 1], (4, 4), stride=1.0)[0, 0]
        torch.testing.assert_close(moved, base[0, r] + 1.0, rtol=0, atol=1e-12)


def test_encoder_feature_ignores_pixels_beyond_receptive_field():
    torch.manual_seed(0)
    enc = RegionEncoder(16, channels=(4, 8, 8), pool=(2, 2)).double()
    g = torch.Generator().manual_seed(2)
    img = torch.rand(1, 3, 64, 64, generator=g, dtype=torch.float64)
    box = torch.tensor([[[24.0, 20.0, 40.0, 36.0]]], dtype=torch.float64)
    m = enc.context_margin
    near = torch.zeros(64, 64, dtype=torch.bool)
    near[max(20 - m, 0):36 + m, max(24 - m, 0):40 + m] = True
    assert not bool(near.all()), "test image too small for the margin"
    far_changed = torch.where(near, img, torch.rand(1, 3, 64, 64, generator=g, dtype=torch.float64))
    with torch.no_grad():
        a, b = enc(img, box), enc(far_changed, box)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    with torch.no_grad():
        c = enc(torch.where(near, 1 - img, img), box)
    assert not torch.allclose(a, c)


def test_encoder_shapes_mask_and_norm():
    torch.manual_seed(0)
    enc = RegionEncoder(12, channels=(4, 8), pool=(2, 3))
    boxes = torch.tensor([[[0.0, 0.0, 8.0, 8.0], [2.0, 2.0, 16.0, 12.0]]] * 3)
    mask = torch.tensor([[True, True], [True, False], [False, False]])
    out = enc(torch.rand(3, 3, 16, 16), boxes, mask)
    assert out.shape == (3, 2, 12)
    torch.testing.assert_close(out.norm(dim=-1), mask.float())
    assert enc.stride == 2 and enc.receptive_field == 5


def test_box_geometry_and_bad_input():
    geo = box_geometry(torch.tensor([[[4.0, 2.0, 8.0, 10.0]]]), (10, 8))
    torch.testing.assert_close(geo, torch.tensor([[[0.5, 0.2, 1.0, 1.0, 0.5 * 0.8]]]))
    enc = RegionEncoder(8, channels=(4, 8))
    with pytest.raises(ShapeError, match="multiple of the encoder stride"):
        enc(torch.rand(1, 3, 15, 16), torch.zeros(1, 1, 4))
    with pytest.raises(ShapeError, match=r"\[B, R, 4\]"):
        enc(torch.rand(1, 3, 16, 16), torch.zeros(1, 4))
    with pytest.raises(DTypeError):
        enc(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), torch.zeros(1, 1, 4))
    with pytest.raises(ShapeError, match="region_mask"):
        enc(torch.rand(1, 3, 16, 16), torch.zeros(1, 2, 4), torch.ones(1, 3, dtype=torch.bool))
