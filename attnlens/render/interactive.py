"""Interactive linked view (plotly): words above, the image with the selected word's heat below.

* Hovering or clicking a word (a bar) shows that word's heat map on the image.
* Clicking a region on the image shows that region's attention over the words (the bars);
  clicking outside every region (or the same region again) goes back to each word's peak.
* Buttons switch between alternatives (alignment functions, layers, heads); a slider walks
  through the words.
* A URL fragment such as ``#word=2&region=5&alt=1`` opens the saved page in that state.

The heat's colour opacity follows its value (the colour scale's stops carry ``alpha * t``), so zero
heat shows the bare image; signed maps use a diverging colour map centred at 0 on a symmetric
scale, as :func:`~attnlens.render.overlay.overlay` does.

The heat is drawn as plotly cells whose edges are the region boxes' pixel bounds (or the patch
grid), and each cell's value is sampled from :func:`attnlens.geometry.regions_to_pixels` (or
``grid_to_pixels``): exactly the pixel map the metrics see, stored compactly. ``save_html``
writes one self-contained file: plotly.js and the linking script are inlined (no CDN, works
offline), and every word, label and title is HTML-escaped.
"""
from __future__ import annotations

import base64
import html
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import NonFiniteError, ShapeError, UnknownNameError, require
from ..geometry import pixel_bounds
from .export import atomic_write
from .linked_view import SCRIPT as _JS
from ._checks import choice_option, heat_array, int_option, real_option, text_option, word_list
from .heatmap import colormap_lut, limits, region_boxes, resolve_cmap, signed_lut, to_pixels
from .overlay import as_rgb

__all__ = ["InteractiveView", "interactive", "save_html"]

_ERROR_TRAP = ("<script>window.__attnlensErrors=[];window.addEventListener('error',function(e){"
               "window.__attnlensErrors.push(String(e.message));});</script>")


@dataclass(eq=False)
class InteractiveView:
    """A plotly figure plus the script that links its panels.

    Attributes:
        figure: the ``plotly.graph_objects.Figure`` (its initial state shows word 0).
        script: the JavaScript that links words, image and controls (run after plotting).
        title: page title.
    """

    figure: object
    script: str
    title: str = "attnlens"

    def html(self, *, full_html: bool = True) -> str:
        """The view as HTML with plotly.js inlined (no network access needed)."""
        pio = require("plotly.io", "render")
        out = pio.to_html(self.figure, full_html=full_html, include_plotlyjs=True, post_script=self.script,
                          config={"displaylogo": False, "responsive": True})
        if full_html:
            out = out.replace("<head>", "<head>\n" + _ERROR_TRAP + f"<title>{html.escape(self.title)}</title>", 1)
        return out

    def save(self, path) -> Path:
        """Write a self-contained HTML file atomically."""
        return save_html(self, path)

    def _repr_html_(self) -> str:
        return self.html(full_html=False)

    def __repr__(self) -> str:
        return f"InteractiveView(title={self.title!r})"


def save_html(fig, path) -> Path:
    """Save an :class:`InteractiveView` (or a bare plotly figure) as one offline HTML file."""
    if not isinstance(fig, InteractiveView):
        fig = InteractiveView(fig, "")
    return atomic_write(path, fig.html(full_html=True))


# --------------------------------------------------------------------------- inputs
def _orient(amap):
    """An AttentionMap as ``(weights [..., words, keys], extra dims, word tokens, key side)``."""
    w = heat_array(amap.weights, "attention", "interactive")
    q, k = amap.query, amap.key
    if q.modality == "image" and k.modality == "text":  # i2t: make words the second-last axis
        w = np.swapaxes(w, -1, -2)
        q, k = k, q
    return w, amap.dims[:-2], q.tokens, k


