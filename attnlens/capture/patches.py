"""Patch cells of a patch model back to boxes of the original image.

A patch model (ViT, BLIP) sees the original image ``(H, W)`` after a chain of transforms and
cuts the result into a ``(rows, cols)`` grid, row-major. ``transform`` describes that chain as an
ordered mapping (or a list of ``(op, arg)`` pairs), applied first to last:

* ``"resize": (h, w)`` -- stretch to ``h x w`` (each axis scaled separately);
* ``"resize_shorter": s`` -- scale so the shorter side is ``s`` (aspect kept; the longer side is
  ``int(s * long / short)``, as torchvision and transformers do);
* ``"center_crop": (h, w)`` -- crop (or pad, if larger) around the centre; the top-left offset is
  ``round((H - h) / 2)``, ``round((W - w) / 2)`` (torchvision's rule);
* ``"crop": (top, left, h, w)`` -- an explicit crop;
* ``"pad": (top, left, bottom, right)`` -- pad with a constant;
* ``"pad_square": "center" | "topleft"`` -- pad the shorter side to a square.

Coordinates map between steps by ``x' = (x - left) * sx`` etc., with pixel edges on pixel
edges (a resize maps the edge ``0..W`` onto ``0..w``). Cell boxes are mapped back through the
inverse chain and clipped to the original image; a cell lying wholly in padding comes back as an
empty (zero-area) box. Boxes are ``xyxy`` in original-image pixels (see :mod:`attnlens.types`).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..errors import ShapeError
from ..types import Regions

OPS = ("resize", "resize_shorter", "center_crop", "crop", "pad", "pad_square")


def _steps(transform) -> list[tuple[str, Any]]:
    if transform is None:
        return []
    if isinstance(transform, Mapping):
        items = list(transform["steps"]) if "steps" in transform else list(transform.items())
    else:
        items = list(transform)
    for op, _ in items:
        if op not in OPS:
            raise ShapeError(f"unknown image transform step {op!r}; valid: {', '.join(OPS)}")
    return items


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    v = tuple(int(x) for x in v)
    if len(v) != 2:
        raise ShapeError(f"{what} must be an int or (height, width), got {v}")
    return v


def affine_chain(transform, image_size: tuple[int, int]) -> tuple[list[tuple[float, float, float, float]],
                                                                   tuple[int, int]]:
    """Per-step ``(sy, sx, ty, tx)`` with ``y' = sy * y + ty`` and the final ``(height, width)``.

    >>> affine_chain({"resize": (20, 40)}, (10, 10))
    ([(2.0, 4.0, 0.0, 0.0)], (20, 40))
    """
    h, w = (int(v) for v in image_size)
    out = []
    for op, arg in _steps(transform):
        if op == "resize":
            nh, nw = _pair(arg, "resize")
            out.append((nh / h, nw / w, 0.0, 0.0))
            h, w = nh, nw
        elif op == "resize_shorter":
            s = int(arg)
            short, long = min(h, w), max(h, w)
            nl = int(s * long / short)
            nh, nw = (s, nl) if h <= w else (nl, s)
            out.append((nh / h, nw / w, 0.0, 0.0))
            h, w = nh, nw
        elif op == "center_crop":
            ch, cw = _pair(arg, "center_crop")
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
            out.append((1.0, 1.0, float(-top), float(-left)))
            h, w = ch, cw
        elif op == "crop":
            top, left, ch, cw = (int(x) for x in arg)
            out.append((1.0, 1.0, float(-top), float(-left)))
            h, w = ch, cw
        elif op == "pad":
            top, left, bottom, right = (int(x) for x in arg)
            out.append((1.0, 1.0, float(top), float(left)))
            h, w = h + top + bottom, w + left + right
        elif op == "pad_square":
            side = max(h, w)
            where = arg or "center"
            if where not in ("center", "topleft"):
                raise ShapeError(f"pad_square must be 'center' or 'topleft', got {where!r}")
            top, left = ((side - h) // 2, (side - w) // 2) if where == "center" else (0, 0)
            out.append((1.0, 1.0, float(top), float(left)))
            h, w = side, side
        if h <= 0 or w <= 0:
            raise ShapeError(f"image transform step {op}={arg!r} leaves an empty image ({h}, {w})")
    return out, (h, w)


def patch_boxes(grid: tuple[int, int], transform, image_size: tuple[int, int],
                input_size: tuple[int, int] | None = None) -> Regions:
    """Boxes in original-image pixels of the ``rows x cols`` patch cells (row-major).

    Args:
        grid: ``(rows, cols)`` of the patch grid.
        transform: the image transform chain (module docstring), or ``None`` for no transform.
        image_size: ``(height, width)`` of the original image.
        input_size: ``(height, width)`` the grid covers; default the transform's output size.

    Returns:
        :class:`~attnlens.types.Regions` of ``rows * cols`` boxes labelled ``"r{i}c{j}"``.

    >>> r = patch_boxes((2, 2), {"resize": (32, 32)}, (100, 200))
    >>> r.boxes.tolist()[3], r.labels[3]
    ([100.0, 50.0, 200.0, 100.0], 'r1c1')
    """
    rows, cols = (int(v) for v in grid)
    if rows <= 0 or cols <= 0:
        raise ShapeError(f"patch grid must be positive (rows, cols), got {grid}")
    steps, final = affine_chain(transform, image_size)
    fh, fw = final if input_size is None else tuple(int(v) for v in input_size)
    ys = np.arange(rows + 1, dtype=np.float64) * (fh / rows)
    xs = np.arange(cols + 1, dtype=np.float64) * (fw / cols)
    y1, x1 = np.meshgrid(ys[:-1], xs[:-1], indexing="ij")
    y2, x2 = np.meshgrid(ys[1:], xs[1:], indexing="ij")
    boxes = np.stack([x1.ravel(), y1.ravel(), x2.ravel(), y2.ravel()], axis=1)
    for sy, sx, ty, tx in reversed(steps):
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] - tx) / sx
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] - ty) / sy
    h, w = (int(v) for v in image_size)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h)
    labels = tuple(f"r{i}c{j}" for i in range(rows) for j in range(cols))
    return Regions(boxes, (h, w), labels)

