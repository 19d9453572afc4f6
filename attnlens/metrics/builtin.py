"""The built-in metrics, one :func:`~attnlens.metrics.registry.register_metric` call each.

Registration order is the order of the suite's defaults, of the study's rows and of
``metrics.csv``. Definitions: ``shared/METRICS.md`` and the functional modules. Task-performance
numbers (``category="task"``) are reported by the built-in tasks' ``evaluate``; their entries
carry the direction the study ranks them by.
"""
from __future__ import annotations

from .functional import faithfulness as F
from .functional import grounding as G
from .functional.agreement import rank_agreement
from .registry import Option, register_metric

_TOLERANCE = Option("tolerance", 15, "real", lo=0, doc="pointing-game tolerance in pixels")
_IOU = Option("iou_threshold", 0.5, "real", lo=0, hi=1, doc="IoU for a hit")
_BATCH = Option("batch_size", 256, "int", lo=1, doc="rows per score call")
_STEPS = Option("steps", 20, "int", lo=1, doc="curve steps (steps + 1 points)")
_TOP_K = Option("top_k", 3, "int", lo=1, doc="top-k overlap size")

# ----------------------------------------------------------------------------- grounding
register_metric("pointing_game", category="grounding", higher_is_better=True, inputs="pixel_map", pixels="max",
                options=(_TOLERANCE,), description="the map's peak lies within tolerance of the target's boxes",
                fn=lambda maps, masks, gt, tolerance: G._pointing_game_update(maps, masks, tolerance))
register_metric("top1_region_hit", category="grounding", higher_is_better=True, inputs="region_weights",
                options=(_IOU,), description="the most attended region overlaps a target box (IoU)",
                fn=lambda w, boxes, gt, valid, iou_threshold: G._top1_region_hit_update(w, boxes, gt, iou_threshold,
                                                                                       valid))
register_metric("relevance_mass_accuracy", category="grounding", higher_is_better=True, inputs="pixel_map",
                pixels="density", options=(Option("negative", "clip", "choice", choices=G.NEGATIVE),),
                description="fraction of the map's mass inside the target's boxes",
                fn=lambda maps, masks, gt, negative: G._relevance_mass_accuracy_update(maps, masks, negative))
register_metric("relevance_rank_accuracy", category="grounding", higher_is_better=True, inputs="pixel_map",
                pixels="density", description="fraction of the top-|mask| pixels inside the mask",
                fn=lambda maps, masks, gt: G._relevance_rank_accuracy_update(maps, masks))
register_metric("mask_auroc", category="grounding", higher_is_better=True, inputs="pixel_map", pixels="density",
                description="AUROC of the map's values as a detector of the mask's pixels",
                fn=lambda maps, masks, gt: G._mask_auroc_update(maps, masks))
register_metric("box_accuracy", category="grounding", higher_is_better=True, inputs="pixel_map", pixels="max",
                options=(_IOU, Option("threshold", 0.5, "real", lo=0, hi=1),
                         Option("method", "component", "choice", choices=("component", "peak"))),
                description="the box around the map's thresholded peak matches the target (IoU)",
                fn=lambda maps, masks, gt, iou_threshold, threshold, method: G._box_accuracy_update(
                    maps, gt, iou_threshold, threshold, method))
register_metric("topk_intersection", category="grounding", higher_is_better=True, inputs="pixel_map",
                pixels="density", options=(Option("k", 1000, "int", lo=1, doc="pixels (capped at H * W)"),),
                description="fraction of the top-k pixels inside the mask",
                fn=lambda maps, masks, gt, k: G._topk_intersection_update(maps, masks,
                                                                          min(k, maps.shape[1] * maps.shape[2])))


# ----------------------------------------------------------------------------- faithfulness
def _eraser(inp, batch_size):
    return inp.shared(("eraser", batch_size), lambda: F.eraser(inp.score, inp.importance, valid=inp.valid,
                                                               batch_size=batch_size, progress=inp.progress))


register_metric("comprehensiveness_aopc", category="faithfulness", higher_is_better=True, inputs="region_order",
                options=(_BATCH,), description="ERASER comprehensiveness (AOPC): output drop without the top regions",
                fn=lambda inp, batch_size: _eraser(inp, batch_size)["comprehensiveness_aopc"])
