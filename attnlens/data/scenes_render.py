"""Layout and rendering of the built-in scenes (opencv, no anti-aliasing, deterministic).

Each shape is a polygon in a unit square, scaled to a ``d x d`` pixel patch, filled with
``cv2.fillPoly`` (``LINE_8``, sub-pixel vertices) and pasted onto a light-grey, mildly noisy
background. An object's box is the tight extent of its drawn pixels, so the box contains
exactly the pixels of the shape (pixel-centre, half-open convention of ``METRICS.md``).
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from .scenes_spec import COLOR_RGB, COLORS, SHAPES, SceneConfig


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    ang = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    rad = np.where(np.arange(2 * points) % 2 == 0, 0.5, 0.5 * inner)
    return np.stack([0.5 + rad * np.cos(ang), 0.5 + rad * np.sin(ang)], axis=1)


_ANG = np.arange(32) * 2 * np.pi / 32
UNIT_POLYGONS: dict[str, np.ndarray] = {
    "circle": np.stack([0.5 + 0.5 * np.cos(_ANG), 0.5 + 0.5 * np.sin(_ANG)], axis=1),
    "square": np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]),
    "triangle": np.array([[0.5, 0.0], [1.0, 1.0], [0.0, 1.0]]),
    "star": _star(),
}
assert set(UNIT_POLYGONS) == set(SHAPES)
_PAIRS = tuple((s, c) for s in SHAPES for c in COLORS)
#: Side of an object's patch as a fraction of the image side, per size.
SIZE_RANGE = {"small": (0.15, 0.20), "large": (0.28, 0.35)}
_GAP = 2        # pixels kept free between non-overlapping objects
_TRIES = 48     # candidate positions drawn (at once) per object
_MAX_COVER = 0.3  # with occlusion: largest fraction of a patch that another patch may cover


@lru_cache(maxsize=1024)
def _stamp(shape: str, side: int):
    """Cached mask of a shape, its tight bounds inside the patch and its pixel count."""
    mask = shape_mask(shape, side)
    mask.setflags(write=False)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return mask, (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1), int(mask.sum())


def shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean ``[side, side]`` mask of ``shape`` drawn in a patch of that size.

    >>> shape_mask("square", 3).all()
    np.True_
    """
    patch = np.zeros((side, side), dtype=np.uint8)
    pts = np.round(UNIT_POLYGONS[shape] * (side - 1) * 16).astype(np.int32)
    cv2.fillPoly(patch, [pts], 1, cv2.LINE_8, 4)
    return patch.view(bool)


def compose(rng: np.random.Generator, cfg: SceneConfig) -> list[tuple[str, str, str]]:
    """Draw ``(shape, color, size)`` of each object; (shape, colour) pairs are unique per scene.

    With probability ``cfg.distractor_rate`` each further object shares the shape (in another
    colour) or the colour (in another shape) of an object already chosen.
    """
    n = int(cfg.min_objects + rng.integers(0, cfg.max_objects - cfg.min_objects + 1))
    n = min(n, len(SHAPES) * len(COLORS))
    used: list[tuple[str, str]] = []
    free = set(_PAIRS)
    for k in range(n):
        pair = None
        if k and rng.random() < cfg.distractor_rate:
            shape, color = used[int(rng.random() * len(used))]
            if rng.random() < 0.5:
                options = [(shape, c) for c in COLORS if (shape, c) in free]
            else:
                options = [(s, color) for s in SHAPES if (s, color) in free]
            if options:
                pair = options[int(rng.random() * len(options))]
        if pair is None:
            options = [p for p in _PAIRS if p in free]
            pair = options[int(rng.random() * len(options))]
        used.append(pair)
        free.discard(pair)
    sizes = ["large" if rng.random() < 0.5 else "small" for _ in range(n)]
    return [(s, c, z) for (s, c), z in zip(used, sizes)]


def _side(u: float, size: str, image_size: int) -> int:
    lo, hi = SIZE_RANGE[size]
    return max(5, int(round((lo + (hi - lo) * u) * image_size)))


