"""Box geometry and region-to-pixel maps, shared by metrics and rendering.

Conventions (``shared/METRICS.md``): boxes are ``xyxy`` floats in original-image pixels; pixel
``(u, v)`` (column, row) is inside a box when its centre ``(u + 0.5, v + 0.5)`` satisfies
``x1 <= . < x2`` and ``y1 <= . < y2``. Image sizes are ``(height, width)``.

Region weights become pixel maps in one of two modes:

* ``max``: each pixel takes the largest weight of the boxes that cover it (0 where none does);
  for display and pointing.
* ``density``: ``sum_r w_r * mask_r / |mask_r|``; the total mass of the map equals the total
  weight of the (non-empty) boxes; for mass metrics.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from .errors import DTypeError, NonFiniteError, ShapeError, UnknownNameError
from .params import real_array

MODES = ("max", "density")


def _size(image_size, fn: str) -> tuple[int, int]:
    """``(height, width)`` as positive ints (a 0 x 0 map or a fractional size is an error)."""
    try:
        h, w = image_size
    except (TypeError, ValueError):
        raise ShapeError(f"{fn}: image_size must be (height, width), got {image_size!r}") from None
    out = []
    for v in (h, w):
        if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v) \
                or v != int(v) or v <= 0:
            raise ShapeError(f"{fn}: image_size must be positive integers (height, width), got {image_size!r}")
        out.append(int(v))
    return out[0], out[1]


# --------------------------------------------------------------------------- conversions
def xywh_to_xyxy(boxes) -> np.ndarray:
    """``[x, y, w, h]`` (top-left corner, size) to ``xyxy``.

    >>> xywh_to_xyxy([[10, 20, 5, 5]]).tolist()
    [[10.0, 20.0, 15.0, 25.0]]
    """
    b = _boxes(boxes)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def normalized_to_xyxy(boxes, image_size) -> np.ndarray:
    """Boxes in ``[0, 1]`` image fractions (``xyxy``) to pixels of an image of ``(height, width)``."""
    h, w = _size(image_size, "normalized_to_xyxy")
    return _boxes(boxes) * np.array([w, h, w, h], dtype=np.float64)


def voc_to_xyxy(boxes) -> np.ndarray:
    """1-based inclusive pixel boxes (Pascal VOC, Flickr30K Entities) to half-open ``xyxy``.

    A VOC box ``xmin=1, xmax=3`` covers pixel columns 0, 1 and 2 (0-based), i.e. ``[0, 3)``.

    >>> voc_to_xyxy([[1, 1, 3, 2]]).tolist()
    [[0.0, 0.0, 3.0, 2.0]]
    """
    b = _boxes(boxes)
    return np.concatenate([b[:, :2] - 1.0, b[:, 2:]], axis=1)


def clip_boxes(boxes, image_size, *, warn: bool = True, what: str = "boxes") -> np.ndarray:
    """Clip boxes to the image; warns (naming ``what``) when anything was outside."""
    h, w = _size(image_size, what)
    b = _boxes(boxes)
    clipped = b.copy()
    clipped[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, w)
    clipped[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, h)
    if warn and not np.array_equal(clipped, b):
        bad = np.nonzero(np.any(clipped != b, axis=1))[0].tolist()
        warnings.warn(f"{what}: {len(bad)} box(es) {bad[:5]} extend outside the {w}x{h} image and were clipped",
                      stacklevel=2)
    return clipped


def union_box(boxes) -> np.ndarray:
    """Smallest box covering all ``boxes`` (Flickr30K Entities' IoU protocol)."""
    b = _boxes(boxes)
    if len(b) == 0:
        raise ShapeError("union_box of zero boxes is undefined")
    return np.array([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()])


def box_iou(a, b) -> np.ndarray:
    """Pairwise IoU ``[len(a), len(b)]`` of continuous-area boxes (0 for degenerate pairs).

    >>> float(box_iou([[0, 0, 2, 2]], [[1, 0, 3, 2]])[0, 0])
    0.3333333333333333
    """
    a, b = _boxes(a), _boxes(b)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


# --------------------------------------------------------------------------- masks
def pixel_bounds(boxes, image_size):
    """Integer pixel ranges ``(r0, r1, c0, c1)`` (half-open) covered by each box.

    Pixel column ``u`` is inside when ``x1 <= u + 0.5 < x2``, i.e. ``ceil(x1 - 0.5) <= u <
    ceil(x2 - 0.5)``; ranges are clipped to the image. Works on numpy arrays or tensors of
    shape ``[..., 4]``.
    """
    h, w = _size(image_size, "pixel_bounds")
    if isinstance(boxes, torch.Tensor):
        lib, b = torch, _box_tensor(boxes, "pixel_bounds: boxes") if boxes.dtype != torch.float64 or not \
            bool(torch.isfinite(boxes).all()) else boxes
    else:
        lib, b = np, _box_tensor(boxes, "pixel_bounds: boxes").numpy()
    if b.ndim < 1 or b.shape[-1] != 4:
        raise ShapeError(f"pixel_bounds: boxes must be [..., 4], got shape {tuple(b.shape)}")
    c0 = lib.clip(lib.ceil(b[..., 0] - 0.5), 0, w)
    c1 = lib.clip(lib.ceil(b[..., 2] - 0.5), 0, w)
    r0 = lib.clip(lib.ceil(b[..., 1] - 0.5), 0, h)
    r1 = lib.clip(lib.ceil(b[..., 3] - 0.5), 0, h)
    if lib is torch:
        return r0.long(), r1.long(), c0.long(), c1.long()
    return r0.astype(np.int64), r1.astype(np.int64), c0.astype(np.int64), c1.astype(np.int64)


def box_masks(boxes, image_size) -> torch.Tensor:
    """Boolean pixel masks ``[..., R, H, W]`` of boxes ``[..., R, 4]`` (pixel-centre rule).

    >>> box_masks(torch.tensor([[0.0, 0.0, 2.0, 1.0]]), (2, 3)).int().tolist()
    [[[1, 1, 0], [0, 0, 0]]]
    """
    boxes = _box_tensor(boxes, "box_masks: boxes")
    h, w = _size(image_size, "box_masks")
    r0, r1, c0, c1 = pixel_bounds(boxes, (h, w))
    rows = torch.arange(h, device=boxes.device)
    cols = torch.arange(w, device=boxes.device)
    rmask = (rows >= r0[..., None]) & (rows < r1[..., None])
    cmask = (cols >= c0[..., None]) & (cols < c1[..., None])
    return rmask[..., :, None] & cmask[..., None, :]


def union_mask(boxes, image_size) -> torch.Tensor:
    """``[H, W]`` mask of the union of boxes ``[n, 4]`` (all False for no boxes)."""
    b = torch.from_numpy(_boxes(boxes).copy())
    size = _size(image_size, "union_mask")
    if len(b) == 0:
        return torch.zeros(size, dtype=torch.bool)
    return box_masks(b, size).any(dim=0)


# --------------------------------------------------------------------------- region maps
def regions_to_pixels(weights, boxes, image_size, mode: str = "max", valid=None):
    """Turn region weights into a pixel map of the original image.

    Args:
        weights: ``[..., R]`` region weights (tensor or ndarray).
        boxes: ``[..., R, 4]`` or ``[R, 4]`` xyxy boxes in original-image pixels.
        image_size: ``(height, width)`` of the output map.
        mode: ``"max"`` or ``"density"`` (see the module docstring).
        valid: optional ``[..., R]`` boolean mask; invalid regions (padding, global tokens)
            are dropped and the remaining weights renormalised to their original total.

    Returns:
        ``[..., H, W]`` float map, of the same type (tensor or ndarray) as ``weights``.

    >>> m = regions_to_pixels(np.array([1.0, 0.5]), np.array([[0, 0, 2, 2], [1, 1, 4, 4]]), (4, 4))
    >>> m[1, 1].item(), m[3, 3].item(), m[0, 3].item()
    (1.0, 0.5, 0.0)
    """
    if not isinstance(mode, str) or mode not in MODES:
        raise UnknownNameError("region-to-pixel mode", str(mode), MODES)
    as_numpy = not isinstance(weights, torch.Tensor)
    w = _number_tensor(weights, "regions_to_pixels: weights")
    if w.ndim == 0:
        raise ShapeError("regions_to_pixels: weights must be [..., R], got a scalar")
    if not w.is_floating_point():
        w = w.double()
    b = _box_tensor(boxes, "regions_to_pixels: boxes").to(w.device)
    if b.ndim < 2 or b.shape[-1] != 4 or b.shape[-2] != w.shape[-1]:
        raise ShapeError(f"regions_to_pixels: weights {tuple(w.shape)} need boxes [..., {w.shape[-1]}, 4], "
                         f"got {tuple(b.shape)}")
    size = _size(image_size, "regions_to_pixels")
    v = None
    if valid is not None:
        v = _number_tensor(valid, "regions_to_pixels: valid")
        if v.dtype != torch.bool:
            if not bool(((v == 0) | (v == 1)).all()):
                raise DTypeError(f"regions_to_pixels: valid must be boolean (or 0/1), got {v.dtype} with other values")
            v = v != 0
        v = v.to(w.device)
        try:
            torch.broadcast_shapes(v.shape, w.shape)
        except RuntimeError:
            raise ShapeError(f"regions_to_pixels: valid {tuple(v.shape)} does not fit weights "
                             f"{tuple(w.shape)}") from None
    if not bool(torch.isfinite(w).all()):   # (invalid ones too: they count in the total that is kept)
        raise NonFiniteError(f"regions_to_pixels: weights {tuple(w.shape)} contain NaN or infinite values")
    narrow = w.dtype if w.dtype in (torch.float16, torch.bfloat16) else None
    if narrow is not None:     # numpy/cv2 have no bfloat16: paint in float32 (exact), return the input dtype
        w = w.float()
    big = float(w.abs().max()) if w.numel() else 0.0
    if big > 1e300 and mode == "density":   # sums of such weights overflow: paint w / big, scale back
        out = regions_to_pixels(w / big, b, size, mode, valid=v) * big
        out = out.to(narrow) if narrow is not None else out
        return out.cpu().numpy() if as_numpy else out
    if v is not None:
        total = w.sum(-1, keepdim=True)
        kept = torch.where(v, w, torch.zeros_like(w))
        denom = kept.sum(-1, keepdim=True)
        w = torch.where(denom != 0, kept * total / torch.where(denom != 0, denom, torch.ones_like(denom)), kept)
    batch = torch.broadcast_shapes(w.shape[:-1], b.shape[:-2])
    R = w.shape[-1]
    n = math.prod(batch)
    w2 = w.expand(*batch, R).reshape(n, R)
    b2 = b.expand(*batch, R, 4).reshape(n, R, 4)
    h, wd = size
    if R == 0 or n == 0:  # no regions (or no maps): nothing is covered
        out = torch.zeros(n, h, wd, dtype=w2.dtype, device=w2.device)
    else:
        out = _density(w2, b2, h, wd) if mode == "density" else _max(w2, b2, h, wd)
    out = out.reshape(*batch, h, wd)
    if narrow is not None:
        out = out.to(narrow)
    return out.cpu().numpy() if as_numpy else out


def _density(w, b, h, wd):
    """Exact ``sum_r w_r mask_r / |mask_r|`` via a 2-D difference array and cumulative sums."""
    n, R = w.shape
    r0, r1, c0, c1 = pixel_bounds(b, (h, wd))
    count = (r1 - r0).clamp(min=0) * (c1 - c0).clamp(min=0)
    val = torch.where(count > 0, w / count.clamp(min=1).to(w.dtype), torch.zeros_like(w))
    diff = torch.zeros(n, h + 1, wd + 1, dtype=w.dtype, device=w.device)
    idx = torch.arange(n, device=w.device)[:, None].expand(n, R)
    for rr, cc, sign in ((r0, c0, 1), (r0, c1, -1), (r1, c0, -1), (r1, c1, 1)):
        diff.index_put_((idx, rr, cc), sign * val, accumulate=True)
    return diff.cumsum(1).cumsum(2)[:, :h, :wd]


def _max(w, b, h, wd):
    """Largest weight among the boxes covering each pixel (0 where none does)."""
    n, R = w.shape
    r0, r1, c0, c1 = (t.cpu().numpy() for t in pixel_bounds(b, (h, wd)))
    if n * R * h * wd <= 8_000_000 and n > 1:
        masks = box_masks(b, (h, wd))
        vals = torch.where(masks, w[..., None, None], torch.full_like(w[..., None, None], -torch.inf))
        out = vals.amax(1)
        return torch.where(masks.any(1), out, torch.zeros_like(out))
    # paint boxes in ascending weight order: the last write is the largest weight
    # (paint region numbers into a small integer canvas, R meaning "no box", then look the weights
    # up: the same last-write-wins result with 8x less memory traffic than painting floats; a
    # numpy canvas: allocating with torch.zeros was the slowest step)
    order = torch.argsort(w, dim=1, stable=True).cpu().numpy()
    wn = w.detach().cpu().numpy()
    maps = []
    label = np.empty((h, wd), dtype=np.uint8 if R < 256 else np.int64)
    for i in range(n):
        label.fill(R)
        for r in order[i]:
            if r1[i, r] > r0[i, r] and c1[i, r] > c0[i, r]:
                label[r0[i, r]:r1[i, r], c0[i, r]:c1[i, r]] = r
        table = np.zeros(max(R + 1, 256), dtype=wn.dtype)
        table[:R] = wn[i]
        if R < 256 and wn.dtype in (np.float32, np.float64):
            import cv2  # a table lookup of uint8 labels; far faster than numpy fancy indexing

            maps.append(cv2.LUT(label, table))
        else:
            maps.append(table[label])
    canvas = maps[0][None] if n == 1 else np.stack(maps)
    return torch.as_tensor(canvas, device=w.device)


def grid_to_pixels(weights, grid, image_size):
    """Patch weights ``[..., rows * cols]`` (raster order) to a ``[..., H, W]`` map.

    Each patch takes the cell of the original image it covers (nearest-neighbour). Drop global
    tokens ([CLS]) before calling.
    """
    try:
        rows, cols = _size(grid, "grid_to_pixels")
    except ShapeError:
        raise ShapeError(f"grid_to_pixels: grid must be positive integers (rows, cols), got {grid!r}") from None
    as_numpy = not isinstance(weights, torch.Tensor)
    w = _number_tensor(weights, "grid_to_pixels: weights")
    if w.ndim == 0 or w.shape[-1] != rows * cols:
        raise ShapeError(f"grid_to_pixels: {w.shape[-1] if w.ndim else 0} patch weights do not fill a "
                         f"{rows}x{cols} grid")
    h, wd = _size(image_size, "grid_to_pixels")
    ri = (torch.arange(h, device=w.device) * rows) // h
    ci = (torch.arange(wd, device=w.device) * cols) // wd
    g = w.reshape(*w.shape[:-1], rows, cols)
    out = g[..., ri, :][..., :, ci]
    return out.cpu().numpy() if as_numpy else out


def _number_tensor(x, what: str) -> torch.Tensor:
    """A tensor of bool/int/real numbers (strings, None, complex -> DTypeError)."""
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise DTypeError(f"{what} must be numbers ({exc})") from None
        if arr.dtype.kind not in "biuf":
            raise DTypeError(f"{what} must be real numbers, got dtype {arr.dtype}")
        t = torch.as_tensor(arr)
    if t.is_complex():
        raise DTypeError(f"{what} must be real numbers, got {t.dtype}")
    return t


def _box_tensor(boxes, what: str) -> torch.Tensor:
    """float64 tensor of boxes ``[..., 4]`` with finite coordinates."""
    b = _number_tensor(boxes, what).to(torch.float64)
    if b.numel() and not bool(torch.isfinite(b).all()):
        raise NonFiniteError(f"{what} {tuple(b.shape)} contain NaN or infinite coordinates")
    return b


def _boxes(boxes) -> np.ndarray:
    b = real_array(boxes, "boxes")
    if b.size == 0:
        return b.reshape(0, 4)
    if b.ndim == 1 and b.shape[0] == 4:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4:
        raise ShapeError(f"boxes must have shape (n, 4), got {tuple(b.shape)}")
    if not np.isfinite(b).all():
        k = int(np.flatnonzero(~np.isfinite(b).all(1))[0])
        raise NonFiniteError(f"boxes contain NaN or infinite coordinates (box {k}: {b[k].tolist()})")
    return b
