"""Paired statistics for comparing methods on the same examples.

* :func:`bootstrap_ci`: percentile bootstrap CI of a mean (10,000 resamples by default, seeded
  ``numpy`` generator, vectorised: one ``[B, n]`` index draw).
* :func:`paired_bootstrap_ci`: CI of the mean paired difference ``a - b`` (examples resampled
  jointly, so the pairing is kept).
* :func:`wilcoxon`: Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, zero differences
  dropped, ``zero_method="wilcox"``) with two effect sizes: the matched-pairs rank-biserial
  correlation ``r = (W+ - W-) / (W+ + W-)`` (Kerby 2014) and Cohen's ``d_z = mean(d) / sd(d)``.
* :func:`holm`: Holm-Bonferroni step-down adjusted p-values (monotone, capped at 1).
* :func:`compare_methods`: every pair of methods, per metric (and subset), in a tidy table;
  Holm is applied across all pairs of a metric x subset family.

Pairs with a NaN (or an infinite value) on either side are dropped (and counted in
``n_dropped``). Parameters are checked (``n_resamples >= 1``, ``confidence`` in (0, 1), p-values
in [0, 1]): a bad one raises :class:`~attnlens.errors.ParameterError` naming it; values that are
not numbers raise :class:`~attnlens.errors.DTypeError`. p-values returned always lie in [0, 1]. In
:func:`compare_methods` an (example, method) pair listed twice in one family is an error that names
the duplicated rows, never silently dropped. Means of huge values do not overflow (summed scaled).
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np

from ..errors import DTypeError, ParameterError, ShapeError
from ..params import int_param, real_param


def _clean(x, what: str = "values") -> np.ndarray:
    """``x`` flattened to float64; strings, None/objects and complex numbers -> DTypeError."""
    if hasattr(x, "detach"):   # a torch tensor (bfloat16 included)
        x = x.detach().cpu().double().numpy()
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise DTypeError(f"{what} must be numbers ({exc})") from None
    if arr.dtype.kind == "O":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise DTypeError(f"{what} must be numbers, got objects such as {arr.reshape(-1)[:3].tolist()}") from None
    if arr.dtype.kind not in "biuf":
        raise DTypeError(f"{what} must be real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64).reshape(-1)


def _mean(x: np.ndarray, axis=None):
    """Mean that cannot overflow for finite input (huge values are summed scaled)."""
    with np.errstate(over="ignore", invalid="ignore"):
        m = x.mean(axis=axis)
    if np.all(np.isfinite(m)) or not len(x):
        return m
    s = np.abs(x).max()
    return (x / s).mean(axis=axis) * s


def _check_ci(n_resamples, confidence, seed, fn: str):
    return (int_param(n_resamples, "n_resamples", fn, lo=1),
            real_param(confidence, "confidence", fn, lo=0, hi=1, lo_open=True, hi_open=True),
            int_param(seed, "seed", fn, lo=0))


def bootstrap_ci(values, *, n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
                 ) -> tuple[float, float, float]:
    """``(mean, low, high)`` percentile bootstrap CI of the mean of the finite ``values``.

    >>> m, lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0], n_resamples=1000)
    >>> m, lo <= m <= hi
    (2.5, True)
    """
    n_resamples, confidence, seed = _check_ci(n_resamples, confidence, seed, "bootstrap_ci")
    x = _clean(values, "bootstrap_ci: values")
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    scale = 1.0
    if np.abs(x).max() > 1e300:   # resampled means of such values could overflow
        scale = float(np.abs(x).max())
        x = x / scale
    rng = np.random.default_rng(seed)
    block = max(1, 4_000_000 // len(x))  # bounded memory: resample in blocks of rows
    means = np.concatenate([x[rng.integers(0, len(x), size=(min(block, int(n_resamples) - s), len(x)))].mean(1)
                            for s in range(0, int(n_resamples), block)])
    a = (1 - confidence) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(x.mean() * scale), float(lo * scale), float(hi * scale)


def _paired(a, b) -> tuple[np.ndarray, np.ndarray, int]:
    a, b = _clean(a, "a"), _clean(b, "b")
    if a.shape != b.shape:
        raise ShapeError(f"paired statistics need equal lengths, got a {a.shape} and b {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok], b[ok], int((~ok).sum())


def paired_bootstrap_ci(a, b, *, n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
                        ) -> tuple[float, float, float]:
    """``(mean, low, high)`` of the paired difference ``a - b`` (NaN pairs dropped).

    >>> paired_bootstrap_ci([1.0, 2.0, 3.0], [0.0, 1.0, 2.0], n_resamples=100)
    (1.0, 1.0, 1.0)
    """
    _check_ci(n_resamples, confidence, seed, "paired_bootstrap_ci")
    a, b, _ = _paired(a, b)
    return bootstrap_ci(_diff(a, b), n_resamples=n_resamples, confidence=confidence, seed=seed)


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b``; differences that overflow float64 (huge values of opposite sign) are refused."""
    with np.errstate(over="ignore", invalid="ignore"):
        d = a - b
    if not np.isfinite(d).all():
        raise ParameterError("paired differences a - b overflow float64 (values near 1e308 of opposite signs)")
    return d


