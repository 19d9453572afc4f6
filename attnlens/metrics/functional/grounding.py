"""Grounding metrics: does a pixel map put its weight on the annotated region?

All functions take ``maps`` ``[N, H, W]`` (float) and ``masks`` ``[N, H, W]`` (bool, the
ground-truth region G of each example) and return a float64 tensor ``[N]``, NaN where the
metric is undefined. The private ``_*_update`` functions also return an integer reason code
per example (see :mod:`attnlens.metrics.functional._common`); the accumulating classes in
:mod:`attnlens.metrics.classes` call the same functions, so the two cannot drift.

Conventions (``shared/METRICS.md``):

* **Pointing game.** The point p* is the *first* maximum of the map in raster order (row by
  row). It is a hit when some pixel of G lies at Euclidean distance ``< tolerance`` (pixel
  units, strict, TorchRay's rule) from p*; ``tolerance=0`` means p* itself must lie in G (TorchRay
  with tolerance 0 never hits). Quantus instead counts a hit when *any* tied maximum lies in G, so
  a constant map scores 1 there; here a constant map points at the top-left pixel and hits only if
  G lies within ``tolerance`` of it. Report :func:`~attnlens.metrics.grounding_baselines` next to
  every pointing score.
* **Ranking ties** (rank accuracy, top-k intersection) are broken by a stable sort in raster
  order: among equal values the earlier pixel ranks higher. Mask AUROC counts ties as one half.
* **Empty masks** give NaN (reason ``"empty mask"``); AUROC is also NaN when G covers the image.

Implementation: the rank-based metrics use selection (``np.partition``) for the k-th largest
value and resolve ties at it in raster order, and AUROC sorts only the negatives and finds each
positive's place by binary search; both give exactly the stable-sort / Mann-Whitney answers
(tested against slow loops) at a fraction of the cost of a full argsort. Sums accumulate in
float64.
"""
from __future__ import annotations

import numpy as np
import torch

from ...errors import ParameterError, ShapeError, UnknownNameError
from ._common import EMPTY_MASK, FULL_MASK, OK, ZERO_MASS, check_maps, chunks, int_param, real_param
from ._common import first_argmax as _first_argmax
# the box-based metrics live in .boxes (re-exported here: one import for every grounding metric)
from .boxes import _box_accuracy_update, _top1_region_hit_update, box_accuracy, map_to_box, top1_region_hit  # noqa: F401

NEGATIVE = ("raise", "clip", "abs")
_CHUNK_PIXELS = 4_000_000  # elements per chunk for the sort-based metrics


