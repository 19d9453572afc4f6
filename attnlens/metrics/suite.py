"""Run a chosen set of registered metrics over ``AnalysisExample``s and return a tidy table.

The metrics, their categories, directions, options and functions are the entries of
:mod:`attnlens.metrics.registry`; the suite turns examples into each entry's input kind (pixel
maps and masks, region weights, the scorer and the region order, the perturbation curves,
attribution vectors) and calls the entry's function. A metric registered with
:func:`~attnlens.metrics.registry.register_metric` is computed without a change here.

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
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..errors import DTypeError, ShapeError, UnknownNameError
from ..geometry import regions_to_pixels, union_mask
from .functional import faithfulness as F
from .functional._common import NO_REGIONS, REASONS, UNDEFINED
from .functional.baselines import BASELINES, baseline_maps
from .registry import FaithfulnessInput, direction, get_metric, metric_names, metrics
from .stats import bootstrap_ci, compare_methods

COLUMNS = ["example_id", "method", "metric", "value", "reason", "subset", "target", "phrase"]
_GROUNDING_KINDS, _PHASE_A, _PHASE_B = ("pixel_map", "region_weights"), ("region_order",), ("curves",)
_NON_FINITE_ATTRIBUTION = "undefined: non-finite attribution"


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


def _select(names, category: str, kinds: tuple[str, ...] | None = None) -> tuple:
    """Registered entries of ``names`` (None: every registered one of ``category``), checked."""
    if names is None:
        return tuple(e for e in metrics(category=category) if kinds is None or e.inputs in kinds)
    if isinstance(names, str):
        raise DTypeError(f"MetricSuite: {category} must be a list of names, got the string {names!r}")
    valid = metric_names(category=category)
    out = []
    for m in names:
        if m not in valid:
            raise UnknownNameError(f"{category} metric", str(m), valid)
        e = get_metric(m)
        if kinds is not None and e.inputs not in kinds:
            raise UnknownNameError(f"{category} metric the suite computes", str(m),
                                   [n for n in valid if get_metric(n).inputs in kinds])
        out.append(e)
    return tuple(out)


@dataclass
class SuiteResult:
    """:meth:`MetricSuite.score`'s output: the tidy rows and, per method, the perturbation curves
    computed for the curve metrics (``{(mode, order): Curve}``)."""

    rows: object
    curves: dict = field(default_factory=dict)


class MetricSuite:
    """A chosen set of registered metrics (:mod:`attnlens.metrics.registry`) over ``AnalysisExample``s.

    Args:
        grounding: names of registered grounding metrics (``None``: all of them, in registration
            order; ``()`` for none).
        faithfulness: names of registered faithfulness metrics (``None``: all; they need
            ``scorers`` in :meth:`run`).
        agreement: names of registered agreement metrics (default none; each needs the
            attributions of its ``source``: ``leave_one_out`` is computed from the scorer, the
            captum sources come from ``attributions`` in :meth:`score`).
        span: ``"head"`` (the head token's row) or ``"mean"`` (mean over the span's tokens).
        baselines: baseline maps scored alongside (names among ``uniform``, ``centre``, ``random``).
        seed: seed of the random draws (random order, random subsets, random baseline map).
        curves: ``(mode, order)`` pairs of perturbation curves to compute even when no selected
            metric reads them (returned by :meth:`score`).
        progress: tqdm bars over the examples.
        **options: metric options by name (``tolerance``, ``k``, ``iou_threshold``, ``steps``,
            ``batch_size``, ``n_subsets``, ...): each selected metric that declares an option of
            that name gets the value (checked by the option's type); the rest keep the registered
            defaults. A name no registered metric declares is an error.

    Row order: per method, its map-based grounding (per metric in the given order, per target)
    and its scorer-based faithfulness (``region_order``); then the baselines (per baseline,
    metric, target); then per method its curve-based faithfulness and its agreement.
    """

    def __init__(self, grounding: Sequence[str] | None = None, faithfulness: Sequence[str] | None = None,
                 agreement: Sequence[str] = (), *, span: str = "head", baselines: Sequence[str] = BASELINES,
                 seed: int = 0, curves: Sequence[tuple[str, str]] = (), progress: bool = True, **options):
        from ..params import int_param

        self.grounding = _select(grounding, "grounding", _GROUNDING_KINDS)
        self.faithfulness = _select(faithfulness, "faithfulness", _PHASE_A + _PHASE_B)
        self.agreement = _select(agreement, "agreement", ("attribution",))
        if isinstance(baselines, str):
            raise DTypeError(f"MetricSuite: baselines must be a list of names, got the string {baselines!r}")
        for b in baselines:
            if b not in BASELINES:
                raise UnknownNameError("baseline", b, BASELINES)
        if span not in ("head", "mean"):
            raise UnknownNameError("span", span, ("head", "mean"))
        known = {o.name for e in metrics() for o in e.options}
        for name in options:
            if name not in known:
                raise UnknownNameError("MetricSuite option", name, sorted(known))
        selected = self.grounding + self.faithfulness + self.agreement
        self.options = {e.name: e.resolve(options) for e in selected}
        for name in options:  # a given option no selected metric reads is still checked
            if not any(name in self.options[e.name] for e in selected):
                next(o for e in metrics() for o in e.options if o.name == name).check(options[name], "MetricSuite")
        for mode, order in curves:
            if mode not in F.MODES or order not in F.ORDERS:
                raise UnknownNameError("curve", f"{mode}/{order}", [f"{m}/{o}" for m in F.MODES for o in F.ORDERS])
        self.curves = tuple(map(tuple, curves))
        self.span, self.baselines = span, tuple(baselines)
        self.seed, self.progress = int_param(seed, "seed", "MetricSuite", lo=0), progress
        # one set of curves serves every curve metric: steps and batch size of the selected ones (they
        # share the options given), else of the first registered curve metric
        reader = next((e for e in self.faithfulness if e.inputs == "curves"), None) or next(
            iter(metrics(inputs="curves")), None)
        curve_opts = {} if reader is None else reader.resolve(options)
        self.steps, self.batch_size = curve_opts.get("steps", 20), curve_opts.get("batch_size", 256)

    def __repr__(self) -> str:
        names = lambda es: tuple(e.name for e in es)  # noqa: E731
        return (f"MetricSuite(grounding={names(self.grounding)}, faithfulness={names(self.faithfulness)}, "
                f"agreement={names(self.agreement)})")

    # ------------------------------------------------------------------ public
    def run(self, examples, scorers: Mapping[str, F.ScoreFn] | None = None, *, subset: str | None = None,
            attributions: Mapping[str, Callable] | None = None):
        """Score ``examples`` (``{method: [AnalysisExample]}`` or a flat list grouped by alignment).

        Returns:
            Tidy ``pandas.DataFrame`` with :data:`COLUMNS`.
        """
        return self.score(examples, scorers, subset=subset, attributions=attributions).rows

    def score(self, examples, scorers: Mapping[str, F.ScoreFn] | None = None, *, subset: str | None = None,
              attributions: Mapping[str, Callable] | None = None) -> SuiteResult:
        """:meth:`run` plus the perturbation curves of each method.

        ``attributions[method](source, i)`` gives the attribution of example ``i`` of ``method`` for
        an agreement source: an ``[R]`` array, an ``(array [R], valid [R])`` pair (regions outside
        ``valid`` are left out, besides the example's padded ones), or a string (the reason every
        row of that source is NaN). ``leave_one_out`` without a provider is computed from the scorer.
        """
        import pandas as pd

        groups = group_by_method(examples)
        needs_scorer = bool(self.faithfulness) or any(
            e.source == "leave_one_out" and (attributions is None or m not in attributions)
            for e in self.agreement for m in groups)
        if needs_scorer:
            for method in groups:
                if scorers is None or method not in scorers:
                    raise ShapeError(f"MetricSuite.run: faithfulness metrics need scorers[{method!r}]; "
                                     f"got scorers for {sorted(scorers or {})}")
        rows: list[dict] = []
        targets_seen: dict[tuple[str, int], tuple] = {}
        inputs, curves = {}, {}
        for method, exs in groups.items():
            if self.grounding:
                rows += self._grounding(method, exs, subset, targets_seen)
            if (self.faithfulness or self.agreement) and exs:
                inputs[method] = self._faithfulness_input(method, exs, scorers[method] if scorers and method in
                                                          scorers else None)
                rows += self._region_order(method, exs, inputs[method], subset)
        if self.grounding and self.baselines and targets_seen:
            rows += self._baselines(targets_seen)
        for method, exs in groups.items():
            if method not in inputs:
                continue
            rows += self._curve_rows(method, exs, inputs[method], subset, curves)
            if self.agreement:
                provide = None if attributions is None else attributions.get(method)
                rows += self._agreement(method, exs, inputs[method], subset, provide)
        return SuiteResult(pd.DataFrame(rows, columns=COLUMNS), curves)

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
        modes = {e.pixels for e in self.grounding if e.inputs == "pixel_map"}
        for (size, _), its in by_shape.items():
            w = torch.stack([it["weights"] for it in its])
            v = torch.stack([it["valid"] for it in its])
            b = torch.stack([it["boxes"] for it in its])
            no_regions = ~(torch.where(v, w, 0.0) > 0).any(1)
            gt = [it["gt"] for it in its]
            masks = torch.stack([union_mask(g, size) for g in gt])
            maps = {m: regions_to_pixels(w, b, size, mode=m, valid=v) for m in ("max", "density") if m in modes}
            res = self._grounding_values(maps, masks, gt, w=w, b=b, v=v)
            for metric, (vals, codes) in res.items():
                codes = torch.where(no_regions, NO_REGIONS, codes)
                vals = torch.where(no_regions, torch.nan, vals)
                rows += [self._row(it, method, metric, float(x), int(c)) for it, x, c in zip(its, vals, codes)]
        return rows

    def _grounding_values(self, maps, masks, gt, w=None, b=None, v=None):
        """``{metric: (values, codes)}``; ``maps`` by pixel mode; region-weight metrics need ``w``."""
        res = {}
        for e in self.grounding:
            if e.inputs == "pixel_map":
                res[e.name] = e.fn(maps[e.pixels], masks, gt, **self.options[e.name])
            elif w is not None:
                res[e.name] = e.fn(w, b, gt, v, **self.options[e.name])
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
                m = baseline_maps(name, len(its), size[0], size[1], self.seed)
                for metric, (vals, codes) in self._grounding_values({"max": m, "density": m}, masks, gt).items():
                    rows += [self._row(it, f"baseline:{name}", metric, float(x), int(c))
                             for it, x, c in zip(its, vals, codes)]
        return rows

    @staticmethod
    def _row(it, method, metric, value, code, reason: str = ""):
        reason = "" if np.isfinite(value) else (reason or REASONS[code] or REASONS[UNDEFINED])
        return dict(example_id=it["example_id"], method=method, metric=metric, value=value, reason=reason,
                    subset=it["subset"], target=it["target"], phrase=it["phrase"])

    # ------------------------------------------------------------------ faithfulness and agreement
    def _faithfulness_input(self, method, exs, score) -> FaithfulnessInput:
        rs = {len(ex.region_valid) for ex in exs}
        if len(rs) != 1:
            raise ShapeError(f"MetricSuite: examples of method {method!r} have different region counts {sorted(rs)}; "
                             f"pad them to one R with region_valid")
        imp = torch.stack([ex.region_importance.detach().double().cpu() for ex in exs])
        valid = torch.stack([torch.tensor(np.array(ex.region_valid, dtype=bool)) for ex in exs])
        imp = torch.where(valid, imp, 0.0)
        return FaithfulnessInput(score, imp, valid, self.seed, self.progress)

    def _example_rows(self, exs, inp, method, metric, values, subset):
        nov = ~inp.valid.any(1)
        rows = []
        for i, ex in enumerate(exs):
            code = NO_REGIONS if bool(nov[i]) else UNDEFINED
            it = dict(example_id=ex.example_id, target=-1, phrase="", subset=subset or ex.meta.get("subset", "all"))
            rows.append(self._row(it, method, metric, float(values[i]), code))
        return rows

    def _region_order(self, method, exs, inp, subset):
        return [r for e in self.faithfulness if e.inputs == "region_order"
                for r in self._example_rows(exs, inp, method, e.name, e.fn(inp, **self.options[e.name]), subset)]

    def _curve_rows(self, method, exs, inp, subset, out):
        want = dict.fromkeys(self.curves)
        for e in self.faithfulness:
            if e.inputs == "curves":
                want.update(dict.fromkeys(e.curves))
        if not want:
            return []
        modes = tuple(m for m in F.MODES if any(k[0] == m for k in want))
        orders = tuple(o for o in F.ORDERS if any(k[1] == o for k in want))
        cs = F.perturbation_curves(inp.score, inp.importance, valid=inp.valid, modes=modes, orders=orders,
                                   steps=self.steps, batch_size=self.batch_size, seed=inp.seed, progress=self.progress)
        out[method] = cs
        return [r for e in self.faithfulness if e.inputs == "curves"
                for r in self._example_rows(exs, inp, method, e.name, e.fn(cs, **self.options[e.name]), subset)]

    def _attribution(self, exs, inp, provide, source, i, cache):
        if provide is not None:
            got = provide(source, i)
        elif source == "leave_one_out":
            if "loo" not in cache:
                cache["loo"] = F.leave_one_out(inp.score, inp.valid)
            got = cache["loo"][i]
        else:
            got = f"undefined: no {source} attributions were given"
        if isinstance(got, str):
            return got
        extra = None
        if isinstance(got, tuple):
            got, extra = got
        a = torch.as_tensor(got).detach().double().cpu().numpy().reshape(-1)
        v = inp.valid[i].numpy().copy()
        if a.shape != v.shape:
            raise ShapeError(f"{exs[i].example_id}: {source} attribution {a.shape} does not fit its {len(v)} regions")
        if extra is not None:
            v &= np.asarray(torch.as_tensor(extra).detach().cpu().numpy(), dtype=bool).reshape(-1)
        return a, v

    def _agreement(self, method, exs, inp, subset, provide):
        rows, cache = [], {}
        sources = list(dict.fromkeys(e.source for e in self.agreement))
        for i, ex in enumerate(exs):
            it = dict(example_id=ex.example_id, target=-1, phrase="", subset=subset or ex.meta.get("subset", "all"))
            for source in sources:
                got = self._attribution(exs, inp, provide, source, i, cache)
                entries = [e for e in self.agreement if e.source == source]
                if isinstance(got, str):
                    rows += [self._row(it, method, e.name, float("nan"), UNDEFINED, got) for e in entries]
                    continue
                attr, v = got
                imp = inp.importance[i].numpy()[v]
                finite = bool(np.isfinite(attr[v]).all())
                for e in entries:
                    x = float(e.fn(imp, attr[v], **self.options[e.name])) if finite else float("nan")
                    rows.append(self._row(it, method, e.name, x, UNDEFINED, "" if finite else _NON_FINITE_ATTRIBUTION))
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
                     "higher_is_better": direction(metric)})
    return pd.DataFrame(rows, columns=keys + ["mean", "ci_low", "ci_high", "n", "n_excluded", "reasons",
                                              "higher_is_better"])