register_metric("sufficiency_aopc", category="faithfulness", higher_is_better=False, inputs="region_order",
                options=(_BATCH,), description="ERASER sufficiency (AOPC): output drop with the top regions only",
                fn=lambda inp, batch_size: _eraser(inp, batch_size)["sufficiency_aopc"])
register_metric("faithfulness_correlation", category="faithfulness", higher_is_better=True, inputs="region_order",
                options=(Option("n_subsets", 100, "int", lo=2), _BATCH),
                description="Pearson correlation of a random subset's importance with the output drop",
                fn=lambda inp, n_subsets, batch_size: F.faithfulness_correlation(
                    inp.score, inp.importance, valid=inp.valid, n_subsets=n_subsets, seed=inp.seed,
                    batch_size=batch_size, progress=inp.progress))

# curve AUCs (in the order perturbation_curves returns them: per order, deletion then insertion);
# deletion wants a fast drop for the most relevant first (MoRF), insertion a fast rise
_AUC_UP = {("deletion", "morf"): False, ("insertion", "morf"): True, ("deletion", "lerf"): True,
           ("insertion", "lerf"): False, ("deletion", "random"): False, ("insertion", "random"): True}
for (_mode, _order), _up in _AUC_UP.items():
    register_metric(f"{_mode}_auc_{_order}", category="faithfulness", higher_is_better=_up, inputs="curves",
                    curves=((_mode, _order),), options=(_STEPS, _BATCH),
                    description=f"area under the {_mode} curve, {_order} order",
                    fn=lambda curves, steps, batch_size, _key=(_mode, _order): curves[_key].auc)
# the signal is the gap to the random order (METRICS.md), not a raw AUC: a model whose output
# ignores the regions has flat curves, a high raw insertion AUC and a zero gap
register_metric("deletion_gap", category="faithfulness", higher_is_better=True, inputs="curves",
                curves=(("deletion", "random"), ("deletion", "morf")), options=(_STEPS, _BATCH),
                description="deletion AUC of the random order minus that of MoRF",
                fn=lambda curves, steps, batch_size: (curves[("deletion", "random")].auc
                                                      - curves[("deletion", "morf")].auc))
register_metric("insertion_gap", category="faithfulness", higher_is_better=True, inputs="curves",
                curves=(("insertion", "morf"), ("insertion", "random")), options=(_STEPS, _BATCH),
                description="insertion AUC of MoRF minus that of the random order",
                fn=lambda curves, steps, batch_size: (curves[("insertion", "morf")].auc
                                                      - curves[("insertion", "random")].auc))

# ----------------------------------------------------------------------------- agreement
#: Row-name prefix of each attribution source.
AGREEMENT_PREFIX = {"leave_one_out": "loo", "integrated_gradients": "ig", "input_x_gradient": "ixg",
                    "feature_ablation": "ablation"}
for _source, _prefix in AGREEMENT_PREFIX.items():
    for _stat in ("kendall_tau", "spearman", "topk_overlap"):
        register_metric(f"{_prefix}_{_stat}", category="agreement", higher_is_better=True, inputs="attribution",
                        source=_source, options=(_TOP_K,),
                        description=f"{_stat} of the attention and the {_source} importance over valid regions",
                        fn=lambda a, b, top_k, _s=_stat: rank_agreement(a, b, k=top_k)[_s])

# ----------------------------------------------------------------------------- task performance
for _name, _up in {**{f"{d}_{r}": True for d in ("i2t", "t2i") for r in ("r1", "r5", "r10")},
                   **{f"{d}_{r}": False for d in ("i2t", "t2i") for r in ("medr", "meanr")},
                   "rsum": True, "accuracy": True,
                   **{f"acc_{k}": True for k in ("color", "count", "exists", "shape", "size")},
                   **{f"{p}presence{s}": True for p in ("", "masked_", "shuffled_") for s in ("", "_color", "_shape")},
                   "color_attention": True, "color_attention_uniform": True, "mse": False}.items():
    register_metric(_name, category="task", higher_is_better=_up, inputs="task")

del _mode, _order, _up, _source, _prefix, _stat, _name
