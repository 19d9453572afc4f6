"""Colour tables: ``[256, 3]`` uint8 **RGB** tables looked up by name, for sequential and signed maps.

OpenCV colour maps (``viridis``, ``inferno``, ``magma``, ``plasma``, ``cividis``, ``jet``, ``turbo``
...) are produced by OpenCV in BGR order and reversed here, once, to RGB; any other name is taken
from matplotlib (``gray``, ``Reds``, ``RdBu_r`` ...). The same table colours overlays, grids,
token strips and interactive views, so a value has one colour everywhere.

Signed maps use :func:`signed_lut`: its entry 128 is the colour map's exact centre, so 0 has the
map's neutral colour and ``+v``/``-v`` get colours symmetric about it.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from ..errors import DTypeError, ShapeError, UnknownNameError

__all__ = ["OPENCV_COLORMAPS", "colormap_lut", "signed_lut", "resolve_cmap", "SEQUENTIAL_CMAP", "DIVERGING_CMAP"]

SEQUENTIAL_CMAP = "viridis"
DIVERGING_CMAP = "RdBu_r"  # blue negative, near-white 0, red positive

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
    if cmap is None or isinstance(cmap, (bool, int, float)):
        raise DTypeError(f"cmap must be a colour map name or a [256, 3] uint8 RGB table, got {cmap!r}")
    lut = np.asarray(cmap)
    if lut.shape != (256, 3) or lut.dtype != np.uint8:
        raise ShapeError(f"cmap: a colour table must be a [256, 3] uint8 RGB array, got {lut.shape} {lut.dtype}")
    return lut


@lru_cache(maxsize=32)
def _signed_lut(name: str) -> np.ndarray:
    key = name.lower()
    if key in OPENCV_COLORMAPS:
        return _signed_from_table(_lut(name))
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name].resampled(255)
    except KeyError:
        raise UnknownNameError("colormap", name, set(OPENCV_COLORMAPS) | set(matplotlib.colormaps)) from None
    t = np.round(cmap(np.arange(255))[:, :3] * 255).astype(np.uint8)  # t[k]: the colour at k / 254
    out = np.concatenate([t[:1], t])
    out.setflags(write=False)
    return out


def _signed_from_table(lut: np.ndarray) -> np.ndarray:
    pos = np.arange(255) * (255.0 / 254.0)  # k / 254 of the way through the 256-entry table
    lo = np.floor(pos).astype(int).clip(0, 255)
    hi = (lo + 1).clip(0, 255)
    f = (pos - lo)[:, None]
    t = np.round(lut[lo] * (1 - f) + lut[hi] * f).astype(np.uint8)
    out = np.concatenate([t[:1], t])
    out.setflags(write=False)
    return out


def signed_lut(cmap=DIVERGING_CMAP) -> np.ndarray:
    """The ``[256, 3]`` uint8 RGB table used for signed (``norm="symmetric"``) maps.

    Entry ``128 + k`` (``k`` in ``-127..127``) is the colour map at ``0.5 + k / 254``: entry 128 is
    the map's centre (the colour of 0), and ``+v`` / ``-v`` take entries ``128 + k`` / ``128 - k``,
    symmetric about the centre. (Entry 0 repeats entry 1 and is not used.)

    >>> lut = signed_lut("bwr")
    >>> lut[128].tolist(), lut[255].tolist(), lut[1].tolist()
    ([255, 255, 255], [255, 0, 0], [0, 0, 255])
    """
    if isinstance(cmap, str):
        return _signed_lut(cmap)
    return _signed_from_table(colormap_lut(cmap))


def resolve_cmap(cmap, signed: bool):
    """``cmap`` or, when ``None``, the default for the scaling (diverging when ``signed``)."""
    if cmap is None:
        return DIVERGING_CMAP if signed else SEQUENTIAL_CMAP
    return cmap
