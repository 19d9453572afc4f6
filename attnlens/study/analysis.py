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
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import align as _align

__all__ = ["summarize", "task_rows", "equivalences", "unit_metrics", "combine_units", "SUMMARY_COLUMNS",
           "LOWER_IS_BETTER"]

SUMMARY_COLUMNS = ["task", "alignment", "metric", "category", "subset", "mean", "ci_low", "ci_high", "n",
                   "n_excluded", "excluded_reasons", "higher_is_better", "rank", "is_best", "diff_vs_best",
                   "diff_ci_low", "diff_ci_high", "p_vs_best", "p_holm", "effect_size", "significant",
                   "equivalent_group", "equivalent_to_best", "seeds"]

#: Metric names (or name fragments) for which lower values are better, when the rows do not say.
LOWER_IS_BETTER = ("deletion_auc_morf", "deletion_auc_random", "sufficiency", "loss", "error", "fid", "medr",
                   "meanr", "median_rank", "mean_rank", "perplexity")
PAIR_KEYS = ("example_id", "target", "seed")


def _higher_is_better(metric: str, given=None) -> bool:
    if given is not None and not (isinstance(given, float) and np.isnan(given)):
        return bool(given) if not isinstance(given, str) else given.lower() == "true"
    return not any(s in metric for s in LOWER_IS_BETTER)


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


def summarize(long: pd.DataFrame, records: Sequence[Mapping[str, Any]], *, equivalent: Mapping[str, Mapping[str, str]]
              | None = None, n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """The summary table: one row per task x alignment x metric (x subset), columns :data:`SUMMARY_COLUMNS`.

    Args:
        long: per-example rows with ``task, alignment, seed, example_id, metric, value`` and
            optionally ``category, subset, reason, target, higher_is_better``.
        records: the unit records (their ``task_metrics`` become ``category == "task"`` rows).
        equivalent: per task, ``{alignment: group label}`` (:func:`equivalences`).
        n_boot, alpha, seed: bootstrap resamples, significance level, bootstrap seed.
    """
    from ..metrics.stats import bootstrap_ci

    equivalent = equivalent or {}
    long = long.copy()
    for col, default in (("category", "metric"), ("subset", "all"), ("reason", "")):
        if col not in long.columns:
            long[col] = default
        long[col] = long[col].fillna(default)
    long["subset"] = long["subset"].astype(str)
    if (long["subset"] != "all").any():  # per-subset rows plus the overall ones
        long = pd.concat([long.assign(subset="all"), long[long["subset"] != "all"]], ignore_index=True)
    hib = {}
    if "higher_is_better" in long.columns:
        hib = long.dropna(subset=["higher_is_better"]).groupby("metric")["higher_is_better"].first().to_dict()
    task_df = task_rows(records)
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
                       "seeds": ",".join(str(s) for s in sorted(ga["seed"].unique())) if "seed" in ga else ""}
        g_att = g[~g["alignment"].astype(str).str.startswith("baseline:")]
        _rank_and_test(rows, g_att, keys, up, eq, alpha, n_boot, seed, ranked=True)
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
                       "seeds": ",".join(str(s) for s in sorted(ga["seed"].unique()))}
        _rank_and_test(rows, None, [], up, equivalent.get(task, {}), alpha, n_boot, seed, None, ranked=True)
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
                 p_vs_best=np.nan, p_holm=np.nan, effect_size=np.nan, significant=False, equivalent_to_best=False)
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
CURVE_MODES, CURVE_ORDERS = ("deletion", "insertion"), ("morf", "lerf", "random")


