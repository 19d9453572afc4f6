"""Grounding and faithfulness metrics, attention-vs-attribution agreement, paired statistics.

Every metric's name, category, direction, input kind, options and function live in one registry
entry (:mod:`attnlens.metrics.registry`; built-in entries in :mod:`attnlens.metrics.builtin`).
Functional core in :mod:`attnlens.metrics.functional` (pure, batched, per-example values with
NaN where undefined), thin accumulating classes in :mod:`attnlens.metrics.classes`, statistics in
:mod:`attnlens.metrics.stats`, and :class:`MetricSuite` over ``AnalysisExample``s. Definitions
and conventions: ``shared/METRICS.md`` and the module docstrings.
"""
from ..geometry import box_iou, box_masks, grid_to_pixels, regions_to_pixels, union_box, union_mask
from . import builtin, stats  # noqa: F401  (builtin registers the built-in metrics)
from .classes import (BoxAccuracy, Comprehensiveness, DeletionAUC, InsertionAUC, MaskAUROC, Metric, PointingGame,
                      RelevanceMassAccuracy, RelevanceRankAccuracy, Sufficiency, Top1RegionHit, TopKIntersection)
from .functional import *  # noqa: F401,F403
from .functional import __all__ as _functional_all
from .stats import bootstrap_ci, compare_methods, holm, paired_bootstrap_ci, wilcoxon
from .registry import (FaithfulnessInput, MetricEntry, Option, direction, get_metric, metric_names, metrics,
                       register_metric, unregister_metric)
from .suite import MetricSuite, summary

__all__ = sorted({*_functional_all, "BoxAccuracy", "Comprehensiveness", "DeletionAUC", "InsertionAUC", "MaskAUROC",
                  "Metric", "PointingGame", "RelevanceMassAccuracy", "RelevanceRankAccuracy", "Sufficiency",
                  "Top1RegionHit", "TopKIntersection", "MetricSuite", "summary", "FaithfulnessInput", "MetricEntry",
                  "Option", "direction", "get_metric", "metric_names", "metrics", "register_metric",
                  "unregister_metric",
                  "bootstrap_ci", "compare_methods", "holm", "paired_bootstrap_ci", "wilcoxon", "stats",
                  "box_iou", "box_masks", "grid_to_pixels", "regions_to_pixels", "union_box", "union_mask"})
