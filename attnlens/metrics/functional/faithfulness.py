"""Faithfulness of region (or word) importance: does the model's output depend on what is attended?

The model enters as a *score function* ``score(keep, index) -> [M]``: ``keep`` is a bool tensor
``[M, R]`` (elements kept), ``index`` a long tensor ``[M]`` (which example each row belongs to);
it returns the scored output of each row (image-text similarity, probability of the predicted
answer, ...). The removal mode (drop from the attention, zero or mean feature) is the scorer's
business: :meth:`attnlens.tasks.base.Task.scorer` builds one for a task model and
:func:`feature_scorer` builds one from a plain ``forward(features [M, R, D]) -> [M]`` (words work
the same way: pass word features).

Every function builds *all* perturbed inputs first and scores them in chunks of ``batch_size``
rows, so the number of ``score`` calls is ``ceil(rows / batch_size)``, not one per step and
example. ``valid`` ``[N, R]`` marks real elements; padded ones are never kept nor counted.

Conventions: at fraction ``f`` of a curve, ``k = floor(f * n_valid + 1/2)`` elements are removed
(deletion) or restored (insertion), in the chosen order: ``morf`` (most relevant first, stable on
ties), ``lerf`` (least relevant first) or ``random`` (seeded). AUC is the trapezoid over the
fraction axis [0, 1] (RISE's normalised convention). ERASER bins use ``k = max(1, floor(f * n +
1/2))`` elements.

**Empty element set.** An example without a valid element has nothing to remove or keep: every
function gives NaN for it (curve AUC, ERASER scores and AOPC, faithfulness correlation), the
same convention everywhere. Parameters are checked (``steps >= 1``, fractions finite in
``[0, 1]``, ``n_subsets >= 2``, ``batch_size >= 1``); a bad one raises
:class:`~attnlens.errors.ParameterError` naming it. Importance must be finite at valid elements
and the score function must return finite numbers (:class:`~attnlens.errors.NonFiniteError`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ...errors import DTypeError, NonFiniteError, ParameterError, ShapeError, UnknownNameError
from ._common import as_tensor, check_bool, check_real, chunks, int_param, real_param

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ORDERS = ("morf", "lerf", "random")
MODES = ("deletion", "insertion")
AOPC_FRACTIONS = (0.01, 0.05, 0.10, 0.20, 0.50)


@dataclass(frozen=True)
class Curve:
    """A deletion or insertion curve per example.

    Attributes:
        fractions: ``[S + 1]`` fractions of the valid elements removed/restored (0 .. 1).
        values: ``[N, S + 1]`` scored output at each fraction.
        auc: ``[N]`` trapezoid area over the fraction axis.
        mode: ``"deletion"`` or ``"insertion"``.
        order: ``"morf"``, ``"lerf"`` or ``"random"``.
    """

    fractions: torch.Tensor
    values: torch.Tensor
    auc: torch.Tensor
    mode: str
    order: str


def check_importance(importance, valid=None, fn: str = "faithfulness"):
    """Validate ``importance`` ``[N, R]`` and ``valid`` ``[N, R]`` (default all True)."""
    imp = as_tensor(importance, f"{fn}: importance")
    if imp.ndim != 2:
        raise ShapeError(f"{fn}: importance must be [N, R], got shape {tuple(imp.shape)}")
    imp = check_real(imp.detach(), f"{fn}: importance", finite=False).double()
    if valid is None:
        v = torch.ones_like(imp, dtype=torch.bool)
    else:
        v = check_bool(valid, f"{fn}: valid")
        if v.shape != imp.shape:
            raise ShapeError(f"{fn}: importance {tuple(imp.shape)} and valid {tuple(v.shape)} must match")
        v = v.to(imp.device)
    if not bool(torch.isfinite(imp[v]).all()):
        raise NonFiniteError(f"{fn}: importance {tuple(imp.shape)} has NaN/inf at valid elements")
    return imp, v.to(imp.device)


def score_rows(score: ScoreFn, keep: torch.Tensor, index: torch.Tensor, batch_size: int = 256,
               progress: bool = False, desc: str = "scoring") -> torch.Tensor:
    """Call ``score`` on ``keep`` ``[M, R]`` / ``index`` ``[M]`` in chunks; returns ``[M]`` float64."""
    batch_size = int_param(batch_size, "batch_size", "score_rows", lo=1)
    out = torch.empty(len(keep), dtype=torch.float64)
    pieces = list(chunks(len(keep), batch_size))
    if progress:
        from tqdm.auto import tqdm
        pieces = tqdm(pieces, desc=desc, leave=False)
    with torch.no_grad():
        for sl in pieces:
            y = as_tensor(score(keep[sl], index[sl]), "the score function's output")
            if y.shape != (sl.stop - sl.start,):
                raise ShapeError(f"score(keep {tuple(keep[sl].shape)}, index {tuple(index[sl].shape)}) must return "
                                 f"[{sl.stop - sl.start}], got {tuple(y.shape)}")
            y = check_real(y.detach(), "the score function's output", finite=False).double().cpu()
            if not bool(torch.isfinite(y).all()):
                bad = torch.nonzero(~torch.isfinite(y)).reshape(-1)[:5] + sl.start
                raise NonFiniteError(f"score(keep, index) returned NaN or infinite values (rows {bad.tolist()}, "
                                     f"examples {index[bad].tolist()})")
            out[sl] = y
    return out


def element_order(importance, valid=None, order: str = "morf", seed: int = 0) -> torch.Tensor:
    """Position ``[N, R]`` of each element in the removal order (invalid elements last).

    >>> element_order(torch.tensor([[0.1, 0.7, 0.2]])).tolist()
    [[2, 0, 1]]
    """
    imp, v = check_importance(importance, valid, "element_order")
    if order == "morf":
        key = torch.where(v, -imp, torch.inf)
    elif order == "lerf":
        key = torch.where(v, imp, torch.inf)
    elif order == "random":
        g = torch.Generator().manual_seed(int_param(seed, "seed", "element_order"))
        key = torch.where(v, torch.rand(imp.shape, generator=g, dtype=torch.float64).to(imp.device), torch.inf)
    else:
        raise UnknownNameError("order", order, ORDERS)
    perm = torch.sort(key, dim=1, stable=True).indices
    return torch.empty_like(perm).scatter_(1, perm, torch.arange(imp.shape[1], device=imp.device).expand_as(perm))


def _counts(fractions: torch.Tensor, n_valid: torch.Tensor) -> torch.Tensor:
    return torch.floor(fractions[None, :] * n_valid[:, None].double() + 0.5).long()


def curve_auc(values, fractions=None) -> torch.Tensor:
    """Trapezoid area of curves ``[..., S + 1]`` over ``fractions`` (default ``linspace(0, 1)``).

    >>> curve_auc(torch.tensor([1.0, 0.5, 0.0])).item()
    0.5
    """
    v = check_real(as_tensor(values, "curve_auc: values"), "curve_auc: values", finite=False).double()
    if v.ndim == 0 or v.shape[-1] < 2:
        raise ShapeError(f"curve_auc: a curve needs at least 2 points, got values of shape {tuple(v.shape)}")
    x = torch.linspace(0, 1, v.shape[-1], dtype=torch.float64) if fractions is None else \
        check_real(as_tensor(fractions, "curve_auc: fractions"), "curve_auc: fractions").double()
    if x.ndim != 1 and tuple(x.shape) != tuple(v.shape):
        raise ShapeError(f"curve_auc: fractions must be [S + 1] or shaped like values {tuple(v.shape)}, got "
                         f"{tuple(x.shape)}")
    if x.ndim == 0 or x.shape[-1] != v.shape[-1]:
        raise ShapeError(f"curve_auc: values {tuple(v.shape)} and fractions {tuple(x.shape)} differ in length")
    if bool((x.diff(dim=-1) < 0).any()):
        raise ShapeError(f"curve_auc: fractions must be non-decreasing, got {x.tolist()}")
    return torch.trapezoid(v, x=x, dim=-1)


def perturbation_curves(score: ScoreFn, importance, *, valid=None, modes: Sequence[str] = MODES,
                        orders: Sequence[str] = ORDERS, steps: int = 20, batch_size: int = 256,
                        seed: int = 0, progress: bool = False) -> dict[tuple[str, str], Curve]:
    """All requested deletion/insertion curves of ``N`` examples in one batched pass.

    Args:
        score: ``score(keep [M, R] bool, index [M] long) -> [M]`` (see module docstring).
        importance: ``[N, R]`` attention (or any importance) per element.
        valid: ``[N, R]`` bool, False for padded elements.
        modes: subset of ``("deletion", "insertion")``.
        orders: subset of ``("morf", "lerf", "random")``.
        steps: number of steps; the curve has ``steps + 1`` points at fractions ``0, 1/steps, ..., 1``.
        batch_size: rows per ``score`` call.
        seed: seed of the random order.
        progress: show a tqdm bar over the score calls.

    Returns:
        ``{(mode, order): Curve}``.
    """
    imp, v = check_importance(importance, valid, "perturbation_curves")
    if isinstance(modes, str) or isinstance(orders, str):
        raise DTypeError(f"perturbation_curves: modes and orders must be sequences of names, got {modes!r}, "
                         f"{orders!r}")
    for m in modes:
        if m not in MODES:
            raise UnknownNameError("curve mode", m, MODES)
    for o in orders:
        if o not in ORDERS:
            raise UnknownNameError("order", o, ORDERS)
    steps = int_param(steps, "steps", "perturbation_curves", lo=1)
    batch_size = int_param(batch_size, "batch_size", "perturbation_curves", lo=1)
    n, r = imp.shape
    fr = torch.linspace(0, 1, int(steps) + 1, dtype=torch.float64)
    k = _counts(fr, v.sum(1)).to(imp.device)  # [N, S+1]
    keeps, keys = [], []
    for o in orders:
        pos = element_order(imp, v, o, seed)[:, None, :]  # [N, 1, R]
        for m in modes:
            kk = (pos >= k[:, :, None]) if m == "deletion" else (pos < k[:, :, None])
            keeps.append((kk & v[:, None, :]).reshape(n * len(fr), r))
            keys.append((m, o))
    keep = torch.cat(keeps)
    index = torch.arange(n, device=imp.device).repeat_interleave(len(fr)).repeat(len(keys))
    # the curves share kept sets (every curve's ends: all kept / none kept; deletion-MoRF at f and
    # insertion-LeRF at 1 - f when the orders are exact reverses): score each (example, set) once
    rows, inverse = torch.unique(torch.cat([index[:, None], keep.long()], dim=1), dim=0, return_inverse=True)
    y = score_rows(score, rows[:, 1:].bool(), rows[:, 0], batch_size, progress, "curves")
    y = y[inverse.cpu()].reshape(len(keys), n, len(fr))
    none = (v.sum(1) == 0).cpu()   # no valid element: nothing to remove, the AUC is undefined (as in eraser)
    return {key: Curve(fr, y[i], torch.where(none, torch.nan, curve_auc(y[i], fr)), key[0], key[1])
            for i, key in enumerate(keys)}


def deletion_curve(score: ScoreFn, importance, *, valid=None, order: str = "morf", steps: int = 20,
                   batch_size: int = 256, seed: int = 0, progress: bool = False) -> Curve:
    """Deletion curve (Petsiuk et al. 2018): remove elements in ``order`` and score.

    >>> score = lambda keep, index: keep[:, 0].double()          # output needs element 0 only
    >>> c = deletion_curve(score, torch.tensor([[0.9, 0.1]]), steps=2)
    >>> c.values.tolist(), c.auc.tolist()
    ([[1.0, 0.0, 0.0]], [0.25])
    """
    return perturbation_curves(score, importance, valid=valid, modes=("deletion",), orders=(order,),
                               steps=steps, batch_size=batch_size, seed=seed, progress=progress)[("deletion", order)]


def insertion_curve(score: ScoreFn, importance, *, valid=None, order: str = "morf", steps: int = 20,
                    batch_size: int = 256, seed: int = 0, progress: bool = False) -> Curve:
    """Insertion curve: start with nothing kept and restore elements in ``order``.

    >>> score = lambda keep, index: keep[:, 0].double()
    >>> insertion_curve(score, torch.tensor([[0.9, 0.1]]), steps=2).values.tolist()
    [[0.0, 1.0, 1.0]]
    """
    return perturbation_curves(score, importance, valid=valid, modes=("insertion",), orders=(order,),
                               steps=steps, batch_size=batch_size, seed=seed, progress=progress)[("insertion", order)]


def eraser(score: ScoreFn, importance, *, valid=None, fractions: Sequence[float] = AOPC_FRACTIONS,
           batch_size: int = 256, progress: bool = False) -> dict[str, torch.Tensor]:
    """ERASER comprehensiveness and sufficiency (DeYoung et al. 2020) with AOPC.

    ``comprehensiveness_k = f(x) - f(x without the top-k)``, ``sufficiency_k = f(x) - f(top-k only)``,
    AOPC = mean over the bins. ``k = max(1, floor(f * n_valid + 1/2))``, at most ``n_valid``.

    Returns:
        dict with ``full`` ``[N]``, ``comprehensiveness`` / ``sufficiency`` ``[N, K]`` and
        ``comprehensiveness_aopc`` / ``sufficiency_aopc`` ``[N]`` (NaN for no valid element).

    >>> score = lambda keep, index: keep[:, 1].double()
    >>> r = eraser(score, torch.tensor([[0.1, 0.9, 0.0, 0.0]]), fractions=(0.25, 0.5))
    >>> r["comprehensiveness_aopc"].tolist(), r["sufficiency_aopc"].tolist()
    ([1.0], [0.0])
    """
    imp, v = check_importance(importance, valid, "eraser")
    if isinstance(fractions, (str, bytes)) or not hasattr(fractions, "__iter__"):
        raise DTypeError(f"eraser: fractions must be a sequence of numbers, got {fractions!r}")
    fractions = [real_param(f, f"fractions[{i}]", "eraser", lo=0, hi=1, lo_open=True)
                 for i, f in enumerate(fractions)]
    if not fractions:
        raise ShapeError("eraser: fractions is empty; give at least one bin, e.g. (0.1,)")
    batch_size = int_param(batch_size, "batch_size", "eraser", lo=1)
    n, r = imp.shape
    nv = v.sum(1)
    fr = torch.as_tensor(list(fractions), dtype=torch.float64)
    k = torch.minimum(_counts(fr, nv).clamp(min=1), nv[:, None]).to(imp.device)  # [N, K]
    pos = element_order(imp, v, "morf")[:, None, :]
    top = (pos < k[:, :, None]) & v[:, None, :]
    keep = torch.cat([v, (v[:, None, :] & ~top).reshape(n * len(fr), r), top.reshape(n * len(fr), r)])
    kk = len(fr)
    ar = torch.arange(n, device=imp.device)
    index = torch.cat([ar, ar.repeat_interleave(kk), ar.repeat_interleave(kk)])
    y = score_rows(score, keep, index, batch_size, progress, "eraser")
    full = y[:n]
    comp = full[:, None] - y[n:n + n * kk].reshape(n, kk)
    suff = full[:, None] - y[n + n * kk:].reshape(n, kk)
    none = (nv == 0).cpu()
    comp[none], suff[none] = float("nan"), float("nan")
    return {"full": full, "comprehensiveness": comp, "sufficiency": suff,
            "comprehensiveness_aopc": comp.mean(1), "sufficiency_aopc": suff.mean(1)}


def leave_one_out(score: ScoreFn, importance_shape_or_valid, *, batch_size: int = 256,
                  progress: bool = False) -> torch.Tensor:
    """Leave-one-out importance ``f(x) - f(x without element r)``, ``[N, R]`` (NaN where invalid).

    Args:
        score: score function (see module docstring).
        importance_shape_or_valid: ``[N, R]`` bool ``valid`` mask, or the tuple ``(N, R)``.

    >>> score = lambda keep, index: 2.0 * keep[:, 1].double()
    >>> leave_one_out(score, (1, 3)).tolist()
    [[0.0, 2.0, 0.0]]
    """
    if isinstance(importance_shape_or_valid, tuple):
        shape = tuple(int_param(d, "importance_shape_or_valid", "leave_one_out", lo=0)
                      for d in importance_shape_or_valid)
        v = torch.ones(shape, dtype=torch.bool)
    else:
        v = check_bool(importance_shape_or_valid, "leave_one_out: valid")
    if v.ndim != 2:
        raise ShapeError(f"leave_one_out: valid must be [N, R], got shape {tuple(v.shape)}")
    n, r = v.shape
    eye = torch.eye(r, dtype=torch.bool, device=v.device)
    keep = torch.cat([v, (v[:, None, :] & ~eye[None]).reshape(n * r, r)])
    ar = torch.arange(n, device=v.device)
    y = score_rows(score, keep, torch.cat([ar, ar.repeat_interleave(r)]), batch_size, progress, "leave-one-out")
    out = y[:n, None] - y[n:].reshape(n, r)
    return torch.where(v.cpu(), out, torch.nan)


def faithfulness_correlation(score: ScoreFn, importance, *, valid=None, n_subsets: int = 100,
                             subset_size: float | int = 0.25, seed: int = 0, batch_size: int = 256,
                             progress: bool = False) -> torch.Tensor:
    """Faithfulness correlation (Bhatt et al. 2020), ``[N]``.

    Pearson correlation, over ``n_subsets`` random subsets S (seeded) of ``subset_size`` valid
    elements (a fraction of ``n_valid`` if < 1, at least 1), between the importance mass in S and
    the output drop ``f(x) - f(x without S)``. NaN when either side is constant.

    >>> score = lambda keep, index: (keep.double() * torch.tensor([3.0, 2.0, 1.0, 0.5])).sum(1)
    >>> round(faithfulness_correlation(score, torch.tensor([[3.0, 2.0, 1.0, 0.5]]), n_subsets=20).item(), 6)
    1.0
    """
    imp, v = check_importance(importance, valid, "faithfulness_correlation")
    n_subsets = int_param(n_subsets, "n_subsets", "faithfulness_correlation", lo=2)
    subset_size = real_param(subset_size, "subset_size", "faithfulness_correlation", lo=0, lo_open=True)
    if subset_size >= 1 and subset_size != int(subset_size):
        raise ParameterError(f"faithfulness_correlation: subset_size must be a fraction in (0, 1) or a whole "
                             f"number of elements, got {subset_size}")
    seed = int_param(seed, "seed", "faithfulness_correlation")
    batch_size = int_param(batch_size, "batch_size", "faithfulness_correlation", lo=1)
    n, r = imp.shape
    nv = v.sum(1)
    size = (torch.floor(subset_size * nv.double() + 0.5).long() if subset_size < 1
            else torch.full_like(nv, int(subset_size))).clamp(min=1)
    size = torch.minimum(size, nv)
    g = torch.Generator().manual_seed(int(seed))
    key = torch.rand((n, n_subsets, r), generator=g, dtype=torch.float64).to(imp.device)
    key = torch.where(v[:, None, :], key, torch.inf)
    rank = torch.argsort(torch.argsort(key, dim=2), dim=2)
    subset = (rank < size[:, None, None]) & v[:, None, :]  # [N, S, R]
    keep = torch.cat([v, (v[:, None, :] & ~subset).reshape(n * n_subsets, r)])
    ar = torch.arange(n, device=imp.device)
    y = score_rows(score, keep, torch.cat([ar, ar.repeat_interleave(n_subsets)]), batch_size, progress,
                   "faithfulness correlation")
    drop = (y[:n, None] - y[n:].reshape(n, n_subsets))
    top = imp.abs().amax(1, keepdim=True) if r else torch.ones(n, 1, dtype=imp.dtype, device=imp.device)
    big = top > 1e100   # sums of such masses could overflow; the correlation is scale-free
    imp = torch.where(big, imp / torch.where(big, top, 1.0), imp)
    mass = (imp[:, None, :] * subset).sum(2).cpu()
    out = pearson_rows(mass, drop)
    return torch.where((nv == 0).cpu(), torch.nan, out)


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of ``[N, S]`` tensors; NaN for a constant row.

    Rows of extreme magnitude (whose products would overflow or underflow float64) are first
    divided by their largest absolute value: the correlation is scale-free.

    >>> a = torch.tensor([[1.0, 2.0, 3.0], [1e300, 2e300, 3e300]], dtype=torch.float64)
    >>> pearson_rows(a, torch.tensor([[2.0, 4.0, 7.0]] * 2))
    tensor([0.9934, 0.9934], dtype=torch.float64)
    """
    a, b = a.double(), b.double()
    if a.numel():
        for x in (a, b):
            m = x.abs().amax(1, keepdim=True)
            extreme = (m > 1e100) | ((m < 1e-100) & (m > 0))
            if bool(extreme.any()):
                x.copy_(torch.where(extreme, x / torch.where(m > 0, m, 1.0), x))
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = torch.sqrt((a * a).sum(1) * (b * b).sum(1))
    scale = torch.maximum(a.abs().amax(1), b.abs().amax(1)) if a.numel() else torch.zeros(len(a), dtype=a.dtype)
    ok = den > 1e-12 * scale.clamp(min=1e-300) ** 2
    return torch.where(ok, (a * b).sum(1) / torch.where(ok, den, 1.0), torch.nan)


