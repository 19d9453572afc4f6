"""Detector-like region proposals for the built-in scenes.

A scene with ``n`` objects gets exactly ``n_regions`` proposals: every object's box, jittered
copies of object boxes (IoU >= 0.5 with their object), parts (a half of an object box), and
background boxes, shuffled. Each proposal is matched to an object by :func:`match_proposals`.
"""
from __future__ import annotations

import numpy as np


#: Ranges of the made-up detector scores per kind of proposal.
SCORE_RANGE = {"object": (0.85, 1.0), "jitter": (0.55, 0.9), "part": (0.3, 0.6), "background": (0.02, 0.3)}
_KINDS = ("object", "jitter", "part", "background")
_LO = np.array([SCORE_RANGE[k][0] for k in _KINDS])
_HI = np.array([SCORE_RANGE[k][1] for k in _KINDS])
_PART_COORD = np.array([2, 0, 3, 1])  # the coordinate a half moves to the centre
MATCH_IOU = 0.5
PART_INSIDE = 0.8   # a part lies (mostly) inside its object ...
PART_AREA = 0.25    # ... and covers at least this fraction of the object's box


def match_proposals(proposals: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """Object index matched by each proposal, ``-1`` for none.

    A proposal matches the object with which its IoU is largest when that IoU is >= 0.5;
    failing that, an object it lies inside (>= 80% of the proposal's area) while covering at
    least 25% of the object's box (a *part*; the one of largest IoU).

    Args:
        proposals: ``[R, 4]`` xyxy.
        objects: ``[n, 4]`` xyxy.

    Returns:
        ``int64 [R]``.

    >>> match_proposals(np.array([[0, 0, 10, 10], [0, 0, 5, 10], [20, 20, 30, 30]]),
    ...                 np.array([[0, 0, 10, 10]])).tolist()
    [0, 0, -1]
    """
    proposals = np.asarray(proposals, dtype=np.float64).reshape(-1, 4)
    objects = np.asarray(objects, dtype=np.float64).reshape(-1, 4)
    if len(objects) == 0:
        return np.full(len(proposals), -1, dtype=np.int64)
    # (fewer, in-place numpy operations than the obvious version; the same IEEE results)
    wh = np.minimum(proposals[:, None, 2:], objects[None, :, 2:])
    wh -= np.maximum(proposals[:, None, :2], objects[None, :, :2])
    np.maximum(wh, 0, out=wh)
    inter = wh[..., 0] * wh[..., 1]
    parea = _area(proposals)[:, None]
    oarea = _area(objects)
    union = parea + oarea - inter
    iou = np.zeros_like(inter)
    np.divide(inter, union, out=iou, where=union > 0)
    part = (inter >= PART_INSIDE * parea) & (parea >= PART_AREA * oarea) & (parea > 0)
    best = np.argmax(iou, axis=1)
    out = np.where(iou.max(axis=1) >= MATCH_IOU, best, -1)
    if not part.any():
        return out.astype(np.int64)
    pbest = np.argmax(np.where(part, iou, -1.0), axis=1)
    return np.where((out < 0) & part.any(axis=1), pbest, out).astype(np.int64)


def _area(b: np.ndarray) -> np.ndarray:
    wh = np.maximum(b[:, 2:] - b[:, :2], 0)
    return wh[:, 0] * wh[:, 1]


def _pair_iou(a: np.ndarray, b: np.ndarray, b_area: np.ndarray | None = None) -> np.ndarray:
    """IoU of ``a[i]`` with ``b[i]`` (``b_area``: ``_area(b)`` when already known)."""
    wh = np.maximum(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0)
    inter = wh[:, 0] * wh[:, 1]
    union = _area(a) + (_area(b) if b_area is None else b_area) - inter
    return inter / np.maximum(union, 1e-12)


def _jitter(rng, boxes: np.ndarray, image_size: int) -> np.ndarray:
    """Jittered copies of ``boxes`` whose IoU with the original is >= 0.55."""
    wh = boxes[:, 2:] - boxes[:, :2]
    out = boxes.copy()
    todo = np.ones(len(boxes), dtype=bool)
    scale = 0.15
    whwh = np.concatenate([wh, wh], axis=1)
    area = _area(boxes)
    for _ in range(4):
        noise = (rng.random((len(boxes), 4)) * 2 - 1) * scale * whwh
        cand = np.clip(boxes + noise, 0, image_size)
        ok = _pair_iou(cand, boxes, area) >= MATCH_IOU + 0.05
        take = todo & ok
        out[take] = cand[take]
        todo &= ~ok
        if not todo.any():
            break
        scale /= 2
    if todo.any():  # tiny fallback: shift by one pixel inwards
        out[todo] = boxes[todo] + np.array([1.0, 1.0, 0.0, 0.0]) * (wh[todo].min(axis=1, keepdims=True) > 3)
    return out


def _parts(rng, boxes: np.ndarray) -> np.ndarray:
    """A random half (left, right, top or bottom) of each box."""
    side = (rng.random(len(boxes)) * 4).astype(int)  # 0: left half, 1: right, 2: top, 3: bottom
    centre = np.where(side < 2, boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]) / 2
    out = boxes.copy()
    out[np.arange(len(boxes)), _PART_COORD[side]] = centre
    return out


def _permutation(rng, n: int) -> np.ndarray:
    """``rng.permutation(n)`` (which shuffles an ``arange``): the same draws without its dispatch overhead."""
    out = np.arange(n)
    rng.shuffle(out)
    return out


def _background(rng, k: int, image_size: int) -> np.ndarray:
    S = float(image_size)
    wh = (0.15 + 0.45 * rng.random((k, 2))) * S
    xy = rng.random((k, 2)) * (S - wh)
    return np.concatenate([xy, xy + wh], axis=1)


def make_proposals(rng: np.random.Generator, objects: np.ndarray, image_size: int, n_regions: int):
    """``n_regions`` shuffled proposals for one scene.

    Args:
        rng: the scene's generator.
        objects: ``[n, 4]`` object boxes (``n <= n_regions``).
        image_size: side of the square image.
        n_regions: number of proposals R.

    Returns:
        ``(boxes [R, 4] float64, matched object [R] int64, scores [R] float64, kind: R names)``.
    """
    n = len(objects)
    extra = n_regions - n
    n_bg = 0 if extra == 0 else max(1, int(round(extra * 0.3))) if n else extra
    n_obj_extra = extra - n_bg
    # jitters first (one per object, in random object order), then parts, then alternate
    who = np.concatenate([_permutation(rng, n) for _ in range(-(-n_obj_extra // n))])[:n_obj_extra] \
        if n and n_obj_extra else np.zeros(0, dtype=int)
    pass_idx = np.arange(n_obj_extra) // max(n, 1)
    is_part = (pass_idx % 2) == 1
    src = objects[who] if len(who) else np.zeros((0, 4))
    extras = np.where(is_part[:, None], _parts(rng, src), _jitter(rng, src, image_size)) \
        if len(who) else np.zeros((0, 4))
    boxes = np.concatenate([objects.reshape(-1, 4), extras, _background(rng, n_bg, image_size)])
    code = np.concatenate([np.zeros(n, dtype=np.int64), 1 + is_part.astype(np.int64), np.full(n_bg, 3)])
    scores = _LO[code] + (_HI[code] - _LO[code]) * rng.random(len(code))
    perm = _permutation(rng, n_regions)
    boxes, code, scores = boxes[perm], code[perm], scores[perm]
    return boxes, match_proposals(boxes, objects), scores, [_KINDS[c] for c in code.tolist()]
