"""Reference maps that every grounding score should be read against.

* ``uniform``: a constant map. Under the first-maximum rule it points at the top-left pixel; its
  mass accuracy equals the area share of G; its AUROC is 0.5.
* ``centre``: an isotropic Gaussian centred on the image (sigma = ``sigma`` x the shorter side);
  the centre bias of photographs makes this a strong baseline.
* ``random``: i.i.d. uniform [0, 1) pixels from a seeded generator.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ...errors import ShapeError, UnknownNameError
from ._common import check_bool, int_param, real_param


def _size(n, height, width, fn: str) -> tuple[int, int, int]:
    return (int_param(n, "n", fn, lo=0), int_param(height, "height", fn, lo=1), int_param(width, "width", fn, lo=1))

BASELINES = ("uniform", "centre", "random")


def uniform_map(n: int, height: int, width: int) -> torch.Tensor:
    """``[n, H, W]`` constant maps summing to 1.

    >>> uniform_map(1, 2, 2).tolist()
    [[[0.25, 0.25], [0.25, 0.25]]]
    """
    n, height, width = _size(n, height, width, "uniform_map")
    return torch.full((n, height, width), 1.0 / (height * width), dtype=torch.float64)


def centre_map(n: int, height: int, width: int, sigma: float = 0.25) -> torch.Tensor:
    """``[n, H, W]`` Gaussian centred on the image (pixel centres), summing to 1.

    >>> m = centre_map(1, 5, 5); int(m[0].argmax())
    12
    """
    n, height, width = _size(n, height, width, "centre_map")
    sigma = real_param(sigma, "sigma", "centre_map", lo=0, lo_open=True)
    s = sigma * min(height, width)
    r = torch.arange(height, dtype=torch.float64) + 0.5 - height / 2
    c = torch.arange(width, dtype=torch.float64) + 0.5 - width / 2
    g = torch.exp(-(r[:, None] ** 2 + c[None, :] ** 2) / (2 * s * s))
    return (g / g.sum()).expand(n, height, width).clone()


def random_map(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """``[n, H, W]`` i.i.d. uniform maps from ``torch.Generator().manual_seed(seed)``.

    >>> bool((random_map(1, 3, 3, seed=1) == random_map(1, 3, 3, seed=1)).all())
    True
    """
    n, height, width = _size(n, height, width, "random_map")
    g = torch.Generator().manual_seed(int_param(seed, "seed", "random_map"))
    return torch.rand(n, height, width, generator=g, dtype=torch.float64)


def baseline_maps(name: str, n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """The baseline map ``name`` (one of :data:`BASELINES`) as ``[n, H, W]``."""
    if name == "uniform":
        return uniform_map(n, height, width)
    if name == "centre":
        return centre_map(n, height, width)
    if name == "random":
        return random_map(n, height, width, seed)
    raise UnknownNameError("baseline", name, BASELINES)


def _mask_boxes(masks: torch.Tensor) -> list[np.ndarray]:
    """The bounding box ``[1, 4]`` (``xyxy``, pixel edges) of each mask, ``[0, 4]`` for an empty one:
    the target box of the metrics that read boxes (``box_accuracy``)."""
    out = []
    for m in masks.cpu().numpy():
        rr, cc = np.nonzero(m)
        out.append(np.array([[cc.min(), rr.min(), cc.max() + 1, rr.max() + 1]], np.float64) if len(rr)
                   else np.zeros((0, 4)))
    return out


def grounding_baselines(masks, metrics: Sequence[str] | None = None, baselines: Sequence[str] = BASELINES,
                        seed: int = 0, **options) -> dict[str, dict[str, torch.Tensor]]:
    """Score the baseline maps on the ground-truth ``masks`` ``[N, H, W]``.

    Args:
        masks: ``[N, H, W]`` bool ground-truth regions.
        metrics: names of registered map-based grounding metrics (``inputs="pixel_map"``,
            :mod:`attnlens.metrics.registry`; default: all of them). A metric that reads the
            target's boxes gets each mask's bounding box.
        baselines: names among :data:`BASELINES`.
        seed: seed of the random map.
        **options: the metrics' options (``tolerance`` of the pointing game, ``k`` of the top-k
            intersection, ...); the rest keep their registered defaults.

    Returns:
        ``{baseline: {metric: [N] float64}}``.

    >>> g = torch.zeros(1, 8, 8, dtype=torch.bool); g[0, 6:, 6:] = True
    >>> r = grounding_baselines(g, metrics=("pointing_game",), tolerance=0)
    >>> r["uniform"]["pointing_game"].tolist(), r["centre"]["pointing_game"].tolist()
    ([0.0], [0.0])
    """
    from ..registry import get_metric, metric_names

    masks = check_bool(masks, "grounding_baselines: masks")
    if masks.ndim != 3:
        raise ShapeError(f"grounding_baselines: masks must be [N, H, W], got shape {tuple(masks.shape)}")
    known = metric_names(category="grounding", inputs="pixel_map")
    if isinstance(metrics, str) or isinstance(baselines, str):
        raise UnknownNameError("grounding metric list (a list of names, not a string)", str(metrics), known)
    metrics = known if metrics is None else tuple(metrics)
    for m in metrics:
        if m not in known:
            raise UnknownNameError("grounding metric", str(m), known)
    for b in baselines:
        if b not in BASELINES:
            raise UnknownNameError("baseline", b, BASELINES)
    entries = [get_metric(m) for m in metrics]
    names = sorted({o.name for e in entries for o in e.options})
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise UnknownNameError("grounding_baselines option", unknown[0], names)
    opts = {e.name: e.resolve(options) for e in entries}
    gt = _mask_boxes(masks) if entries else []
    n, h, w = masks.shape
    out = {}
    for b in baselines:
        maps = baseline_maps(b, n, h, w, seed)
        out[b] = {e.name: e.fn(maps, masks, gt, **opts[e.name])[0] for e in entries}
    return out
