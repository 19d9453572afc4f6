"""Hostile input to the public render functions (#16): property-based (hypothesis).

The property: a call either raises a typed :class:`attnlens.errors.AttnlensError` (a ``ValueError``
or ``TypeError``) that names the argument at fault, or returns a value that keeps the documented
contract (type and shape kept, input not modified, zero heat shows the bare image pixel, every
text escaped in HTML). Budget: the whole file runs in well under 30 s.
"""
from __future__ import annotations

import html
import re

import numpy as np
import pytest
import torch

hyp = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import attnlens.render as R  # noqa: E402
from attnlens.errors import AttnlensError  # noqa: E402
from attnlens.render.notebook import map_view  # noqa: E402
from attnlens.render.overlay import as_rgb  # noqa: E402

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)
SLOW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)

FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                   st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-300, 1e300, -1e300, 65504.0, np.nan, np.inf]))
DTYPES = st.sampled_from([np.float64, np.float32, np.float16, np.int32, np.int64, np.uint8, np.bool_])
ARG_NAMES = ("heat", "image", "alpha", "top_k", "cmap", "norm", "boxes", "regions", "grid", "scale", "thickness",
             "vmin", "vmax", "opacity", "nan", "mode", "resize", "weights", "colormap", "normalisation",
             "region weights", "scores", "words", "tokens", "dpi", "panel_size", "ncols", "attention", "maps",
             "width", "height", "format", "limits", "color", "labels", "0 words", "share", "max_values",
             "alternative", "keys", "figure format", "image dtype", "transpose", "region boxes", "patch weights")


def _typed(exc: BaseException):
    """The error is ours, a ValueError/TypeError/KeyError, and names what was wrong."""
    assert isinstance(exc, AttnlensError), f"untyped {type(exc).__name__}: {exc}"
    assert isinstance(exc, (ValueError, TypeError, KeyError))
    msg = str(exc).lower()
    assert any(n in msg for n in ARG_NAMES), f"the message names no argument: {exc}"


def call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs), None
    except AttnlensError as exc:
        _typed(exc)
        return None, exc
    except Exception as exc:  # noqa: BLE001 - the property under test
        raise AssertionError(f"{fn.__name__} raised an untyped {type(exc).__name__}: {exc}") from exc


@st.composite
def heat_maps(draw, max_side=6):
    shape = draw(st.tuples(st.integers(0, max_side), st.integers(0, max_side)))
    dtype = draw(DTYPES)
    if np.dtype(dtype).kind == "f":
        elems = FLOATS.map(lambda v: float(np.asarray(v).astype(dtype)) if np.isfinite(v) or True else v)
    elif dtype is np.bool_:
        elems = st.booleans()
    else:
        info = np.iinfo(dtype)
        elems = st.integers(max(info.min, -1000), min(info.max, 1000))
    with np.errstate(over="ignore", invalid="ignore"):
        return draw(hnp.arrays(dtype, shape, elements=elems))


@st.composite
def images(draw):
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    kind = draw(st.sampled_from(["rgb", "gray", "rgba", "float01", "float255", "int16", "pil"]))
    rng = np.random.default_rng(draw(st.integers(0, 10)))
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if kind == "rgb":
        return base
    if kind == "gray":
        return base[..., 0]
    if kind == "rgba":
        return np.dstack([base, rng.integers(0, 256, (h, w), dtype=np.uint8)])
    if kind == "float01":
        return base / 255.0
    if kind == "float255":
        return base.astype(np.float32)
    if kind == "int16":
        return (base[..., 0].astype(np.int16) * draw(st.sampled_from([1, 3])))
    from PIL import Image

    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P", "I;16", "F", "1", "CMYK", "LA"]))
    if mode == "I;16":
        return Image.fromarray(base[..., 0].astype(np.uint16) * draw(st.sampled_from([1, 300])))
    if mode == "F":
        return Image.fromarray(base[..., 0].astype(np.float32))
    return Image.fromarray(base).convert(mode)


OPTION = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), FLOATS, st.text(max_size=4),
                   st.just([1, 2]), st.just((0.0, 1.0)), st.just((1.0, 0.0)), st.just((np.nan, 1.0)))


