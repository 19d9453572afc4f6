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

from .errors import ShapeError

MODES = ("max", "density")


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
    h, w = image_size
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
    h, w = image_size
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
    h, w = image_size
    lib = torch if isinstance(boxes, torch.Tensor) else np
    b = boxes if lib is torch else np.asarray(boxes, dtype=np.float64)
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
    boxes = torch.as_tensor(boxes, dtype=torch.float64)
    h, w = image_size
    r0, r1, c0, c1 = pixel_bounds(boxes, image_size)
    rows = torch.arange(h, device=boxes.device)
    cols = torch.arange(w, device=boxes.device)
    rmask = (rows >= r0[..., None]) & (rows < r1[..., None])
    cmask = (cols >= c0[..., None]) & (cols < c1[..., None])
    return rmask[..., :, None] & cmask[..., None, :]


def union_mask(boxes, image_size) -> torch.Tensor:
    """``[H, W]`` mask of the union of boxes ``[n, 4]`` (all False for no boxes)."""
    b = torch.from_numpy(_boxes(boxes).copy())
    if len(b) == 0:
        return torch.zeros(image_size, dtype=torch.bool)
    return box_masks(b, image_size).any(dim=0)


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
    if mode not in MODES:
        raise ShapeError(f"unknown region-to-pixel mode {mode!r}; valid: {MODES}")
    as_numpy = not isinstance(weights, torch.Tensor)
    w = torch.as_tensor(np.asarray(weights) if as_numpy else weights)
    if not w.is_floating_point():
        w = w.double()
    b = torch.as_tensor(np.asarray(boxes) if not isinstance(boxes, torch.Tensor) else boxes,
                        dtype=torch.float64, device=w.device)
    if b.shape[-1] != 4 or b.shape[-2] != w.shape[-1]:
        raise ShapeError(f"regions_to_pixels: weights {tuple(w.shape)} need boxes [..., {w.shape[-1]}, 4], "
                         f"got {tuple(b.shape)}")
    if valid is not None:
        v = torch.as_tensor(np.asarray(valid) if not isinstance(valid, torch.Tensor) else valid,
                            dtype=torch.bool, device=w.device)
        total = w.sum(-1, keepdim=True)
        kept = torch.where(v, w, torch.zeros_like(w))
        denom = kept.sum(-1, keepdim=True)
        w = torch.where(denom != 0, kept * total / torch.where(denom != 0, denom, torch.ones_like(denom)), kept)
    batch = torch.broadcast_shapes(w.shape[:-1], b.shape[:-2])
    R = w.shape[-1]
    n = math.prod(batch)
    w2 = w.expand(*batch, R).reshape(n, R)
    b2 = b.expand(*batch, R, 4).reshape(n, R, 4)
    h, wd = (int(x) for x in image_size)
    if R == 0:  # no regions: nothing is covered
        out = torch.zeros(w2.shape[0], h, wd, dtype=w2.dtype, device=w2.device)
    else:
        out = _density(w2, b2, h, wd) if mode == "density" else _max(w2, b2, h, wd)
    out = out.reshape(*batch, h, wd)
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
    rows, cols = grid
    as_numpy = not isinstance(weights, torch.Tensor)
    w = torch.as_tensor(np.asarray(weights) if as_numpy else weights)
    if w.shape[-1] != rows * cols:
        raise ShapeError(f"grid_to_pixels: {w.shape[-1]} patch weights do not fill a {rows}x{cols} grid")
    h, wd = image_size
    ri = (torch.arange(h, device=w.device) * rows) // h
    ci = (torch.arange(wd, device=w.device) * cols) // wd
    g = w.reshape(*w.shape[:-1], rows, cols)
    out = g[..., ri, :][..., :, ci]
    return out.cpu().numpy() if as_numpy else out


def _boxes(boxes) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return b.reshape(0, 4)
    if b.ndim == 1 and b.shape[0] == 4:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4:
        raise ShapeError(f"boxes must have shape (n, 4), got {tuple(b.shape)}")
    return b
