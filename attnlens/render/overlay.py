"""Heat-map overlays on images, with ground-truth and top-k region boxes.

Images (explicit rules, never guessed per pixel):

* ``[H, W, 3]`` is RGB (never BGR). ``[H, W]`` and ``[H, W, 1]`` are grayscale and are shown as
  gray RGB. ``[H, W, 4]`` RGBA is composited over a white background with its alpha channel
  (an opaque pixel keeps its colour).
* uint8 is ``[0, 255]``. Other integer types must hold values in ``[0, 255]``. A float image
  whose maximum is ``<= 1`` is read as ``[0, 1]``, otherwise as ``[0, 255]``; negative values,
  values above 255 and NaN are errors.
* A PIL image in gives a PIL RGB image out; an array in gives a new uint8 ``[H, W, 3]`` RGB
  array out. The input is never modified.

Boxes are ``xyxy`` in original-image pixels and are drawn on the pixels they cover under the
pixel-centre rule of :mod:`attnlens.geometry`.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..errors import DTypeError, NonFiniteError, ShapeError, UnknownNameError
from ..geometry import pixel_bounds
from .heatmap import heat_to_rgb, limits, region_boxes, to_pixels

__all__ = ["overlay", "overlay_regions", "as_rgb", "draw_boxes", "GT_COLOR", "REGION_COLOR"]

GT_COLOR = (255, 40, 40)      # ground truth: red (RGB)
REGION_COLOR = (255, 255, 255)  # top-k regions: white (RGB)


def _is_pil(image) -> bool:
    return type(image).__module__.startswith("PIL.") and hasattr(image, "convert")


def as_rgb(image) -> np.ndarray:
    """Any supported image as a uint8 ``[H, W, 3]`` RGB array (see the module rules).

    >>> as_rgb(np.full((1, 2), 0.5)).tolist()
    [[[128, 128, 128], [128, 128, 128]]]
    """
    if _is_pil(image):
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
        elif image.mode != "RGB":
            image = image.convert("RGB")
    a = np.asarray(image)
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
        u8 = np.rint(a * scale).astype(np.uint8)
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
    b = region_boxes(boxes)
    if len(b) == 0:
        return out
    H, W = out.shape[:2]
    r0, r1, c0, c1 = pixel_bounds(b, (H, W))
    color = tuple(int(c) for c in color)
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


def _region_labels(regions, weights, idx):
    names = getattr(regions, "labels", None)
    out = []
    for r in idx:
        name = str(names[r]) if names is not None else f"#{r}"
        out.append(f"{name} {weights[r]:.2f}")
    return out


def overlay(image, heat, *, alpha: float = 0.5, cmap="viridis", boxes=None, box_color=GT_COLOR,
            regions=None, region_weights=None, top_k: int = 0, region_color=REGION_COLOR, grid=None,
            norm="map", vmin: float | None = None, vmax: float | None = None, resize: str | None = "bilinear",
            nan: str = "transparent", mode: str = "max", thickness: int = 2):
    """Blend a heat map over an image.

    Args:
        image: ``[H, W, 3]`` RGB (uint8 or float), grayscale, RGBA or a PIL image (module rules).
        heat: ``[H, W]`` float pixel map; ``[h, w]`` of another size (resized with ``resize``);
            ``[R]`` region weights with ``regions`` (converted with
            :func:`attnlens.geometry.regions_to_pixels`, ``mode``); ``[rows*cols]`` with ``grid``;
            or a one-axis :class:`~attnlens.attention_map.AttentionMap` over regions.
        alpha: opacity of the colour layer (0 = image only, 1 = colours only).
        cmap: colour map name (OpenCV names first, then matplotlib) or a ``[256, 3]`` RGB table.
        boxes: ground-truth ``[n, 4]`` xyxy boxes, drawn in ``box_color``.
        regions: :class:`~attnlens.types.Regions` or ``[R, 4]`` boxes of the region weights.
        region_weights: ``[R]`` weights used to pick the ``top_k`` boxes to draw (default: ``heat``
            when it is region weights).
        top_k: number of highest-weight regions to outline, labelled ``"<label> <weight>"``.
        grid: ``(rows, cols)`` when ``heat`` holds patch weights.
        norm: ``"map"`` (this map's min and max) or a fixed ``(vmin, vmax)``; ``vmin``/``vmax``
            override either end (use them to share one scale across several overlays).
        resize: ``"bilinear"`` or ``"nearest"`` for a pixel map of another size than the
            image; ``None`` makes a size mismatch an error.
        nan: ``"transparent"`` (NaN pixels show the bare image) or ``"raise"``.
        mode: ``"max"`` or ``"density"`` region-to-pixel mode.
        thickness: box outline width in pixels.

    Returns:
        a new ``[H, W, 3]`` uint8 RGB array, or a PIL RGB image when ``image`` is a PIL image.

    >>> img = np.zeros((4, 4, 3), np.uint8)
    >>> out = overlay(img, np.eye(4), alpha=1.0, cmap="jet")
    >>> out.shape, out.dtype, out[0, 0].tolist(), out[0, 1].tolist()
    ((4, 4, 3), dtype('uint8'), [128, 0, 0], [0, 0, 128])
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ShapeError(f"alpha must be in [0, 1], got {alpha}")
    if nan not in ("transparent", "raise"):
        raise UnknownNameError("nan policy", str(nan), ["transparent", "raise"])
    pil = _is_pil(image)
    rgb = as_rgb(image)
    H, W = rgb.shape[:2]
    weights_1d = None
    raw = heat.weights if hasattr(heat, "dims") and hasattr(heat, "weights") else heat
    if regions is None and hasattr(heat, "dims") and hasattr(heat, "key"):
        regions = heat.key.regions
    if np.ndim(raw) == 1 and regions is not None:
        weights_1d = np.asarray(raw.detach().cpu().numpy() if hasattr(raw, "detach") else raw, dtype=np.float64)
    pix = to_pixels(heat, (H, W), regions=regions, grid=grid, mode=mode, resize=resize, dtype=np.float32)
    pix = np.asarray(pix)
    if pix.dtype.kind != "f":
        pix = pix.astype(np.float32)
    data_range = (float(pix.min()), float(pix.max())) if pix.size else (0.0, 1.0)  # NaN if any NaN
    lo, hi = limits(pix, norm, vmin=vmin, vmax=vmax, data_range=data_range)
    color, nan_mask = heat_to_rgb(pix, lo, hi, cmap, data_min=data_range[0])
    if nan_mask is not None and nan == "raise":
        raise NonFiniteError(f"heat map has {int(nan_mask.sum())} NaN pixels (pass nan='transparent')")
    a = float(alpha)
    out = cv2.addWeighted(rgb, 1.0 - a, color, a, 0.0)
    if nan_mask is not None:
        out[nan_mask] = rgb[nan_mask]
    if top_k:
        rw = weights_1d if region_weights is None else np.asarray(region_weights, dtype=np.float64).reshape(-1)
        if regions is None or rw is None:
            raise ShapeError("top_k boxes need regions= and region weights (heat of [R] or region_weights=)")
        rb = region_boxes(regions)
        if len(rw) != len(rb):
            raise ShapeError(f"{len(rw)} region weights but {len(rb)} region boxes")
        order = np.argsort(-np.nan_to_num(rw, nan=-np.inf), kind="stable")[: int(top_k)]
        out = draw_boxes(out, rb[order], color=region_color, labels=_region_labels(regions, rw, order),
                         thickness=thickness)
    if boxes is not None:
        out = draw_boxes(out, boxes, color=box_color, thickness=thickness)
    if pil:
        from PIL import Image

        return Image.fromarray(out)  # uint8 [H, W, 3] -> mode "RGB"
    return out


def overlay_regions(image, weights, regions, **kwargs):
    """Overlay ``[R]`` region weights: ``overlay(image, weights, regions=regions, **kwargs)``.

    >>> img = np.zeros((4, 4, 3), np.uint8)
    >>> out = overlay_regions(img, [0.0, 1.0], [[0, 0, 2, 4], [2, 0, 4, 4]], alpha=1.0, cmap="jet")
    >>> out[0, 3].tolist()
    [128, 0, 0]
    """
    return overlay(image, np.asarray(weights, dtype=np.float64), regions=regions, **kwargs)