def _contract_overlay(img, heat, out, scale=1, colorbar=False):
    base = as_rgb(img)
    if isinstance(img, np.ndarray):
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    else:
        assert out.mode == "RGB"
        out = np.asarray(out)
    H, W = base.shape[:2]
    assert out.shape[0] == H * scale and (out.shape[1] == W * scale or colorbar)
    h = np.asarray(heat, dtype=np.float64)
    if h.shape == (H, W) and scale == 1:
        zero = (h == 0) | np.isnan(h)
        assert np.array_equal(out[:, :W][zero], base[zero])  # zero heat (and NaN): the bare pixel


@FAST
@given(img=images(), heat=heat_maps())
def test_overlay_pixel_maps(img, heat):
    before = heat.copy()
    img_before = np.asarray(img).copy()
    out, err = call(R.overlay, img, heat)
    assert np.array_equal(heat, before, equal_nan=heat.dtype.kind == "f")
    assert np.array_equal(np.asarray(img), img_before)
    if err is None:
        _contract_overlay(img, heat, out)


@FAST
@given(img=images(), alpha=OPTION, top_k=OPTION, cmap=OPTION, norm=OPTION, scale=OPTION, thickness=OPTION,
       opacity=OPTION, colorbar=st.booleans())
def test_overlay_options(img, alpha, top_k, cmap, norm, scale, thickness, opacity, colorbar):
    H, W = np.asarray(img).shape[:2]
    heat = np.linspace(-1, 1, H * W).reshape(H, W)
    out, err = call(R.overlay, img, heat, alpha=alpha, top_k=top_k, cmap=cmap, norm=norm, scale=scale,
                    thickness=thickness, opacity=opacity, colorbar=colorbar, regions=[[0, 0, 1, 1]] * (H * W))
    if err is None:
        _contract_overlay(img, heat, out, scale=int(scale) if scale is not None else 1, colorbar=colorbar)


@FAST
@given(weights=heat_maps().map(lambda a: a.reshape(-1)),
       boxes=hnp.arrays(np.float64, st.tuples(st.integers(0, 5), st.sampled_from([4, 3])), elements=FLOATS),
       top_k=st.integers(0, 4), mode=st.sampled_from(["max", "density", "sum"]))
def test_region_weights_and_boxes(weights, boxes, top_k, mode):
    img = np.zeros((8, 10, 3), np.uint8)
    out, err = call(R.overlay, img, weights, regions=boxes, top_k=top_k, mode=mode, boxes=boxes)
    if err is None:
        assert out.shape == img.shape
    call(R.draw_boxes, img, boxes, labels=["<x>"] * len(boxes))


def _bf16(a):
    with np.errstate(over="ignore", invalid="ignore"):
        return torch.as_tensor(a.astype(np.float32)).to(torch.bfloat16)


@FAST
@given(w=st.one_of(heat_maps().map(torch.as_tensor), heat_maps().map(_bf16)),
       grid=st.one_of(st.none(), st.tuples(st.integers(-1, 4), st.integers(0, 4))))
def test_torch_tensors_and_grids(w, grid):
    img = np.full((6, 8, 3), 100, np.uint8)
    out, err = call(R.overlay, img, w.reshape(-1) if grid else w, grid=grid)
    if err is None:
        assert out.shape == img.shape


@FAST
@given(words=st.one_of(st.lists(st.text(max_size=6), max_size=5), st.none(), st.integers(), st.text(max_size=9)),
       scores=st.one_of(heat_maps().map(lambda a: a.reshape(-1)), st.just("abc"), st.just([[1, 2], [3]])),
       vmin=OPTION, title=st.one_of(st.none(), st.text(max_size=8), st.integers(), st.just([1])), cmap=OPTION)
def test_tokens_escape_everything(words, scores, vmin, title, cmap):
    strip, err = call(R.tokens, words, scores, vmin=vmin, title=title, cmap=cmap if cmap is not None else "viridis")
    if err is None:
        words = words.split() if isinstance(words, str) else words
        page = strip.html()
        assert "<script" not in page.lower().replace("&lt;script", "")
        texts = re.findall(r'<span class="attnlens-token"[^>]*>(.*?)</span>', page, re.S)
        assert [html.unescape(t) for t in texts] == [str(w) for w in words]


