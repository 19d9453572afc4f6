"""Comparison grids: small multiples of overlays (rows: alignment functions, layers or heads;
columns: words) with one colour scale by default and a colour bar.

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
from .export import mpl_text
from .heatmap import colormap_lut, heat_to_rgb, limits, region_boxes, to_pixels
from .overlay import as_rgb, draw_boxes, overlay

__all__ = ["grid", "grid_limits", "grid_maps"]


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


def grid_limits(pixel_maps, share="grid") -> np.ndarray:
    """``[n_rows, n_cols, 2]`` colour-scale limits of ``[n_rows][n_cols]`` pixel maps.

    >>> m = np.array([[[0.0, 1.0], [0.0, 3.0]]])  # 1 row, 2 maps of 2 pixels
    >>> grid_limits(m, "grid")[0].tolist(), grid_limits(m, "map")[0].tolist()
    ([[0.0, 3.0], [0.0, 3.0]], [[0.0, 1.0], [0.0, 3.0]])
    """
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
         cmap="viridis", alpha: float = 0.5, mode: str = "max", top_k: int = 0, dpi: float = 100,
         panel_size: float = 2.0, title: str | None = None, colorbar: bool = True, resize="bilinear"):
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
        cmap, alpha, mode, top_k, resize: as in :func:`~attnlens.render.overlay.overlay`.
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
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.figure import Figure

    heats, row_names, col_names = grid_maps(maps, rows=rows, cols=cols)
    rgb = None if image is None else as_rgb(image)
    if rgb is not None:
        size = rgb.shape[:2]
    elif regions is not None and hasattr(regions, "image_size"):
        size = regions.image_size
    else:
        first = np.asarray(heats[0][0].weights if _is_amap(heats[0][0]) else heats[0][0])
        if first.ndim != 2:
            raise ShapeError("grid without an image needs regions with image_size, or [H, W] pixel maps")
        size = first.shape
    pix = [[np.asarray(to_pixels(h, size, regions=regions, grid=grid, mode=mode, resize=resize), dtype=np.float32)
            for h in row] for row in heats]
    lims = grid_limits(pix, share)
    n_rows, n_cols = len(pix), len(pix[0])
    aspect = size[0] / size[1]
    extra = 0.9 if colorbar else 0.1
    fig = Figure(figsize=(panel_size * n_cols + extra, panel_size * aspect * n_rows + (0.5 if title else 0.2)),
                 dpi=dpi, layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    cm = ListedColormap(colormap_lut(cmap) / 255.0)
    panels = []
    for i in range(n_rows):
        panels.append([])
        for j in range(n_cols):
            lo, hi = lims[i, j]
            gt = _per_column(gt_boxes, col_names, j)
            heat = heats[i][j]
            reg = regions if regions is not None else (heat.key.regions if _is_amap(heat) else None)
            weights = np.asarray(heat.weights if _is_amap(heat) else heat)
            if rgb is not None:
                panel = overlay(rgb, pix[i][j], alpha=alpha, cmap=cmap, vmin=lo, vmax=hi, boxes=gt,
                                regions=reg if top_k else None, top_k=top_k,
                                region_weights=weights if top_k and weights.ndim == 1 else None)
            else:
                panel, _ = heat_to_rgb(pix[i][j], lo, hi, cmap)
                if top_k and reg is not None and weights.ndim == 1:
                    order = np.argsort(-weights, kind="stable")[:top_k]
                    panel = draw_boxes(panel, region_boxes(reg)[order], color=(255, 255, 255))
                if gt is not None:
                    panel = draw_boxes(panel, gt)
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
