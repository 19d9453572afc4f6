"""Comparison grids: small multiples of overlays (rows: alignment functions, layers or heads;
columns: words) with one colour scale by default and a colour bar; :func:`word_panels` draws one
panel per word of a whole caption, wrapped into rows.

Signed maps (any negative value, or ``norm="symmetric"``) share a scale ``(-m, m)`` centred at 0
with a diverging colour map, as in :func:`~attnlens.render.overlay.overlay`.

Scaling (``share``): ``"grid"`` (one scale for every panel, so equal values have equal colours
across the whole figure; the default), ``"row"`` (one per row, a colour bar per row), ``"map"``
(one per panel, a colour bar per panel) or a fixed ``(vmin, vmax)``. The figure is a plain
``matplotlib.figure.Figure`` (no pyplot state, no display needed); save it with
:func:`attnlens.render.export.save_figure` or ``fig.savefig``.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..errors import ShapeError, UnknownNameError
from ._checks import check_boxes, choice_option, heat_array, int_option, real_option, text_option, word_list
from .export import mpl_text
from .heatmap import colormap_lut, heat_to_rgb, limits, region_boxes, resolve_cmap, signed_lut, to_pixels
from .overlay import as_rgb, draw_boxes, overlay

__all__ = ["grid", "grid_limits", "grid_maps", "word_panels"]


def _is_amap(x) -> bool:
    return hasattr(x, "dims") and hasattr(x, "weights") and hasattr(x, "query")


def grid_maps(maps, *, rows=None, cols=None):
    """Normalise the accepted ``maps`` layouts to ``(heats[n_rows][n_cols], row_names, col_names)``.

    Accepted: a nested mapping ``{row: {col: heat}}``; a mapping ``{row: AttentionMap}`` of
    ``[word, region]`` maps (columns are words, selected by label); an array/tensor
    ``[n_rows, n_cols, ...]``; nested lists. ``rows``/``cols`` name (and, for mappings, select
    and order) the rows and columns.

    >>> heats, r, c = grid_maps(np.zeros((2, 3, 4)), rows=["dot", "cosine"])
    >>> len(heats), len(heats[0]), r, c
    (2, 3, ['dot', 'cosine'], ['0', '1', '2'])
    """
    if isinstance(maps, Mapping):
        row_names = list(maps) if rows is None else list(rows)
        missing = [r for r in row_names if r not in maps]
        if missing:
            raise ShapeError(f"grid rows {missing} are not keys of maps (keys: {list(maps)})")
        heats, col_names = [], None if cols is None else list(cols)
        for r in row_names:
            entry = maps[r]
            if _is_amap(entry):
                if entry.weights.ndim != 2:
                    raise ShapeError(f"grid row {r!r}: AttentionMap must be [query, key], got dims {entry.dims}")
                words = list(entry.query.tokens or range(entry.weights.shape[0]))
                use = col_names if col_names is not None else words
                col_names = use
                heats.append([entry.sel(**{entry.query.dim: w}) for w in use])
            elif isinstance(entry, Mapping):
                use = col_names if col_names is not None else list(entry)
                col_names = use
                absent = [c for c in use if c not in entry]
                if absent:
                    raise ShapeError(f"grid row {r!r} has no maps for columns {absent}")
                heats.append([entry[c] for c in use])
            else:
                seq = list(entry)
                heats.append(seq)
                col_names = col_names if col_names is not None else [str(j) for j in range(len(seq))]
        return _check(heats, [str(r) for r in row_names], [str(c) for c in col_names])
    if hasattr(maps, "detach"):
        maps = maps.detach().cpu().numpy()
    if isinstance(maps, np.ndarray):
        if maps.ndim < 3:
            raise ShapeError(f"grid maps must be [n_rows, n_cols, H, W] or [n_rows, n_cols, R], got {maps.shape}")
        heats = [[maps[i, j] for j in range(maps.shape[1])] for i in range(maps.shape[0])]
    else:
        heats = [list(row) for row in maps]
    n_rows, n_cols = len(heats), len(heats[0]) if heats else 0
    row_names = [str(i) for i in range(n_rows)] if rows is None else [str(r) for r in rows]
    col_names = [str(j) for j in range(n_cols)] if cols is None else [str(c) for c in cols]
    return _check(heats, row_names, col_names)


def _check(heats, row_names, col_names):
    if not heats or not heats[0]:
        raise ShapeError("grid needs at least one row and one column of maps")
    for i, row in enumerate(heats):
        if len(row) != len(col_names):
            raise ShapeError(f"grid row {i} has {len(row)} maps but there are {len(col_names)} columns")
    if len(row_names) != len(heats):
        raise ShapeError(f"{len(row_names)} row names for {len(heats)} rows of maps")
    return heats, row_names, col_names


def grid_limits(pixel_maps, share="grid", *, signed: bool = False) -> np.ndarray:
    """``[n_rows, n_cols, 2]`` colour-scale limits of ``[n_rows][n_cols]`` pixel maps.

    ``signed=True``: each shared scale is ``(-m, m)`` with ``m`` its largest absolute value.

    >>> m = np.array([[[0.0, 1.0], [0.0, 3.0]]])  # 1 row, 2 maps of 2 pixels
    >>> grid_limits(m, "grid")[0].tolist(), grid_limits(m, "map")[0].tolist()
    ([[0.0, 3.0], [0.0, 3.0]], [[0.0, 1.0], [0.0, 3.0]])
    >>> grid_limits(np.array([[[-1.0, 0.5]]]), signed=True)[0].tolist()
    [[-1.0, 1.0]]
    """
    out = _grid_limits(pixel_maps, share)
    if signed and not isinstance(share, (tuple, list)):
        m = np.abs(out).max(axis=-1)
        out = np.stack([-m, m], axis=-1)
    return out


def _grid_limits(pixel_maps, share):
    n_rows, n_cols = len(pixel_maps), len(pixel_maps[0])
    out = np.zeros((n_rows, n_cols, 2))
    if isinstance(share, (tuple, list)):
        out[:] = limits(None, tuple(share))
    elif share == "grid":
        lo = [limits(m) for row in pixel_maps for m in row]
        out[:] = (min(v[0] for v in lo), max(v[1] for v in lo))
    elif share == "row":
        for i, row in enumerate(pixel_maps):
            lo = [limits(m) for m in row]
            out[i] = (min(v[0] for v in lo), max(v[1] for v in lo))
    elif share == "map":
        for i, row in enumerate(pixel_maps):
            for j, m in enumerate(row):
                out[i, j] = limits(m)
    else:
        raise UnknownNameError("grid scaling", str(share), ["grid", "row", "map", "(vmin, vmax)"])
    return out


def _per_column(value, col_names, j):
    """Ground-truth boxes for column ``j``: one array for all, a mapping by column name, or a list."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value.get(col_names[j])
    if isinstance(value, (list, tuple)) and len(value) == len(col_names) and not np.isscalar(value[0]) \
            and np.ndim(value[0]) == 2:
        return value[j]
    return value


