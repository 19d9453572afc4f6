"""Heat maps for display: region/patch weights to pixels, normalisation and colour maps.

Conventions:

* A *pixel map* is a float ``[H, W]`` array over the original image (row, column).
* Region weights ``[R]`` become pixel maps through :func:`attnlens.geometry.regions_to_pixels`
  and patch weights ``[rows * cols]`` through :func:`attnlens.geometry.grid_to_pixels`: the same
  code the metrics use, so a picture shows exactly what was measured (``mode="max"`` by
  default: each pixel shows the largest weight of the boxes covering it).
* Normalisation maps values to ``[0, 1]``: ``"map"`` (each map its own min and max),
  ``"shared"`` (one min and max over every map given) or a fixed ``(vmin, vmax)``. Values
  outside the limits are clipped; a map whose limits are equal maps to 0. NaN stays NaN.
* Signed maps (gradient relevance is negative in places) use ``norm="symmetric"``: limits
  ``(-m, m)`` with ``m = max |value|``, a diverging colour map (``RdBu_r`` unless given) whose
  centre colour shows 0 and whose colours at ``+v`` and ``-v`` lie symmetrically about the centre
  (:func:`signed_lut`). ``norm=None`` (the renderers' default) picks ``"symmetric"`` when a map
  has a negative value and ``"map"`` otherwise (:func:`resolve_norm`).
* Colour maps are looked up by name as ``[256, 3]`` uint8 **RGB** tables. OpenCV colour maps
  (``viridis``, ``inferno``, ``magma``, ``plasma``, ``cividis``, ``jet``, ``turbo`` ...) are
  produced by OpenCV in BGR order and reversed here, once, to RGB; any other name is taken from
  matplotlib (``gray``, ``Reds``, ``coolwarm`` ...). The same table colours overlays, grids,
  token strips and interactive views, so a value has one colour everywhere.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..errors import DTypeError, NonFiniteError, ShapeError, UnknownNameError
from ..geometry import grid_to_pixels, regions_to_pixels
from ._checks import check_boxes, heat_array
from .colors import (DIVERGING_CMAP, OPENCV_COLORMAPS, SEQUENTIAL_CMAP, _user_table, colormap_lut,  # noqa: F401
                     resolve_cmap, signed_lut)

__all__ = ["OPENCV_COLORMAPS", "colormap_lut", "colorize", "color_index", "colorize_index", "heat_to_rgb",
           "to_pixels", "limits", "normalize", "resize_map", "region_boxes", "signed_lut", "resolve_norm",
           "resolve_cmap", "heat_opacity", "opacity_table", "DIVERGING_CMAP", "SEQUENTIAL_CMAP"]


def resolve_norm(norm, data_min: float) -> str | tuple:
    """``norm`` with ``None``/``"auto"`` resolved: ``"symmetric"`` when ``data_min < 0``, else ``"map"``.

    >>> resolve_norm(None, -0.1), resolve_norm(None, 0.0), resolve_norm("shared", -1.0)
    ('symmetric', 'map', 'shared')
    """
    if norm is None or (isinstance(norm, str) and norm == "auto"):
        return "symmetric" if data_min < 0 else "map"
    return norm


def opacity_table(signed: bool = False, alpha: float = 1.0) -> np.ndarray:
    """``[1, 256]`` float32 opacity of each colour-table index: ``alpha * idx / 255`` (sequential)
    or ``alpha * |idx - 128| / 127`` (signed: 0 at the centre, equal for ``128 +- k``).

    >>> opacity_table()[0, [0, 255]].tolist(), opacity_table(True)[0, [1, 128, 255]].tolist()
    ([0.0, 1.0], [1.0, 0.0, 1.0])
    """
    i = np.arange(256, dtype=np.float64)
    t = np.minimum(np.abs(i - 128) / 127.0, 1.0) if signed else i / 255.0
    return (float(alpha) * t).astype(np.float32).reshape(1, 256)


def heat_opacity(heat, vmin: float, vmax: float, *, signed: bool = False) -> np.ndarray:
    """Per-pixel opacity in ``[0, 1]`` that follows the heat (float32, NaN -> 0): the position of
    each value's colour in the table (:func:`opacity_table` of :func:`color_index`), so 0 (signed)
    or the lowest value (sequential) is fully transparent and ``+v``/``-v`` are equally opaque.

    >>> [round(float(v), 3) for v in heat_opacity(np.array([-2.0, 0.0, 1.0, np.nan]), -2.0, 2.0, signed=True)]
    [1.0, 0.0, 0.504, 0.0]
    """
    idx, nan_mask = color_index(heat, vmin, vmax, signed=signed)
    out = opacity_table(signed)[0][idx]
    if nan_mask is not None:
        out[nan_mask] = 0.0
    return out


def limits(maps, norm="map", *, vmin=None, vmax=None, data_range=None) -> tuple[float, float]:
    """The ``(vmin, vmax)`` used to normalise ``maps`` (any shape), ignoring NaN.

    ``norm`` is ``"map"``/``"shared"`` (the min and max of the values given), ``"symmetric"``
    (``(-m, m)``, ``m`` the largest absolute value), ``None`` (:func:`resolve_norm`) or a fixed
    ``(vmin, vmax)``; ``vmin``/``vmax`` override either end. ``data_range``: the maps'
    ``(min(), max())`` when already known (NaN when there is a NaN), to skip a pass.

    >>> limits(np.array([[0.0, 2.0], [np.nan, 1.0]]))
    (0.0, 2.0)
    >>> limits(np.zeros(3), (0, 1))
    (0.0, 1.0)
    >>> limits(np.array([-1.0, 3.0]), "symmetric")
    (-3.0, 3.0)
    """
    if norm is None or (isinstance(norm, str) and norm == "auto"):
        a = np.asarray(maps) if maps is not None else np.zeros(0)
        lo_data = float(np.nanmin(a)) if a.size and not np.isnan(a).all() else 0.0
        norm = resolve_norm(norm, lo_data)
    if isinstance(norm, (tuple, list)):
        if len(norm) != 2:
            raise ShapeError(f"a fixed norm must be (vmin, vmax), got {norm!r}")
        try:
            lo, hi = float(norm[0]), float(norm[1])
        except (TypeError, ValueError):
            raise DTypeError(f"a fixed norm must be two numbers (vmin, vmax), got {norm!r}") from None
        if hi < lo:
            raise ShapeError(f"a fixed norm must have vmin <= vmax, got {norm!r}")
    elif isinstance(norm, str) and norm == "symmetric":
        lo, hi = limits(maps, "map", data_range=data_range)
        m = max(abs(lo), abs(hi))
        lo, hi = -m, m
        if vmin is not None or vmax is not None:  # one given end sets the half-width
            m = max(abs(float(v)) for v in (vmin, vmax) if v is not None)
            return -m, m
    elif isinstance(norm, str) and norm in ("map", "shared", "grid"):
        a = np.asarray(maps)
        if a.size == 0:
            lo, hi = 0.0, 1.0
        else:
            # NaN propagates through min/max: one pass each when there is none
            lo, hi = (float(a.min()), float(a.max())) if data_range is None else map(float, data_range)
            if np.isnan(lo) or np.isnan(hi):
                if np.isnan(a).all():
                    lo, hi = 0.0, 1.0
                else:
                    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
            if np.isinf(lo) or np.isinf(hi):
                raise NonFiniteError("heat map contains infinite values; only NaN (missing) is allowed")
    else:
        raise UnknownNameError("normalisation", str(norm), ["map", "shared", "symmetric", "(vmin, vmax)"])
    try:
        lo = lo if vmin is None else float(vmin)
        hi = hi if vmax is None else float(vmax)
    except (TypeError, ValueError):
        raise DTypeError(f"vmin and vmax must be numbers, got {vmin!r}, {vmax!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise NonFiniteError(f"normalisation limits must be finite, got ({lo}, {hi})")
    if hi < lo:
        raise ShapeError(f"normalisation limits must have vmin <= vmax, got ({lo}, {hi})")
    return lo, hi


def normalize(heat, vmin: float, vmax: float) -> np.ndarray:
    """``heat`` scaled to ``[0, 1]`` as float32 (clipped; NaN kept; equal limits give 0).

    >>> normalize(np.array([1.0, 2.0, 3.0, np.nan]), 1.0, 3.0).tolist()
    [0.0, 0.5, 1.0, nan]
    """
    h = np.asarray(heat, dtype=np.float64)  # float64: limits up to 1e308 do not overflow
    if vmax <= vmin:
        return np.where(np.isnan(h), np.float32(np.nan), np.float32(0.0))
    with np.errstate(over="ignore"):  # vmax - vmin may overflow to inf: the scale is then 0
        span = float(vmax) - float(vmin)
        out = (h - float(vmin)) / span if np.isfinite(span) else (h / 2.0 - float(vmin) / 2.0) / (
            float(vmax) / 2.0 - float(vmin) / 2.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def color_index(heat, vmin: float, vmax: float, *, data_min: float | None = None, signed: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Colour-table indices of a map: ``(uint8 round(255 * clip((heat - vmin) / (vmax - vmin))),
    NaN mask or None)``; NaN pixels get index 0, equal limits give 0.

    ``signed=True`` (for :func:`signed_lut`): ``128 + round(127 * clip(heat / m, -1, 1))`` with
    ``m = max(|vmin|, |vmax|)``: 0 -> 128, ``+v`` and ``-v`` -> ``128 +- k`` (NaN -> 128).

    >>> color_index(np.array([[1.0, 2.0, 3.0, np.nan]]), 1.0, 3.0)[0].tolist()
    [[0, 128, 255, 0]]
    >>> color_index(np.array([[-2.0, -1.0, 0.0, 1.0, 2.0]]), -2.0, 2.0, signed=True)[0].tolist()
    [[1, 64, 128, 192, 255]]
    """
    h = np.asarray(heat)
    if h.dtype != np.float32 and h.dtype != np.float64:
        h = h.astype(np.float32)
    if h.size == 0:
        return np.zeros(h.shape, np.uint8), None
    if signed:
        nan_mask = np.isnan(h)
        m = max(abs(float(vmin)), abs(float(vmax)))
        t = np.clip(np.nan_to_num(h, nan=0.0) / m, -1.0, 1.0) if m > 0 else np.zeros(h.shape)
        idx = (128 + np.rint(127.0 * t)).astype(np.uint8)
        return idx, (nan_mask if nan_mask.any() else None)
    lo_data = float(h.min()) if data_min is None else float(data_min)  # NaN when there is a NaN
    nan_mask = None
    if np.isnan(lo_data):
        nan_mask = np.isnan(h)
        h = np.where(nan_mask, np.float32(vmin), h)
        lo_data = float(h.min())
    if vmax <= vmin:
        return np.zeros(h.shape, np.uint8), nan_mask
    if lo_data < vmin:
        h = np.maximum(h, vmin)
    scale = 255.0 / (vmax - vmin)
    src = np.ascontiguousarray(h)
    flat = src if src.ndim == 2 else src.reshape(1, -1)
    # saturating convert with round-half-even: values above vmax become 255 (the argument is >= 0)
    idx = cv2.convertScaleAbs(flat, alpha=scale, beta=-vmin * scale).reshape(src.shape)
    return idx, nan_mask


