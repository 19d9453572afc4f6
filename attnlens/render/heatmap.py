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
* Colour maps are looked up by name as ``[256, 3]`` uint8 **RGB** tables. OpenCV colour maps
  (``viridis``, ``inferno``, ``magma``, ``plasma``, ``cividis``, ``jet``, ``turbo`` ...) are
  produced by OpenCV in BGR order and reversed here, once, to RGB; any other name is taken from
  matplotlib (``gray``, ``Reds``, ``coolwarm`` ...). The same table colours overlays, grids,
  token strips and interactive views, so a value has one colour everywhere.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from ..errors import NonFiniteError, ShapeError, UnknownNameError
from ..geometry import grid_to_pixels, regions_to_pixels

__all__ = ["OPENCV_COLORMAPS", "colormap_lut", "colorize", "color_index", "colorize_index", "heat_to_rgb",
           "to_pixels", "limits", "normalize", "resize_map",
           "region_boxes"]

OPENCV_COLORMAPS = {
    name[len("COLORMAP_"):].lower(): getattr(cv2, name) for name in dir(cv2) if name.startswith("COLORMAP_")
}


@lru_cache(maxsize=64)
def _lut(name: str) -> np.ndarray:
    key = name.lower()
    if key in OPENCV_COLORMAPS:
        ramp = np.arange(256, dtype=np.uint8)[:, None]
        bgr = cv2.applyColorMap(ramp, OPENCV_COLORMAPS[key])[:, 0, :]
        rgb = np.ascontiguousarray(bgr[:, ::-1])  # OpenCV returns BGR: reverse to RGB, explicitly
    else:
        import matplotlib

        try:
            cmap = matplotlib.colormaps[name]
        except KeyError:
            raise UnknownNameError("colormap", name, set(OPENCV_COLORMAPS) | set(matplotlib.colormaps)) from None
        rgb = np.round(cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)
    rgb.setflags(write=False)
    return rgb


_USER_TABLES: dict = {}


def _user_table(key, lut: np.ndarray) -> np.ndarray:
    table = _USER_TABLES.get(key)
    if table is None:
        table = _USER_TABLES[key] = np.ascontiguousarray(lut.reshape(256, 1, 3))
        if len(_USER_TABLES) > 64:
            _USER_TABLES.pop(next(iter(_USER_TABLES)))
    return table


def colormap_lut(cmap="viridis") -> np.ndarray:
    """The ``[256, 3]`` uint8 RGB table of a colour map (a name, or a ``[256, 3]`` table).

    >>> lut = colormap_lut("jet")
    >>> lut.shape, lut[255].argmax()  # jet ends in red: channel 0 of RGB
    ((256, 3), np.int64(0))
    """
    if isinstance(cmap, str):
        return _lut(cmap)
    lut = np.asarray(cmap)
    if lut.shape != (256, 3) or lut.dtype != np.uint8:
        raise ShapeError(f"a colour table must be a [256, 3] uint8 RGB array, got {lut.shape} {lut.dtype}")
    return lut


def limits(maps, norm="map", *, vmin=None, vmax=None, data_range=None) -> tuple[float, float]:
    """The ``(vmin, vmax)`` used to normalise ``maps`` (any shape), ignoring NaN.

    ``norm`` is ``"map"``/``"shared"`` (the min and max of the values given) or a fixed
    ``(vmin, vmax)``; ``vmin``/``vmax`` override either end. ``data_range``: the maps'
    ``(min(), max())`` when already known (NaN when there is a NaN), to skip a pass.

    >>> limits(np.array([[0.0, 2.0], [np.nan, 1.0]]))
    (0.0, 2.0)
    >>> limits(np.zeros(3), (0, 1))
    (0.0, 1.0)
    """
    if isinstance(norm, (tuple, list)):
        if len(norm) != 2:
            raise ShapeError(f"a fixed norm must be (vmin, vmax), got {norm!r}")
        lo, hi = float(norm[0]), float(norm[1])
    elif norm in ("map", "shared", "grid"):
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
        raise UnknownNameError("normalisation", str(norm), ["map", "shared", "(vmin, vmax)"])
    lo = lo if vmin is None else float(vmin)
    hi = hi if vmax is None else float(vmax)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise NonFiniteError(f"normalisation limits must be finite, got ({lo}, {hi})")
    return lo, hi


def normalize(heat, vmin: float, vmax: float) -> np.ndarray:
    """``heat`` scaled to ``[0, 1]`` as float32 (clipped; NaN kept; equal limits give 0).

    >>> normalize(np.array([1.0, 2.0, 3.0, np.nan]), 1.0, 3.0).tolist()
    [0.0, 0.5, 1.0, nan]
    """
    h = np.asarray(heat, dtype=np.float32)
    if vmax <= vmin:
        return np.where(np.isnan(h), np.float32(np.nan), np.float32(0.0))
    out = (h - np.float32(vmin)) * np.float32(1.0 / (vmax - vmin))
    return np.clip(out, 0.0, 1.0, out=out)


