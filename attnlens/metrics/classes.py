"""Thin accumulating metric classes (torchmetrics-style).

Each class calls the same private ``_update`` function as its functional twin, so the two
cannot drift; ``compute()`` summarises the per-example values seen so far without dropping NaNs
silently: it reports how many were excluded and why.

>>> m = PointingGame(tolerance=0)
>>> maps = torch.zeros(2, 3, 3); maps[:, 1, 1] = 1
>>> masks = torch.zeros(2, 3, 3, dtype=torch.bool); masks[0, 1, 1] = True; masks[1, 0, 0] = True
>>> _ = m.update(maps, masks); m.compute()["mean"], m.compute()["n_excluded"]
(0.5, 0)
"""
from __future__ import annotations

from collections import Counter

import torch

from .functional import faithfulness as _f
from .functional import grounding as _g
from ..errors import UnknownNameError
from .functional._common import NO_REGIONS, OK, REASONS, UNDEFINED
from .registry import get_metric


class _FromRegistry:
    """A class attribute read from the metric's registry entry (``higher_is_better``, ``category``),
    so the class and the suite cannot disagree. A curve class (``DeletionAUC``) reads the entry of
    its ``order`` option (``deletion_auc_morf`` ...), MoRF at class level."""

    def __init__(self, field: str):
        self.field = field

    def __get__(self, obj, owner):
        name = owner.name
        if getattr(owner, "mode", None) is not None and name in ("deletion_auc", "insertion_auc"):
            order = (obj.options.get("order", "morf") if obj is not None else "morf")
            name = f"{name}_{order}"
        return getattr(get_metric(name), self.field)


def summarise(values: torch.Tensor, codes: torch.Tensor) -> dict:
    """Mean over the defined values, their count, and the excluded count with reasons."""
    values = values.double()
    ok = torch.isfinite(values)
    reasons = Counter(REASONS[int(c)] or REASONS[UNDEFINED] for c, good in zip(codes.tolist(), ok.tolist())
                      if not good)
    n = int(ok.sum())
    return {"mean": float(values[ok].mean()) if n else float("nan"), "n": n, "n_excluded": int((~ok).sum()),
            "reasons": dict(reasons)}


class Metric:
    """Base class: accumulates per-example values and reason codes over ``update`` calls."""

    name = "metric"
    #: read from the registry entry of ``name`` (:mod:`attnlens.metrics.registry`)
    higher_is_better = _FromRegistry("higher_is_better")
    category = _FromRegistry("category")
    #: option names the metric accepts (an unknown one is an error, not silently ignored)
    OPTIONS: tuple[str, ...] = ()

    def __init__(self, **options):
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise UnknownNameError(f"{type(self).__name__} option", unknown[0], self.OPTIONS)
        self.options = options
        self.reset()

    def reset(self) -> None:
        self._values: list[torch.Tensor] = []
        self._codes: list[torch.Tensor] = []

    def _update(self, *args):  # pragma: no cover - overridden
        raise NotImplementedError

    def update(self, *args) -> torch.Tensor:
        """Score one batch; returns its per-example values."""
        values, codes = self._update(*args)
        self._values.append(values.detach().double().cpu())
        self._codes.append(torch.as_tensor(codes).long().cpu())
        return values

    @property
    def values(self) -> torch.Tensor:
        """All per-example values seen so far, ``[N]``."""
        return torch.cat(self._values) if self._values else torch.empty(0, dtype=torch.float64)

    @property
    def codes(self) -> torch.Tensor:
        return torch.cat(self._codes) if self._codes else torch.empty(0, dtype=torch.long)

    def compute(self) -> dict:
        """``{"mean", "n", "n_excluded", "reasons"}`` over everything seen."""
        return summarise(self.values, self.codes)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({opts}) [{len(self.values)} examples]"


class PointingGame(Metric):
    name, OPTIONS = "pointing_game", ("tolerance",)

    def _update(self, maps, masks):
        return _g._pointing_game_update(maps, masks, self.options.get("tolerance", 15))


