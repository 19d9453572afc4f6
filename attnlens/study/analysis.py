"""From per-example metric rows to the study's summary table (``metrics.csv``).

Per task and metric, every alignment function gets the mean of its per-example values with a
95% percentile-bootstrap CI (``attnlens.metrics.stats.bootstrap_ci``), ``n`` and ``n_excluded``
(NaN values, with their reasons). The best alignment (by mean, in the metric's direction; exact
ties are all best) is compared with each other one on the paired examples (``example_id``,
``target``, ``seed``): Wilcoxon signed-rank (:func:`attnlens.metrics.stats.wilcoxon`), Holm-corrected
across the comparisons against the best of that metric, matched-pairs rank-biserial effect size and
a paired-bootstrap CI of the difference (alignment minus best); the full all-pairs table is one
call away (:func:`attnlens.metrics.stats.compare_methods` on ``metrics_long.csv``). An alignment that is mathematically
equivalent to the best (:func:`attnlens.align.equivalent_groups`) is flagged ``equivalent_to_best``
and never marked as significantly different: a difference between equivalent functions is noise.

Seeds. The bootstrap CI and the tests above pool the examples of every training seed, so they
measure how much a metric moves between *examples*, not between *training runs*. Following
Wiegreffe & Pinter (EMNLP 2019), the variation across training seeds is the yardstick for a
difference between alignment functions, so every row also carries its between-seed spread: the
per-seed means (the mean of the finite per-example values of one seed; :func:`seed_table`, saved as
``metrics_seeds.csv``), ``n_seeds`` (seeds with a finite mean), ``seed_sd`` (their sample standard
deviation, ``ddof=1``: seeds 0.4 and 0.6 give 0.1414; NaN with fewer than 2 seeds) and
``seed_min`` / ``seed_max``. Task-performance rows have one value per seed, so their per-seed
"means" are those values.

``within_seed_noise`` compares each alignment with the best one of its metric (the rule): it is
True when their per-seed ranges ``[seed_min, seed_max]`` overlap (closed intervals), i.e. some seed
of this alignment scores at least as well as some seed of the best one, so a study with one seed
per function could have tied or reversed the two. False means complete separation (every seed of
the best beats every seed of this one); if the two functions did not differ (exchangeable seeds),
that happens by chance with probability ``2 / C(k1 + k2, k1)`` for ``k1``, ``k2`` seeds (the exact
two-sided Mann-Whitney p at U = 0): 1/3 for 2 + 2 seeds, 1/10 for 3 + 3, 1/35 for 4 + 4, so with two
seeds a separation is weak evidence and three or more are advised. The rule needs no distributional
assumption and no direction (it is symmetric). It is NaN (not measured) for the best row and its
exact ties, for baselines, and when either side has fewer than 2 seeds with a finite mean. A
difference that is ``significant`` over the pooled examples but ``within_seed_noise`` is not an
established difference between the functions: retraining the same function moves it as much.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import align as _align

__all__ = ["summarize", "seed_table", "seed_spread", "ranges_overlap", "task_rows", "equivalences", "unit_metrics",
           "combine_units", "SUMMARY_COLUMNS", "SEED_COLUMNS", "SEED_TABLE_COLUMNS"]

SUMMARY_COLUMNS = ["task", "alignment", "metric", "category", "subset", "mean", "ci_low", "ci_high", "n",
                   "n_excluded", "excluded_reasons", "higher_is_better", "rank", "is_best", "diff_vs_best",
                   "diff_ci_low", "diff_ci_high", "p_vs_best", "p_holm", "effect_size", "significant",
                   "equivalent_group", "equivalent_to_best", "seeds", "n_seeds", "seed_sd", "seed_min", "seed_max",
                   "within_seed_noise"]
#: The between-seed columns of the summary (see the module docstring).
SEED_COLUMNS = ["n_seeds", "seed_sd", "seed_min", "seed_max", "within_seed_noise"]
#: Columns of :func:`seed_table` (``metrics_seeds.csv``): one row per task x alignment x metric x subset x seed.
SEED_TABLE_COLUMNS = ["task", "alignment", "metric", "category", "subset", "seed", "mean", "n", "n_excluded"]

PAIR_KEYS = ("example_id", "target", "seed")


def _higher_is_better(metric: str, given=None) -> bool | None:
    """The metric's direction: its registry entry's (:func:`attnlens.metrics.registry.direction`),
    else the rows' ``higher_is_better`` (rows written by another registry), else ``None``: an
    unregistered metric is reported, not ranked."""
    from ..metrics.registry import direction

    up = direction(metric)
    if up is not None:
        return up
    if given is not None and not (isinstance(given, float) and np.isnan(given)):
        return bool(given) if not isinstance(given, str) else given.lower() == "true"
    return None


def equivalences(alignments: Sequence[str], norm: str, unit_features: bool = True) -> dict[str, str]:
    """``{alignment: group label}`` for alignments equivalent to another one ("dot=cosine")."""
    out = {}
    for g in _align.equivalent_groups(list(alignments), norm=norm, unit_features=unit_features):
        if len(g) > 1:
            label = "=".join(g)
            out.update({a: label for a in g})
    return out


def task_rows(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Task-performance numbers of the unit records as long rows (one per seed)."""
    rows = []
    for r in records:
        for k, v in r.get("task_metrics", {}).items():
            rows.append({"task": r["task"], "alignment": r["alignment"], "seed": r["seed"], "metric": k,
                         "value": float(v), "category": "task"})
    return pd.DataFrame(rows, columns=["task", "alignment", "seed", "metric", "value", "category"])