@SLOW
@given(maps=heat_maps(max_side=4).map(lambda a: np.broadcast_to(a, (1, 2) + a.shape).copy()),
       share=st.sampled_from(["grid", "row", "map", (0.0, 1.0), (1.0, 0.0), "all"]), norm=OPTION)
def test_grid(maps, share, norm):
    fig, err = call(R.grid, None, maps, share=share, norm=norm if not isinstance(norm, float) else None)
    if err is None:
        assert len(fig.attnlens_panels) == 1 and len(fig.attnlens_panels[0]) == 2


@SLOW
@given(att=heat_maps(max_side=4), words=st.lists(st.text(max_size=4), min_size=0, max_size=4))
def test_word_panels_and_map_view(att, words):
    img = np.zeros((8, 8, 3), np.uint8)
    grid = (2, 2) if att.ndim == 2 and att.shape[1] == 4 else None
    fig, err = call(R.word_panels, img, att, words=words or None, grid=grid,
                    regions=None if grid else [[0, 0, 4, 4]] * att.shape[1])
    if err is None:
        assert len(fig.attnlens_panels) == att.shape[0]
    view, err = call(map_view, att, img, tokens=words or None, grid=grid,
                     regions=None if grid else [[0, 0, 4, 4]] * att.shape[1])
    if err is None:
        page = view.html(full_html=True)
        assert "</script><" not in page.split('class="al-data">', 1)[1].split("</script>", 1)[0] + "x"
        for w in words:
            if "<" in w:
                assert w not in page.split("<script>", 1)[0] or "&lt;" in page


@SLOW
@given(att=heat_maps(max_side=4), words=st.lists(st.text(max_size=4), max_size=4))
def test_interactive(att, words):
    pytest.importorskip("plotly")
    img = np.zeros((8, 8, 3), np.uint8)
    view, err = call(R.interactive, img, att, tokens=words or None, regions=[[0, 0, 4, 4]] * att.shape[1])
    if err is None:
        page = view.html()
        assert "<script>alert" not in page


@FAST
@given(dpi=OPTION, width=OPTION, fmt=st.sampled_from(["png", "svg", "pdf", "gif", "", "PNG"]))
def test_export_options(tmp_path_factory, dpi, width, fmt):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1))
    fig.subplots().plot([0, 1])
    path = tmp_path_factory.mktemp("x") / f"f.{fmt}"
    out, err = call(R.export, fig, path, dpi=dpi if dpi is not None else 50, width=width if width is not None else 2)
    if err is None:
        assert out.exists() and out.stat().st_size > 0


def test_known_hostile_cases():
    """The instances found by hand, kept as plain tests (each once)."""
    img = np.zeros((4, 4, 3), np.uint8)
    for bad, kw in [(np.zeros((0, 0)), {}), (np.array([[np.inf]]), {}), (np.array(["a"]), {"regions": [[0, 0, 1, 1]]}),
                    (np.array([1j]), {"regions": [[0, 0, 1, 1]]}), (np.ones(2), {"regions": [[0, 0, np.nan, 1], [0, 0, 1, 1]]}),
                    (np.ones(1), {"regions": [[3, 3, 1, 1]]}), (np.ones((4, 4)), {"alpha": "0.5"}),
                    (np.ones((4, 4)), {"top_k": 2.5}), (np.ones((4, 4)), {"cmap": 3}), (np.ones((4, 4)), {"norm": "sym"}),
                    (np.ones((4, 4)), {"norm": (2, 1)}), (np.ones((4, 4)), {"boxes": [[1, 1, 0, 0]]}),
                    (np.ones((4, 4)), {"vmin": "a"}), (np.ones(5), {"grid": (2, 2)})]:
        _, err = call(R.overlay, img, bad, **kw)
        assert err is not None, kw
    # empty region sets and bool/int/bfloat16 heat are correct results, not errors
    assert np.array_equal(R.overlay(img, np.zeros(0), regions=np.zeros((0, 4))), img)
    assert R.overlay(img, np.eye(4, dtype=bool)).shape == (4, 4, 3)
    assert np.array_equal(R.overlay(img, torch.eye(4, dtype=torch.bfloat16)), R.overlay(img, np.eye(4)))