def unit_metrics(examples, scorer, cfg, *, model=None, task=None, baselines: bool = True
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-example metric rows and mean curves of one unit's examples.

    Grounding (with the uniform/centre/random baselines), comprehensiveness/sufficiency and the
    faithfulness correlation come from :class:`attnlens.metrics.MetricSuite`; the deletion/insertion
    curves from :func:`attnlens.metrics.functional.faithfulness.perturbation_curves` (one batched
    pass; their AUCs are the rows ``deletion_auc_morf`` ...); agreement with leave-one-out
    importance (:func:`~attnlens.metrics.functional.faithfulness.leave_one_out`, Kendall tau-b,
    Spearman, top-3 overlap) when ``cfg.agreement``.

    ``baselines``: also score the uniform/centre/random maps on the same targets (they do not
    depend on the model, so the study scores them in one unit per task).

    Returns:
        ``(long, curves)``: long rows ``example_id, method, metric, value, reason, subset, target,
        phrase, category, higher_is_better`` (``method`` is ``"attention"`` or ``"baseline:<name>"``)
        and mean curves ``curve, order, fraction, value``.
    """
    import torch

    from ..metrics import MetricSuite
    from ..metrics.functional import faithfulness as F
    from ..metrics.functional.agreement import rank_agreement
    from ..metrics.suite import GROUNDING, HIGHER_IS_BETTER

    examples = list(examples)
    from ..metrics.functional.baselines import BASELINES

    suite = MetricSuite(GROUNDING, ("comprehensiveness_aopc", "sufficiency_aopc", "faithfulness_correlation"),
                        steps=cfg.steps, n_subsets=cfg.n_subsets, progress=False,
                        baselines=BASELINES if baselines else ())
    df = suite.run({"attention": examples}, {"attention": scorer})
    df["category"] = np.where(df["method"].str.startswith("baseline:"), "baseline",
                              np.where(df["metric"].isin(GROUNDING), "grounding", "faithfulness"))
    extra, curve_rows = [], []
    imp = torch.stack([ex.region_importance.detach().double().cpu() for ex in examples])
    valid = torch.stack([torch.as_tensor(np.asarray(ex.region_valid, dtype=bool)) for ex in examples])
    imp = torch.where(valid, imp, 0.0)
    curves = F.perturbation_curves(scorer, imp, valid=valid, modes=CURVE_MODES, orders=CURVE_ORDERS,
                                   steps=cfg.steps, progress=False)
    for (mode, order), c in curves.items():
        name = f"{mode}_auc_{order}"
        for ex, v in zip(examples, c.auc.tolist()):
            extra.append(_row(ex, name, v, "faithfulness"))
        mean = c.values.double().nanmean(0).tolist()
        curve_rows += [{"curve": mode, "order": order, "fraction": float(f), "value": float(v)}
                       for f, v in zip(c.fractions.tolist(), mean)]
    # the signal is the gap to the random order (METRICS.md), not a raw AUC: a model whose output
    # ignores the regions has flat curves, a high raw insertion AUC and a zero gap
    gaps = {"deletion_gap": ("deletion", "random", "morf"), "insertion_gap": ("insertion", "morf", "random")}
    for name, (mode, hi, lo) in gaps.items():
        if (mode, hi) in curves and (mode, lo) in curves:
            diff = (curves[(mode, hi)].auc - curves[(mode, lo)].auc).tolist()
            extra += [_row(ex, name, v, "faithfulness") for ex, v in zip(examples, diff)]
    if cfg.agreement:
        loo = F.leave_one_out(scorer, valid)
        for i, ex in enumerate(examples):
            v = valid[i].numpy()
            ag = rank_agreement(imp[i].numpy()[v], loo[i].numpy()[v], k=3)
            for k, val in ag.items():
                extra.append(_row(ex, f"loo_{k}", val, "agreement"))
    long = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)
    hib = {**HIGHER_IS_BETTER, "deletion_gap": True, "insertion_gap": True,
           **{f"loo_{k}": True for k in ("kendall_tau", "spearman", "topk_overlap")}}
    long["higher_is_better"] = long["metric"].map(hib)
    return long, pd.DataFrame(curve_rows, columns=["curve", "order", "fraction", "value"])


def _row(ex, metric: str, value: float, category: str) -> dict:
    value = float(value)
    return {"example_id": ex.example_id, "method": "attention", "metric": metric, "value": value,
            "reason": "" if np.isfinite(value) else "undefined (constant input or too few elements)",
            "subset": ex.meta.get("subset", "all"), "target": -1, "phrase": "", "category": category}


def combine_units(longs: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate unit rows; baseline rows (identical across units of a task) become their own
    ``alignment`` (``baseline:uniform`` ...) and are kept once per task, example and target."""
    if not longs:
        return pd.DataFrame(columns=["task", "alignment", "seed", "example_id", "metric", "value"])
    long = pd.concat(longs, ignore_index=True)
    if "method" in long.columns:
        base = long["method"].astype(str).str.startswith("baseline:")
        long.loc[base, "alignment"] = long.loc[base, "method"]
        long.loc[base, "seed"] = 0
        dup = base & long.duplicated(subset=["task", "alignment", "example_id", "target", "metric"], keep="first")
        long = long[~dup].reset_index(drop=True)
    return long