def rank_biserial(d) -> float:
    """Matched-pairs rank-biserial correlation of differences ``d`` (zeros dropped).

    >>> rank_biserial([1.0, 2.0, -0.5])
    0.6666666666666666
    """
    from scipy.stats import rankdata

    d = _clean(d, "rank_biserial: d")
    d = d[np.isfinite(d) & (d != 0)]
    if len(d) == 0:
        return float("nan")
    r = rankdata(np.abs(d))
    return float((r[d > 0].sum() - r[d < 0].sum()) / r.sum())


def cohens_dz(d) -> float:
    """Cohen's ``d_z``: mean of the paired differences over their standard deviation (ddof=1).

    >>> round(cohens_dz([1.0, 2.0, 3.0]), 6)
    2.0
    """
    d = _clean(d, "cohens_dz: d")
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return float("nan")
    if np.abs(d).max() > 1e150:   # d_z is scale-free; keep the squares of the deviations finite
        d = d / np.abs(d).max()
    sd = d.std(ddof=1)
    if sd == 0:
        return float("nan") if d.mean() == 0 else float(np.sign(d.mean()) * np.inf)
    return float(d.mean() / sd)


def wilcoxon(a, b) -> dict[str, float]:
    """Wilcoxon signed-rank test of ``a - b`` with effect sizes.

    Returns:
        ``{"statistic", "p_value", "rank_biserial", "cohens_dz", "n"}``; NaN p-value when all
        differences are zero or fewer than one pair remains.

    >>> r = wilcoxon([1.0, 2, 3, 4, 5, 6], [0.0, 0, 0, 0, 0, 0])
    >>> round(r["p_value"], 4), r["rank_biserial"]
    (0.0312, 1.0)
    """
    from scipy.stats import wilcoxon as _w

    a, b, _ = _paired(a, b)
    d = _diff(a, b)
    out = {"statistic": float("nan"), "p_value": float("nan"), "rank_biserial": rank_biserial(d),
           "cohens_dz": cohens_dz(d), "n": int(len(d))}
    if np.count_nonzero(d) >= 1:
        res = _w(d, zero_method="wilcox")
        p = float(res.pvalue)
        # scipy's normal approximation can exceed 1 by rounding (and 2 * one-sided p > 1): a p-value is in [0, 1]
        out["statistic"], out["p_value"] = float(res.statistic), (min(max(p, 0.0), 1.0) if np.isfinite(p) else p)
    return out


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaNs stay NaN and do not count as tests).

    >>> holm([0.01, 0.04, 0.03]).round(4).tolist()
    [0.03, 0.06, 0.06]
    """
    p = _clean(pvalues, "holm: pvalues")
    bad = np.flatnonzero(np.isinf(p) | (p < 0) | (p > 1))
    if len(bad):
        raise ParameterError(f"holm: p-values must lie in [0, 1] (NaN for no test); got {p[bad[:5]].tolist()} "
                             f"at positions {bad[:5].tolist()}")
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def compare_methods(df, metric_col: str = "metric", method_col: str = "method",
                    example_col: str | Sequence[str] = ("example_id", "target"), value_col: str = "value",
                    group_cols: Sequence[str] = ("subset",), *, methods: Sequence[str] | None = None,
                    n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0):
    """Pairwise paired comparison of methods on a tidy table.

    Args:
        df: tidy DataFrame, one row per example x method (x metric). If ``metric_col`` is a numeric
            column and ``value_col`` is absent, ``metric_col`` is taken as the value column of a
            single metric.
        metric_col: column naming the metric (one comparison family per metric x group).
        method_col: column naming the method.
        example_col: column(s) identifying the paired unit (those present are used).
        value_col: column with the per-example values.
        group_cols: further grouping columns (those present are used), e.g. ``subset``.
        methods: restrict to / order these methods (default: sorted unique).

    Returns:
        DataFrame with one row per family x pair: the group columns, ``method_a``, ``method_b``,
        ``n``, ``n_dropped``, ``mean_a``, ``mean_b``, ``mean_diff``, ``ci_low``, ``ci_high``,
        ``statistic``, ``p_value``, ``p_holm``, ``rank_biserial``, ``cohens_dz``.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"example_id": [0, 1, 2] * 2, "method": ["a"] * 3 + ["b"] * 3,
    ...                    "metric": "m", "value": [1.0, 2.0, 3.0, 0.0, 1.0, 1.5]})
    >>> compare_methods(df, n_resamples=200)[["method_a", "method_b", "mean_diff"]].values.tolist()
    [['a', 'b', 1.1666666666666667]]
    """
    import pandas as pd

    _check_ci(n_resamples, confidence, seed, "compare_methods")
    if not isinstance(df, pd.DataFrame):
        raise DTypeError(f"compare_methods: df must be a pandas DataFrame, got {type(df).__name__}")
    d = df.copy()
    if value_col not in d.columns and metric_col in d.columns and pd.api.types.is_numeric_dtype(d[metric_col]):
        d = d.rename(columns={metric_col: value_col})
        d[metric_col] = "metric"
    missing = [c for c in (method_col, value_col) if c not in d.columns]
    if missing:
        raise ShapeError(f"compare_methods: columns {missing} not in {list(d.columns)}")
    ex = [c for c in ([example_col] if isinstance(example_col, str) else list(example_col)) if c in d.columns]
    if not ex:
        raise ShapeError(f"compare_methods: none of the example columns {example_col!r} in {list(d.columns)}")
    groups = [c for c in ([metric_col] + list(group_cols)) if c in d.columns]
    try:
        d[value_col] = _clean(d[value_col].to_numpy(), f"compare_methods: column {value_col!r}")
    except DTypeError:
        raise DTypeError(f"compare_methods: column {value_col!r} must hold numbers, got dtype "
                         f"{d[value_col].dtype}") from None
    dup = d.duplicated(subset=groups + ex + [method_col], keep=False)
    if dup.any():
        shown = d.loc[dup, groups + ex + [method_col]].drop_duplicates().head(5).to_dict("records")
        raise ShapeError(f"compare_methods: {int(dup.sum())} rows repeat an (example, method) pair of one "
                         f"{'/'.join(groups) or 'table'} (first: {shown}); each pair must appear once: add the "
                         f"column that tells them apart (e.g. 'seed') to example_col or group_cols")
    rows = []
    for key, g in (d.groupby(groups, sort=True, dropna=False) if groups else [((), d)]):
        key = key if isinstance(key, tuple) else (key,)
        wide = g.pivot_table(index=ex, columns=method_col, values=value_col, aggfunc="first", dropna=False)
        names = [m for m in (methods if methods is not None else sorted(wide.columns)) if m in wide.columns]
        fam = []
        for i, (ma, mb) in enumerate(combinations(names, 2)):
            a, b, dropped = _paired(wide[ma].to_numpy(), wide[mb].to_numpy())
            mean, lo, hi = bootstrap_ci(_diff(a, b), n_resamples=n_resamples, confidence=confidence, seed=seed + i)
            w = wilcoxon(a, b)
            fam.append({**dict(zip(groups, key)), "method_a": ma, "method_b": mb, "n": len(a), "n_dropped": dropped,
                        "mean_a": float(_mean(a)) if len(a) else float("nan"),
                        "mean_b": float(_mean(b)) if len(b) else float("nan"), "mean_diff": mean,
                        "ci_low": lo, "ci_high": hi, "statistic": w["statistic"], "p_value": w["p_value"],
                        "rank_biserial": w["rank_biserial"], "cohens_dz": w["cohens_dz"]})
        adj = holm([r["p_value"] for r in fam])
        for r, p in zip(fam, adj):
            r["p_holm"] = float(p)
        rows.extend(fam)
    cols = groups + ["method_a", "method_b", "n", "n_dropped", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high",
                     "statistic", "p_value", "p_holm", "rank_biserial", "cohens_dz"]
    return pd.DataFrame(rows, columns=cols)


__all__ = ["bootstrap_ci", "cohens_dz", "compare_methods", "holm", "paired_bootstrap_ci", "rank_biserial",
           "wilcoxon"]