def _alternatives(attention, alternatives, tokens, regions, grid):
    """Ordered ``{name: [L, K] or [L, H, W]}`` plus tokens and the key geometry."""
    items = []
    if attention is not None:
        items.append((getattr(attention, "alignment", None) or "attention", attention))
    items += list((alternatives or {}).items())
    if not items:
        raise ShapeError("interactive needs attention or alternatives")
    out = {}
    for name, a in items:
        if hasattr(a, "dims") and hasattr(a, "weights"):
            if a.weights.ndim < 2:
                raise ShapeError(f"alternative {name!r}: an AttentionMap needs [..., word, key] weights, "
                                 f"got dims {a.dims}")
            w, extra, toks, key = _orient(a)
            tokens = tokens if tokens is not None else toks
            regions = regions if regions is not None else key.regions
            grid = grid if grid is not None else key.grid
            if w.ndim == 2:
                out[str(name)] = w
            else:  # expand extra axes (layer, head ...) into alternatives
                for idx in itertools.product(*[range(n) for n in w.shape[:-2]]):
                    label = ", ".join(f"{d}={i}" for d, i in zip(extra, idx))
                    out[f"{name} {label}"] = w[idx]
        else:
            arr = heat_array(a, "attention" if attention is a else f"alternative {name!r}", "interactive")
            if arr.ndim not in (2, 3):
                raise ShapeError(f"interactive: attention {name!r} must be [L, K] or [L, H, W], got {arr.shape}")
            out[str(name)] = np.asarray(arr, dtype=np.float64)
    return out, tokens, regions, grid


def _grid_boxes(grid, size) -> np.ndarray:
    """xyxy boxes of the patches of a ``(rows, cols)`` grid, as :func:`grid_to_pixels` maps them."""
    rows, cols = grid
    H, W = size
    ri = (np.arange(H) * rows) // H
    ci = (np.arange(W) * cols) // W
    boxes = []
    for i in range(rows):
        r = np.nonzero(ri == i)[0]
        for j in range(cols):
            c = np.nonzero(ci == j)[0]
            if len(r) and len(c):
                boxes.append([c[0], r[0], c[-1] + 1, r[-1] + 1])
            else:
                boxes.append([0, 0, 0, 0])
    return np.asarray(boxes, dtype=np.float64)


def _edges(bounds, n) -> np.ndarray:
    return np.unique(np.concatenate([[0, n], np.asarray(bounds).reshape(-1)]).clip(0, n))


def _png_uri(rgb: np.ndarray) -> str:
    import cv2

    ok, enc = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))  # RGB -> BGR for OpenCV
    return "data:image/png;base64," + base64.b64encode(enc.tobytes()).decode("ascii")


def _round(a, digits=5):
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(all="ignore"):
        out = np.round(a, digits)
    return [None if v is None or not np.isfinite(v) else float(v) for v in out.reshape(-1)] if out.ndim <= 1 \
        else [_round(x, digits) for x in out]


def _cells(alts, boxes, grid, size, pixel_input, max_cells, signed=False):
    """Heat cells of every alternative and word: ``(x edges, y edges, z [A][L][ny, nx], bar heights)``.

    Region/patch input: the cell edges are the boxes' pixel bounds, so every cell is uniform in
    the pixel map and its value is sampled from :func:`to_pixels` (the metrics' conversion).
    Pixel input: the maps are area-averaged down to at most ``max_cells`` on the long side.
    """
    import cv2

    H, W = size
    if pixel_input:
        scale = min(1.0, max_cells / max(H, W))
        ny, nx = max(1, round(H * scale)), max(1, round(W * scale))
        ye, xe = np.linspace(0, H, ny + 1), np.linspace(0, W, nx + 1)
    else:
        r0, r1, c0, c1 = pixel_bounds(boxes, (H, W))
        ye, xe = _edges([r0, r1], H), _edges([c0, c1], W)
    rows, cols = ye[:-1].astype(int), xe[:-1].astype(int)
    z, bars = [], []
    for name, a in alts.items():
        if not np.isfinite(a).all():
            raise NonFiniteError(f"alternative {name!r} contains NaN or infinite weights")
        zs = []
        for word in a:
            if pixel_input:
                pix = to_pixels(word, (H, W)).astype(np.float32)
                zs.append(cv2.resize(pix, (nx, ny), interpolation=cv2.INTER_AREA))
            else:
                pix = to_pixels(word, (H, W), regions=None if grid is not None else boxes, grid=grid)
                zs.append(np.asarray(pix)[rows][:, cols])
        z.append(zs)
        bars.append([float(np.max(word)) if signed is False else float(word.flat[np.argmax(np.abs(word))])
                     for word in a])
    return xe, ye, z, bars