def _reasons(g: pd.DataFrame) -> str:
    if "reason" not in g.columns:
        return ""
    bad = g.loc[~np.isfinite(g["value"].astype(float)), "reason"].fillna("undefined").astype(str)
    bad = bad.replace("", "undefined")
    return "; ".join(f"{k}: {v}" for k, v in bad.value_counts().sort_index().items())


def _prepare(long: pd.DataFrame) -> pd.DataFrame:
    """Default ``category`` (the registry's, else ``"metric"``), ``subset``, ``reason`` and ``seed``
    columns; per-subset rows plus the overall ones."""
    from ..metrics.registry import get_metric, metric_names

    long = long.copy()
    if "category" not in long.columns and "metric" in long.columns:
        known = set(metric_names())
        long["category"] = [get_metric(m).category if m in known else "metric" for m in long["metric"]]
    for col, default in (("category", "metric"), ("subset", "all"), ("reason", "")):
        if col not in long.columns:
            long[col] = default
        long[col] = long[col].fillna(default)
    if "seed" not in long.columns:
        long["seed"] = 0
    long["subset"] = long["subset"].astype(str)
    if (long["subset"] != "all").any():  # per-subset rows plus the overall ones
        long = pd.concat([long.assign(subset="all"), long[long["subset"] != "all"]], ignore_index=True)
    return long


def _seed_table(long: pd.DataFrame, task_df: pd.DataFrame) -> pd.DataFrame:
    """:func:`seed_table` of already prepared rows (:func:`_prepare`) and task rows (:func:`task_rows`)."""
    keys = ["task", "alignment", "metric", "subset", "seed"]
    parts = []
    if len(long):
        v = long["value"].astype(float)
        frame = long[keys + ["category"]].assign(value=v.where(np.isfinite(v)))
        parts.append(frame.groupby(keys, sort=False).agg(category=("category", "first"), mean=("value", "mean"),
                                                         n=("value", "count"), rows=("value", "size")).reset_index())
    if len(task_df):
        v = task_df["value"].astype(float)
        parts.append(task_df.assign(subset="all", mean=v.where(np.isfinite(v)), n=np.isfinite(v).astype(int), rows=1)
                     [keys + ["category", "mean", "n", "rows"]])
    if not parts:
        return pd.DataFrame(columns=SEED_TABLE_COLUMNS)
    out = pd.concat(parts, ignore_index=True)
    out["n_excluded"] = (out["rows"] - out["n"]).astype(int)
    out["n"] = out["n"].astype(int)
    return out[SEED_TABLE_COLUMNS]


