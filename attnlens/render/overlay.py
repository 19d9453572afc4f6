"""Heat-map overlays on images, with ground-truth and top-k region boxes.

Images (explicit rules, never guessed per pixel):

* ``[H, W, 3]`` is RGB (never BGR). ``[H, W]`` and ``[H, W, 1]`` are grayscale and are shown as
  gray RGB. ``[H, W, 4]`` RGBA is composited over a white background with its alpha channel
  (an opaque pixel keeps its colour).
* uint8 is ``[0, 255]``. Other integer types must hold values in ``[0, 255]``. A float image
  whose maximum is ``<= 1`` is read as ``[0, 1]``, otherwise as ``[0, 255]``; negative values,
  values above 255 and NaN are errors.
* PIL images follow the same rules: ``RGB`` and ``L`` as they are, ``RGBA``/``LA``/``PA`` and ``P``
  with transparency composited over white, ``1`` as black/white, ``I``/``I;16``/``F`` as the
  integer/float arrays they hold (so a 16-bit image with values above 255 is an error, as its
  array is), any other mode (``P``, ``CMYK``, ``YCbCr`` ...) converted to RGB by PIL.
* A PIL image in gives a PIL RGB image out; an array in gives a new uint8 ``[H, W, 3]`` RGB
  array out; a torch tensor ``[H, W, (C)]`` in gives a uint8 ``[H, W, 3]`` tensor out. The input
  is never modified.

Colour and opacity (``opacity="heat"``, the default): each pixel's colour comes from the colour
table and its opacity follows its heat, ``alpha * t`` with ``t`` the value's position in the colour
table (``idx / 255`` for a sequential map, ``|idx - 128| / 127`` for a signed one, see
:func:`~attnlens.render.heatmap.color_index`), so a pixel of zero (or lowest) heat shows the bare
image pixel exactly and only the heat stands out. ``opacity="constant"`` blends every pixel
with ``alpha``. Small heat maps are upsampled with nearest neighbour by default, so patch cells
stay uniform blocks; ``scale`` enlarges small images (nearest neighbour) before drawing.

Boxes are ``xyxy`` in original-image pixels and are drawn on the pixels they cover under the
pixel-centre rule of :mod:`attnlens.geometry`.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..errors import DTypeError, NonFiniteError, ShapeError
from ..geometry import pixel_bounds
from ._checks import check_boxes, choice_option, heat_array, int_option, real_option
from .heatmap import (color_index, colormap_lut, heat_to_rgb, limits, opacity_table, region_boxes, resolve_cmap,
                      resolve_norm, signed_lut, to_pixels)

__all__ = ["overlay", "overlay_regions", "as_rgb", "draw_boxes", "colorbar_strip", "GT_COLOR", "REGION_COLOR"]

GT_COLOR = (255, 40, 40)      # ground truth: red (RGB)
REGION_COLOR = (255, 255, 255)  # top-k regions: white (RGB)


def _is_pil(image) -> bool:
    return type(image).__module__.startswith("PIL.") and hasattr(image, "convert")


def _pil_array(image) -> np.ndarray:
    mode = image.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    elif mode == "1":
        image = image.convert("L")
    elif mode.startswith("I") or mode == "F":  # 16/32-bit integers and floats: the array rules
        return np.asarray(image)
    elif mode not in ("RGB", "L"):
        image = image.convert("RGB")
    return np.asarray(image)


def as_rgb(image) -> np.ndarray:
    """Any supported image as a uint8 ``[H, W, 3]`` RGB array (see the module rules).

    >>> as_rgb(np.full((1, 2), 0.5)).tolist()
    [[[128, 128, 128], [128, 128, 128]]]
    """
    if _is_pil(image):
        a = _pil_array(image)
    elif hasattr(image, "detach"):
        t = image.detach().cpu()
        a = (t.float() if t.is_floating_point() and t.element_size() < 4 else t).numpy()
    else:
        try:
            a = np.asarray(image)
        except (ValueError, TypeError) as exc:
            raise ShapeError(f"image is not a rectangular array ({exc})") from None
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or 0 in a.shape:
        raise ShapeError(f"image must be [H, W], [H, W, 1], [H, W, 3] (RGB) or [H, W, 4] (RGBA); got {a.shape}")
    if a.dtype == np.uint8:
        u8 = a
    elif a.dtype.kind in "iu":
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise DTypeError(f"integer image of dtype {a.dtype} must hold values in [0, 255], got [{lo}, {hi}]")
        u8 = a.astype(np.uint8)
    elif a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise NonFiniteError("image contains NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 255:
            raise DTypeError(f"float image must be in [0, 1] or [0, 255], got values in [{lo}, {hi}]")
        scale = 255.0 if hi <= 1.0 else 1.0
        u8 = np.rint(a.astype(np.float64) * scale).astype(np.uint8)
    else:
        raise DTypeError(f"image dtype {a.dtype} is not supported (use uint8, integers or floats)")
    if u8.ndim == 2:
        return np.repeat(u8[..., None], 3, axis=2)
    if u8.shape[-1] == 4:
        alpha = u8[..., 3:].astype(np.float32) / 255.0
        rgb = u8[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.rint(rgb).astype(np.uint8)
    return np.ascontiguousarray(u8)


def _text_color(rgb) -> tuple[int, int, int]:
    r, g, b = rgb
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def draw_boxes(image: np.ndarray, boxes, *, color=GT_COLOR, labels=None, thickness: int = 2) -> np.ndarray:
    """Draw ``[n, 4]`` xyxy boxes (with optional text labels) on a copy of an RGB uint8 image.

    The outline lies on the outermost pixels the box covers. Labels are drawn with OpenCV's
    Hershey font, which has ASCII glyphs only (other characters become ``?``).

    >>> out = draw_boxes(np.zeros((8, 8, 3), np.uint8), [[2, 2, 6, 6]], color=(255, 0, 0), thickness=1)
    >>> out[2, 2].tolist(), out[4, 4].tolist()
    ([255, 0, 0], [0, 0, 0])
    """
    out = np.array(image, dtype=np.uint8, copy=True)
    b = check_boxes(boxes, "boxes", "draw_boxes")
    thickness = int_option(thickness, "thickness", "draw_boxes", lo=1, hi=1000)
    color = _color(color, "color")
    if labels is not None and len(labels) != len(b):
        raise ShapeError(f"draw_boxes: {len(labels)} labels for {len(b)} boxes")
    if len(b) == 0:
        return out
    H, W = out.shape[:2]
    r0, r1, c0, c1 = pixel_bounds(b, (H, W))
    scale = max(0.35, min(H, W) / 900.0)
    for i in range(len(b)):
        if r1[i] <= r0[i] or c1[i] <= c0[i]:
            continue
        cv2.rectangle(out, (int(c0[i]), int(r0[i])), (int(c1[i]) - 1, int(r1[i]) - 1), color, thickness)
        if labels is not None and labels[i] is not None and str(labels[i]) != "":
            text = str(labels[i]).encode("ascii", "replace").decode("ascii")
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            x, y = int(c0[i]), max(int(r0[i]), th + base)
            cv2.rectangle(out, (x, y - th - base), (x + tw + 2, y), color, -1)
            cv2.putText(out, text, (x + 1, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, _text_color(color), 1,
                        cv2.LINE_AA)
    return out


def _color(color, name: str) -> tuple[int, int, int]:
    try:
        c = tuple(int(v) for v in color)
        ok = len(c) == 3 and all(0 <= v <= 255 and float(v) == int(v) for v, v0 in zip(c, color))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise DTypeError(f"{name} must be an (R, G, B) triple of integers in [0, 255], got {color!r}")
    return c


def _blend(rgb: np.ndarray, idx: np.ndarray, lut: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Blend colour ``lut[idx]`` over ``rgb`` with opacity ``w[idx] / 255`` per pixel:
    ``round(rgb * (255 - w) / 255) + round(lut * w / 255)``, so ``w = 0`` gives the image pixel
    exactly and ``w = 255`` the colour (within 1 of the exact blend elsewhere). Both terms come
    from 256-entry tables applied by OpenCV to the uint8 indices: no large temporaries."""
    premult = np.rint(lut.astype(np.float64) * w[:, None] / 255.0).astype(np.uint8)   # [256, 3]
    keep = np.repeat((255 - w).astype(np.uint8)[:, None], 3, axis=1)                    # [256, 3]
    color = cv2.applyColorMap(idx, np.ascontiguousarray(premult.reshape(256, 1, 3)))  # tables are RGB
    rest = cv2.applyColorMap(idx, np.ascontiguousarray(keep.reshape(256, 1, 3)))
    return cv2.add(cv2.multiply(rgb, rest, scale=1.0 / 255.0), color)


