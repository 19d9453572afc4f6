"""Box-based grounding metrics: map-to-box accuracy and top-1 region hit.

Conventions (``shared/METRICS.md``): boxes are ``xyxy`` in original-image pixels; a map's box is
the half-open pixel box of a connected component (``[c0, r0, c1 + 1, r1 + 1]``); ground-truth
boxes with zero area are ignored and an example with none left is NaN (reason ``"empty or
degenerate ground-truth box"``). Ties among regions go to the first one.
"""
from __future__ import annotations

import numpy as np
import torch

from ...errors import DTypeError, NonFiniteError, ShapeError, UnknownNameError
from ._common import DEGENERATE_BOX, NO_REGIONS, NON_POSITIVE, as_tensor, check_bool, check_real, real_param
from ._common import first_argmax as _first_argmax
from ...params import real_array


def _check_boxes(b: np.ndarray, what: str) -> np.ndarray:
    """Refuse NaN/inf coordinates and inverted boxes (``x2 < x1`` or ``y2 < y1``) of ``b [..., 4]``."""
    if b.size and not np.isfinite(b).all():
        raise NonFiniteError(f"{what} contain NaN or infinite coordinates")
    if b.size and ((b[..., 2] < b[..., 0]) | (b[..., 3] < b[..., 1])).any():
        bad = np.argwhere((b[..., 2] < b[..., 0]) | (b[..., 3] < b[..., 1]))[0].tolist()
        raise ShapeError(f"{what} contain an inverted box (x2 < x1 or y2 < y1) at index {bad}")
    return b


def _gt_boxes(gt_boxes, n: int, fn: str) -> list[np.ndarray]:
    if isinstance(gt_boxes, (torch.Tensor, np.ndarray)):
        arr = real_array(gt_boxes, f"{fn}: gt_boxes")
        if arr.ndim == 2:
            arr = arr[:, None]
        if arr.ndim != 3 or arr.shape[-1] != 4:
            raise ShapeError(f"{fn}: gt_boxes must be [N, 4], [N, G, 4] or a list of [n_i, 4], got {arr.shape}")
        gt = list(arr)
    else:
        if isinstance(gt_boxes, (str, bytes)) or not hasattr(gt_boxes, "__len__"):
            raise DTypeError(f"{fn}: gt_boxes must be an array or a list of [n_i, 4] arrays, got "
                             f"{type(gt_boxes).__name__}")
        gt = []
        for i, b in enumerate(gt_boxes):
            b = real_array(b, f"{fn}: gt_boxes[{i}]")
            if b.size % 4:
                raise ShapeError(f"{fn}: gt_boxes[{i}] of shape {b.shape} is not a list of xyxy boxes")
            gt.append(b.reshape(-1, 4))
    if len(gt) != n:
        raise ShapeError(f"{fn}: {len(gt)} ground-truth box sets for {n} examples")
    for i, b in enumerate(gt):
        _check_boxes(b, f"{fn}: gt_boxes[{i}]")
    return gt


def _valid_gt(b: np.ndarray) -> np.ndarray:
    return b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])] if len(b) else b


