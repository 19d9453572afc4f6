"""attnlens.render.tokens, grid and export: escaping, shared colour scales, files."""
import os
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

import attnlens.render as R
from attnlens.attention_map import AttentionMap, Side
from attnlens.errors import NonFiniteError, ShapeError, UnknownNameError
from attnlens.render.heatmap import colormap_lut
from attnlens.types import Regions

EVIL = ['<script>alert("x")</script>', "it's", '"quoted"', "a&b", "$x$ $"]


class _Spans(HTMLParser):
    """Collects the text and title of every token span, and any script element."""

    def __init__(self):
        super().__init__()
        self.texts, self.titles, self.scripts, self._in = [], [], 0, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "span" and attrs.get("class") == "attnlens-token":
            self._in = True
            self.titles.append(attrs["title"])
            self.texts.append("")

    def handle_endtag(self, tag):
        if tag == "span":
            self._in = False

    def handle_data(self, data):
        if self._in:
            self.texts[-1] += data


# ----------------------------------------------------------------------------- tokens
def test_tokens_html_is_escaped_text():
    strip = R.tokens(EVIL, [0.1, 0.5, 0.2, 0.9, 0.3], title='<img src=x onerror="alert(1)">')
    page = strip._repr_html_()
    assert "<script>" not in page and "<img" not in page
    p = _Spans()
    p.feed(page)
    assert p.scripts == 0
    assert p.texts == EVIL                                   # shown exactly as the words
    assert p.titles[0] == f"{EVIL[0]}: 0.1"                  # tooltip round-trips too
    assert repr(strip).startswith("TokenStrip(n=5")


def test_tokens_colours_follow_the_scale():
    strip = R.tokens("a red dog", [0.0, 0.5, 1.0], cmap="inferno")
    lut = colormap_lut("inferno")
    assert strip.colors[0].tolist() == lut[0].tolist() and strip.colors[2].tolist() == lut[255].tolist()
    fixed = R.tokens("a red dog", [0.0, 0.5, 1.0], vmin=0.0, vmax=2.0)
    assert fixed.colors[2].tolist() == colormap_lut("viridis")[128].tolist()
    nan = R.tokens(["a", "b"], [np.nan, 1.0])
    assert "dashed" in nan.html() and "nan" in nan.html()
    t = R.tokens(["a", "b"], torch.tensor([0.2, 0.8]))
    assert t.vmin == pytest.approx(0.2)


def test_tokens_bad_input():
    with pytest.raises(ShapeError, match="3 words"):
        R.tokens("a red dog", [0.1, 0.2])
    with pytest.raises(NonFiniteError):
        R.tokens("a b", [0.1, np.inf])