def colorize_index(idx: np.ndarray, cmap="viridis", *, signed: bool = False) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB colours of ``[H, W]`` uint8 colour-table indices."""
    if signed:
        return signed_lut(cmap)[idx]
    lut = colormap_lut(cmap)
    if idx.ndim == 2 and idx.size:
        # a user table is applied as given (no channel swap): an RGB table in gives RGB out
        return cv2.applyColorMap(idx, _user_table(cmap if isinstance(cmap, str) else lut.tobytes(), lut))
    return lut[idx]


def colorize(unit, cmap=None, *, signed: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Colour a ``[H, W]`` map already in ``[0, 1]`` (in ``[-1, 1]`` with ``signed``: 0 takes the
    diverging map's centre colour): ``([H, W, 3]`` uint8 RGB, NaN mask or None).

    NaN pixels get colour 0 and are reported in the mask so callers can make them transparent.

    >>> rgb, nan = colorize(np.array([[0.0, 1.0]]), "jet")
    >>> rgb[0, 1].tolist(), nan is None
    ([128, 0, 0], True)
    >>> colorize(np.array([[-1.0, 0.0, 1.0]]), "bwr", signed=True)[0][0].tolist()
    [[0, 0, 255], [255, 255, 255], [255, 0, 0]]
    """
    cmap = resolve_cmap(cmap, signed)
    idx, nan_mask = color_index(unit, -1.0 if signed else 0.0, 1.0, signed=signed)
    return colorize_index(idx, cmap, signed=signed), nan_mask


