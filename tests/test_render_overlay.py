"""attnlens.render.overlay and the heat-map helpers: pixel statistics, colour order, inputs."""
import numpy as np
import pytest
import torch

import attnlens.render as R
from attnlens.attention_map import AttentionMap, Side
from attnlens.errors import DTypeError, NonFiniteError, ParameterError, ShapeError, UnknownNameError
from attnlens.geometry import box_masks, regions_to_pixels
from attnlens.render.heatmap import color_index, colormap_lut, limits
from attnlens.render.overlay import GT_COLOR, as_rgb
from attnlens.types import Regions

H, W = 48, 64
BOXES = np.array([[0, 0, 20, 20], [30, 10, 60, 40], [5, 25, 25, 45]], dtype=float)


def image(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def box_mask(box):
    return box_masks(np.asarray([box], dtype=float), (H, W))[0].numpy()


# ----------------------------------------------------------------------------- reference
def slow_overlay(img, heat, alpha, cmap, lo, hi, follow=True):
    """Pixel by pixel: colour = table[i], i = round-half-even(255 * clip((v - lo) / (hi - lo))), blended
    with opacity alpha * i / 255 (follow=True: the opacity follows the heat's colour position) or alpha."""
    lut = colormap_lut(cmap).astype(float)
    out = np.zeros_like(img)
    for r in range(img.shape[0]):
        for c in range(img.shape[1]):
            t = 0.0 if hi <= lo else min(max((heat[r, c] - lo) / (hi - lo), 0.0), 1.0)
            i = int(np.round(255 * t))
            col = lut[i]
            a = alpha * i / 255 if follow else alpha
            out[r, c] = np.clip(np.round((1 - a) * img[r, c] + a * col), 0, 255)
    return out


def slow_signed_overlay(img, heat, alpha, cmap):
    """Pixel by pixel, signed: m = max|v|, k = round(127 v / m), the colour at (127 + k) / 254 of the map,
    opacity alpha * |k| / 127."""
    import matplotlib

    cm = matplotlib.colormaps[cmap].resampled(255)
    m = np.abs(heat).max()
    out = np.zeros_like(img)
    for r in range(img.shape[0]):
        for c in range(img.shape[1]):
            k = int(np.rint(127 * heat[r, c] / m))          # -127..127
            col = np.round(np.asarray(cm(127 + k)[:3]) * 255)  # the colour at (127 + k) / 254
            a = alpha * abs(k) / 127
            out[r, c] = np.clip(np.round((1 - a) * img[r, c] + a * col), 0, 255)
    return out


def test_matches_slow_reference():
    rng = np.random.default_rng(1)
    img, heat = image()[:12, :16], rng.random(size=(12, 16))
    out = R.overlay(img, heat, alpha=0.8, cmap="inferno")
    ref = slow_overlay(img, heat, 0.8, "inferno", heat.min(), heat.max())
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1  # float rounding of the blend only
    out = R.overlay(img, heat, alpha=0.4, cmap="inferno", opacity="constant")
    ref = slow_overlay(img, heat, 0.4, "inferno", heat.min(), heat.max(), follow=False)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    signed = rng.normal(size=(12, 16))
    out = R.overlay(img, signed, alpha=0.9)  # negative values: symmetric, RdBu_r by default
    ref = slow_signed_overlay(img, signed, 0.9, "RdBu_r")
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def test_region_peak_lies_in_its_box():
    img = np.zeros((H, W, 3), np.uint8)
    w = np.array([0.05, 0.9, 0.05])
    out = R.overlay(img, w, regions=BOXES, alpha=1.0, cmap="viridis")
    top = np.all(out == colormap_lut("viridis")[255], axis=-1)
    assert np.array_equal(top, box_mask(BOXES[1]))  # exactly the pixels of box 1 (pixel-centre rule)
    # a pixel map peaked inside box 2: the brightest overlay pixel lies in box 2
    yy, xx = np.mgrid[0:H, 0:W]
    heat = np.exp(-((yy - 35) ** 2 + (xx - 15) ** 2) / 20.0)
    out = R.overlay(image(), heat, alpha=0.6)
    lum = (R.overlay(np.zeros_like(img), heat, alpha=1.0).astype(float) @ [0.299, 0.587, 0.114])
    r, c = np.unravel_index(np.argmax(lum), lum.shape)
    assert box_mask(BOXES[2])[r, c]
    assert out.shape == (H, W, 3) and out.dtype == np.uint8


def test_region_maps_use_the_metrics_code():
    w = np.array([0.2, 0.5, 0.3])
    pix = R.to_pixels(w, (H, W), regions=Regions(BOXES, (H, W)))
    assert np.array_equal(pix, regions_to_pixels(w, BOXES, (H, W), mode="max"))
    dens = R.to_pixels(w, (H, W), regions=BOXES, mode="density")
    assert np.array_equal(dens, regions_to_pixels(w, BOXES, (H, W), mode="density"))


def test_input_never_mutated_and_types_kept():
    from PIL import Image

    img = image()
    before = img.copy()
    heat = np.random.default_rng(0).random((H, W))
    heat_before = heat.copy()
    out = R.overlay(img, heat, boxes=BOXES[:1], regions=BOXES, region_weights=[1, 2, 3], top_k=2)
    assert np.array_equal(img, before) and np.array_equal(heat, heat_before)
    assert isinstance(out, np.ndarray) and out is not img
    pil = Image.fromarray(img)
    pout = R.overlay(pil, heat)
    assert isinstance(pout, Image.Image) and pout.mode == "RGB" and pout.size == (W, H)
    assert np.array_equal(np.asarray(pil), before)
    assert np.array_equal(np.asarray(pout), R.overlay(img, heat))


@pytest.mark.parametrize("cmap", ["jet", "inferno", "turbo"])
def test_rgb_order_high_value_is_red(cmap):
    img = np.zeros((2, 2, 3), np.uint8)
    out = R.overlay(img, np.array([[0.0, 0.0], [0.0, 1.0]]), alpha=1.0, cmap=cmap, opacity="constant")
    r, g, b = out[1, 1].astype(int)
    assert r > b + 60, (cmap, out[1, 1])
    if cmap == "jet":
        assert out[0, 0, 2] > out[0, 0, 0] + 60  # low end of jet is blue


@pytest.mark.parametrize("name", ["viridis", "inferno", "magma", "plasma", "cividis"])
def test_opencv_tables_equal_matplotlib_rgb(name):
    import matplotlib

    ref = np.round(matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255)
    assert np.abs(colormap_lut(name).astype(int) - ref.astype(int)).max() <= 1


def test_matplotlib_names_and_unknown_names():
    assert colormap_lut("gray")[255].tolist() == [255, 255, 255]
    with pytest.raises(UnknownNameError, match="viridis"):
        R.overlay(image(), np.zeros((H, W)), cmap="virdis")


def test_grayscale_rgba_and_float_images():
    gray = np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8)
    heat = np.zeros((H, W))
    for g in (gray, gray[..., None]):
        out = R.overlay(g, heat, alpha=0.0)
        assert out.shape == (H, W, 3) and np.array_equal(out, np.repeat(gray[..., None], 3, 2))
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:10, :, 3] = 255  # opaque top rows, transparent rest
    out = R.overlay(rgba, heat, alpha=0.0)
    assert out[0, 0].tolist() == [200, 0, 0] and out[-1, -1].tolist() == [255, 255, 255]
    img = image()
    assert np.array_equal(R.overlay(img / 255.0, heat, alpha=0.0), img)          # float in [0, 1]
    assert np.array_equal(R.overlay(img.astype(np.float32), heat, alpha=0.0), img)  # float in [0, 255]
    assert np.array_equal(as_rgb(img.astype(np.int64)), img)
    with pytest.raises(DTypeError):
        R.overlay(img * 2.0 + 300, heat)
    with pytest.raises(DTypeError):
        R.overlay(img - 1.0 - img, heat)  # negative floats
    with pytest.raises(DTypeError):
        R.overlay(img.astype(np.int32) * 300, heat)
    with pytest.raises(DTypeError):
        R.overlay(img.astype(bool), heat)
    bad = img / 255.0
    bad[0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        R.overlay(bad, heat)
    with pytest.raises(ShapeError):
        R.overlay(np.zeros((H, W, 2), np.uint8), heat)


def test_heat_of_another_size_is_resized_explicitly():
    small = np.zeros((H // 4, W // 4))
    small[-1, 0] = 1.0  # bottom-left cell
    for method in ("bilinear", "nearest"):
        out = R.overlay(np.zeros((H, W, 3), np.uint8), small, alpha=1.0, cmap="gray", resize=method)
        r, c = np.unravel_index(np.argmax(out[..., 0]), (H, W))
        assert r >= H - 4 and c < 4, method
    with pytest.raises(ShapeError, match="resize"):
        R.overlay(image(), small, resize=None)
    with pytest.raises(ShapeError, match="transpose"):
        R.overlay(image(), np.zeros((W, H)))
    with pytest.raises(UnknownNameError):
        R.overlay(image(), small, resize="cubic")


def test_nan_transparent_or_error():
    img = image()
    heat = np.random.default_rng(0).random((H, W))
    heat[:10] = np.nan
    out = R.overlay(img, heat, alpha=0.7)
    assert np.array_equal(out[:10], img[:10])          # NaN pixels show the bare image
    assert not np.array_equal(out[10:], img[10:])
    with pytest.raises(NonFiniteError, match="NaN"):
        R.overlay(img, heat, nan="raise")
    assert np.array_equal(R.overlay(img, np.full((H, W), np.nan)), img)
    heat[0, 0] = np.inf
    with pytest.raises(NonFiniteError):
        R.overlay(img, heat)
    with pytest.raises(NonFiniteError):
        R.overlay(img, np.array([0.1, np.nan, 0.2]), regions=BOXES)


def test_fixed_limits_give_equal_colours_across_overlays():
    img = np.zeros((H, W, 3), np.uint8)
    a, b = np.zeros((H, W)), np.zeros((H, W))
    a[5, 5] = b[5, 5] = 0.5
    b[40, 40] = 2.0  # a different maximum
    pa = R.overlay(img, a, alpha=1.0, vmin=0, vmax=2)
    pb = R.overlay(img, b, alpha=1.0, norm=(0, 2))
    assert np.array_equal(pa[5, 5], pb[5, 5])
    assert not np.array_equal(R.overlay(img, a, alpha=1.0)[5, 5], R.overlay(img, b, alpha=1.0)[5, 5])
    assert limits(a, (0, 2)) == (0.0, 2.0)
    const = R.overlay(img, np.full((H, W), 3.0), alpha=1.0, opacity="constant")  # equal limits: no crash
    assert np.all(const == colormap_lut("viridis")[0])
    assert np.array_equal(R.overlay(img, np.full((H, W), 3.0), alpha=1.0), img)  # lowest heat: bare image


def test_boxes_and_topk_labels_drawn():
    img = np.zeros((H, W, 3), np.uint8)
    out = R.overlay(img, np.zeros((H, W)), alpha=0.0, boxes=BOXES[1:2], thickness=1)
    assert out[10, 30].tolist() == list(GT_COLOR) and out[39, 59].tolist() == list(GT_COLOR)
    assert out[25, 45].tolist() == [0, 0, 0]  # inside the box: untouched
    reg = Regions(BOXES, (H, W), labels=["cat", "dog", "<sky>"])
    out = R.overlay(img, np.array([0.1, 0.2, 0.7]), regions=reg, top_k=1, alpha=0.0, thickness=1)
    assert out[44, 24].tolist() == [255, 255, 255]   # corner of the top box (box 2)
    assert out[39, 59].tolist() == [0, 0, 0]        # box 1 is not in the top 1
    with pytest.raises(ShapeError, match="top_k"):
        R.overlay(img, np.zeros((H, W)), top_k=2)


def test_attention_map_tensor_and_grid_heats():
    reg = Regions(BOXES, (H, W))
    amap = AttentionMap(torch.tensor([[0.1, 0.8, 0.1]]), ("word", "region"),
                        query=Side("word", "text", ("dog",)), key=Side("region", "image", regions=reg))
    out = R.overlay(np.zeros((H, W, 3), np.uint8), amap.sel(word="dog"), alpha=1.0)
    top = np.all(out == colormap_lut("viridis")[255], axis=-1)
    assert np.array_equal(top, box_mask(BOXES[1]))
    t = R.overlay(np.zeros((H, W, 3), np.uint8), torch.tensor([0.1, 0.8, 0.1]), regions=BOXES, alpha=1.0)
    assert np.array_equal(t, out)
    g = R.overlay(np.zeros((H, W, 3), np.uint8), np.array([0.0, 1.0, 0.0, 0.0]), grid=(2, 2), alpha=1.0)
    top = np.all(g == colormap_lut("viridis")[255], axis=-1)
    assert top[: H // 2, W // 2:].all() and top.sum() == (H // 2) * (W // 2)
    with pytest.raises(ShapeError, match="regions"):
        R.overlay(image(), np.array([0.1, 0.9]))
    with pytest.raises(ShapeError, match="3 region boxes"):
        R.overlay(image(), np.array([0.1, 0.9]), regions=BOXES)


def test_color_index_rounding_and_clipping():
    idx, nan = color_index(np.array([[-5.0, 0.0, 0.5, 1.0, 7.0, np.nan]]), 0.0, 1.0)
    assert idx.tolist() == [[0, 0, 128, 255, 255, 0]] and nan.tolist() == [[0, 0, 0, 0, 0, 1]]
    assert color_index(np.ones((2, 2)), 1.0, 1.0)[0].tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ParameterError, match="alpha"):
        R.overlay(image(), np.zeros((H, W)), alpha=1.5)


def test_public_names_are_the_functions():
    import importlib
    import types

    import attnlens

    for name in ("overlay", "tokens", "grid", "interactive"):
        importlib.import_module(f"attnlens.render.{name}")  # importing the module must not shadow the function
        obj = getattr(attnlens.render, name)
        assert callable(obj) and not isinstance(obj, types.ModuleType), name


@pytest.mark.parametrize("n_boxes", [5, 40, 300])
def test_regions_to_pixels_max_matches_brute_force(n_boxes):
    """Guards the faster painting in geometry._max (single maps, and > 255 regions)."""
    rng = np.random.default_rng(n_boxes)
    h, w = 23, 31
    xy = rng.uniform(-5, 30, (n_boxes, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(-2, 15, (n_boxes, 2))], axis=1)
    weights = np.round(rng.random(n_boxes), 2)  # ties included
    got = regions_to_pixels(weights, boxes, (h, w), mode="max")
    ref = np.zeros((h, w))
    for r in range(h):
        for c in range(w):
            inside = [(x1 <= c + 0.5 < x2) and (y1 <= r + 0.5 < y2) for x1, y1, x2, y2 in boxes]
            ref[r, c] = max([wt for wt, ok in zip(weights, inside) if ok], default=0.0)
    assert np.array_equal(got, ref)
    got32 = regions_to_pixels(weights.astype(np.float32), boxes, (h, w))
    assert got32.dtype == np.float32 and np.array_equal(got32, ref.astype(np.float32))
