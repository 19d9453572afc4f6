"""A rule-based colour/shape detector for the built-in scenes (and images generated from them).

Used to score text-to-image generations automatically: does the generated image contain the
captioned objects, and where did each colour end up?

Method, for an ``[H, W, 3]`` uint8 RGB image:

1. **Colour segmentation**: every pixel takes the nearest colour (Euclidean RGB distance) among
   the palette (``attnlens.data.scenes_spec.COLOR_RGB``) and the background (the median of the
   image's border pixels, light grey in the scenes); pixels farther than ``max_distance`` from
   every palette colour count as background. This nearest-colour rule also works on the washed
   out colours of a low-resolution generator.
2. **Connected components** (8-connected) of each colour's mask; components smaller than
   ``min_area`` pixels are dropped (``min_area`` scales with the image area, 6 px at 64 x 64).
3. **Shape** of a component from its outer contour: *solidity* (area / convex-hull area)
   below 0.75 means ``star`` (the only concave shape); otherwise ``cv2.approxPolyDP``
   (epsilon = 4% of the perimeter) with 3 vertices means ``triangle``; otherwise the *fill ratio*
   (area / box area) decides: >= 0.88 ``square``, >= 0.62 ``circle``, else ``triangle``.

The box is the tight xyxy extent of the component's pixels (pixel-centre, half-open convention:
``x2 = last column + 1``). ``score`` is the mean closeness of the component's pixels to the
palette colour, ``1 - distance / max_distance`` in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import ShapeError

#: The scenes' palette (kept in sync with ``attnlens.data.scenes_spec.COLOR_RGB``).
try:  # the data layer sits to the left of models; import lazily-safe
    from ..data.scenes_spec import COLOR_RGB as _PALETTE
except Exception:  # pragma: no cover - data layer unavailable
    _PALETTE = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220),
                "yellow": (235, 200, 20), "purple": (140, 50, 180)}
PALETTE: dict[str, tuple[int, int, int]] = dict(_PALETTE)


@dataclass(frozen=True)
class Detection:
    """One detected object: ``color``, ``shape``, ``box`` (xyxy pixels), ``area`` (pixels),
    ``score`` in [0, 1], and the contour measures used for the shape."""

    color: str
    shape: str
    box: tuple[float, float, float, float]
    area: int
    score: float
    fill: float
    solidity: float
    vertices: int


def _check(image) -> np.ndarray:
    im = np.asarray(image)
    if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
        raise ShapeError(f"detector expects a uint8 [H, W, 3] RGB image, got {im.dtype} {tuple(im.shape)}")
    return im


def color_labels(image, *, palette: dict | None = None, max_distance: float = 90.0):
    """Nearest-palette colour of every pixel.

    Args:
        image: ``uint8 [H, W, 3]`` RGB.
        palette: ``{name: (r, g, b)}`` (default: the scenes' colours).
        max_distance: pixels farther than this from every palette colour are background.

    Returns:
        ``labels int [H, W]`` (index into ``names``, -1 = background), ``distance float [H, W]``
        (to the chosen colour) and ``names`` (the palette's colour names, in order).

    >>> im = np.full((4, 4, 3), 230, np.uint8); im[1, 1] = (220, 40, 40)
    >>> labels, _, names = color_labels(im)
    >>> names[labels[1, 1]], int(labels[0, 0])
    ('red', -1)
    """
    im = _check(image).astype(np.float32)
    palette = PALETTE if palette is None else palette
    names = list(palette)
    border = np.concatenate([im[0], im[-1], im[:, 0], im[:, -1]])
    background = np.median(border, axis=0)
    colours = np.array([palette[n] for n in names] + [background], dtype=np.float32)  # [C+1, 3]
    d = np.sqrt(((im[:, :, None, :] - colours[None, None]) ** 2).sum(-1))  # [H, W, C+1]
    best = d.argmin(-1)
    dist = np.take_along_axis(d, best[..., None], -1)[..., 0]
    labels = np.where((best < len(names)) & (dist <= max_distance), best, -1)
    return labels.astype(np.int64), dist, names


def classify_shape(mask: np.ndarray) -> tuple[str, float, float, int]:
    """Shape name, fill ratio, solidity and polygon vertex count of one component ``mask [H, W]``.

    >>> m = np.zeros((20, 20), np.uint8); m[4:14, 5:15] = 1
    >>> classify_shape(m)[0]
    'square'
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    area = int(mask.sum())
    ys, xs = np.nonzero(mask)
    if area == 0:
        return "unknown", 0.0, 0.0, 0
    fill = area / float((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    # contours of a 2x upscaled mask trace pixel boundaries more faithfully at small sizes
    big = cv2.resize(mask, (mask.shape[1] * 2, mask.shape[0] * 2), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    hull_area = cv2.contourArea(cv2.convexHull(contour))
    solidity = float(cv2.contourArea(contour) / hull_area) if hull_area > 0 else 1.0
    approx = cv2.approxPolyDP(contour, 0.04 * cv2.arcLength(contour, True), True)
    vertices = int(len(approx))
    if solidity < 0.75:
        shape = "star"
    elif vertices == 3:
        shape = "triangle"
    elif fill >= 0.88:
        shape = "square"
    elif fill >= 0.62:
        shape = "circle"
    else:
        shape = "triangle"
    return shape, float(fill), solidity, vertices


def detect(image, *, palette: dict | None = None, max_distance: float = 90.0,
           min_area: int | None = None) -> list[Detection]:
    """Detect coloured shapes in a scenes-style image (module docstring).

    Args:
        image: ``uint8 [H, W, 3]`` RGB.
        palette: ``{name: (r, g, b)}`` (default: the scenes' colours).
        max_distance: RGB distance beyond which a pixel is background.
        min_area: smallest component in pixels (default ``max(3, 6 * H * W / 4096)``).

    Returns:
        Detections sorted by area, largest first.

    >>> im = np.full((64, 64, 3), 230, np.uint8); im[10:22, 30:42] = (40, 80, 220)
    >>> d = detect(im)[0]; d.color, d.shape, d.box
    ('blue', 'square', (30.0, 10.0, 42.0, 22.0))
    """
    im = _check(image)
    h, w = im.shape[:2]
    if min_area is None:
        min_area = max(3, int(round(6 * h * w / 4096)))
    labels, dist, names = color_labels(im, palette=palette, max_distance=max_distance)
    found = []
    for ci, name in enumerate(names):
        mask = (labels == ci).astype(np.uint8)
        if not mask.any():
            continue
        n, comp, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        for k in range(1, n):
            x, y, bw, bh, area = (int(v) for v in stats[k])
            if area < min_area:
                continue
            cm = comp[y:y + bh, x:x + bw] == k
            shape, fill, solidity, vertices = classify_shape(cm)
            score = float(np.clip(1.0 - dist[y:y + bh, x:x + bw][cm] / max_distance, 0, 1).mean())
            found.append(Detection(name, shape, (float(x), float(y), float(x + bw), float(y + bh)), area, score,
                                   fill, solidity, vertices))
    found.sort(key=lambda d: -d.area)
    return found


def contains(detections, color: str, shape: str | None = None) -> bool:
    """Whether some detection has ``color`` (and ``shape`` when given).

    >>> contains([Detection("red", "circle", (0, 0, 4, 4), 12, 1.0, 0.8, 1.0, 8)], "red", "square")
    False
    """
    return any(d.color == color and (shape is None or d.shape == shape) for d in detections)
