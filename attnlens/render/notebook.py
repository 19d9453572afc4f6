"""A notebook view of attention: click a word to see its map; switch layer, head or alternative.

:func:`map_view` returns a :class:`MapView` whose ``_repr_html_`` is one self-contained block of
HTML + CSS + a small hand-written script (no plotly, no CDN, no server, no widget state): it runs
in JupyterLab, classic Jupyter and VS Code, and in a saved page (:meth:`MapView.save`) opened
offline. Where scripts do not run (nbconvert to PDF/Markdown, GitHub's notebook preview, an
untrusted notebook) the block shows a static PNG of the first word instead, and ``_repr_png_``
gives that PNG to front ends that prefer images.

Conventions: the last two axes of the weights are ``[word, key]`` (an image-to-text map is
transposed); every other axis (``layer``, ``head``, ``batch``, alternatives) becomes a selector.
Keys are drawn over the image as region boxes or patch cells, exactly as
:func:`~attnlens.render.overlay.overlay` draws them (same colour table, opacity following the heat,
signed maps centred at 0); keys without geometry are shown as bars. Every text reaches the page
through JSON read by ``textContent``: words, labels and titles are never parsed as HTML.
"""
from __future__ import annotations

import base64
import hashlib
import html
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import NonFiniteError, ShapeError
from ._checks import check_boxes, choice_option, heat_array, int_option, real_option, text_option, word_list
from .export import atomic_write
from .heatmap import colormap_lut, heat_to_rgb, limits, resolve_cmap, signed_lut, to_pixels
from .notebook_js import CSS, SCRIPT
from .overlay import as_rgb, colorbar_strip, draw_boxes, overlay

__all__ = ["MapView", "map_view"]

_COUNTER = itertools.count()
_ERROR_TRAP = ("<script>window.__attnlensErrors=[];window.addEventListener('error',function(e){"
               "window.__attnlensErrors.push(String(e.message));});</script>")


@dataclass(eq=False)
class MapView:
    """An interactive word -> map view (see the module docstring).

    Attributes:
        data: the view's plain data (words, selectors, maps, limits, colours, geometry).
        png: the static PNG (first word, first selection) shown where scripts do not run.
        title: the view's title.
    """

    data: dict
    png: bytes
    title: str = "attention"

    def html(self, *, full_html: bool = False) -> str:
        """The view as an HTML fragment (or a whole page with ``full_html=True``)."""
        payload = json.dumps(self.data, allow_nan=False, separators=(",", ":"))
        payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        uid = "attnlens-view-" + hashlib.sha1(payload.encode()).hexdigest()[:10] + f"-{next(_COUNTER)}"
        still = base64.b64encode(self.png).decode("ascii")
        d = self.data
        stage = ('<canvas class="al-canvas"></canvas><div class="al-cbar"><canvas class="al-cbar-canvas" '
                 'width="12" height="160"></canvas><div class="al-ticks"><span></span><span></span><span></span>'
                 '</div></div>') if d["kind"] != "none" else '<div class="al-bars"></div>'
        block = (f'<div class="attnlens-view" id="{uid}"><style>{CSS.replace("__ID__", uid)}</style>'
                 f'<div class="al-title">{html.escape(self.title)}</div>'
                 f'<img class="al-static" alt="{html.escape(self.title, quote=True)}" '
                 f'src="data:image/png;base64,{still}" style="max-width:100%">'
                 f'<div class="al-live" style="display:none"><div class="al-controls"></div>'
                 f'<div class="al-words"></div><div class="al-stage">{stage}</div><div class="al-status"></div></div>'
                 f'<script type="application/json" class="al-data">{payload}</script>'
                 f'<script>{SCRIPT.replace("__ID__", uid)}</script></div>')
        if not full_html:
            return block
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f'<link rel="icon" href="data:,">{_ERROR_TRAP}<title>{html.escape(self.title)}</title></head>'
                f'<body>{block}</body></html>\n')

    def save(self, path) -> Path:
        """Write a self-contained page (works offline) atomically."""
        return atomic_write(path, self.html(full_html=True))

    def _repr_html_(self) -> str:
        return self.html()

    def _repr_png_(self) -> bytes:
        return self.png

    def __repr__(self) -> str:
        dims = ", ".join(f"{d['name']}={len(d['labels'])}" for d in self.data["dims"])
        return f"MapView(words={len(self.data['words'])}, keys={self.data['n_keys']}{', ' if dims else ''}{dims})"