def map_to_box(m: np.ndarray, threshold: float = 0.5, method: str = "component") -> np.ndarray | None:
    """One ``xyxy`` box for a ``[H, W]`` map, or ``None`` when the map has no positive value.

    Pixels ``>= threshold * max`` are kept. ``method="component"``: the box of the largest
    8-connected component (the first in raster order on ties); ``"peak"`` (Akbari et al. 2019):
    the box of the component that contains the first maximum.

    >>> m = np.zeros((4, 6)); m[1:3, 1:3] = 1.0; m[0, 5] = 0.9
    >>> map_to_box(m).tolist()
    [1.0, 1.0, 3.0, 3.0]
    """
    from scipy import ndimage

    m = real_array(m, "map_to_box: m")
    if m.ndim != 2 or m.size == 0:
        raise ShapeError(f"map_to_box: m must be a non-empty [H, W] map, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise NonFiniteError(f"map_to_box: m {m.shape} contains NaN or infinite values")
    threshold = real_param(threshold, "threshold", "map_to_box", lo=0, hi=1)
    if method not in ("component", "peak"):
        raise UnknownNameError("map_to_box method", str(method), ("component", "peak"))
    peak = m.max()
    if not peak > 0:
        return None
    labels, k = ndimage.label(m >= threshold * peak, structure=np.ones((3, 3), dtype=bool))
    if method == "peak":
        keep = labels.reshape(-1)[int(np.argmax(m.reshape(-1)))]
    elif method == "component":
        sizes = np.bincount(labels.reshape(-1), minlength=k + 1)[1:]
        keep = int(np.argmax(sizes)) + 1
    else:  # pragma: no cover - checked above
        raise UnknownNameError("map_to_box method", str(method), ("component", "peak"))
    rr, cc = np.nonzero(labels == keep)
    return np.array([cc.min(), rr.min(), cc.max() + 1, rr.max() + 1], dtype=np.float64)


def _box_accuracy_update(maps, gt_boxes, iou_threshold=0.5, threshold=0.5, method="component"):
    from ...geometry import box_iou, union_box

    maps = as_tensor(maps, "box_accuracy: maps")
    if maps.ndim != 3:
        raise ShapeError(f"box_accuracy: maps must be [N, H, W], got shape {tuple(maps.shape)}")
    if maps.shape[1] == 0 or maps.shape[2] == 0:
        raise ShapeError(f"box_accuracy: maps {tuple(maps.shape)} have no pixels (H = 0 or W = 0)")
    maps = check_real(maps, "box_accuracy: maps")     # the same rule as every grounding metric
    iou_threshold = real_param(iou_threshold, "iou_threshold", "box_accuracy", lo=0, hi=1)
    threshold = real_param(threshold, "threshold", "box_accuracy", lo=0, hi=1)
    if method not in ("component", "peak"):
        raise UnknownNameError("box_accuracy method", str(method), ("component", "peak"))
    gt = _gt_boxes(gt_boxes, len(maps), "box_accuracy")
    arr = maps.detach().double().cpu().numpy()
    out = np.full(len(arr), np.nan)
    code = np.zeros(len(arr), dtype=np.int64)
    for i, (m, b) in enumerate(zip(arr, gt)):
        b = _valid_gt(b)
        if len(b) == 0:
            code[i] = DEGENERATE_BOX
            continue
        box = map_to_box(m, threshold, method)
        if box is None:
            code[i] = NON_POSITIVE
            continue
        out[i] = float(box_iou(box[None], union_box(b)[None])[0, 0] >= iou_threshold)
    return torch.from_numpy(out), torch.from_numpy(code)


def box_accuracy(maps, gt_boxes, iou_threshold: float = 0.5, threshold: float = 0.5,
                 method: str = "component") -> torch.Tensor:
    """Map-to-box accuracy at IoU >= ``iou_threshold`` against the union box (Flickr30K protocol).

    Args:
        maps: ``[N, H, W]`` float maps.
        gt_boxes: ``[N, 4]``, ``[N, G, 4]`` or a list of ``[n_i, 4]`` xyxy boxes; their union box
            is the target. Empty or zero-area boxes are ignored; none left gives NaN.
        iou_threshold: IoU needed for a hit.
        threshold: fraction of the map's maximum kept before finding components.
        method: ``"component"`` (largest connected component) or ``"peak"`` (Akbari et al.).

    Returns:
        ``[N]`` float64 hit/miss; NaN for no valid box or a map without positive values.

    >>> maps = torch.zeros(1, 8, 8); maps[0, 2:6, 2:6] = 1.0
    >>> box_accuracy(maps, torch.tensor([[2.0, 2.0, 6.0, 6.0]])).tolist()
    [1.0]
    """
    return _box_accuracy_update(maps, gt_boxes, iou_threshold, threshold, method)[0]


def _top1_region_hit_update(weights, boxes, gt_boxes, iou_threshold=0.5, valid=None):
    from ...geometry import box_iou

    w = check_real(as_tensor(weights, "top1_region_hit: weights"), "top1_region_hit: weights", finite=False)
    if w.ndim != 2:
        raise ShapeError(f"top1_region_hit: weights must be [N, R], got shape {tuple(w.shape)}")
    b = torch.from_numpy(real_array(boxes, "top1_region_hit: boxes"))
    if b.ndim == 2:
        b = b.expand(len(w), *b.shape)
    if b.shape != (*w.shape, 4):
        raise ShapeError(f"top1_region_hit: weights {tuple(w.shape)} need boxes [N, R, 4], got {tuple(b.shape)}")
    n = len(w)
    v = torch.ones_like(w, dtype=torch.bool) if valid is None else check_bool(valid, "top1_region_hit: valid")
    if v.shape != w.shape:
        raise ShapeError(f"top1_region_hit: weights {tuple(w.shape)} and valid {tuple(v.shape)} differ")
    iou_threshold = real_param(iou_threshold, "iou_threshold", "top1_region_hit", lo=0, hi=1)
    v = v.to(w.device)
    if not bool(torch.isfinite(w[v]).all()):
        raise NonFiniteError(f"top1_region_hit: weights {tuple(w.shape)} have NaN or infinite values at valid regions")
    _check_boxes(b.numpy()[v.cpu().numpy()], "top1_region_hit: boxes (of valid regions)")
    gt = _gt_boxes(gt_boxes, n, "top1_region_hit")
    ww = torch.where(v, w.double(), -torch.inf)
    top = _first_argmax(ww).cpu().numpy()
    out = np.full(n, np.nan)
    code = np.zeros(n, dtype=np.int64)
    bn = b.detach().cpu().numpy()
    any_valid = v.any(1).cpu().numpy()
    for i in range(n):
        g = _valid_gt(gt[i])
        if len(g) == 0:
            code[i] = DEGENERATE_BOX
        elif not any_valid[i]:
            code[i] = NO_REGIONS
        else:
            out[i] = float((box_iou(bn[i, top[i]][None], g) >= iou_threshold).any())
    return torch.from_numpy(out), torch.from_numpy(code)


def top1_region_hit(weights, boxes, gt_boxes, iou_threshold: float = 0.5, valid=None) -> torch.Tensor:
    """Whether the most attended region's box has IoU >= ``iou_threshold`` with a GT box.

    Args:
        weights: ``[N, R]`` region weights (first maximum among valid regions wins).
        boxes: ``[N, R, 4]`` or ``[R, 4]`` region boxes (xyxy).
        gt_boxes: ``[N, 4]``, ``[N, G, 4]`` or a list of ``[n_i, 4]`` ground-truth boxes.
        iou_threshold: tau.
        valid: optional ``[N, R]`` bool; invalid (padded) regions are never chosen.

    >>> w = torch.tensor([[0.2, 0.8]]); b = torch.tensor([[0.0, 0, 4, 4], [4, 4, 8, 8]])
    >>> top1_region_hit(w, b, [np.array([[4.0, 4, 8, 9]])]).tolist()
    [1.0]
    """
    return _top1_region_hit_update(weights, boxes, gt_boxes, iou_threshold, valid)[0]