def grid(image, maps, *, rows=None, cols=None, regions=None, grid=None, gt_boxes=None, share="grid",
         cmap=None, alpha: float = 0.7, mode: str = "max", top_k: int = 0, dpi: float = 100,
         panel_size: float = 2.0, title: str | None = None, colorbar: bool = True, resize="nearest",
         norm=None, opacity: str = "heat", scale: int = 1):
    """Small multiples of heat maps over one image, with a shared colour scale and colour bar.

    Args:
        image: the image (any form :func:`~attnlens.render.overlay.as_rgb` accepts), or ``None``
            to show the heat maps alone (the size then comes from ``regions`` or the maps).
        maps: ``[n_rows, n_cols, H, W]`` pixel maps, ``[n_rows, n_cols, R]`` region weights (with
            ``regions``), a nested mapping ``{row: {col: heat}}`` or ``{row: AttentionMap}``
            (``[word, region]``; columns are words). See :func:`grid_maps`.
        rows, cols: row names (e.g. alignment functions) and column names (words).
        regions: Regions or ``[R, 4]`` boxes of region weights; ``grid``: ``(rows, cols)`` of patches.
        gt_boxes: ground-truth boxes: one ``[n, 4]`` array for every panel, a mapping from column
            name to boxes, or a list with one array per column.
        share: ``"grid"``, ``"row"``, ``"map"`` or a fixed ``(vmin, vmax)`` (module docstring).
        cmap, alpha, mode, top_k, resize, opacity: as in :func:`~attnlens.render.overlay.overlay`.
        norm: ``None`` (symmetric when any map has a negative value), ``"symmetric"`` or ``"map"``.
        scale: enlarge each panel ``scale`` times with nearest neighbour before drawing (small images:
            thinner outlines, crisp cells).
        dpi, panel_size: figure resolution and the size of one panel in inches.
        title: figure title.
        colorbar: draw the colour bar(s).

    Returns:
        a ``matplotlib.figure.Figure``; ``fig.attnlens_limits`` holds the ``[n_rows, n_cols, 2]``
        limits used and ``fig.attnlens_panels`` the ``[n_rows][n_cols]`` RGB panels drawn.

    >>> fig = grid(np.zeros((8, 8, 3), np.uint8), np.random.default_rng(0).random((2, 3, 8, 8)),
    ...            rows=["dot", "cosine"], cols=["a", "red", "dog"])
    >>> len(fig.axes) - 1, fig.attnlens_limits.shape  # 6 panels + 1 colour bar
    (6, (2, 3, 2))
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    heats, row_names, col_names = grid_maps(maps, rows=rows, cols=cols)
    _check_options(alpha=alpha, top_k=top_k, dpi=dpi, panel_size=panel_size, opacity=opacity, scale=scale)
    scale = int(scale)
    title = text_option(title, "title", "grid")
    rgb = None if image is None else as_rgb(image)
    if rgb is not None:
        size = rgb.shape[:2]
    elif regions is not None and hasattr(regions, "image_size"):
        size = regions.image_size
    else:
        first = heat_array(heats[0][0], "maps", "grid")
        if first.ndim != 2:
            raise ShapeError("grid without an image needs regions with image_size, or [H, W] pixel maps")
        size = first.shape
    pix = [[_pixels(h, size, regions, grid, mode, resize) for h in row] for row in heats]
    signed = _signed(pix, norm)
    cmap = resolve_cmap(cmap, signed)
    lims = grid_limits(pix, share, signed=signed)
    n_rows, n_cols = len(pix), len(pix[0])
    aspect = size[0] / size[1]
    extra = 0.9 if colorbar else 0.1
    fig = Figure(figsize=(panel_size * n_cols + extra, panel_size * aspect * n_rows + (0.5 if title else 0.2)),
                 dpi=dpi, layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    cm = _mpl_cmap(cmap, signed)
    panels = []
    for i in range(n_rows):
        panels.append([])
        for j in range(n_cols):
            lo, hi = lims[i, j]
            heat = heats[i][j]
            reg = regions if regions is not None else (heat.key.regions if _is_amap(heat) else None)
            panel = _panel(rgb, pix[i][j], heat, lo, hi, cmap=cmap, signed=signed, alpha=alpha, top_k=top_k,
                           regions=reg, gt=_per_column(gt_boxes, col_names, j), opacity=opacity, scale=scale)
            panels[-1].append(panel)
            ax = axes[i, j]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(mpl_text(col_names[j]), fontsize=10)
            if j == 0:
                ax.set_ylabel(mpl_text(row_names[i]), fontsize=10)
            if colorbar and share == "map":
                fig.colorbar(ScalarMappable(Normalize(lo, hi), cm), ax=ax, fraction=0.046, pad=0.02)
        if colorbar and share == "row":
            fig.colorbar(ScalarMappable(Normalize(*lims[i, 0]), cm), ax=list(axes[i]), fraction=0.046, pad=0.02)
    if colorbar and (share == "grid" or isinstance(share, (tuple, list))):
        fig.colorbar(ScalarMappable(Normalize(*lims[0, 0]), cm), ax=axes.ravel().tolist(), fraction=0.046,
                     pad=0.02, label="attention")
    if title:
        fig.suptitle(mpl_text(title))
    fig.attnlens_limits = lims
    fig.attnlens_panels = panels
    return fig


# --------------------------------------------------------------------------- shared pieces
def _check_options(*, alpha, top_k, dpi, panel_size, opacity, scale=1, fn="grid"):
    int_option(scale, "scale", fn, lo=1, hi=64)
    real_option(alpha, "alpha", fn, lo=0.0, hi=1.0)
    int_option(top_k, "top_k", fn, lo=0)
    real_option(dpi, "dpi", fn, lo=10.0, hi=2400.0)
    real_option(panel_size, "panel_size", fn, lo=0.1, hi=100.0)
    choice_option(opacity, "opacity", fn, ("heat", "constant"))


def _pixels(heat, size, regions, grid, mode, resize) -> np.ndarray:
    """A float pixel map (float32, or float64 when the values lie beyond float32's range)."""
    p = np.asarray(to_pixels(heat, size, regions=regions, grid=grid, mode=mode, resize=resize, dtype=np.float32))
    return p if p.dtype.kind == "f" else p.astype(np.float32)


def _signed(pix, norm) -> bool:
    if norm is None or (isinstance(norm, str) and norm == "auto"):
        return any(bool(np.nanmin(m) < 0) for row in pix for m in row if m.size and not np.isnan(m).all())
    if isinstance(norm, str):
        return choice_option(norm, "norm", "grid", ("symmetric", "map")) == "symmetric"
    raise UnknownNameError("grid norm", str(norm), ["symmetric", "map", "None"])


def _mpl_cmap(cmap, signed: bool):
    from matplotlib.colors import ListedColormap

    return ListedColormap((signed_lut(cmap)[1:] if signed else colormap_lut(cmap)) / 255.0)


def _panel(rgb, pix, heat, lo, hi, *, cmap, signed, alpha, top_k, regions, gt, opacity, scale=1):
    """One RGB panel: the overlay (or the bare colours without an image), top-k and GT boxes."""
    weights = heat_array(heat, "maps", "grid")
    if rgb is not None:
        return overlay(rgb, pix, alpha=alpha, cmap=cmap, norm="symmetric" if signed else "map", vmin=lo, vmax=hi,
                       boxes=gt, regions=regions if top_k else None, top_k=top_k, opacity=opacity, scale=scale,
                       region_weights=weights if top_k and weights.ndim == 1 else None)
    panel, _ = heat_to_rgb(pix, lo, hi, cmap, signed=signed)
    if scale > 1:
        panel = np.repeat(np.repeat(panel, scale, axis=0), scale, axis=1)
    if top_k and regions is not None and weights.ndim == 1:
        order = np.argsort(-np.nan_to_num(weights, nan=-np.inf), kind="stable")[:top_k]
        panel = draw_boxes(panel, region_boxes(regions)[order] * scale, color=(255, 255, 255))
    if gt is not None:
        panel = draw_boxes(panel, np.asarray(check_boxes(gt, "gt_boxes", "grid")) * scale)
    return panel


def word_panels(image, attention, *, words=None, regions=None, grid=None, gt_boxes=None, ncols: int = 6,
                cmap=None, alpha: float = 0.7, norm=None, mode: str = "max", top_k: int = 0,
                panel_size: float = 1.8, dpi: float = 100, title: str | None = None, colorbar: bool = True,
                resize="nearest", opacity: str = "heat", scale: int = 1):
    """One panel per word of a whole caption (wrapped into rows of ``ncols``), on one shared scale.

    Args:
        image: the image (any form :func:`~attnlens.render.overlay.as_rgb` accepts) or ``None``.
        attention: ``[L, R]`` region weights (with ``regions``), ``[L, rows*cols]`` patch weights
            (with ``grid``), ``[L, H, W]`` pixel maps, or a ``[word, key]``
            :class:`~attnlens.attention_map.AttentionMap` (its tokens, regions and grid are used).
        words: the ``L`` words (default: the map's tokens, else ``0..L-1``).
        gt_boxes: ``{word: [n, 4]}``, one ``[n, 4]`` array for every word, or a list with one
            array (or ``None``) per word.
        ncols: panels per row.
        cmap, alpha, norm, mode, top_k, panel_size, dpi, title, colorbar, resize, opacity, scale: as
            in :func:`grid`.

    Returns:
        a ``matplotlib.figure.Figure`` with ``attnlens_limits`` (the shared ``(vmin, vmax)``) and
        ``attnlens_panels`` (one RGB array per word).

    >>> fig = word_panels(np.zeros((8, 8, 3), np.uint8), np.random.default_rng(0).random((7, 4)),
    ...                   words="a red dog next to the tree".split(), grid=(2, 2), ncols=4)
    >>> len(fig.attnlens_panels), sum(ax.get_visible() for ax in fig.axes) - 1  # 7 words, 1 colour bar
    (7, 7)
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    fn = "word_panels"
    _check_options(alpha=alpha, top_k=top_k, dpi=dpi, panel_size=panel_size, opacity=opacity, scale=scale, fn=fn)
    scale = int(scale)
    ncols = int_option(ncols, "ncols", fn, lo=1, hi=100)
    if _is_amap(attention):
        if attention.weights.ndim != 2:
            raise ShapeError(f"word_panels: the AttentionMap must be [word, key], got dims {attention.dims}")
        words = words if words is not None else attention.query.tokens
        regions = regions if regions is not None else attention.key.regions
        grid = grid if grid is not None else attention.key.grid
    a = heat_array(attention, "attention", fn)
    if a.ndim not in (2, 3):
        raise ShapeError(f"word_panels: attention must be [L, R], [L, rows*cols] or [L, H, W], got {a.shape}")
    L = a.shape[0]
    if L == 0:
        raise ShapeError("word_panels: attention has 0 words; there is nothing to draw")
    words = word_list(words, "words", fn) if words is not None else tuple(str(i) for i in range(L))
    title = text_option(title, "title", fn)
    if len(words) != L:
        raise ShapeError(f"word_panels: {len(words)} words but attention has {L} rows (shape {a.shape})")
    rgb = None if image is None else as_rgb(image)
    if rgb is not None:
        size = rgb.shape[:2]
    elif regions is not None and hasattr(regions, "image_size"):
        size = tuple(regions.image_size)
    elif a.ndim == 3:
        size = a.shape[1:]
    else:
        raise ShapeError("word_panels without an image needs regions with image_size, or [L, H, W] pixel maps")
    pix = [_pixels(a[i], size, regions, grid, mode, resize) for i in range(L)]
    signed = _signed([pix], norm)
    cmap = resolve_cmap(cmap, signed)
    lo, hi = grid_limits([pix], "grid", signed=signed)[0, 0]
    n_rows = -(-L // ncols)
    n_cols = min(ncols, L)
    aspect = size[0] / size[1]
    fig = Figure(figsize=(panel_size * n_cols + (0.9 if colorbar else 0.1),
                          panel_size * aspect * n_rows + 0.3 * n_rows + (0.5 if title else 0.1)),
                 dpi=dpi, layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    panels = []
    for k in range(n_rows * n_cols):
        ax = axes[k // n_cols, k % n_cols]
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= L:
            ax.set_visible(False)
            continue
        if isinstance(gt_boxes, Mapping):
            gt = gt_boxes.get(words[k])
        elif isinstance(gt_boxes, (list, tuple)) and len(gt_boxes) == L and np.ndim(gt_boxes[0]) != 1:
            gt = gt_boxes[k]
        else:
            gt = gt_boxes
        panel = _panel(rgb, pix[k], a[k], lo, hi, cmap=cmap, signed=signed, alpha=alpha, top_k=top_k,
                       regions=regions, gt=gt, opacity=opacity, scale=scale)
        panels.append(panel)
        ax.imshow(panel, interpolation="nearest")
        ax.set_title(mpl_text(words[k]), fontsize=9)
    if colorbar:
        fig.colorbar(ScalarMappable(Normalize(lo, hi), _mpl_cmap(cmap, signed)),
                     ax=[ax for ax in axes.ravel() if ax.get_visible()], fraction=0.046, pad=0.02,
                     label="attention")
    if title:
        fig.suptitle(mpl_text(title))
    fig.attnlens_limits = (float(lo), float(hi))
    fig.attnlens_panels = panels
    return fig