# --------------------------------------------------------------------------- inputs
def _is_amap(x) -> bool:
    return hasattr(x, "dims") and hasattr(x, "weights") and hasattr(x, "query")


def _oriented(amap):
    """``(weights [..., word, key], extra dims, tokens, key side)`` of an AttentionMap."""
    w = heat_array(amap.weights, "attention", "map_view")
    q, k = amap.query, amap.key
    if w.ndim < 2:
        raise ShapeError(f"map_view: an AttentionMap needs [..., word, key] weights, got dims {amap.dims}")
    if q.modality == "image" and k.modality == "text":
        w = np.swapaxes(w, -1, -2)
        q, k = k, q
    return w, list(amap.dims[:-2]), q.tokens, k


def _collect(attention, alternatives):
    items = ([] if attention is None else [(getattr(attention, "alignment", None) or "attention", attention)])
    items += list((alternatives or {}).items())
    if not items:
        raise ShapeError("map_view needs attention or alternatives")
    arrays, dims, tokens, key = [], None, None, None
    for name, a in items:
        if _is_amap(a):
            w, extra, toks, k = _oriented(a)
            tokens = tokens if tokens is not None else toks
            key = key if key is not None else k
        else:
            w = heat_array(a, f"alternative {name!r}" if alternatives else "attention", "map_view")
            extra = [f"axis{i}" for i in range(w.ndim - 2)]
        if w.ndim < 2:
            raise ShapeError(f"map_view: {name!r} must be [..., word, key], got shape {w.shape}")
        if arrays and w.shape != arrays[0].shape:
            raise ShapeError(f"map_view: alternative {name!r} has shape {w.shape}, the first has {arrays[0].shape}")
        arrays.append(w)
        dims = dims if dims is not None else extra
    stacked = np.stack(arrays)  # [A, ..., L, K]
    names = [str(n) for n, _ in items]
    return stacked, names, dims, tokens, key


def _sig(values: np.ndarray) -> list:
    """Values for JSON: 4 significant digits, NaN -> null."""
    flat = np.asarray(values, dtype=np.float64)
    out = np.array([float(f"{v:.4g}") if np.isfinite(v) else np.nan for v in flat.reshape(-1)]).reshape(flat.shape)
    return [None if not np.isfinite(v) else v for v in out.tolist()] if out.ndim == 1 else [_sig(x) for x in out]


