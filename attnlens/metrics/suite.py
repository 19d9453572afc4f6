"""Run a chosen set of metrics over ``AnalysisExample``s and return a tidy table.

:class:`MetricSuite` groups examples by *method* (the alignment function that produced the
attention) and returns one row per example x method x metric with the columns
``example_id, method, metric, value, reason, subset, target, phrase`` (``target`` is the index
of the grounded span, -1 for example-level metrics; ``reason`` explains a NaN).

Grounding on an example: for each :class:`~attnlens.tasks.base.GroundingTarget`, the head
token's attention row over the regions (``span="mean"``: the mean over the span's tokens), with
padded regions dropped and the rest renormalised, becomes a pixel map at the original image size
with :func:`attnlens.geometry.regions_to_pixels`: ``max`` mode for the pointing game and box
accuracy, ``density`` mode for the mass- and rank-based metrics. G is the union mask of the
target's boxes. Baseline rows (``baseline:uniform``, ``baseline:centre``, ``baseline:random``)
are scored on the same targets.

Faithfulness on an example uses ``scorers[method]`` (from ``Task.scorer(model, examples)``; row
``index`` = the example's position in that method's list) and ``example.region_importance``
(attention averaged over the words) as the order.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Mapping, Sequence

import numpy as np
import torch

from ..errors import DTypeError, ShapeError, UnknownNameError
from ..params import int_param, real_param
from ..geometry import regions_to_pixels, union_mask
from .functional import faithfulness as F
from .functional import grounding as G
from .functional._common import NO_REGIONS, REASONS, UNDEFINED
from .functional.baselines import BASELINES, baseline_maps
from .stats import bootstrap_ci, compare_methods

GROUNDING = ("pointing_game", "top1_region_hit", "relevance_mass_accuracy", "relevance_rank_accuracy",
             "mask_auroc", "box_accuracy", "topk_intersection")
FAITHFULNESS = ("deletion_auc_morf", "deletion_auc_lerf", "deletion_auc_random", "insertion_auc_morf",
                "insertion_auc_lerf", "insertion_auc_random", "comprehensiveness_aopc", "sufficiency_aopc",
                "faithfulness_correlation")
#: Direction of every metric the suite can produce.
HIGHER_IS_BETTER = {**{m: True for m in GROUNDING}, "comprehensiveness_aopc": True, "sufficiency_aopc": False,
                    "faithfulness_correlation": True, "deletion_auc_morf": False, "deletion_auc_lerf": True,
                    "deletion_auc_random": False, "insertion_auc_morf": True, "insertion_auc_lerf": False,
                    "insertion_auc_random": True}
COLUMNS = ["example_id", "method", "metric", "value", "reason", "subset", "target", "phrase"]


def _method_of(ex) -> str:
    return ex.attention.alignment or ex.meta.get("alignment") or "attention"


def group_by_method(examples) -> dict[str, list]:
    """``{method: [examples]}`` from a mapping (kept) or a flat sequence (by alignment name)."""
    if isinstance(examples, Mapping):
        return {str(k): list(v) for k, v in examples.items()}
    out: dict[str, list] = defaultdict(list)
    for ex in examples:
        out[_method_of(ex)].append(ex)
    return dict(out)


class MetricSuite:
    """A chosen set of grounding and faithfulness metrics.

    Args:
        grounding: names among :data:`GROUNDING` (``()`` for none).
        faithfulness: names among :data:`FAITHFULNESS` (need ``scorers`` in :meth:`run`).
        tolerance: pointing-game tolerance in pixels.
        span: ``"head"`` (the head token's row) or ``"mean"`` (mean over the span's tokens).
        k: top-k intersection size (capped at the number of pixels).
        iou_threshold: for ``top1_region_hit`` and ``box_accuracy``.
        baselines: baseline maps scored alongside (names among ``uniform``, ``centre``, ``random``).
        steps, batch_size, n_subsets, seed: faithfulness settings.
        progress: tqdm bars over the examples.
    """

    def __init__(self, grounding: Sequence[str] = GROUNDING, faithfulness: Sequence[str] = FAITHFULNESS, *,
                 tolerance: float = 15, span: str = "head", k: int = 1000, iou_threshold: float = 0.5,
                 baselines: Sequence[str] = BASELINES, steps: int = 20, batch_size: int = 256,
                 n_subsets: int = 100, seed: int = 0, progress: bool = True):
        for what, names in (("grounding", grounding), ("faithfulness", faithfulness), ("baselines", baselines)):
            if isinstance(names, str):
                raise DTypeError(f"MetricSuite: {what} must be a list of names, got the string {names!r}")
        tolerance = real_param(tolerance, "tolerance", "MetricSuite", lo=0)
        k = int_param(k, "k", "MetricSuite", lo=1)
        iou_threshold = real_param(iou_threshold, "iou_threshold", "MetricSuite", lo=0, hi=1)
        steps = int_param(steps, "steps", "MetricSuite", lo=1)
        batch_size = int_param(batch_size, "batch_size", "MetricSuite", lo=1)
        n_subsets = int_param(n_subsets, "n_subsets", "MetricSuite", lo=2)
        seed = int_param(seed, "seed", "MetricSuite", lo=0)
        for m in grounding:
            if m not in GROUNDING:
                raise UnknownNameError("grounding metric", m, GROUNDING)
        for m in faithfulness:
            if m not in FAITHFULNESS:
                raise UnknownNameError("faithfulness metric", m, FAITHFULNESS)
        for b in baselines:
            if b not in BASELINES:
                raise UnknownNameError("baseline", b, BASELINES)
        if span not in ("head", "mean"):
            raise UnknownNameError("span", span, ("head", "mean"))
        self.grounding, self.faithfulness = tuple(grounding), tuple(faithfulness)
        self.tolerance, self.span, self.k, self.iou_threshold = tolerance, span, k, iou_threshold
        self.baselines, self.steps, self.batch_size = tuple(baselines), steps, batch_size
        self.n_subsets, self.seed, self.progress = n_subsets, seed, progress

    def __repr__(self) -> str:
        return f"MetricSuite(grounding={self.grounding}, faithfulness={self.faithfulness})"

    # ------------------------------------------------------------------ public
    def run(self, examples, scorers: Mapping[str, F.ScoreFn] | None = None, *, subset: str | None = None):
        """Score ``examples`` (``{method: [AnalysisExample]}`` or a flat list grouped by alignment).

        Returns:
            Tidy ``pandas.DataFrame`` with :data:`COLUMNS`.
        """
        import pandas as pd

        groups = group_by_method(examples)
        rows: list[dict] = []
        targets_seen: dict[tuple[str, int], tuple] = {}
        for method, exs in groups.items():
            if self.grounding:
                rows += self._grounding(method, exs, subset, targets_seen)
            if self.faithfulness:
                if scorers is None or method not in scorers:
                    raise ShapeError(f"MetricSuite.run: faithfulness metrics need scorers[{method!r}]; "
                                     f"got scorers for {sorted(scorers or {})}")
                rows += self._faithfulness(method, exs, scorers[method], subset)
        if self.grounding and self.baselines and targets_seen:
            rows += self._baselines(targets_seen)
        return pd.DataFrame(rows, columns=COLUMNS)

    @staticmethod
    def summary(df, **options):
        """:func:`summary` of a table returned by :meth:`run`."""
        return summary(df, **options)

    @staticmethod
    def compare(df, **options):
        """:func:`attnlens.metrics.stats.compare_methods` of a table returned by :meth:`run`."""
        return compare_methods(df, **options)

    # ------------------------------------------------------------------ grounding
    def _items(self, method, exs, subset, seen):
        from tqdm.auto import tqdm

        items = []
        for ex in tqdm(exs, desc=f"grounding [{method}]", disable=not self.progress, leave=False):
            w = ex.attention.weights.detach().double().cpu()
            if w.ndim != 2:
                raise ShapeError(f"{ex.example_id}: attention {tuple(w.shape)} must be [word, region]")
            valid = torch.tensor(np.array(ex.region_valid, dtype=bool))
            boxes = torch.tensor(np.array(ex.regions.boxes, dtype=np.float64))
            if valid.shape != (w.shape[1],) or boxes.shape != (w.shape[1], 4):
                raise ShapeError(f"{ex.example_id}: attention {tuple(w.shape)}, region_valid {tuple(valid.shape)} "
                                 f"and boxes {tuple(boxes.shape)} disagree on R")
            size = tuple(int(s) for s in ex.regions.image_size)
            sub = subset or ex.meta.get("subset", "all")
            for j, t in enumerate(ex.targets):
                row = w[t.head] if self.span == "head" else w[list(t.tokens)].mean(0)
                gt = np.array(t.boxes, dtype=np.float64).reshape(-1, 4)  # a writable copy
                items.append(dict(example_id=ex.example_id, target=j, phrase=t.label, subset=sub, size=size,
                                  weights=row, valid=valid, boxes=boxes, gt=gt))
                seen.setdefault((ex.example_id, j), (size, gt, t.label, sub))
        return items

    def _grounding(self, method, exs, subset, seen):
        rows = []
        items = self._items(method, exs, subset, seen)
        by_shape = defaultdict(list)
        for it in items:
            by_shape[(it["size"], len(it["weights"]))].append(it)
        for (size, _), its in by_shape.items():
            w = torch.stack([it["weights"] for it in its])
            v = torch.stack([it["valid"] for it in its])
            b = torch.stack([it["boxes"] for it in its])
            no_regions = ~(torch.where(v, w, 0.0) > 0).any(1)
            gt = [it["gt"] for it in its]
            masks = torch.stack([union_mask(g, size) for g in gt])
            need_max = {"pointing_game", "box_accuracy"} & set(self.grounding)
            need_den = set(self.grounding) - need_max - {"top1_region_hit"}
            mx = regions_to_pixels(w, b, size, mode="max", valid=v) if need_max else None
            den = regions_to_pixels(w, b, size, mode="density", valid=v) if need_den else None
            res = self._grounding_values(mx, den, masks, gt, w=w, b=b, v=v)
            for metric, (vals, codes) in res.items():
                codes = torch.where(no_regions, NO_REGIONS, codes)
                vals = torch.where(no_regions, torch.nan, vals)
                rows += [self._row(it, method, metric, float(x), int(c)) for it, x, c in zip(its, vals, codes)]
        return rows

    def _grounding_values(self, mx, den, masks, gt, w=None, b=None, v=None):
        res = {}
        for m in self.grounding:
            if m == "pointing_game":
                res[m] = G._pointing_game_update(mx, masks, self.tolerance)
            elif m == "box_accuracy":
                res[m] = G._box_accuracy_update(mx, gt, self.iou_threshold)
            elif m == "top1_region_hit":
                if w is not None:
                    res[m] = G._top1_region_hit_update(w, b, gt, self.iou_threshold, v)
            elif m == "relevance_mass_accuracy":
                res[m] = G._relevance_mass_accuracy_update(den, masks, "clip")
            elif m == "relevance_rank_accuracy":
                res[m] = G._relevance_rank_accuracy_update(den, masks)
            elif m == "mask_auroc":
                res[m] = G._mask_auroc_update(den, masks)
            elif m == "topk_intersection":
                res[m] = G._topk_intersection_update(den, masks, min(self.k, den.shape[1] * den.shape[2]))
        return res

    def _baselines(self, seen):
        rows = []
        by_size = defaultdict(list)
        for (eid, j), (size, gt, label, sub) in seen.items():
            by_size[size].append(dict(example_id=eid, target=j, phrase=label, subset=sub, gt=gt))
        for size, its in by_size.items():
            masks = torch.stack([union_mask(it["gt"], size) for it in its])
            gt = [it["gt"] for it in its]
            for name in self.baselines:
                maps = baseline_maps(name, len(its), size[0], size[1], self.seed)
                for metric, (vals, codes) in self._grounding_values(maps, maps, masks, gt).items():
                    rows += [self._row(it, f"baseline:{name}", metric, float(x), int(c))
                             for it, x, c in zip(its, vals, codes)]
        return rows

    @staticmethod
    def _row(it, method, metric, value, code):
        reason = "" if np.isfinite(value) else (REASONS[code] or REASONS[UNDEFINED])
        return dict(example_id=it["example_id"], method=method, metric=metric, value=value, reason=reason,
                    subset=it["subset"], target=it["target"], phrase=it["phrase"])

    # ------------------------------------------------------------------ faithfulness
    def _faithfulness(self, method, exs, score, subset):
        if not exs:
            return []
        rs = {len(ex.region_valid) for ex in exs}
        if len(rs) != 1:
            raise ShapeError(f"MetricSuite: examples of method {method!r} have different region counts {sorted(rs)}; "
                             f"pad them to one R with region_valid")
        imp = torch.stack([ex.region_importance.detach().double().cpu() for ex in exs])
        valid = torch.stack([torch.tensor(np.array(ex.region_valid, dtype=bool)) for ex in exs])
        imp = torch.where(valid, imp, 0.0)
        res: dict[str, torch.Tensor] = {}
        curves = [m for m in self.faithfulness if m.startswith(("deletion", "insertion"))]
        if curves:
            modes = tuple(dict.fromkeys(m.split("_")[0] for m in curves))
            orders = tuple(dict.fromkeys(m.rsplit("_", 1)[1] for m in curves))
            cs = F.perturbation_curves(score, imp, valid=valid, modes=modes, orders=orders, steps=self.steps,
                                       batch_size=self.batch_size, seed=self.seed, progress=self.progress)
            for m in curves:
                res[m] = cs[(m.split("_")[0], m.rsplit("_", 1)[1])].auc
        if {"comprehensiveness_aopc", "sufficiency_aopc"} & set(self.faithfulness):
            er = F.eraser(score, imp, valid=valid, batch_size=self.batch_size, progress=self.progress)
            for m in ("comprehensiveness_aopc", "sufficiency_aopc"):
                if m in self.faithfulness:
                    res[m] = er[m]
        if "faithfulness_correlation" in self.faithfulness:
            res["faithfulness_correlation"] = F.faithfulness_correlation(
                score, imp, valid=valid, n_subsets=self.n_subsets, seed=self.seed, batch_size=self.batch_size,
                progress=self.progress)
        nov = ~valid.any(1)
        rows = []
        for m in self.faithfulness:
            for i, ex in enumerate(exs):
                x = float(res[m][i])
                code = NO_REGIONS if bool(nov[i]) else UNDEFINED
                it = dict(example_id=ex.example_id, target=-1, phrase="",
                          subset=subset or ex.meta.get("subset", "all"))
                rows.append(self._row(it, method, m, x, code))
        return rows


def summary(df, *, n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0):
    """Per method x metric x subset: mean, bootstrap CI, n, n_excluded and the reasons.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"example_id": ["a", "b", "c"], "method": "dot", "metric": "pointing_game",
    ...                    "value": [1.0, 0.0, float("nan")], "reason": ["", "", "empty mask"], "subset": "all"})
    >>> summary(df, n_resamples=100)[["mean", "n", "n_excluded", "reasons"]].values.tolist()
    [[0.5, 2, 1, 'empty mask: 1']]
    """
    import pandas as pd

    keys = [c for c in ("method", "metric", "subset") if c in df.columns]
    rows = []
    for key, g in df.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        vals = g["value"].to_numpy(dtype=np.float64)
        ok = np.isfinite(vals)
        mean, lo, hi = bootstrap_ci(vals, n_resamples=n_resamples, confidence=confidence, seed=seed)
        reasons = Counter(r or REASONS[UNDEFINED] for r in g.loc[~ok, "reason"]) if "reason" in g else Counter()
        metric = dict(zip(keys, key)).get("metric")
        rows.append({**dict(zip(keys, key)), "mean": mean, "ci_low": lo, "ci_high": hi, "n": int(ok.sum()),
                     "n_excluded": int((~ok).sum()),
                     "reasons": "; ".join(f"{r}: {c}" for r, c in sorted(reasons.items())),
                     "higher_is_better": HIGHER_IS_BETTER.get(metric)})
    return pd.DataFrame(rows, columns=keys + ["mean", "ci_low", "ci_high", "n", "n_excluded", "reasons",
                                              "higher_is_better"])