def color_index(heat, vmin: float, vmax: float, *, data_min: float | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Colour-table indices of a map: ``(uint8 round(255 * clip((heat - vmin) / (vmax - vmin))),
    NaN mask or None)``; NaN pixels get index 0, equal limits give 0.

    >>> color_index(np.array([[1.0, 2.0, 3.0, np.nan]]), 1.0, 3.0)[0].tolist()
    [[0, 128, 255, 0]]
    """
    h = np.asarray(heat)
    if h.dtype != np.float32 and h.dtype != np.float64:
        h = h.astype(np.float32)
    if h.size == 0:
        return np.zeros(h.shape, np.uint8), None
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


def colorize_index(idx: np.ndarray, cmap="viridis") -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB colours of ``[H, W]`` uint8 colour-table indices."""
    lut = colormap_lut(cmap)
    if idx.ndim == 2 and idx.size:
        # a user table is applied as given (no channel swap): an RGB table in gives RGB out
        return cv2.applyColorMap(idx, _user_table(cmap if isinstance(cmap, str) else lut.tobytes(), lut))
    return lut[idx]


def colorize(unit, cmap="viridis") -> tuple[np.ndarray, np.ndarray | None]:
    """Colour a ``[H, W]`` map already in ``[0, 1]``: ``([H, W, 3]`` uint8 RGB, NaN mask or None).

    NaN pixels get colour 0 and are reported in the mask so callers can make them transparent.

    >>> rgb, nan = colorize(np.array([[0.0, 1.0]]), "jet")
    >>> rgb[0, 1].tolist(), nan is None
    ([128, 0, 0], True)
    """
    idx, nan_mask = color_index(unit, 0.0, 1.0)
    return colorize_index(idx, cmap), nan_mask


def heat_to_rgb(heat, vmin: float, vmax: float, cmap="viridis", *, data_min: float | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Colour a map with limits ``(vmin, vmax)``: ``([..., 3]`` uint8 RGB, NaN mask or None)``.

    >>> heat_to_rgb(np.array([[0.0, 5.0]]), 0.0, 5.0, "jet")[0][0, 1].tolist()
    [128, 0, 0]
    """
    idx, nan_mask = color_index(heat, vmin, vmax, data_min=data_min)
    return colorize_index(idx, cmap), nan_mask


def resize_map(heat: np.ndarray, size, method: str = "bilinear") -> np.ndarray:
    """Resize a ``[h, w]`` map to ``size = (H, W)`` with ``"bilinear"`` or ``"nearest"``.

    NaN cells stay NaN (their extent is resized with nearest neighbour; bilinear weights
    treat them as the map's minimum).

    >>> resize_map(np.array([[0.0, 1.0]]), (1, 4), "nearest").tolist()
    [[0.0, 0.0, 1.0, 1.0]]
    """
    methods = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}
    if method not in methods:
        raise UnknownNameError("resize method", str(method), list(methods))
    H, W = (int(s) for s in size)
    h = np.asarray(heat, dtype=np.float32)
    if h.shape == (H, W):
        return h
    nan = np.isnan(h)
    if nan.any():
        fill = np.nanmin(h) if not nan.all() else 0.0
        out = cv2.resize(np.where(nan, fill, h).astype(np.float32), (W, H), interpolation=methods[method])
        nan_big = cv2.resize(nan.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST).astype(bool)
        out[nan_big] = np.nan
        return out
    return cv2.resize(h, (W, H), interpolation=methods[method])


def region_boxes(regions) -> np.ndarray:
    """``[R, 4]`` xyxy boxes of a :class:`~attnlens.types.Regions` or of an array."""
    boxes = getattr(regions, "boxes", regions)
    b = np.array(boxes, dtype=np.float64)  # a writable copy (Regions.boxes are read-only)
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ShapeError(f"regions must be a Regions or an [R, 4] xyxy array, got shape {tuple(b.shape)}")
    return b


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
    if hasattr(heat, "detach"):
        heat = heat.detach().cpu().numpy()
    h = np.asarray(heat)
    if h.dtype.kind not in "fiub":
        raise ShapeError(f"heat must be numeric, got dtype {h.dtype}")
    if h.ndim == 3 and h.shape[-1] == 1:
        h = h[..., 0]
    if h.ndim == 1:
        if regions is not None:
            boxes = region_boxes(regions)
            if len(boxes) != len(h):
                raise ShapeError(f"{len(h)} region weights but {len(boxes)} region boxes")
            nan = np.isnan(h) if h.dtype.kind == "f" else None
            if nan is not None and nan.any():
                raise NonFiniteError(f"region weights contain NaN at regions {np.nonzero(nan)[0][:8].tolist()}")
            return regions_to_pixels(h.astype(dtype, copy=False), boxes, (H, W), mode=mode)
        if grid is not None:
            return grid_to_pixels(h, tuple(grid), (H, W))
        raise ShapeError(f"a 1-axis heat of {len(h)} values needs regions= (boxes) or grid= (rows, cols)")
    if h.ndim != 2:
        raise ShapeError(f"heat must be [H, W], [R] (with regions) or [rows*cols] (with grid); got {h.shape}")
    if h.shape == (H, W):
        return h
    if h.shape == (W, H):
        raise ShapeError(f"heat has shape {h.shape}, the transpose of the image size (H, W) = {(H, W)}; "
                         "pass it as [H, W] (rows first)")
    if resize is None:
        raise ShapeError(f"heat has shape {h.shape} but the image is {(H, W)}; pass resize='bilinear' or 'nearest'")
    return resize_map(h, (H, W), resize)