def map_view(attention=None, image=None, *, alternatives: Mapping | None = None, tokens=None, regions=None,
             grid=None, gt_boxes=None, cmap=None, alpha: float | None = None, norm=None, opacity: str | None = None,
             title: str | None = None, max_values: int = 400_000, alternative_name: str = "alternative") -> MapView:
    """An interactive view: word buttons, one selector per extra axis, the word's map on the image.

    Args:
        attention: an :class:`~attnlens.attention_map.AttentionMap` (any rank >= 2; its tokens,
            regions and grid are used; extra axes such as layer and head become selectors) or an
            array ``[..., L, K]``.
        image: the image (any form :func:`~attnlens.render.overlay.as_rgb` accepts), or ``None``
            (the heat over a white canvas of the regions' ``image_size``, or bars when the keys
            have no geometry).
        alternatives: ``{name: attention}`` of the same shape (alignment functions, explainers),
            switched by an ``alternative`` selector; ``attention`` (if given) comes first.
        tokens: the ``L`` words (default: the map's query tokens).
        regions: Regions or ``[K, 4]`` xyxy boxes of the keys; ``grid``: ``(rows, cols)`` patches.
        gt_boxes: ``{word: [n, 4]}`` ground-truth boxes outlined when that word is shown.
        cmap, alpha, norm, opacity: as in :func:`~attnlens.render.overlay.overlay`; one colour
            scale per selection, shared by its words. Defaults: ``alpha=0.7, opacity="heat"`` over
            an image; full colours (``alpha=1, opacity="constant"``) without one. Pixels no region
            covers show the bare image (or white).
        title: the view's title.
        max_values: refuse views with more values than this (the page would be slow).
        alternative_name: the label of the alternatives' selector (e.g. ``"alignment"``).

    Returns:
        a :class:`MapView` (``_repr_html_``, ``_repr_png_``, ``.save(path)``).

    >>> v = map_view(np.array([[0.9, 0.1], [0.2, 0.8]]), np.zeros((8, 8, 3), np.uint8), tokens=["red", "<dog>"],
    ...              regions=[[0, 0, 4, 8], [4, 0, 8, 8]])
    >>> v, "<dog>" in v.html(), "\\\\u003cdog\\\\u003e" in v.html()
    (MapView(words=2, keys=2), False, True)
    """
    fn = "map_view"
    title = text_option(title, "title", fn)
    if alpha is None:
        alpha = 0.7 if image is not None else 1.0
    if opacity is None:
        opacity = "heat" if image is not None else "constant"
    alpha = real_option(alpha, "alpha", fn, lo=0.0, hi=1.0)
    choice_option(opacity, "opacity", fn, ("heat", "constant"))
    max_values = int_option(max_values, "max_values", fn, lo=1)
    stacked, names, dims, toks, key = _collect(attention, alternatives)
    if np.isinf(stacked).any():
        raise NonFiniteError("map_view: attention contains infinite values; only NaN (missing) is allowed")
    L, K = stacked.shape[-2:]
    if L == 0 or K == 0:
        raise ShapeError(f"map_view: attention has {L} words and {K} keys; a view needs at least one of each")
    if stacked.size > max_values:
        raise ShapeError(f"map_view: {stacked.size} values exceed max_values={max_values}; select a layer, "
                         "head or example first (amap.sel(...)) or raise max_values")
    words = word_list(tokens, "tokens", fn) if tokens is not None else (toks or tuple(str(i) for i in range(L)))
    if len(words) != L:
        raise ShapeError(f"map_view: {len(words)} tokens but the attention has {L} words (shape {stacked.shape[1:]})")
    regions = regions if regions is not None else getattr(key, "regions", None)
    grid = grid if grid is not None else getattr(key, "grid", None)
    rgb = None if image is None else as_rgb(image)
    boxes = None if regions is None else check_boxes(regions, "regions", fn)
    if boxes is not None and len(boxes) != K:
        raise ShapeError(f"map_view: the attention has {K} keys but there are {len(boxes)} region boxes")
    if grid is not None and boxes is None:
        g = tuple(int(v) for v in grid)
        if len(g) != 2 or min(g) < 1 or g[0] * g[1] != K:
            raise ShapeError(f"map_view: {K} keys do not fill a grid of {grid!r}")
    kind = "regions" if boxes is not None else ("grid" if grid is not None else "none")
    if rgb is not None:
        size = rgb.shape[:2]
    elif hasattr(regions, "image_size"):
        size = tuple(int(s) for s in regions.image_size)
    elif boxes is not None:
        size = (max(1, int(np.ceil(boxes[:, 3].max()))), max(1, int(np.ceil(boxes[:, 2].max()))))
    else:
        size = (int(grid[0]) * 16, int(grid[1]) * 16) if grid is not None else (1, 1)
    if kind != "none" and max(size) > 2048:
        raise ShapeError(f"map_view: an image of {size} pixels is too large for a notebook view; resize it first")
    # selectors: alternatives first (when more than one), then the maps' extra axes
    alternative_name = text_option(alternative_name, "alternative_name", fn) or "alternative"
    sel_dims = ([{"name": alternative_name, "labels": names}] if len(names) > 1 else [])
    sel_dims += [{"name": d, "labels": [str(i) for i in range(n)]} for d, n in zip(dims, stacked.shape[1:-2])]
    combos = stacked.reshape(-1, L, K) if len(names) > 1 else stacked[0].reshape(-1, L, K)
    finite_min = float(np.nanmin(combos)) if not np.isnan(combos).all() else 0.0
    signed = (finite_min < 0) if norm is None else (isinstance(norm, str) and norm == "symmetric")
    cmap = resolve_cmap(cmap, signed)
    lims = [limits(c, "symmetric" if signed else ("map" if norm is None or isinstance(norm, str) else norm))
            for c in combos]
    lut = signed_lut(cmap) if signed else colormap_lut(cmap)
    scale = max(1, 320 // max(size)) if kind != "none" else 1
    disp = (size[0] * scale, size[1] * scale) if max(size) * scale <= 560 else \
        (round(size[0] * 560 / max(size)), round(size[1] * 560 / max(size)))
    gt = None
    if gt_boxes is not None:
        gt = [check_boxes(gt_boxes[w], "gt_boxes", fn).tolist() if w in gt_boxes else None for w in words]
    labels = getattr(regions, "labels", None)
    data = {"words": list(words), "dims": sel_dims, "kind": kind, "size": list(size), "display": list(disp),
            "boxes": None if boxes is None else boxes.tolist(), "grid": None if grid is None else list(map(int, grid)),
            "keys": [str(labels[k]) if labels is not None else f"#{k}" for k in range(K)], "n_keys": int(K),
            "maps": [_sig(c) for c in combos], "lims": [[float(lo), float(hi)] for lo, hi in lims],
            "signed": bool(signed), "lut": lut.astype(int).tolist(), "alpha": alpha, "opacity": opacity,
            "image": None if rgb is None else _png_uri(rgb), "gt": gt}
    png = _static_png(rgb, combos[0], lims[0], data, cmap, signed, alpha, opacity, regions, grid)
    return MapView(data, png, title or "attention")


def _png_bytes(rgb: np.ndarray) -> bytes:
    import cv2

    ok, enc = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))  # RGB -> BGR
    if not ok:  # pragma: no cover - OpenCV failure
        raise ShapeError(f"could not encode an image of shape {rgb.shape} as PNG")
    return enc.tobytes()