def feature_scorer(forward: Callable[[torch.Tensor], torch.Tensor], features, *, removal: str = "zero",
                   mean=None) -> ScoreFn:
    """A score function over element features for a plain ``forward(features [M, R, D]) -> [M]``.

    Args:
        forward: the model, mapping features ``[M, R, D]`` to the scored output ``[M]``.
        features: ``[N, R, D]`` features of the N examples (regions or words).
        removal: ``"zero"`` (removed features set to 0) or ``"mean"`` (set to ``mean``).
        mean: ``[D]`` replacement for ``"mean"``; default the mean feature over all N x R.

    >>> f = torch.arange(6.0).reshape(1, 3, 2)
    >>> score = feature_scorer(lambda x: x.sum((1, 2)), f)
    >>> score(torch.tensor([[True, False, True]]), torch.tensor([0])).tolist()
    [10.0]
    """
    feats = as_tensor(features, "feature_scorer: features")
    if feats.ndim != 3:
        raise ShapeError(f"feature_scorer: features must be [N, R, D], got shape {tuple(feats.shape)}")
    if removal == "zero":
        fill = torch.zeros(feats.shape[-1], dtype=feats.dtype, device=feats.device)
    elif removal == "mean":
        fill = feats.reshape(-1, feats.shape[-1]).mean(0) if mean is None else as_tensor(mean, "mean").to(feats)
        if fill.shape != (feats.shape[-1],):
            raise ShapeError(f"feature_scorer: mean {tuple(fill.shape)} must be [D={feats.shape[-1]}]")
    else:
        raise UnknownNameError("removal", removal, ("zero", "mean"))

    def score(keep: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        x = feats[index.to(feats.device)]
        if keep.shape != x.shape[:2]:
            raise ShapeError(f"score: keep {tuple(keep.shape)} does not fit features {tuple(x.shape)}")
        x = torch.where(keep.to(feats.device)[..., None], x, fill)
        return forward(x)

    return score
