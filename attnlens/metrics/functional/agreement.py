"""Agreement between attention and gradient/perturbation attributions (Jain & Wallace 2019).

Attributions of the same scalar output with respect to region (and/or word) features are
computed with captum and reduced to one number per element:

* ``input_x_gradient`` and ``integrated_gradients`` (zero baseline): the per-feature
  attributions are **summed over the feature dimension** (signed; completeness of IG is kept
  per element). ``aggregate="abs_sum"`` sums absolute values instead.
* ``feature_ablation``: leave-one-out. All features of an element form one group of the captum
  feature mask and are replaced together by 0; every feature of the group carries the group's
  output change ``f(x) - f(x with the element zeroed)``, which is the element's importance.

Per example, over the valid elements: Kendall tau-b (``scipy.stats.kendalltau``, variant b),
Spearman's rho, and top-k overlap ``|top_k(attention) & top_k(attribution)| / k`` (stable sort,
``k`` capped at the number of valid elements). Correlations are NaN for fewer than two elements
or a constant side.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ...errors import DTypeError, NonFiniteError, ShapeError, UnknownNameError
from ._common import as_tensor, check_bool, check_real, int_param
from ...params import real_array

METHODS = ("input_x_gradient", "integrated_gradients", "feature_ablation")


def _tuple(x, n=None):
    t = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    return t if n is None or len(t) == n else None


# the captum calls live with the explainers (one implementation; metrics sit above explain)
from ...explain.attribution import attributions  # noqa: E402


def _vector(x, what: str) -> np.ndarray:
    """A finite 1-D float64 array (NaN/inf would silently sort first or last)."""
    arr = real_array(x, what)
    if arr.ndim != 1:
        raise ShapeError(f"{what} must be 1-D, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise NonFiniteError(f"{what} contains NaN or infinite values")
    return arr


def topk_overlap(a, b, k: int) -> float:
    """``|top_k(a) & top_k(b)| / k`` for 1-D arrays (stable descending sort, k capped at len).

    >>> topk_overlap(np.array([3.0, 2.0, 1.0]), np.array([1.0, 2.0, 3.0]), 2)
    0.5
    """
    a, b = _vector(a, "topk_overlap: a"), _vector(b, "topk_overlap: b")
    if a.shape != b.shape:
        raise ShapeError(f"topk_overlap: a {a.shape} and b {b.shape} must have the same length")
    k = min(int_param(k, "k", "topk_overlap", lo=1), len(a))
    if k < 1:
        return float("nan")
    ta = set(np.argsort(-a, kind="stable")[:k].tolist())
    tb = set(np.argsort(-b, kind="stable")[:k].tolist())
    return len(ta & tb) / k


def rank_agreement(attention: np.ndarray, attribution: np.ndarray, k: int = 3) -> dict[str, float]:
    """Kendall tau-b, Spearman and top-k overlap of two 1-D importance vectors.

    >>> rank_agreement(np.array([0.1, 0.5, 0.4]), np.array([1.0, 3.0, 2.0]))["kendall_tau"]
    1.0
    """
    from scipy.stats import kendalltau, spearmanr

    a, b = _vector(attention, "rank_agreement: attention"), _vector(attribution, "rank_agreement: attribution")
    if a.shape != b.shape:
        raise ShapeError(f"rank_agreement: attention {a.shape} and attribution {b.shape} must have the same length")
    if len(a) == 0:
        return {"kendall_tau": float("nan"), "spearman": float("nan"), "topk_overlap": float("nan")}
    out = {"kendall_tau": float("nan"), "spearman": float("nan"), "topk_overlap": topk_overlap(a, b, k)}
    if len(a) > 1 and a.max() > a.min() and b.max() > b.min():   # (ptp could overflow)
        out["kendall_tau"] = float(kendalltau(a, b, variant="b").statistic)
        out["spearman"] = float(spearmanr(a, b).statistic)
    return out


def attribution_agreement(forward: Callable[..., torch.Tensor], inputs, attention, *,
                          methods: Sequence[str] = METHODS, valid=None, names: Sequence[str] | None = None,
                          k: int = 3, aggregate: str = "sum", n_steps: int = 32,
                          internal_batch_size: int | None = None):
    """Per-example agreement between attention and captum attributions of the same output.

    Args:
        forward: ``forward(*inputs) -> [N]`` scalar scored output per example.
        inputs: ``[N, R, D]`` region features, or a tuple such as ``(regions [N, R, D], words
            [N, L, D])``.
        attention: ``[N, R]`` (or a tuple matching ``inputs``) attention per element.
        methods: names among :data:`METHODS`.
        valid: ``[N, R]`` bool (or a tuple / ``None`` entries) marking real elements.
        names: one name per input (default ``region``, ``word``, ...).
        k: top-k overlap size.
        aggregate: ``"sum"`` (signed) or ``"abs_sum"`` over the feature dimension.
        n_steps: integrated-gradients steps.

    Returns:
        Tidy ``pandas.DataFrame``: ``example``, ``input``, ``method``, ``kendall_tau``,
        ``spearman``, ``topk_overlap``, ``n_elements``.

    >>> w = torch.tensor([0.0, 0.0, 0.0, 2.0])
    >>> x = torch.ones(2, 4, 3)
    >>> df = attribution_agreement(lambda f: (f.sum(-1) * w).sum(-1), x, torch.tensor([[.1, .2, .3, .4]] * 2),
    ...                            methods=("feature_ablation",), k=1)
    >>> df.topk_overlap.tolist()
    [1.0, 1.0]
    """
    import pandas as pd

    xs = _tuple(inputs)
    atts = _tuple(attention, len(xs))
    if atts is None:
        raise ShapeError(f"attribution_agreement: {len(_tuple(attention))} attention tensors for {len(xs)} inputs")
    vals = (None,) * len(xs) if valid is None else _tuple(valid, len(xs))
    if vals is None:
        raise ShapeError(f"attribution_agreement: {len(_tuple(valid))} valid masks for {len(xs)} inputs")
    names = list(names) if names is not None else (["region", "word", "input2", "input3"][:len(xs)]
                                                   if len(xs) <= 4 else [f"input{i}" for i in range(len(xs))])
    if len(names) != len(xs):
        raise ShapeError(f"attribution_agreement: {len(names)} names for {len(xs)} inputs")
    if isinstance(methods, str):
        raise DTypeError(f"attribution_agreement: methods must be a list of names, got the string {methods!r}")
    for m in methods:
        if m not in METHODS:
            raise UnknownNameError("attribution method", str(m), METHODS)
    k = int_param(k, "k", "attribution_agreement", lo=1)
    xs = tuple(as_tensor(x, "attribution_agreement: inputs") for x in xs)
    atts = [check_real(as_tensor(a, "attribution_agreement: attention").detach(), "attribution_agreement: attention",
                       finite=False).double().cpu() for a in atts]
    vs = []
    for x, a, v in zip(xs, atts, vals):
        if tuple(a.shape) != tuple(x.shape[:2]):
            raise ShapeError(f"attribution_agreement: attention {tuple(a.shape)} does not fit inputs {tuple(x.shape)}")
        v = torch.ones_like(a, dtype=torch.bool) if v is None else check_bool(v, "attribution_agreement: valid").cpu()
        if v.shape != a.shape:
            raise ShapeError(f"attribution_agreement: valid {tuple(v.shape)} and attention {tuple(a.shape)} differ")
        if not bool(torch.isfinite(a[v]).all()):
            raise NonFiniteError(f"attribution_agreement: attention {tuple(a.shape)} has NaN or infinite values at "
                                 f"valid elements")
        vs.append(v)
    rows = []
    for method in methods:
        attr = attributions(forward, tuple(xs), method, aggregate=aggregate, n_steps=n_steps,
                            internal_batch_size=internal_batch_size)
        for name, a, v, b in zip(names, atts, vs, attr):
            b = b.cpu()
            if not bool(torch.isfinite(b[v]).all()):
                raise NonFiniteError(f"attribution_agreement: the {method} attributions of input {name!r} have NaN "
                                     f"or infinite values (non-finite model output or gradients)")
            for i in range(len(a)):
                m = v[i].numpy()
                r = rank_agreement(a[i].numpy()[m], b[i].numpy()[m], k)
                rows.append({"example": i, "input": name, "method": method, **r, "n_elements": int(m.sum())})
    return pd.DataFrame(rows, columns=["example", "input", "method", "kendall_tau", "spearman", "topk_overlap",
                                       "n_elements"])