def seed_table(long: pd.DataFrame, records: Sequence[Mapping[str, Any]] = ()) -> pd.DataFrame:
    """Per-seed means: one row per task x alignment x metric x subset x seed (``metrics_seeds.csv``).

    ``mean`` is the mean of the seed's finite per-example values (NaN when it has none), ``n`` their
    count and ``n_excluded`` the non-finite ones; the task metrics of ``records`` give one value per
    seed (``subset == "all"``). Columns :data:`SEED_TABLE_COLUMNS`.

    >>> long = pd.DataFrame({"task": "t", "alignment": "dot", "metric": "m", "seed": [0, 0, 1, 1],
    ...                      "example_id": ["a", "b", "a", "b"], "value": [0.3, 0.5, 0.6, float("nan")]})
    >>> seed_table(long)[["seed", "mean", "n", "n_excluded"]].to_numpy().tolist()
    [[0.0, 0.4, 2.0, 0.0], [1.0, 0.6, 1.0, 1.0]]
    """
    return _seed_table(_prepare(long), task_rows(records))


def seed_spread(seed_means) -> dict[str, float]:
    """Between-seed spread of per-seed means: ``n_seeds`` (finite ones), ``seed_sd`` (``ddof=1``; NaN
    below 2 seeds), ``seed_min``, ``seed_max`` (NaN without a finite mean).

    >>> {k: round(v, 4) for k, v in seed_spread([0.4, 0.6]).items()}
    {'n_seeds': 2, 'seed_sd': 0.1414, 'seed_min': 0.4, 'seed_max': 0.6}
    """
    x = np.asarray(seed_means, dtype=float).reshape(-1)
    x = x[np.isfinite(x)]
    return {"n_seeds": int(len(x)), "seed_sd": float(np.std(x, ddof=1)) if len(x) > 1 else np.nan,
            "seed_min": float(x.min()) if len(x) else np.nan, "seed_max": float(x.max()) if len(x) else np.nan}


