"""Grounding and faithfulness metrics, attention-vs-attribution agreement, paired statistics.

Functional core in :mod:`attnlens.metrics.functional` (pure, batched, per-example values with
NaN where undefined), thin accumulating classes in :mod:`attnlens.metrics.classes`, statistics in
:mod:`attnlens.metrics.stats`, and :class:`MetricSuite` over ``AnalysisExample``s. Definitions
and conventions: ``shared/METRICS.md`` and the module docstrings.
"""
from ..geometry import box_iou, box_masks, grid_to_pixels, regions_to_pixels, union_box, union_mask
from . import stats
from .classes import (BoxAccuracy, Comprehensiveness, DeletionAUC, InsertionAUC, MaskAUROC, Metric, PointingGame,
                      RelevanceMassAccuracy, RelevanceRankAccuracy, Sufficiency, Top1RegionHit, TopKIntersection)
from .functional import *  # noqa: F401,F403
from .functional import __all__ as _functional_all
from .stats import bootstrap_ci, compare_methods, holm, paired_bootstrap_ci, wilcoxon
from .suite import FAITHFULNESS, GROUNDING, MetricSuite, summary

__all__ = sorted({*_functional_all, "BoxAccuracy", "Comprehensiveness", "DeletionAUC", "InsertionAUC", "MaskAUROC",
                  "Metric", "PointingGame", "RelevanceMassAccuracy", "RelevanceRankAccuracy", "Sufficiency",
                  "Top1RegionHit", "TopKIntersection", "FAITHFULNESS", "GROUNDING", "MetricSuite", "summary",
                  "bootstrap_ci", "compare_methods", "holm", "paired_bootstrap_ci", "wilcoxon", "stats",
                  "box_iou", "box_masks", "grid_to_pixels", "regions_to_pixels", "union_box", "union_mask"})
