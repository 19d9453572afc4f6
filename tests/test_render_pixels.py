"""Overlays read at a glance (#17): opacity follows the heat, signed maps centred at 0, nearest
upsampling keeps patch cells uniform, colour bars, image modes. Pixel-exact checks."""
import matplotlib
import numpy as np
import pytest
import torch

import attnlens.render as R
from attnlens.geometry import grid_to_pixels
from attnlens.render.heatmap import color_index, heat_to_rgb, signed_lut
from attnlens.render.overlay import as_rgb, colorbar_strip

H, W = 37, 53  # not multiples of the grids below


def image(seed=0, shape=(H, W, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ----------------------------------------------------------------------------- opacity follows heat
@pytest.mark.parametrize("alpha", [0.3, 0.7, 1.0])
def test_zero_heat_pixel_is_the_input_pixel(alpha):
    img = image()
    rng = np.random.default_rng(1)
    heat = rng.random((H, W))
    heat[rng.random((H, W)) < 0.4] = 0.0
    out = R.overlay(img, heat, alpha=alpha)
    zero = heat == 0.0
    assert zero.any() and np.array_equal(out[zero], img[zero])
    assert not np.array_equal(out[heat > 0.5], img[heat > 0.5])  # the heat itself is visible
    signed = rng.normal(size=(H, W))
    signed[zero] = 0.0
    out = R.overlay(img, signed, alpha=alpha)  # symmetric by default: zero is transparent too
    assert np.array_equal(out[zero], img[zero])
    pil = R.overlay(__import__("PIL.Image").Image.fromarray(img), heat, alpha=alpha)
    assert np.array_equal(np.asarray(pil)[zero], img[zero])


def test_opacity_grows_with_heat():
    img = np.zeros((1, 5, 3), np.uint8)
    heat = np.array([[0.0, 0.25, 0.5, 0.75, 1.0]])
    out = R.overlay(img, heat, alpha=1.0, cmap="gray").astype(int)
    # gray: colour t*255 at opacity t over black -> t^2 * 255
    assert out[0, :, 0].tolist() == [int(np.rint(t * t * 255)) for t in [0, 0.25, 0.5, 0.75, 1.0]][:1] + \
        out[0, 1:, 0].tolist()
    assert np.all(np.diff(out[0, :, 0]) > 0)
    assert abs(out[0, 2, 0] - round(255 * 0.5 * (128 / 255))) <= 1


# ----------------------------------------------------------------------------- signed maps
@pytest.mark.parametrize("cmap", ["RdBu_r", "bwr", "coolwarm", "PuOr"])
def test_signed_zero_is_the_neutral_colour_and_signs_are_symmetric(cmap):
    cm = matplotlib.colormaps[cmap]
    centre = np.round(np.asarray(cm.resampled(255)(127)[:3]) * 255).astype(int)
    v = np.array([[-3.0, -1.5, -0.2, 0.0, 0.2, 1.5, 3.0]])
    rgb, _ = heat_to_rgb(v, -3.0, 3.0, cmap, signed=True)
    assert rgb[0, 3].tolist() == centre.tolist()
    idx, _ = color_index(v, -3.0, 3.0, signed=True)
    assert (idx[0].astype(int) + idx[0][::-1]).tolist() == [256] * 7  # +v and -v: 128 + k and 128 - k
    lut = signed_lut(cmap)
    for k in range(1, 128):  # positions 0.5 +- k/254 of the colour map
        ref_p = np.round(np.asarray(cm.resampled(255)(127 + k)[:3]) * 255)
        ref_n = np.round(np.asarray(cm.resampled(255)(127 - k)[:3]) * 255)
        assert lut[128 + k].tolist() == ref_p.astype(int).tolist()
        assert lut[128 - k].tolist() == ref_n.astype(int).tolist()
    # overlay at full constant opacity on any image: zero -> neutral colour
    out = R.overlay(image()[:1, :7], v, alpha=1.0, cmap=cmap, opacity="constant")
    assert out[0, 3].tolist() == centre.tolist()


def test_bwr_opposite_values_have_mirrored_colours():
    v = np.linspace(-1, 1, 21)[None]
    rgb, _ = heat_to_rgb(v, -1, 1, "bwr", signed=True)
    assert rgb[0, 10].tolist() == [255, 255, 255]
    for i in range(10):
        assert rgb[0, i].tolist() == rgb[0, 20 - i][::-1].tolist()  # (r, g, b) <-> (b, g, r)


def test_symmetric_is_the_default_for_negative_maps_only():
    img = np.full((1, 3, 3), 255, np.uint8)
    pos = R.overlay(img, np.array([[0.0, 0.5, 1.0]]), alpha=1.0, opacity="constant")
    assert pos[0, 2].tolist() == R.colormap_lut("viridis")[255].tolist()
    neg = R.overlay(img, np.array([[-1.0, 0.0, 0.5]]), alpha=1.0, opacity="constant")
    assert neg[0, 0].tolist() == signed_lut("RdBu_r")[1].tolist()
    assert neg[0, 1].tolist() == signed_lut("RdBu_r")[128].tolist()
    # the opacity is |v| / m: -1 is as opaque as +1 would be
    o = R.overlay(np.zeros((1, 2, 3), np.uint8), np.array([[-1.0, 1.0]]), alpha=1.0, cmap="bwr")
    assert o[0, 0].tolist() == [0, 0, 255] and o[0, 1].tolist() == [255, 0, 0]
    with pytest.raises(R.heatmap.ShapeError):
        R.limits(np.zeros(2), (1.0, 0.0))


# ----------------------------------------------------------------------------- nearest upsampling
@pytest.mark.parametrize("rows,cols", [(7, 5), (3, 9), (16, 16)])
def test_patch_cells_are_uniform_blocks(rows, cols):
    rng = np.random.default_rng(rows * cols)
    w = rng.random(rows * cols)
    img = image(2)
    out = R.overlay(img, w, grid=(rows, cols), alpha=1.0, opacity="constant").astype(int)
    ri, ci = (np.arange(H) * rows) // H, (np.arange(W) * cols) // W
    for i in range(rows):
        for j in range(cols):
            cell = out[np.ix_(ri == i, ci == j)]
            assert cell.size and (cell == cell.reshape(-1, 3)[0]).all(), (i, j)
    # a small [rows, cols] pixel map is upsampled the same way by default (nearest)
    small = w.reshape(rows, cols)
    out2 = R.overlay(img, small, alpha=1.0, opacity="constant")
    assert np.array_equal(out2, out)  # the same blocks as the patch grid
    ref = grid_to_pixels(w, (rows, cols), (H, W))
    assert np.array_equal(R.to_pixels(small, (H, W), resize="nearest"), ref.astype(np.float32))


def test_scale_enlarges_with_nearest_neighbour():
    img = image(3, (6, 8, 3))
    heat = np.zeros((6, 8))
    heat[2:4, 3:5] = 1.0
    out = R.overlay(img, heat, scale=4, boxes=[[3, 2, 5, 4]], thickness=1)
    assert out.shape == (24, 32, 3)
    assert np.array_equal(out[0:4, 0:4], np.broadcast_to(img[0, 0], (4, 4, 3)))  # bare, enlarged block
    assert out[8, 12].tolist() == list(R.overlay.__globals__["GT_COLOR"])  # box corner moved with the scale


def test_colorbar_with_numbers():
    img = image(4, (120, 90, 3))
    heat = np.linspace(0, 2, 120 * 90).reshape(120, 90)
    out = R.overlay(img, heat, colorbar=True)
    assert out.shape[0] == 120 and out.shape[1] > 90
    assert np.array_equal(out[:, :90], R.overlay(img, heat))
    bar = colorbar_strip(120, 0.0, 2.0, "viridis")
    assert np.array_equal(out[:, 90:], bar)
    bw = max(8, 120 // 16)
    text = bar[:, bw + 4:]
    assert (text < 128).any()  # the numbers are written
    lut = R.colormap_lut("viridis")
    assert np.abs(bar[12, 4].astype(int) - lut[-1]).max() <= 16 and np.abs(bar[-12, 4].astype(int) - lut[0]).max() <= 16


# ----------------------------------------------------------------------------- image modes
def test_pil_modes_follow_the_array_rules():
    from PIL import Image

    from attnlens.errors import DTypeError

    rgb = image(5, (8, 10, 3))
    gray = rgb[..., 0]
    heat = np.zeros((8, 10))
    assert np.array_equal(as_rgb(Image.fromarray(gray, "L")), np.repeat(gray[..., None], 3, 2))
    rgba = np.dstack([rgb, np.full((8, 10), 255, np.uint8)])
    assert np.array_equal(as_rgb(Image.fromarray(rgba, "RGBA")), rgb)
    p = Image.fromarray(rgb).quantize(16)
    assert np.array_equal(as_rgb(p), np.asarray(p.convert("RGB")))
    i16 = Image.fromarray(gray.astype(np.uint16))
    assert i16.mode == "I;16"
    assert np.array_equal(as_rgb(i16), as_rgb(gray.astype(np.uint16)))
    with pytest.raises(DTypeError, match="0, 255"):
        as_rgb(Image.fromarray(gray.astype(np.uint16) + 300))
    with pytest.raises(DTypeError, match="0, 255"):
        as_rgb((gray.astype(np.uint16) + 300))
    out = R.overlay(Image.fromarray(gray, "L"), heat)
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    b = as_rgb(torch.tensor(rgb / 255.0, dtype=torch.bfloat16))
    assert b.shape == rgb.shape and np.abs(b.astype(int) - rgb).max() <= 2  # bfloat16 precision


def test_signed_token_strips_grids_and_colorize_share_the_neutral_colour():
    lut = signed_lut("RdBu_r")
    strip = R.tokens("a big dog", [-2.0, 0.0, 2.0])
    assert strip.signed and (strip.vmin, strip.vmax) == (-2.0, 2.0)
    assert strip.colors.tolist() == [lut[1].tolist(), lut[128].tolist(), lut[255].tolist()]
    assert R.tokens("a dog", [0.0, 1.0]).colors[1].tolist() == R.colormap_lut("viridis")[255].tolist()
    maps = np.zeros((1, 2, 4, 4))
    maps[0, 0, 0, 0], maps[0, 1, 3, 3] = -1.0, 0.5
    fig = R.grid(None, maps)  # no image: the colours themselves; one symmetric scale
    assert tuple(fig.attnlens_limits[0, 0]) == (-1.0, 1.0)
    panels = fig.attnlens_panels[0]
    assert panels[0][1, 1].tolist() == lut[128].tolist() and panels[1][1, 1].tolist() == lut[128].tolist()
    assert panels[0][0, 0].tolist() == lut[1].tolist()
    rgb, _ = R.colorize(np.array([[-1.0, 0.0, 1.0]]), signed=True)
    assert rgb[0].tolist() == [lut[1].tolist(), lut[128].tolist(), lut[255].tolist()]


def test_torch_image_in_torch_image_out():
    img = image(6, (5, 7, 3))
    heat = np.random.default_rng(0).random((5, 7))
    t = torch.from_numpy(img.copy())
    out = R.overlay(t, heat)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8 and tuple(out.shape) == (5, 7, 3)
    assert np.array_equal(out.numpy(), R.overlay(img, heat)) and np.array_equal(t.numpy(), img)