def test_tokens_figure_and_files(tmp_path):
    strip = R.tokens(EVIL, np.linspace(0, 1, 5), title="cost $5")
    fig = strip.to_figure()
    assert fig.axes
    for suffix, magic in ((".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")):
        path = strip.save(tmp_path / f"strip{suffix}")
        assert path.read_bytes().startswith(magic)
    page = strip.save(tmp_path / "strip.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script>" not in page
    assert sorted(os.listdir(tmp_path)) == ["strip.html", "strip.pdf", "strip.png", "strip.svg"]  # no temp files


# ----------------------------------------------------------------------------- grid
H, W = 40, 50
BOXES = np.array([[0, 0, 25, 20], [25, 0, 50, 20], [0, 20, 50, 40]], float)


def _canvas(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3], canvas


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _centre_colour(fig, ax, rgba):
    bb = ax.get_window_extent()
    x, y = int((bb.x0 + bb.x1) / 2), int((bb.y0 + bb.y1) / 2)
    return rgba[rgba.shape[0] - 1 - y, x]


def test_grid_shared_scale_equal_values_equal_colours():
    maps = np.zeros((2, 3, H, W))
    maps[:, :, 15:25, 20:30] = 0.5      # the same value at every panel's centre
    maps[0, 0, 0, 0] = 1.0              # but different maxima per panel
    maps[1, 2, 0, 0] = 4.0
    fig = R.grid(None, maps, rows=["dot", "cosine"], cols=["a", "red", "dog"], share="grid")
    rgba, _ = _canvas(fig)
    assert len(_panels(fig)) == 6
    centres = [_centre_colour(fig, ax, rgba).tolist() for ax in _panels(fig)]
    assert all(c == centres[0] for c in centres), centres
    assert (fig.attnlens_limits == [0.0, 4.0]).all()
    panels = fig.attnlens_panels
    assert all(np.array_equal(panels[i][j][20, 25], panels[0][0][20, 25]) for i in range(2) for j in range(3))

    per_map = R.grid(None, maps, share="map")
    rgba, _ = _canvas(per_map)
    panels = _panels(per_map)
    assert _centre_colour(per_map, panels[0], rgba).tolist() != _centre_colour(per_map, panels[5], rgba).tolist()
    assert R.grid(None, maps, share="row").attnlens_limits[:, 0].tolist() == [[0.0, 1.0], [0.0, 4.0]]
    assert (R.grid(None, maps, share=(0, 2)).attnlens_limits == [0, 2]).all()


def test_grid_region_weights_nested_dicts_and_attention_maps():
    img = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    before = img.copy()
    weights = np.array([[[0.1, 0.8, 0.1], [0.7, 0.2, 0.1]], [[0.3, 0.3, 0.4], [0.0, 0.0, 1.0]]])
    reg = Regions(BOXES, (H, W))
    fig = R.grid(img, weights, regions=reg, rows=["dot", "general"], cols=["red", "dog"], alpha=1.0,
                 gt_boxes={"dog": BOXES[:1]}, top_k=1, title="a $red$ dog", dpi=50)
    assert np.array_equal(img, before)
    top = colormap_lut("viridis")[255]
    assert np.array_equal(fig.attnlens_panels[1][1][35, 10], top)   # weight 1.0 in the bottom box
    nested = {"dot": {"dog": weights[0, 1], "red": weights[0, 0]}}
    f2 = R.grid(img, nested, regions=reg, cols=["red", "dog"], alpha=1.0, share=(0, 1))
    f3 = R.grid(img, weights[:1], regions=reg, alpha=1.0, share=(0, 1))
    assert np.array_equal(f2.attnlens_panels[0][1], f3.attnlens_panels[0][1])
    amap = AttentionMap(torch.tensor(weights[0]), ("word", "region"), alignment="dot",
                        query=Side("word", "text", ("red", "dog")), key=Side("region", "image", regions=reg))
    f4 = R.grid(img, {"dot": amap}, alpha=1.0, share=(0, 1))
    assert np.array_equal(f4.attnlens_panels[0][1], f3.attnlens_panels[0][1])
    assert [ax.get_title() for ax in f4.axes[:2]] == ["red", "dog"]


def test_grid_bad_input():
    maps = np.zeros((2, 2, H, W))
    with pytest.raises(ShapeError):
        R.grid(None, maps, rows=["only one"])
    with pytest.raises(UnknownNameError):
        R.grid(None, maps, share="everything")
    with pytest.raises(ShapeError, match="regions"):
        R.grid(None, np.zeros((1, 2, 3)))
    with pytest.raises(ShapeError, match="not keys"):
        R.grid(None, {"dot": {"a": maps[0, 0]}}, rows=["cosine"])


def test_grid_exports(tmp_path):
    fig = R.grid(None, np.random.default_rng(0).random((1, 2, 8, 8)), cols=["<b>", "$"])
    for suffix, magic in (("png", b"\x89PNG"), ("svg", b"<?xml"), ("pdf", b"%PDF")):
        assert R.save(fig, tmp_path / f"g.{suffix}").read_bytes().startswith(magic)
    with pytest.raises(UnknownNameError):
        R.save_figure(fig, tmp_path / "g.gif")


# ----------------------------------------------------------------------------- export
def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "fig.png"
    path.write_bytes(b"old")

    class Broken:
        def savefig(self, *a, **k):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        R.save(Broken(), path)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["fig.png"]


def test_save_image_is_rgb(tmp_path):
    import cv2
    from PIL import Image

    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    path = R.save(red, tmp_path / "red.png")
    assert cv2.imread(str(path))[0, 0].tolist() == [0, 0, 255]          # OpenCV reads BGR
    assert np.asarray(Image.open(path))[0, 0].tolist() == [255, 0, 0]   # RGB on disk
    with pytest.raises(ShapeError, match="suffix"):
        R.save(red, tmp_path / "noext")