def place(rng: np.random.Generator, specs, cfg: SceneConfig):
    """Place the objects; returns ``[(shape, color, size, side, x0, y0), ...]`` in drawing order.

    Large objects are placed first. An object that finds no free spot is tried once more as a
    small one and dropped if it still does not fit (the scene then has fewer objects). All
    random numbers are drawn up front (one call), ``_TRIES`` candidate positions per attempt.
    """
    S = int(cfg.image_size)
    n = len(specs)
    u_side = rng.random((n, 2))
    u_xy = rng.random((n, 2, _TRIES, 2))
    order = sorted(range(n), key=lambda i: specs[i][2] != "large")
    placed: list[tuple] = []
    patches = np.zeros((n, 4))
    for i in order:
        shape, color, size = specs[i]
        for a, attempt_size in enumerate((size, "small") if size == "large" else (size,)):
            d = _side(u_side[i, a], attempt_size, S)
            if d > S - 2:
                continue
            xy = 1.0 + np.floor(u_xy[i, a] * (S - d - 1))
            same = np.array([p[1] == color for p in placed], dtype=bool) if cfg.occlusion else None
            ok = _free(xy, d, patches[:len(placed)], cfg.occlusion, same)
            k = int(np.argmax(ok))
            if ok[k]:
                x0, y0 = int(xy[k, 0]), int(xy[k, 1])
                patches[len(placed)] = (x0, y0, x0 + d, y0 + d)
                placed.append((shape, color, attempt_size, d, x0, y0))
                break
    return placed


def _free(xy: np.ndarray, d: int, patches: np.ndarray, occlusion: bool, same: np.ndarray) -> np.ndarray:
    """Which candidate top-left corners ``xy [T, 2]`` leave a ``d x d`` patch free.

    Without occlusion patches keep ``_GAP`` pixels apart; with it, a patch may cover up to
    ``_MAX_COVER`` of a smaller one, except one of the same colour (``same [P]``), which it may
    not touch (two touching shapes of one colour would read as one blob).
    """
    if len(patches) == 0:
        return np.ones(len(xy), dtype=bool)
    if not occlusion:   # free unless the gap-grown patch overlaps a placed one in both axes
        ext = np.minimum(xy[:, None, :] + (d + _GAP), patches[None, :, 2:])
        ext -= np.maximum(xy[:, None, :] - _GAP, patches[None, :, :2])
        return ~(ext > 0).all(axis=2).any(axis=1)
    g = np.where(same, _GAP, 0)[None, :, None]
    lt = np.maximum(xy[:, None, :] - g, patches[None, :, :2])
    rb = np.minimum(xy[:, None, :] + d + g, patches[None, :, 2:])
    wh = np.maximum(rb - lt, 0)
    inter = wh[..., 0] * wh[..., 1]  # [tries, placed]
    if not occlusion:
        return ~(inter > 0).any(axis=1)
    other = (patches[:, 2] - patches[:, 0]) * (patches[:, 3] - patches[:, 1])
    smaller = np.where(same, 0.0, np.minimum(other, d * d))
    return (inter <= _MAX_COVER * smaller[None, :]).all(axis=1)


def render(rng: np.random.Generator, placed, cfg: SceneConfig):
    """Draw the placed objects.

    Returns:
        image ``uint8 [S, S, 3]`` RGB, object map ``int16 [S, S]`` (object id or -1),
        boxes ``float64 [n, 4]`` (tight xyxy extent of each drawn shape) and the visible
        fraction ``[n]`` of each shape's pixels.
    """
    S = int(cfg.image_size)
    grey = 225 + int(rng.integers(0, 21))
    if cfg.noise:
        lo, hi = max(grey - cfg.noise, 0), min(grey + cfg.noise, 255)
        # one grey level per pixel, copied to R, G and B (cvtColor: ~10x faster than a broadcast assignment)
        image = cv2.cvtColor(rng.integers(lo, hi + 1, size=(S, S), dtype=np.uint8), cv2.COLOR_GRAY2RGB)
    else:
        image = np.full((S, S, 3), grey, dtype=np.uint8)
    omap = np.full((S, S), -1, dtype=np.int16)
    boxes = np.zeros((len(placed), 4))
    areas = np.zeros(len(placed))
    for k, (shape, color, _size, d, x0, y0) in enumerate(placed):
        mask, (c0, r0, c1, r1), areas[k] = _stamp(shape, d)
        boxes[k] = (x0 + c0, y0 + r0, x0 + c1, y0 + r1)
        image[y0:y0 + d, x0:x0 + d][mask] = COLOR_RGB[color]
        omap[y0:y0 + d, x0:x0 + d][mask] = k
    if cfg.occlusion and len(placed):
        counts = np.bincount(omap.ravel() + 1, minlength=len(placed) + 1)[1:]
        visible = counts / np.maximum(areas, 1)
    else:
        visible = np.ones(len(placed))
    return image, omap, boxes, visible
