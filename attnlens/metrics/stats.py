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

Pairs with a NaN on either side are dropped (and counted in ``n_dropped``).
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np

from ..errors import ShapeError


def _clean(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def bootstrap_ci(values, *, n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
                 ) -> tuple[float, float, float]:
    """``(mean, low, high)`` percentile bootstrap CI of the mean of the finite ``values``.

    >>> m, lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0], n_resamples=1000)
    >>> m, lo <= m <= hi
    (2.5, True)
    """
    x = _clean(values)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    block = max(1, 4_000_000 // len(x))  # bounded memory: resample in blocks of rows
    means = np.concatenate([x[rng.integers(0, len(x), size=(min(block, int(n_resamples) - s), len(x)))].mean(1)
                            for s in range(0, int(n_resamples), block)])
    a = (1 - confidence) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(x.mean()), float(lo), float(hi)


def _paired(a, b) -> tuple[np.ndarray, np.ndarray, int]:
    a, b = _clean(a), _clean(b)
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
    a, b, _ = _paired(a, b)
    return bootstrap_ci(a - b, n_resamples=n_resamples, confidence=confidence, seed=seed)


def rank_biserial(d) -> float:
    """Matched-pairs rank-biserial correlation of differences ``d`` (zeros dropped).

    >>> rank_biserial([1.0, 2.0, -0.5])
    0.6666666666666666
    """
    from scipy.stats import rankdata

    d = _clean(d)
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
    d = _clean(d)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return float("nan")
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
    d = a - b
    out = {"statistic": float("nan"), "p_value": float("nan"), "rank_biserial": rank_biserial(d),
           "cohens_dz": cohens_dz(d), "n": int(len(d))}
    if np.count_nonzero(d) >= 1:
        res = _w(d, zero_method="wilcox")
        out["statistic"], out["p_value"] = float(res.statistic), float(res.pvalue)
    return out


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaNs stay NaN and do not count as tests).

    >>> holm([0.01, 0.04, 0.03]).round(4).tolist()
    [0.03, 0.06, 0.06]
    """
    p = _clean(pvalues)
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
    rows = []
    for key, g in (d.groupby(groups, sort=True, dropna=False) if groups else [((), d)]):
        key = key if isinstance(key, tuple) else (key,)
        wide = g.pivot_table(index=ex, columns=method_col, values=value_col, aggfunc="first", dropna=False)
        names = [m for m in (methods if methods is not None else sorted(wide.columns)) if m in wide.columns]
        fam = []
        for i, (ma, mb) in enumerate(combinations(names, 2)):
            a, b, dropped = _paired(wide[ma].to_numpy(), wide[mb].to_numpy())
            mean, lo, hi = bootstrap_ci(a - b, n_resamples=n_resamples, confidence=confidence, seed=seed + i)
            w = wilcoxon(a, b)
            fam.append({**dict(zip(groups, key)), "method_a": ma, "method_b": mb, "n": len(a), "n_dropped": dropped,
                        "mean_a": float(a.mean()) if len(a) else float("nan"),
                        "mean_b": float(b.mean()) if len(b) else float("nan"), "mean_diff": mean,
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