def colorbar_strip(height: int, lo: float, hi: float, cmap=None, *, signed: bool = False,
                   width: int | None = None) -> np.ndarray:
    """A ``[height, width, 3]`` uint8 RGB colour bar (top = ``hi``) with its numbers written beside it.

    >>> bar = colorbar_strip(100, 0.0, 1.0, "gray")
    >>> bar.shape[0], int(bar[10, 4, 0]) > 240, int(bar[90, 4, 0]) < 15  # white at the top, black below
    (100, True, True)
    """
    H = int(height)
    cmap = resolve_cmap(cmap, signed)
    font = cv2.FONT_HERSHEY_SIMPLEX
    fs = float(np.clip(H / 320.0, 0.3, 0.7))
    labels = [f"{v:.3g}" for v in (hi, (lo + hi) / 2, lo)]
    tw = max(cv2.getTextSize(t, font, fs, 1)[0][0] for t in labels)
    th = cv2.getTextSize("0", font, fs, 1)[0][1]
    bw = max(8, H // 16)
    width = int(width) if width is not None else bw + 6 + tw + 6
    out = np.full((H, width, 3), 255, np.uint8)
    pad = min(th, H // 4)
    n = max(1, H - 2 * pad)
    ramp = np.linspace(hi, lo, n)[:, None]
    rgb, _ = heat_to_rgb(ramp, lo, hi, cmap, signed=signed)
    out[pad:pad + n, 2:2 + bw] = rgb[:, :1, :]
    for text, y in zip(labels, (pad, pad + (n - 1) // 2, pad + n - 1)):
        yb = int(np.clip(y + th // 2, th, H - 1))
        cv2.putText(out, text, (bw + 6, yb), font, fs, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def _region_labels(regions, weights, idx):
    names = getattr(regions, "labels", None)
    out = []
    for r in idx:
        name = str(names[r]) if names is not None else f"#{r}"
        out.append(f"{name} {weights[r]:.2f}")
    return out


def overlay(image, heat, *, alpha: float = 0.7, cmap=None, boxes=None, box_color=GT_COLOR,
            regions=None, region_weights=None, top_k: int = 0, region_color=REGION_COLOR, grid=None,
            norm=None, vmin: float | None = None, vmax: float | None = None, resize: str | None = "nearest",
            nan: str = "transparent", mode: str = "max", thickness: int = 2, opacity: str = "heat",
            colorbar: bool = False, scale: int = 1):
    """Blend a heat map over an image; the colour's opacity follows the heat (module docstring).

    Args:
        image: ``[H, W, 3]`` RGB (uint8 or float), grayscale, RGBA or a PIL image (module rules).
        heat: ``[H, W]`` float pixel map; ``[h, w]`` of another size (resized with ``resize``);
            ``[R]`` region weights with ``regions`` (converted with
            :func:`attnlens.geometry.regions_to_pixels`, ``mode``); ``[rows*cols]`` with ``grid``;
            or a one-axis :class:`~attnlens.attention_map.AttentionMap` over regions. Booleans,
            integers and any float type (torch bfloat16 included) are accepted; NaN is missing.
        alpha: the largest opacity of the colour layer (0 = image only, 1 = colours only).
        cmap: colour map name (OpenCV names first, then matplotlib) or a ``[256, 3]`` RGB table;
            default ``viridis``, or ``RdBu_r`` for signed maps.
        boxes: ground-truth ``[n, 4]`` xyxy boxes, drawn in ``box_color``.
        regions: :class:`~attnlens.types.Regions` or ``[R, 4]`` boxes of the region weights.
        region_weights: ``[R]`` weights used to pick the ``top_k`` boxes to draw (default: ``heat``
            when it is region weights).
        top_k: number of highest-weight regions to outline, labelled ``"<label> <weight>"``.
        grid: ``(rows, cols)`` when ``heat`` holds patch weights.
        norm: ``None`` (``"symmetric"`` when the map has a negative value, else ``"map"``),
            ``"map"`` (this map's min and max), ``"symmetric"`` (``(-m, m)``, diverging colours
            centred at 0) or a fixed ``(vmin, vmax)``; ``vmin``/``vmax`` override either end (use
            them to share one scale across several overlays).
        resize: ``"nearest"`` (default: patch cells stay uniform blocks) or ``"bilinear"`` for a
            pixel map of another size than the image; ``None`` makes a size mismatch an error.
        nan: ``"transparent"`` (NaN pixels show the bare image) or ``"raise"``.
        mode: ``"max"`` or ``"density"`` region-to-pixel mode.
        thickness: box outline width in pixels (of the output).
        opacity: ``"heat"`` (opacity ``alpha * t`` follows the heat) or ``"constant"`` (``alpha``).
        colorbar: append a colour bar with the scale's numbers on the right (the output is wider).
        scale: enlarge the image ``scale`` times with nearest neighbour before drawing (for small
            images; boxes and heat are scaled with it).

    Returns:
        a new ``[H * scale, W * scale (+ bar), 3]`` uint8 RGB array, or a PIL RGB image when
        ``image`` is a PIL image.

    >>> img = np.zeros((4, 4, 3), np.uint8)
    >>> out = overlay(img, np.eye(4), alpha=1.0, cmap="jet")
    >>> out.shape, out.dtype, out[0, 0].tolist(), out[0, 1].tolist()  # heat 1: full colour; 0: bare
    ((4, 4, 3), dtype('uint8'), [128, 0, 0], [0, 0, 0])
    """
    fn = "overlay"
    a = real_option(alpha, "alpha", fn, lo=0.0, hi=1.0)
    choice_option(nan, "nan", fn, ("transparent", "raise"))
    choice_option(opacity, "opacity", fn, ("heat", "constant"))
    choice_option(mode, "mode", fn, ("max", "density"))
    if resize is not None:
        choice_option(resize, "resize", fn, ("nearest", "bilinear"))
    top_k = int_option(top_k, "top_k", fn, lo=0)
    s = int_option(scale, "scale", fn, lo=1, hi=64)
    thickness = int_option(thickness, "thickness", fn, lo=1, hi=1000)
    pil = _is_pil(image)
    tensor = hasattr(image, "detach")
    rgb = as_rgb(image)
    H, W = rgb.shape[:2]
    weights_1d = None
    raw = heat.weights if hasattr(heat, "dims") and hasattr(heat, "weights") else heat
    if regions is None and hasattr(heat, "dims") and hasattr(heat, "key"):
        regions = heat.key.regions
    if np.ndim(raw) == 1 and regions is not None:
        weights_1d = heat_array(raw, "heat", fn)
    pix = np.asarray(to_pixels(heat, (H, W), regions=regions, grid=grid, mode=mode, resize=resize,
                               dtype=np.float32))
    if pix.dtype.kind != "f":
        pix = pix.astype(np.float32)
    data_range = (float(pix.min()), float(pix.max())) if pix.size else (0.0, 1.0)  # NaN if any NaN
    lo_data = data_range[0] if not np.isnan(data_range[0]) else (
        float(np.nanmin(pix)) if not np.isnan(pix).all() else 0.0)
    norm = resolve_norm(norm, lo_data)
    signed = isinstance(norm, str) and norm == "symmetric"
    cmap = resolve_cmap(cmap, signed)
    lo, hi = limits(pix, norm, vmin=vmin, vmax=vmax, data_range=data_range)
    if s > 1:
        rgb = np.repeat(np.repeat(rgb, s, axis=0), s, axis=1)
        pix = np.repeat(np.repeat(pix, s, axis=0), s, axis=1)
    idx, nan_mask = color_index(pix, lo, hi, data_min=data_range[0] if s == 1 else None, signed=signed)
    if nan_mask is not None and nan == "raise":
        raise NonFiniteError(f"heat map has {int(nan_mask.sum())} NaN pixels (pass nan='transparent')")
    # opacity in 1/255 steps: alpha * t (t = the colour-table position) or alpha everywhere
    table = opacity_table(signed, a) if opacity == "heat" else np.full((1, 256), a, np.float32)
    lut = signed_lut(cmap) if signed else colormap_lut(cmap)
    out = _blend(rgb, idx, lut, np.rint(table[0] * 255.0).astype(np.int64))
    if nan_mask is not None and opacity != "heat":  # NaN: the bare image (with "heat" its opacity is 0)
        out[nan_mask] = rgb[nan_mask]
    if top_k:
        rw = weights_1d if region_weights is None else heat_array(region_weights, "region_weights", fn).reshape(-1)
        if regions is None or rw is None:
            raise ShapeError("top_k boxes need regions= and region weights (heat of [R] or region_weights=)")
        rb = region_boxes(regions)
        if len(rw) != len(rb):
            raise ShapeError(f"{len(rw)} region weights but {len(rb)} region boxes")
        order = np.argsort(-np.nan_to_num(rw, nan=-np.inf), kind="stable")[:top_k]
        out = draw_boxes(out, rb[order] * s, color=region_color, labels=_region_labels(regions, rw, order),
                         thickness=thickness)
    if boxes is not None:
        out = draw_boxes(out, check_boxes(boxes, "boxes", fn) * s, color=box_color, thickness=thickness)
    if colorbar:
        out = np.concatenate([out, colorbar_strip(out.shape[0], lo, hi, cmap, signed=signed)], axis=1)
    if pil:
        from PIL import Image

        return Image.fromarray(out)  # uint8 [H, W, 3] -> mode "RGB"
    if tensor:
        import torch

        return torch.from_numpy(np.ascontiguousarray(out))
    return out


def overlay_regions(image, weights, regions, **kwargs):
    """Overlay ``[R]`` region weights: ``overlay(image, weights, regions=regions, **kwargs)``.

    >>> img = np.zeros((4, 4, 3), np.uint8)
    >>> out = overlay_regions(img, [0.0, 1.0], [[0, 0, 2, 4], [2, 0, 4, 4]], alpha=1.0, cmap="jet")
    >>> out[0, 3].tolist()
    [128, 0, 0]
    """
    return overlay(image, heat_array(weights, "weights", "overlay_regions"), regions=regions, **kwargs)
