"""Per-example metric rows: every number of an example depends on that example alone.

The study's metric rows (:func:`attnlens.study.analysis.unit_metrics`) are computed one example
at a time, so that a split cut into shards (:mod:`attnlens.study.dataset`) gives the same
rows, bit for bit, as one pass over all its examples:

* random draws (the random deletion order, the faithfulness-correlation subsets, the random
  baseline map) come from generators seeded by :func:`example_seed` of the example's id, not
  from one stream shared by the examples of a call;
* the model scores the perturbed inputs of one example per call, so no forward mixes examples
  (a batched matrix product can round a row differently when other rows share the batch);
* :func:`example_scorer` builds the task's scorer on each example alone (a scorer built over many
  examples encodes their images in one batch, with the same caveat).

The metrics are the registered ones (:mod:`attnlens.metrics.registry`), computed by one
:class:`~attnlens.metrics.MetricSuite` per example (:func:`study_suite`): every grounding and
faithfulness metric, and the agreement metrics of the sources the settings ask for. A metric
registered with :func:`~attnlens.metrics.registry.register_metric` reaches the rows (and
``metrics.csv``) with its category and direction, without a change here.

Agreement of the attention (``region_importance``) with each example's attributions, over its
valid regions (Kendall tau-b, Spearman, top-3 overlap): ``loo_*`` with the leave-one-out
importance (the scorer's output drop when one region is removed), and per method of
``StudyConfig.gradient_agreement`` ``ig_*`` (integrated gradients, zero baseline,
:data:`IG_STEPS` steps), ``ixg_*`` (input x gradient), ``ablation_*`` (feature ablation) with
captum's attributions of the task's ``region_forward`` output (the scorer's output as a
function of the region features), summed over the feature dimension
(:func:`attnlens.metrics.functional.agreement.attributions`). A task without ``region_forward``
gets NaN rows with the reason.

Row order: example by example, in the examples' order; within an example the suite's order:
grounding (per metric, per target), the scorer-based faithfulness (ERASER, the faithfulness
correlation), the baselines (per baseline, metric, target), the curve-based faithfulness (the
curves' AUCs, the gaps), the leave-one-out agreement, the gradient agreement (per method); within
each group, registration order. The curves are kept per example (:func:`metric_rows`) and averaged by
:func:`mean_curves`, so that shards are averaged after they are merged.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import ShapeError

__all__ = ["example_seed", "example_scorer", "metric_rows", "mean_curves", "CURVE_MODES", "CURVE_ORDERS",
           "CURVE_COLUMNS", "EXAMPLE_CURVE_COLUMNS", "IG_STEPS",
           "study_suite"]

CURVE_MODES, CURVE_ORDERS = ("deletion", "insertion"), ("morf", "lerf", "random")
#: Columns of the mean curves (``curves.csv``).
CURVE_COLUMNS = ["curve", "order", "fraction", "value"]
#: Columns of the per-example curves returned by :func:`metric_rows`.
EXAMPLE_CURVE_COLUMNS = ["example_id", "curve", "order", "fraction", "value"]
#: Integrated-gradients steps (captum's Gauss-Legendre quadrature, the whole path in one batch).
#: On the demo VQA models 64 steps rank the regions as 256 do (mean Kendall tau 0.996-1.0 over 24
#: examples; 32 steps: 0.993-0.997) at ~5 ms per example on one CPU thread.
IG_STEPS = 64
_NOT_EXAMPLE_SCORER = "undefined: the scorer is not an example_scorer (no task and model to differentiate)"
_NO_REGION_FORWARD = "undefined: the task has no region_forward (no differentiable output of its region features)"


def example_seed(seed: int, example_id: str) -> int:
    """The seed of one example's random draws: a 63-bit hash of ``(seed, example_id)``.

    >>> example_seed(0, "scene_0001/0") == example_seed(0, "scene_0001/0") != example_seed(1, "scene_0001/0")
    True
    """
    digest = hashlib.blake2b(f"{int(seed)}\x00{example_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class _ExampleScorer:
    """``score(keep [M, R], index [M]) -> [M]`` that scores example ``e``'s rows with
    ``task.scorer(model, [examples[e]])`` (built on first use and kept)."""

    def __init__(self, task, model, examples: Sequence, removal: str):
        self.task, self.model, self.examples, self.removal = task, model, list(examples), removal
        self._scorers: dict[int, object] = {}
        self._memo: dict[tuple, object] = {}

    def memo(self, key: tuple, compute):
        """``compute()`` once per ``key``: what does not depend on the map (leave-one-out
        importance, attributions of the output) is shared by the maps scored on these examples
        (the attention and each explainer's map, :mod:`attnlens.study.explainers`)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def __repr__(self) -> str:
        return f"example_scorer({getattr(self.task, 'name', self.task)!r}, {len(self.examples)} examples)"

    def region_forward(self, e: int):
        """``task.region_forward(model, examples[e])`` (:class:`attnlens.tasks.base.RegionForward`),
        or the reason (a str) why the task has none."""
        fn = getattr(self.task, "region_forward", None)
        if fn is None:
            return str(getattr(self.task, "region_forward_undefined", _NO_REGION_FORWARD))
        return fn(self.model, self.examples[e])

    def _one(self, e: int):
        if e not in self._scorers:
            self._scorers[e] = self.task.scorer(self.model, [self.examples[e]], removal=self.removal)
        return self._scorers[e]

    def __call__(self, keep: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        keep, index = torch.as_tensor(keep), torch.as_tensor(index)
        if index.ndim != 1 or keep.ndim != 2 or len(index) != len(keep):
            raise ShapeError(f"score(keep, index) needs keep [M, R] and index [M], got {tuple(keep.shape)} "
                             f"and {tuple(index.shape)}")
        n = len(self.examples)
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= n):
            raise ShapeError(f"index values must lie in [0, {n}) (number of examples), got "
                             f"[{int(index.min())}, {int(index.max())}]")
        out = None
        for e in torch.unique(index).tolist():
            rows = torch.nonzero(index == e).flatten()
            y = torch.as_tensor(self._one(e)(keep[rows], torch.zeros(len(rows), dtype=torch.long))).detach().cpu()
            if out is None:
                out = torch.empty(len(index), dtype=y.dtype)
            out[rows] = y
        return torch.empty(0) if out is None else out


def example_scorer(task, model, examples: Sequence, *, removal: str = "mask"):
    """A score function over ``examples`` whose rows of example ``e`` are scored by the task's
    scorer built on that example alone (so a score never depends on the other examples).

    Same contract as ``task.scorer(model, examples, removal=removal)``: ``score(keep [M, R] bool,
    index [M] long) -> [M]``.
    """
    return _ExampleScorer(task, model, examples, removal)


def _attribution_source(ex, source, R: int, memo, score, valid, region_forward):
    """``attributions`` provider of :class:`~attnlens.metrics.MetricSuite` for one example:
    leave-one-out from the scorer, captum methods of the task's ``region_forward`` (memoised by
    ``memo`` between the maps of the example, :meth:`_ExampleScorer.memo`)."""
    from ..metrics.functional import faithfulness as F
    from ..metrics.functional.agreement import attributions

    memo = memo or (lambda key, compute: compute())
    if source == "leave_one_out":
        return memo(("loo",), lambda: F.leave_one_out(score, valid))[0]
    src = _NOT_EXAMPLE_SCORER if region_forward is None else region_forward()
    if isinstance(src, str):
        return src
    x = src.inputs
    if x.ndim != 3 or len(x) != 1 or x.shape[1] != R or tuple(src.valid.shape) != (R,):
        raise ShapeError(f"region_forward of {ex.example_id}: inputs must be [1, {R}, D] and valid [{R}] for its "
                         f"{R} regions, got {tuple(x.shape)} and {tuple(src.valid.shape)}")
    attr = memo(("attribution", source),
                lambda: attributions(src.forward, x, source, n_steps=IG_STEPS)[0][0].cpu().numpy())
    return attr, src.valid.detach().cpu().numpy().astype(bool)


def study_suite(cfg, seed: int, baselines: bool):
    """The :class:`~attnlens.metrics.MetricSuite` of one example: every registered grounding and
    faithfulness metric, and the agreement metrics of the sources ``cfg`` asks for
    (``leave_one_out`` when ``cfg.agreement``, then each of ``cfg.gradient_agreement``)."""
    from ..metrics import MetricSuite
    from ..metrics.functional.baselines import BASELINES
    from ..metrics.registry import metrics

    sources = (("leave_one_out",) if cfg.agreement else ()) + tuple(getattr(cfg, "gradient_agreement", ()))
    agreement = [e.name for s in dict.fromkeys(sources) for e in metrics(category="agreement", source=s)]
    return MetricSuite(None, None, agreement, steps=cfg.steps, n_subsets=cfg.n_subsets, progress=False,
                       baselines=BASELINES if baselines else (), seed=seed,
                       curves=[(m, o) for o in CURVE_ORDERS for m in CURVE_MODES])


def _one_example(ex, score, cfg, baselines: bool, seed: int, region_forward=None, memo=None
                 ) -> tuple[pd.DataFrame, list[dict]]:
    """Rows and per-example curve points of one example (``score`` sees index 0 only;
    ``region_forward()`` gives its ``RegionForward`` or the reason it has none; ``memo(key,
    compute)`` keeps what does not depend on the map, see :meth:`_ExampleScorer.memo`)."""
    from ..metrics.registry import get_metric

    suite = study_suite(cfg, example_seed(seed, ex.example_id), baselines)
    valid = torch.as_tensor(np.asarray(ex.region_valid, dtype=bool))[None]
    R = valid.shape[-1]

    def provide(source, i):
        return _attribution_source(ex, source, R, memo, score, valid, region_forward)

    res = suite.score({"attention": [ex]}, {"attention": score}, attributions={"attention": provide})
    df = res.rows
    category = {m: get_metric(m).category for m in df["metric"].unique()}
    df["category"] = np.where(df["method"].str.startswith("baseline:"), "baseline", df["metric"].map(category))
    points = []
    for (mode, order), c in res.curves["attention"].items():
        points += [{"example_id": ex.example_id, "curve": mode, "order": order, "fraction": float(f),
                    "value": float(v)} for f, v in zip(c.fractions.tolist(), c.values[0].double().tolist())]
    return df, points


def metric_rows(examples: Sequence, scorer, cfg, *, baselines: bool = True, seed: int = 0
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-example metric rows and per-example curves (see the module docstring).

    Args:
        examples: ``AnalysisExample`` s.
        scorer: ``score(keep, index)`` over ``examples`` (best :func:`example_scorer`, which
            also gives the task's ``region_forward`` for the gradient agreement).
        cfg: settings with ``steps``, ``n_subsets``, ``agreement`` and ``gradient_agreement``
            (a ``StudyConfig``).
        baselines: also score the uniform/centre/random maps on the same targets.
        seed: base seed of the per-example random draws (:func:`example_seed`).

    Returns:
        ``(long, curves)``: long rows ``example_id, method, metric, value, reason, subset, target,
        phrase, category, higher_is_better`` (category and direction from the metric registry) and
        the curves of every example (:data:`EXAMPLE_CURVE_COLUMNS`).
    """
    from ..metrics.registry import direction

    frames, points = [], []
    forwards = getattr(scorer, "region_forward", None)
    memo = getattr(scorer, "memo", None)
    for i, ex in enumerate(examples):
        def score(keep, index, _i=i):
            return scorer(keep, torch.as_tensor(index) + _i)

        df, pts = _one_example(ex, score, cfg, baselines, seed,
                               region_forward=None if forwards is None else (lambda _i=i: forwards(_i)),
                               memo=None if memo is None else
                               (lambda key, compute, _i=i, _id=ex.example_id: memo((_i, _id, *key), compute)))
        frames.append(df)
        points += pts
    if not frames:
        raise ShapeError("metric_rows needs at least one example")
    long = pd.concat(frames, ignore_index=True)
    long["higher_is_better"] = long["metric"].map({m: direction(m) for m in long["metric"].unique()})
    return long, pd.DataFrame(points, columns=EXAMPLE_CURVE_COLUMNS)


def mean_curves(example_curves: pd.DataFrame) -> pd.DataFrame:
    """Mean curves (:data:`CURVE_COLUMNS`) over the examples of :func:`metric_rows`'s per-example
    curves: at each fraction the mean of the examples' finite values (NaN where none is finite).

    >>> pts = pd.DataFrame({"example_id": ["a", "a", "b", "b"], "curve": "deletion", "order": "morf",
    ...                     "fraction": [0.0, 1.0, 0.0, 1.0], "value": [1.0, 0.0, 0.5, float("nan")]})
    >>> mean_curves(pts)["value"].tolist()
    [0.75, 0.0]
    """
    rows = []
    for (mode, order), g in example_curves.groupby(["curve", "order"], sort=False):
        fractions = list(dict.fromkeys(g["fraction"].tolist()))
        values = g["value"].to_numpy(dtype=np.float64).reshape(-1, len(fractions))  # [examples, points]
        finite = np.isfinite(values)
        count = finite.sum(0)
        total = np.where(finite, values, 0.0).sum(0)
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        rows += [{"curve": mode, "order": order, "fraction": float(f), "value": float(v)}
                 for f, v in zip(fractions, mean)]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)