def _png_uri(rgb: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(_png_bytes(rgb)).decode("ascii")


def _static_png(rgb, combo, lim, data, cmap, signed, alpha, opacity, regions, grid) -> bytes:
    """The first word of the first selection as a PNG (the overlay with its colour bar; a words x keys
    heat matrix when the keys have no geometry)."""
    lo, hi = lim
    norm = "symmetric" if signed else "map"
    if data["kind"] == "none":
        cells = np.repeat(np.repeat(np.nan_to_num(combo, nan=lo), 12, axis=0), 12, axis=1)
        out, _ = heat_to_rgb(cells, lo, hi, cmap, signed=signed)
        return _png_bytes(np.concatenate([out, colorbar_strip(out.shape[0], lo, hi, cmap, signed=signed)
                                          if out.shape[0] >= 24 else np.full((out.shape[0], 1, 3), 255, np.uint8)], 1))
    size = tuple(data["size"])
    base = rgb if rgb is not None else np.full(size + (3,), 255, np.uint8)
    w = np.asarray(combo[0], dtype=np.float64)
    if data["kind"] == "regions":  # NaN weights (invalid regions) and uncovered pixels: nothing to show
        keep = np.isfinite(w)
        boxes = np.asarray(data["boxes"])[keep]
        pix = np.array(to_pixels(w[keep], size, regions=boxes), dtype=np.float64)
        pix[to_pixels(np.ones(len(boxes)), size, regions=boxes) == 0] = np.nan
    else:
        pix = np.array(to_pixels(w, size, grid=grid), dtype=np.float64)
    scale = max(1, data["display"][0] // size[0])
    out = overlay(base, pix, alpha=alpha, cmap=cmap, norm=norm, vmin=lo, vmax=hi, opacity=opacity, scale=scale,
                  colorbar=True)
    if data["gt"] and data["gt"][0]:
        out = draw_boxes(out, np.asarray(data["gt"][0]) * scale)
    return _png_bytes(out)