def heat_to_rgb(heat, vmin: float, vmax: float, cmap="viridis", *, data_min: float | None = None,
                signed: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Colour a map with limits ``(vmin, vmax)``: ``([..., 3]`` uint8 RGB, NaN mask or None)``.

    ``signed=True``: centred at 0 with :func:`signed_lut` (see :func:`color_index`).

    >>> heat_to_rgb(np.array([[0.0, 5.0]]), 0.0, 5.0, "jet")[0][0, 1].tolist()
    [128, 0, 0]
    >>> heat_to_rgb(np.array([[0.0]]), -1.0, 1.0, "bwr", signed=True)[0][0, 0].tolist()
    [255, 255, 255]
    """
    idx, nan_mask = color_index(heat, vmin, vmax, data_min=data_min, signed=signed)
    return colorize_index(idx, cmap, signed=signed), nan_mask


def resize_map(heat: np.ndarray, size, method: str = "bilinear") -> np.ndarray:
    """Resize a ``[h, w]`` map to ``size = (H, W)`` with ``"bilinear"`` or ``"nearest"``.

    ``"nearest"`` gives cell ``(i, j)`` exactly the pixels a ``(h, w)`` patch grid gives it
    (:func:`attnlens.geometry.grid_to_pixels`), so cells are uniform blocks. NaN cells stay NaN (their extent is resized with nearest neighbour; bilinear weights
    treat them as the map's minimum).

    >>> resize_map(np.array([[0.0, 1.0]]), (1, 4), "nearest").tolist()
    [[0.0, 0.0, 1.0, 1.0]]
    """
    methods = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}
    if method not in methods:
        raise UnknownNameError("resize method", str(method), list(methods))
    H, W = (int(s) for s in size)
    h = np.asarray(heat)
    big = h.size and h.dtype.kind == "f" and np.nanmax(np.abs(h), initial=0.0) > np.finfo(np.float32).max
    h = h.astype(np.float64 if big else np.float32)
    if h.shape == (H, W):
        return h
    if method == "nearest":  # cell (i, j) covers the pixels of grid_to_pixels: uniform blocks, NaN kept
        ri, ci = (np.arange(H) * h.shape[0]) // H, (np.arange(W) * h.shape[1]) // W
        return h[ri][:, ci]
    nan = np.isnan(h)
    if nan.any():
        fill = np.nanmin(h) if not nan.all() else 0.0
        out = cv2.resize(np.where(nan, fill, h).astype(h.dtype), (W, H), interpolation=methods[method])
        nan_big = cv2.resize(nan.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST).astype(bool)
        out[nan_big] = np.nan
        return out
    return cv2.resize(h, (W, H), interpolation=methods[method])


def region_boxes(regions, name: str = "regions", fn: str = "render") -> np.ndarray:
    """``[R, 4]`` xyxy boxes (a writable copy) of a :class:`~attnlens.types.Regions` or of an
    array; non-finite or inverted boxes are typed errors naming ``name``."""
    return check_boxes(regions, name, fn)


def to_pixels(heat, image_size, *, regions=None, grid=None, mode: str = "max",
              resize: str | None = "bilinear", dtype=np.float64) -> np.ndarray:
    """Any supported heat to a float ``[H, W]`` pixel map of an image of ``image_size = (H, W)``.

    Args:
        heat: ``[H, W]`` pixel map; ``[h, w]`` map of another size (resized with ``resize``;
            ``resize=None`` makes that an error); ``[R]`` region weights with ``regions``;
            ``[rows * cols]`` patch weights with ``grid``. A torch tensor or a 1-axis
            :class:`~attnlens.attention_map.AttentionMap` (its key side gives the regions/grid).
        image_size: ``(H, W)`` of the output.
        regions: a :class:`~attnlens.types.Regions` or ``[R, 4]`` xyxy boxes.
        grid: ``(rows, cols)`` patch grid.
        mode: region-to-pixel mode, ``"max"`` (display) or ``"density"``.
        resize: ``"bilinear"``, ``"nearest"`` or ``None``.
        dtype: float type of region/patch weights before conversion (``float32`` halves the
            memory traffic of display maps; the metrics use ``float64``).

    >>> to_pixels(np.array([0.2, 0.8]), (2, 4), regions=[[0, 0, 2, 2], [2, 0, 4, 2]]).tolist()
    [[0.2, 0.2, 0.8, 0.8], [0.2, 0.2, 0.8, 0.8]]
    """
    H, W = (int(s) for s in image_size)
    if hasattr(heat, "dims") and hasattr(heat, "weights"):  # an AttentionMap
        if regions is None and grid is None:
            regions = heat.key.regions
            grid = heat.key.grid
        heat = heat.weights
    h = heat_array(heat, "heat", "to_pixels", dtype=np.float32)
    if np.dtype(dtype) == np.float32 and h.size and np.nanmax(np.abs(h), initial=0.0) > np.finfo(np.float32).max:
        dtype = np.float64  # values beyond float32's range keep float64 rather than becoming inf
    if h.ndim == 3 and h.shape[-1] == 1:
        h = h[..., 0]
    if np.isinf(h).any():
        where = np.argwhere(np.isinf(h))[:4].tolist()
        raise NonFiniteError(f"heat contains infinite values (at {where}); only NaN (missing) is allowed")
    if h.ndim == 1:
        if regions is not None:
            boxes = region_boxes(regions)
            if len(boxes) != len(h):
                raise ShapeError(f"{len(h)} region weights but {len(boxes)} region boxes")
            nan = np.isnan(h)
            if nan.any():
                raise NonFiniteError(f"region weights contain NaN at regions {np.nonzero(nan)[0][:8].tolist()}")
            if len(h) == 0:  # no regions: nothing is covered
                return np.zeros((H, W), dtype=dtype)
            return regions_to_pixels(h.astype(dtype, copy=False), boxes, (H, W), mode=mode)
        if grid is not None:
            g = _grid(grid)
            if g[0] * g[1] != len(h):
                raise ShapeError(f"heat: {len(h)} patch weights do not fill a {g[0]}x{g[1]} grid")
            return grid_to_pixels(h, g, (H, W))
        raise ShapeError(f"a 1-axis heat of {len(h)} values needs regions= (boxes) or grid= (rows, cols)")
    if h.ndim != 2:
        raise ShapeError(f"heat must be [H, W], [R] (with regions) or [rows*cols] (with grid); got {h.shape}")
    if 0 in h.shape:
        raise ShapeError(f"heat is an empty map of shape {h.shape}; a pixel map needs at least one row and column")
    if h.shape == (H, W):
        return h
    if h.shape == (W, H):
        raise ShapeError(f"heat has shape {h.shape}, the transpose of the image size (H, W) = {(H, W)}; "
                         "pass it as [H, W] (rows first)")
    if resize is None:
        raise ShapeError(f"heat has shape {h.shape} but the image is {(H, W)}; pass resize='bilinear' or 'nearest'")
    return resize_map(h, (H, W), resize)


def _grid(grid) -> tuple[int, int]:
    try:
        g = tuple(int(v) for v in grid)
        ok = len(g) == 2 and all(float(v) == int(v) for v in grid)
    except (TypeError, ValueError):
        ok = False
    if not ok or min(g) < 1:
        raise ShapeError(f"grid must be (rows, cols) of positive integers, got {grid!r}")
    return g