def _bar_colors(values, hexes, signed: bool = False):
    """Bar colours as the linking script computes them (scale from min(0, min) to max; signed:
    centred at 0 on ``(-m, m)``)."""
    v = np.asarray(values, dtype=float)
    if signed:
        m = float(np.abs(v).max()) if v.size else 0.0
        idx = 128 + np.floor(127 * np.clip(v / m, -1, 1) + 0.5) if m > 0 else np.full(v.shape, 128)
        return [hexes[int(i)] for i in idx]
    lo, hi = min(0.0, float(v.min())), float(v.max())
    t = np.clip((v - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(v)
    return [hexes[int(np.floor(x * 255 + 0.5))] for x in t]


def _colorscale(lut, alpha: float, signed: bool, n: int = 16) -> list:
    """Plotly colour-scale stops whose opacity follows the heat: ``alpha * t`` (sequential) or
    ``alpha * |2t - 1|`` (signed), so the lowest (or zero) heat is transparent."""
    stops = []
    for i in range(n):
        t = i / (n - 1)
        if signed:
            idx, a = 128 + round(127 * (2 * t - 1)), alpha * abs(2 * t - 1)
        else:
            idx, a = round(255 * t), alpha * t
        r, g, b = (int(c) for c in lut[idx])
        stops.append([t, f"rgba({r},{g},{b},{a:.4f})"])
    return stops


def _top_shapes(weights, boxes, top_k):
    """Dotted outlines of the ``top_k`` boxes of one word (the script redraws them on changes)."""
    order = np.argsort(-np.asarray(weights), kind="stable")[:top_k]
    return [dict(type="rect", xref="x2", yref="y2", x0=boxes[r][0], y0=boxes[r][1], x1=boxes[r][2],
                 y1=boxes[r][3], line=dict(color="white", width=2, dash="dot")) for r in order]


# --------------------------------------------------------------------------- view
def interactive(image, attention=None, *, tokens=None, regions=None, alternatives: Mapping | None = None,
                grid=None, cmap=None, alpha: float = 0.7, share: str = "alternative", top_k: int = 3,
                title: str | None = None, max_cells: int = 160, height: int = 720) -> InteractiveView:
    """A linked word/image view of text-to-image attention.

    Args:
        image: the image (any form :func:`~attnlens.render.overlay.as_rgb` accepts).
        attention: ``[L, R]`` region weights (with ``regions``), ``[L, rows*cols]`` patch weights
            (with ``grid``), ``[L, H, W]`` pixel maps, or an :class:`AttentionMap` (its words,
            regions and grid are used; extra axes such as head or layer become alternatives;
            an image-to-text map is transposed).
        tokens: the ``L`` words.
        regions: Regions or ``[R, 4]`` xyxy boxes.
        alternatives: ``{name: weights}`` of the same kinds (alignment functions, layers,
            heads) switched by buttons; ``attention`` (if given) comes first.
        grid: ``(rows, cols)`` patch grid.
        cmap, alpha: colour map (default ``viridis``, ``RdBu_r`` for signed maps) and the heat's
            largest opacity (the opacity follows the heat).
        share: colour scale per ``"alternative"`` (default), over ``"all"`` or per ``"map"``.
        top_k: outline the top-k regions of the selected word.
        title: page and figure title.
        max_cells: longest side of the heat cells for pixel-map input.
        height: figure height in pixels.

    Returns:
        an :class:`InteractiveView` (``.figure``, ``.save(path)``, ``_repr_html_``).

    >>> view = interactive(np.zeros((20, 30, 3), np.uint8), np.array([[0.9, 0.1], [0.2, 0.8]]),
    ...                    tokens=["red", "dog"], regions=[[0, 0, 10, 10], [10, 5, 30, 20]])
    >>> len(view.figure.data), view.figure.layout.xaxis.ticktext
    (3, ('red', 'dog'))
    >>> v = interactive(np.zeros((4, 4)), np.ones((1, 1)), tokens=["<b>"], regions=[[0, 0, 4, 4]])
    >>> v.figure.layout.xaxis.ticktext
    ('&lt;b&gt;',)
    """
    go = require("plotly.graph_objects", "render")
    fn = "interactive"
    title = text_option(title, "title", fn)
    alpha = real_option(alpha, "alpha", fn, lo=0.0, hi=1.0)
    top_k = int_option(top_k, "top_k", fn, lo=0)
    max_cells = int_option(max_cells, "max_cells", fn, lo=1, hi=4096)
    height = int_option(height, "height", fn, lo=100, hi=10000)
    choice_option(share, "share", fn, ("alternative", "all", "map"))
    rgb = as_rgb(image)
    H, W = rgb.shape[:2]
    alts, tokens, regions, grid = _alternatives(attention, alternatives, tokens, regions, grid)
    names = list(alts)
    first = alts[names[0]]
    L = first.shape[0]
    words = word_list(tokens, "tokens", fn) if tokens is not None else tuple(str(i) for i in range(L))
    if len(words) != L:
        raise ShapeError(f"interactive: {len(words)} tokens but attention has {L} words (shape {first.shape})")
    if L == 0 or 0 in first.shape[1:]:
        raise ShapeError(f"interactive: attention of shape {first.shape} has no words or no keys; nothing to show")
    for n in names:
        if alts[n].shape != first.shape:
            raise ShapeError(f"alternative {n!r} has shape {alts[n].shape}, {names[0]!r} has {first.shape}")
    pixel_input = first.ndim == 3
    if pixel_input:
        boxes = None if regions is None else region_boxes(regions)
    elif regions is not None:
        boxes = region_boxes(regions)
        if len(boxes) != first.shape[1]:
            raise ShapeError(f"interactive: attention has {first.shape[1]} keys but {len(boxes)} region boxes")
    elif grid is not None:
        boxes = _grid_boxes(grid, (H, W))
        if len(boxes) != first.shape[1]:
            raise ShapeError(f"interactive: {first.shape[1]} keys do not fill a {grid} grid")
    else:
        raise ShapeError(f"attention of shape {first.shape} needs regions= or grid= (or pass [L, H, W] maps)")

    signed = any(bool(np.nanmin(alts[n]) < 0) for n in names if np.isfinite(alts[n]).any())
    norm = "symmetric" if signed else "map"
    xe, ye, z, bars = _cells(alts, boxes, grid if regions is None else None, (H, W), pixel_input, max_cells,
                             signed)
    zlim = []
    zall = np.asarray(z)
    for i in range(len(names)):
        if share == "all":
            zlim.append([limits(zall, norm)] * L)
        elif share == "alternative":
            zlim.append([limits(zall[i], norm)] * L)
        elif share == "map":
            zlim.append([limits(zall[i, l], norm) for l in range(L)])
        else:
            raise UnknownNameError("interactive scaling", str(share), ["alternative", "all", "map"])

    cmap = resolve_cmap(cmap, signed)
    lut = signed_lut(cmap) if signed else colormap_lut(cmap)
    hexes = ["#{:02x}{:02x}{:02x}".format(*map(int, c)) for c in lut]
    colorscale = _colorscale(lut, alpha, signed)
    esc = lambda t: html.escape(str(t), quote=False)  # noqa: E731  (plotly shows &lt; &gt; &amp; as text)
    esc_words = [esc(w) for w in words]
    labels = getattr(regions, "labels", None)
    key_names = [esc(labels[r]) if labels is not None else f"#{r}"
                 for r in range(0 if boxes is None else len(boxes))]
    esc_names = [esc(n) for n in names]
    title_text = esc(title or "attention")

    pixel_boxes = [] if boxes is None else np.stack(_bounds_xyxy(boxes, (H, W)), axis=1).tolist()
    bar = go.Bar(x=list(range(L)), y=bars[0], name="words",
                 marker=dict(color=_bar_colors(bars[0], hexes, signed), line=dict(color="#d62728",
                                                                          width=[3] + [0] * (L - 1))),
                 hovertext=[f"{w}: {v:.4g}" for w, v in zip(esc_words, bars[0])], hoverinfo="text",
                 xaxis="x", yaxis="y")
    img = go.Image(source=_png_uri(rgb), x0=0.5, y0=0.5, dx=1, dy=1, xaxis="x2", yaxis="y2", hoverinfo="skip",
                   name="image")
    heat = go.Heatmap(z=z[0][0], x=xe.tolist(), y=ye.tolist(), zmin=zlim[0][0][0], zmax=zlim[0][0][1],
                      colorscale=colorscale, opacity=1.0, xaxis="x2", yaxis="y2", name="heat",
                      colorbar=dict(len=0.7, y=0.36), hovertemplate="weight %{z:.4g}<extra></extra>")
    layout = dict(
        title=dict(text=f"{title_text}: {esc_words[0]} ({esc_names[0]})", y=0.98, yref="container"),
        height=height, margin=dict(l=40, r=40, t=110, b=70), showlegend=False, hovermode="closest",
        xaxis=dict(domain=[0, 1], anchor="y", tickmode="array", tickvals=list(range(L)), ticktext=esc_words,
                   fixedrange=True),
        yaxis=dict(domain=[0.78, 1.0], anchor="x", fixedrange=True, title=dict(text="attention")),
        xaxis2=dict(domain=[0, 1], anchor="y2", range=[0, W], showticklabels=False, showgrid=False,
                    zeroline=False, constrain="domain"),
        yaxis2=dict(domain=[0, 0.72], anchor="x2", range=[H, 0], showticklabels=False, showgrid=False,
                    zeroline=False, scaleanchor="x2", scaleratio=1, constrain="domain"),
        plot_bgcolor="white",
        shapes=[] if pixel_input or not top_k else _top_shapes(first[0], pixel_boxes, top_k),
    )
    if len(names) > 1:
        buttons = [dict(label=n, method="skip", args=[i]) for i, n in enumerate(esc_names)]
        layout["updatemenus"] = [dict(type="buttons", direction="right", x=0, y=1.04, xanchor="left",
                                      yanchor="bottom", showactive=True, active=0, buttons=buttons)]
    if L > 1:
        steps = [dict(label=w, method="skip", args=[i]) for i, w in enumerate(esc_words)]
        layout["sliders"] = [dict(active=0, x=0.0, y=0.0, yanchor="top", len=1.0, pad=dict(t=10, b=0),
                                  currentvalue=dict(prefix="word: "), steps=steps)]
    fig = go.Figure(data=[bar, img, heat], layout=layout)

    data = {
        "words": esc_words, "alts": esc_names, "keys": key_names, "title": title_text,
        "boxes": pixel_boxes,
        "weights": None if pixel_input else [_round(alts[n]) for n in names],
        "z": [[_round(m) for m in zs] for zs in z], "zlim": _round(zlim), "bars": _round(bars),
        "colors": hexes, "signed": bool(signed), "top_k": int(top_k), "xe": xe.tolist(), "ye": ye.tolist(),
    }
    payload = json.dumps(data, allow_nan=False).replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("&", "\\u0026")
    script = _JS.replace("__ATTNLENS_DATA__", payload)
    return InteractiveView(fig, script, title or "attnlens")


def _bounds_xyxy(boxes, size):
    r0, r1, c0, c1 = pixel_bounds(boxes, size)
    return c0, r0, c1, r1