def ranges_overlap(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool | None:
    """The ``within_seed_noise`` rule: do the per-seed ranges ``[seed_min, seed_max]`` of two rows
    overlap (closed intervals)? ``None`` when either has fewer than 2 seeds with a finite mean.

    >>> ranges_overlap({"n_seeds": 2, "seed_min": 0.4, "seed_max": 0.6}, {"n_seeds": 2, "seed_min": 0.6, "seed_max": 0.7})
    True
    >>> ranges_overlap({"n_seeds": 2, "seed_min": 0.4, "seed_max": 0.6}, {"n_seeds": 2, "seed_min": 0.61, "seed_max": 0.7})
    False
    """
    def ok(r):
        n = r.get("n_seeds")
        return n is not None and np.isfinite(n) and n >= 2 and np.isfinite(r["seed_min"]) and np.isfinite(r["seed_max"])

    if not (ok(a) and ok(b)):
        return None
    return bool(max(a["seed_min"], b["seed_min"]) <= min(a["seed_max"], b["seed_max"]))


def summarize(long: pd.DataFrame, records: Sequence[Mapping[str, Any]], *, equivalent: Mapping[str, Mapping[str, str]]
              | None = None, n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """The summary table: one row per task x alignment x metric (x subset), columns :data:`SUMMARY_COLUMNS`.

    Args:
        long: per-example rows with ``task, alignment, seed, example_id, metric, value`` and
            optionally ``category, subset, reason, target, higher_is_better``.
        records: the unit records (their ``task_metrics`` become ``category == "task"`` rows).
        equivalent: per task, ``{alignment: group label}`` (:func:`equivalences`).
        n_boot, alpha, seed: bootstrap resamples, significance level, bootstrap seed.

    The between-seed columns (:data:`SEED_COLUMNS`) follow the module docstring: with seeds 0 and
    1 whose means are 0.4 and 0.6, ``n_seeds == 2``, ``seed_sd == 0.1414`` (``ddof=1``),
    ``seed_min == 0.4``, ``seed_max == 0.6``.
    """
    from ..metrics.stats import bootstrap_ci

    equivalent = equivalent or {}
    has_seed = "seed" in long.columns
    long = _prepare(long)
    hib = {}
    if "higher_is_better" in long.columns:
        hib = long.dropna(subset=["higher_is_better"]).groupby("metric")["higher_is_better"].first().to_dict()
    task_df = task_rows(records)
    per_seed = {k: g["mean"].to_numpy(dtype=float) for k, g in
                _seed_table(long, task_df).groupby(["task", "metric", "subset", "alignment"], sort=False)}

    def spread(task, metric, subset, a) -> dict:
        return seed_spread(per_seed.get((task, metric, subset, a), []))

    out = []
    for (task, metric, subset), g in long.groupby(["task", "metric", "subset"], sort=False):
        cats = g.loc[~g["alignment"].astype(str).str.startswith("baseline:"), "category"]
        category = str(cats.iloc[0]) if len(cats) else "baseline"
        up = _higher_is_better(metric, hib.get(metric))
        eq = equivalent.get(task, {})
        keys = [k for k in PAIR_KEYS if k in g.columns]
        rows, base_rows = {}, {}
        for a, ga in g.groupby("alignment", sort=False):
            vals = ga["value"].astype(float).to_numpy()
            finite = vals[np.isfinite(vals)]
            mean, lo, hi = bootstrap_ci(finite, n_resamples=n_boot, seed=seed) if len(finite) else (np.nan,) * 3
            is_base = str(a).startswith("baseline:")
            (base_rows if is_base else rows)[a] = {
                       "task": task, "alignment": a, "metric": metric,
                       "category": "baseline" if is_base else category, "subset": subset,
                       "mean": mean, "ci_low": lo, "ci_high": hi, "n": int(len(finite)),
                       "n_excluded": int(len(vals) - len(finite)), "excluded_reasons": _reasons(ga),
                       "higher_is_better": up, "equivalent_group": eq.get(a, ""),
                       "seeds": ",".join(str(s) for s in sorted(ga["seed"].unique())) if has_seed else "",
                       **spread(task, metric, subset, a)}
        g_att = g[~g["alignment"].astype(str).str.startswith("baseline:")]
        _rank_and_test(rows, g_att, keys, up, eq, alpha, n_boot, seed, ranked=up is not None)
        _rank_and_test(base_rows, None, [], up, {}, alpha, n_boot, seed, None, ranked=False)
        out.extend(rows.values())
        out.extend(base_rows.values())
    for (task, metric), g in task_df.groupby(["task", "metric"], sort=False):
        up = _higher_is_better(metric)
        rows = {}
        for a, ga in g.groupby("alignment", sort=False):
            vals = ga["value"].to_numpy(dtype=float)
            mean = float(np.mean(vals))
            lo, hi = (bootstrap_ci(vals, n_resamples=n_boot, seed=seed)[1:] if len(vals) > 1 else (np.nan, np.nan))
            rows[a] = {"task": task, "alignment": a, "metric": metric, "category": "task", "subset": "all",
                       "mean": mean, "ci_low": lo, "ci_high": hi, "n": len(vals), "n_excluded": 0,
                       "excluded_reasons": "", "higher_is_better": up,
                       "equivalent_group": equivalent.get(task, {}).get(a, ""),
                       "seeds": ",".join(str(s) for s in sorted(ga["seed"].unique())),
                       **spread(task, metric, "all", a)}
        _rank_and_test(rows, None, [], up, equivalent.get(task, {}), alpha, n_boot, seed, None, ranked=up is not None)
        out.extend(rows.values())
    df = pd.DataFrame(out)
    for c in SUMMARY_COLUMNS:
        if c not in df.columns:
            df[c] = np.nan
    return df[SUMMARY_COLUMNS + [c for c in df.columns if c not in SUMMARY_COLUMNS]]


def _rank_and_test(rows: dict, g: pd.DataFrame | None, keys: list[str], up: bool, eq: Mapping[str, str],
                   alpha: float, n_boot: int, seed: int, _unused=None, *, ranked: bool) -> None:
    """Fill rank / is_best / significance fields of one (task, metric) family in place."""
    for r in rows.values():
        r.update(rank=np.nan, is_best=False, diff_vs_best=np.nan, diff_ci_low=np.nan, diff_ci_high=np.nan,
                 p_vs_best=np.nan, p_holm=np.nan, effect_size=np.nan, significant=False, equivalent_to_best=False,
                 within_seed_noise=None)
    if not ranked:
        return
    means = pd.Series({a: r["mean"] for a, r in rows.items()}, dtype=float)
    if means.notna().sum() == 0:
        return
    ranks = (-means if up else means).rank(method="average")
    best = (means.idxmax() if up else means.idxmin())
    for a, r in rows.items():
        r["rank"] = float(ranks[a]) if np.isfinite(ranks[a]) else np.nan
    for a, r in rows.items():  # exact ties with the best are best too
        r["is_best"] = bool(np.isfinite(means[a]) and means[a] == means[best])
    for a, r in rows.items():
        if a != best and eq.get(a) and eq.get(a) == eq.get(best):
            r["equivalent_to_best"] = True
    for a, r in rows.items():  # the between-seed yardstick (module docstring)
        if not r["is_best"] and np.isfinite(means[a]) and "n_seeds" in r:
            r["within_seed_noise"] = ranges_overlap(r, rows[best])
    if g is None or not keys or len(rows) < 2:
        return
    from ..metrics.stats import holm, paired_bootstrap_ci, wilcoxon

    wide = g.pivot_table(index=keys, columns="alignment", values="value", aggfunc="first", dropna=False)
    tested = []
    for a, r in rows.items():
        if r["is_best"] or a not in wide.columns or best not in wide.columns:
            continue  # the best (and exact ties with it) are not tested against themselves
        x, y = wide[a].to_numpy(dtype=float), wide[best].to_numpy(dtype=float)
        mean, lo, hi = paired_bootstrap_ci(x, y, n_resamples=n_boot, seed=seed)
        w = wilcoxon(x, y)
        r.update(diff_vs_best=mean, diff_ci_low=lo, diff_ci_high=hi, p_vs_best=w["p_value"],
                 effect_size=w["rank_biserial"])
        tested.append(a)
    for a, p in zip(tested, holm([rows[a]["p_vs_best"] for a in tested])):
        r = rows[a]
        r["p_holm"] = float(p)
        r["significant"] = bool(np.isfinite(p) and p < alpha and not r["equivalent_to_best"])


# ----------------------------------------------------------------------------- per-unit metrics
def unit_metrics(examples, scorer, cfg, *, model=None, task=None, baselines: bool = True
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-example metric rows and mean curves of one unit's examples.

    Grounding (with the uniform/centre/random baselines), comprehensiveness/sufficiency and the
    faithfulness correlation come from :class:`attnlens.metrics.MetricSuite`; the deletion/insertion
    curves from :func:`attnlens.metrics.functional.faithfulness.perturbation_curves` (their AUCs
    are the rows ``deletion_auc_morf`` ...); agreement with leave-one-out importance
    (:func:`~attnlens.metrics.functional.faithfulness.leave_one_out`, Kendall tau-b, Spearman,
    top-3 overlap) when ``cfg.agreement``, and with captum's attributions of the task's
    ``region_forward`` output for each method of ``cfg.gradient_agreement`` (``ig_*``, ``ixg_*``;
    ``scorer`` must be an :func:`~attnlens.study.example_metrics.example_scorer`). Each example is scored on its own, with random draws
    seeded by its id, so its rows do not depend on the other examples (a sharded capture gives the
    same rows; see :mod:`attnlens.study.example_metrics`); rows come example by example.

    ``baselines``: also score the uniform/centre/random maps on the same targets (they do not
    depend on the model, so the study scores them in one unit per task).

    Returns:
        ``(long, curves)``: long rows ``example_id, method, metric, value, reason, subset, target,
        phrase, category, higher_is_better`` (``method`` is ``"attention"`` or ``"baseline:<name>"``)
        and mean curves ``curve, order, fraction, value``.
    """
    from .example_metrics import mean_curves, metric_rows

    long, curves = metric_rows(list(examples), scorer, cfg, baselines=baselines)
    return long, mean_curves(curves)


def combine_units(longs: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate unit rows; baseline rows (identical across units of a task) become their own
    ``alignment`` (``baseline:uniform`` ...) and are kept once per task, example and target;
    explainer rows (``method = "explainer:<m>"``, :mod:`attnlens.study.explainers`) become
    ``<alignment>+<m>``, ranked with the alignment functions on the same examples."""
    if not longs:
        return pd.DataFrame(columns=["task", "alignment", "seed", "example_id", "metric", "value"])
    long = pd.concat(longs, ignore_index=True)
    if "method" in long.columns:
        expl = long["method"].astype(str).str.startswith("explainer:")
        long.loc[expl, "alignment"] = (long.loc[expl, "alignment"].astype(str) + "+"
                                       + long.loc[expl, "method"].astype(str).str.slice(len("explainer:")))
        base = long["method"].astype(str).str.startswith("baseline:")
        long.loc[base, "alignment"] = long.loc[base, "method"]
        long.loc[base, "seed"] = 0
        dup = base & long.duplicated(subset=["task", "alignment", "example_id", "target", "metric"], keep="first")
        long = long[~dup].reset_index(drop=True)
    return long