def _rows(maps: torch.Tensor) -> int:
    return max(1, _CHUNK_PIXELS // max(1, maps.shape[1] * maps.shape[2]))


# --------------------------------------------------------------------------- pointing game
def _pointing_game_update(maps, masks, tolerance: float):
    maps, masks = check_maps(maps, masks, "pointing_game")
    tolerance = real_param(tolerance, "tolerance", "pointing_game", lo=0)
    n, h, w = maps.shape
    out = torch.empty(n, dtype=torch.float64)
    rows = torch.arange(h, device=maps.device, dtype=torch.float64)
    cols = torch.arange(w, device=maps.device, dtype=torch.float64)
    for sl in chunks(n, _rows(maps)):
        flat_m = masks[sl].reshape(-1, h * w)
        p = _first_argmax(maps[sl].reshape(-1, h * w))
        if tolerance == 0:
            hit = flat_m.gather(1, p[:, None])[:, 0]
        else:
            pr, pc = (p // w).double(), (p % w).double()
            d2 = (rows[None, :, None] - pr[:, None, None]) ** 2 + (cols[None, None, :] - pc[:, None, None]) ** 2
            hit = (masks[sl] & (d2 < float(tolerance) ** 2)).reshape(-1, h * w).any(1)
        out[sl] = hit.double().cpu()
    empty = ~masks.reshape(n, maps.shape[1] * maps.shape[2]).any(1).cpu()
    out[empty] = float("nan")
    return out, torch.where(empty, EMPTY_MASK, OK)


def pointing_game(maps, masks, tolerance: float = 15) -> torch.Tensor:
    """Pointing-game hit (1.0) or miss (0.0) per example (Zhang et al. 2016).

    Args:
        maps: ``[N, H, W]`` float maps.
        masks: ``[N, H, W]`` bool ground-truth regions.
        tolerance: pixels; hit when a pixel of G is at distance ``< tolerance`` from the first
            maximum (``0``: the maximum itself must lie in G). TorchRay's default is 15.

    Returns:
        ``[N]`` float64: 1.0 hit, 0.0 miss, NaN for an empty mask.

    >>> maps = torch.zeros(2, 4, 4); maps[:, 3, 3] = 1.0
    >>> masks = torch.zeros(2, 4, 4, dtype=torch.bool); masks[0, 3, 3] = True; masks[1, 0, 0] = True
    >>> pointing_game(maps, masks, tolerance=0).tolist()
    [1.0, 0.0]
    """
    return _pointing_game_update(maps, masks, tolerance)[0]


# --------------------------------------------------------------------------- mass accuracy
def _nonnegative(maps: torch.Tensor, negative: str, fn: str) -> torch.Tensor:
    if not isinstance(negative, str) or negative not in NEGATIVE:
        raise UnknownNameError(f"{fn} negative= option", str(negative), NEGATIVE)
    if maps.numel() and float(maps.amin()) < 0:
        if negative == "raise":
            bad = torch.nonzero((maps < 0).reshape(len(maps), maps.shape[1] * maps.shape[2]).any(1)).reshape(-1)[:5].tolist()
            raise ParameterError(f"{fn}: maps {tuple(maps.shape)} have negative values (examples {bad}); "
                                 f"pass negative='clip' or negative='abs'")
        maps = maps.clamp(min=0) if negative == "clip" else maps.abs()
    return maps


def _relevance_mass_accuracy_update(maps, masks, negative: str = "raise"):
    maps, masks = check_maps(maps, masks, "relevance_mass_accuracy")
    maps = _nonnegative(maps, negative, "relevance_mass_accuracy")
    n = len(maps)
    a = _np_rows(maps)
    g = masks.detach().reshape(n, maps.shape[1] * maps.shape[2]).cpu().numpy()
    with np.errstate(over="ignore"):
        inside = np.where(g, a, 0).sum(1, dtype=np.float64)
        total = a.sum(1, dtype=np.float64)
    over = ~np.isfinite(total)   # finite maps whose float64 sum overflows: the ratio is scale-free,
    if over.any():               # so sum those rows divided by their maximum instead
        scaled = a[over].astype(np.float64) / a[over].max(1, keepdims=True)
        inside[over] = np.where(g[over], scaled, 0).sum(1)
        total[over] = scaled.sum(1)
    inside, total = torch.from_numpy(inside), torch.from_numpy(total)
    masks = masks.cpu()
    empty = ~masks.reshape(n, maps.shape[1] * maps.shape[2]).any(1)
    zero = total <= 0
    out = torch.where(zero | empty, torch.nan, inside / torch.where(zero, 1.0, total))
    code = torch.where(empty, EMPTY_MASK, torch.where(zero, ZERO_MASS, OK))
    return out.cpu(), code.cpu()


def relevance_mass_accuracy(maps, masks, negative: str = "raise") -> torch.Tensor:
    """Share of the map's mass inside G (Arras et al. 2022; = energy pointing game).

    Args:
        maps: ``[N, H, W]`` non-negative float maps.
        masks: ``[N, H, W]`` bool ground-truth regions.
        negative: ``"raise"`` (default: negative values are an error), ``"clip"`` (set to 0) or
            ``"abs"``.

    Returns:
        ``[N]`` float64 in [0, 1]; NaN for an empty mask or a map of zero mass.

    >>> maps = torch.tensor([[[1.0, 3.0]]]); masks = torch.tensor([[[False, True]]])
    >>> relevance_mass_accuracy(maps, masks).tolist()
    [0.75]
    """
    return _relevance_mass_accuracy_update(maps, masks, negative)[0]


energy_pointing_game = relevance_mass_accuracy


# --------------------------------------------------------------------------- rank-based
def _np_rows(maps: torch.Tensor) -> np.ndarray:
    """``[n, H*W]`` numpy view/copy of the maps (float32 or float64; exact for narrower floats)."""
    flat = maps.detach().reshape(len(maps), maps.shape[1] * maps.shape[2]).cpu()
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float() if flat.dtype in (torch.float16, torch.bfloat16) else flat.double()
    return flat.numpy()


def _top_hits(maps: torch.Tensor, masks: torch.Tensor, k) -> torch.Tensor:
    """How many of the ``k[i]`` highest pixels of row ``i`` lie in the mask, ``[n]`` (int64).

    Ties at the k-th value are resolved in raster order (the same as a stable descending sort),
    using selection (``np.partition``, linear time) instead of a full sort.
    """
    a = _np_rows(maps)
    g = masks.detach().reshape(len(maps), maps.shape[1] * maps.shape[2]).cpu().numpy()
    n, m = a.shape
    k = np.broadcast_to(np.asarray(k, dtype=np.int64), (n,))
    kk = np.clip(k, 1, m)
    t = np.empty(n, dtype=a.dtype)
    for kv in np.unique(kk):
        rows = np.flatnonzero(kk == kv)
        t[rows] = np.partition(a[rows], m - kv, axis=1)[:, m - kv]   # the kv-th largest value
    above = a > t[:, None]
    at = a == t[:, None]
    hits = (above & g).sum(1)
    need = kk - above.sum(1)                # how many of the tied pixels are taken
    n_at = at.sum(1)
    simple = n_at == need
    hits[simple] += (at[simple] & g[simple]).sum(1)
    rest = np.flatnonzero(~simple)
    if len(rest):
        taken = at[rest] & (np.cumsum(at[rest], axis=1) <= need[rest, None])
        hits[rest] += (taken & g[rest]).sum(1)
    return torch.from_numpy(np.where(k > 0, hits, 0))


def _relevance_rank_accuracy_update(maps, masks):
    maps, masks = check_maps(maps, masks, "relevance_rank_accuracy")
    n = len(maps)
    k = masks.reshape(n, maps.shape[1] * maps.shape[2]).sum(1)
    out = torch.empty(n, dtype=torch.float64)
    for sl in chunks(n, _rows(maps)):
        out[sl] = _top_hits(maps[sl], masks[sl], k[sl].cpu().numpy()).double() / k[sl].cpu().clamp(min=1).double()
    empty = (k == 0).cpu()
    out[empty] = float("nan")
    return out, torch.where(empty, EMPTY_MASK, OK)


def relevance_rank_accuracy(maps, masks) -> torch.Tensor:
    """Fraction of the ``K = |G|`` highest pixels that lie in G (Arras et al. 2022).

    Ties are broken by a stable sort in raster order.

    Returns:
        ``[N]`` float64 in [0, 1]; NaN for an empty mask.

    >>> maps = torch.tensor([[[0.9, 0.1, 0.8]]]); masks = torch.tensor([[[True, True, False]]])
    >>> relevance_rank_accuracy(maps, masks).tolist()
    [0.5]
    """
    return _relevance_rank_accuracy_update(maps, masks)[0]


def _topk_intersection_update(maps, masks, k: int):
    k = int_param(k, "k", "topk_intersection")
    maps, masks = check_maps(maps, masks, "topk_intersection")
    n, h, w = maps.shape
    if not 1 <= int(k) <= h * w:
        raise ShapeError(f"topk_intersection: k={k} must lie in [1, H*W={h * w}] for maps {tuple(maps.shape)}")
    out = torch.empty(n, dtype=torch.float64)
    for sl in chunks(n, _rows(maps)):
        out[sl] = _top_hits(maps[sl], masks[sl], int(k)).double() / int(k)
    empty = ~masks.reshape(n, maps.shape[1] * maps.shape[2]).any(1).cpu()
    out[empty] = float("nan")
    return out, torch.where(empty, EMPTY_MASK, OK)


def topk_intersection(maps, masks, k: int = 1000) -> torch.Tensor:
    """Fraction of the ``k`` highest pixels inside G (Theiner et al. 2022; stable ties).

    >>> maps = torch.tensor([[[0.9, 0.1, 0.8]]]); masks = torch.tensor([[[True, False, False]]])
    >>> topk_intersection(maps, masks, k=2).tolist()
    [0.5]
    """
    return _topk_intersection_update(maps, masks, k)[0]


def _mann_whitney_u(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """U statistic of the positives (``masks``) against the rest, ties counted 1/2, ``[n]``.

    The negatives of each row are sorted once (values only: ``np.sort``, with the positives
    pushed to +inf); each positive then counts the negatives below it and half of those equal to
    it by one batched binary search (``torch.searchsorted``) over positives padded per row.
    """
    a = _np_rows(maps)
    g = masks.detach().reshape(len(maps), maps.shape[1] * maps.shape[2]).cpu().numpy()
    n = len(a)
    negs = torch.from_numpy(np.sort(np.where(g, np.inf, a), axis=1))   # each row's negatives first, sorted
    npos = g.sum(1)
    width = max(1, int(npos.max()) if n else 1)
    rows, cols = np.nonzero(g)                                        # positives, row-major
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(npos) - npos, npos)
    pos = np.full((n, width), np.inf, dtype=a.dtype)
    pos[rows, slot] = a[rows, cols]
    pos = torch.from_numpy(pos)
    lo = torch.searchsorted(negs, pos, side="left")    # negatives strictly below a positive
    hi = torch.searchsorted(negs, pos, side="right")   # ... and up to it (the +inf fill sorts last)
    hi = torch.minimum(hi, torch.from_numpy((~g).sum(1))[:, None])
    real = torch.from_numpy(np.arange(width)[None, :] < npos[:, None])   # padding slots excluded
    return torch.where(real, lo.double() + 0.5 * (hi - lo).double(), 0.0).sum(1)


def _mask_auroc_update(maps, masks):
    maps, masks = check_maps(maps, masks, "mask_auroc")
    n = len(maps)
    flat_m = masks.reshape(n, maps.shape[1] * maps.shape[2])
    npos = flat_m.sum(1).double()
    nneg = flat_m.shape[1] - npos
    out = torch.empty(n, dtype=torch.float64)
    for sl in chunks(n, _rows(maps)):
        out[sl] = (_mann_whitney_u(maps[sl], masks[sl]) / (npos[sl] * nneg[sl]).clamp(min=1)).cpu()
    empty, full = (npos == 0).cpu(), (nneg == 0).cpu()
    out[empty | full] = float("nan")
    return out, torch.where(empty, EMPTY_MASK, torch.where(full, FULL_MASK, OK))


def mask_auroc(maps, masks) -> torch.Tensor:
    """Probability that a pixel in G outscores a pixel outside G (ties count 1/2).

    Returns:
        ``[N]`` float64 in [0, 1]; NaN when G is empty or covers the whole map.

    >>> maps = torch.tensor([[[0.9, 0.1, 0.5, 0.5]]]); masks = torch.tensor([[[True, False, True, False]]])
    >>> mask_auroc(maps, masks).tolist()
    [0.875]
    """
    return _mask_auroc_update(maps, masks)[0]