class RelevanceMassAccuracy(Metric):
    name, OPTIONS = "relevance_mass_accuracy", ("negative",)

    def _update(self, maps, masks):
        return _g._relevance_mass_accuracy_update(maps, masks, self.options.get("negative", "raise"))


class RelevanceRankAccuracy(Metric):
    name = "relevance_rank_accuracy"

    def _update(self, maps, masks):
        return _g._relevance_rank_accuracy_update(maps, masks)


class MaskAUROC(Metric):
    name = "mask_auroc"

    def _update(self, maps, masks):
        return _g._mask_auroc_update(maps, masks)


class TopKIntersection(Metric):
    name, OPTIONS = "topk_intersection", ("k",)

    def _update(self, maps, masks):
        return _g._topk_intersection_update(maps, masks, self.options.get("k", 1000))


class BoxAccuracy(Metric):
    name, OPTIONS = "box_accuracy", ("iou_threshold", "threshold", "method")

    def _update(self, maps, gt_boxes):
        return _g._box_accuracy_update(maps, gt_boxes, **self.options)


class Top1RegionHit(Metric):
    name, OPTIONS = "top1_region_hit", ("iou_threshold",)

    def _update(self, weights, boxes, gt_boxes, valid=None):
        return _g._top1_region_hit_update(weights, boxes, gt_boxes, self.options.get("iou_threshold", 0.5), valid)


def _no_element_codes(importance, valid, values) -> torch.Tensor:
    """Reason codes of a faithfulness batch: ``NO_REGIONS`` for an example without a valid element."""
    if valid is None:
        return torch.full((len(values),), OK, dtype=torch.long)
    _, v = _f.check_importance(importance, valid)
    return torch.where(v.any(1).cpu(), OK, NO_REGIONS)


class _CurveAUC(Metric):
    """``update(score, importance [n, R], valid=None)``: ``index`` in the score calls counts the rows
    of *this* update's ``importance`` (0 .. n-1), so pass a scorer built for that batch."""

    mode = "deletion"
    OPTIONS = ("order", "steps", "batch_size", "seed", "progress")

    def _update(self, score, importance, valid=None):
        opts = {k: v for k, v in self.options.items() if k in ("steps", "batch_size", "seed", "progress")}
        order = self.options.get("order", "morf")
        c = _f.perturbation_curves(score, importance, valid=valid, modes=(self.mode,), orders=(order,),
                                   **opts)[(self.mode, order)]
        return c.auc, _no_element_codes(importance, valid, c.auc)


class DeletionAUC(_CurveAUC):
    """Deletion AUC; lower is better for MoRF order (a faithful map drops the output fast)."""

    name, mode = "deletion_auc", "deletion"


class InsertionAUC(_CurveAUC):
    """Insertion AUC; higher is better for MoRF order."""

    name, mode = "insertion_auc", "insertion"


class Comprehensiveness(Metric):
    name, OPTIONS = "comprehensiveness_aopc", ("fractions", "batch_size", "progress")

    def _update(self, score, importance, valid=None):
        r = _f.eraser(score, importance, valid=valid, **self.options)
        return r["comprehensiveness_aopc"], _no_element_codes(importance, valid, r["full"])


class Sufficiency(Metric):
    name = "sufficiency_aopc"
    OPTIONS = ("fractions", "batch_size", "progress")

    def _update(self, score, importance, valid=None):
        r = _f.eraser(score, importance, valid=valid, **self.options)
        return r["sufficiency_aopc"], _no_element_codes(importance, valid, r["full"])


__all__ = ["BoxAccuracy", "Comprehensiveness", "DeletionAUC", "InsertionAUC", "MaskAUROC", "Metric",
           "PointingGame", "RelevanceMassAccuracy", "RelevanceRankAccuracy", "Sufficiency", "Top1RegionHit",
           "TopKIntersection", "summarise"]
