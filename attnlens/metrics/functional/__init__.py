"""Pure, batched metric functions (tensors in, per-example tensors out)."""
from ._common import REASONS, reason_text
from .agreement import METHODS, attribution_agreement, attributions, rank_agreement, topk_overlap
from .baselines import BASELINES, baseline_maps, centre_map, grounding_baselines, random_map, uniform_map
from .faithfulness import (AOPC_FRACTIONS, Curve, curve_auc, deletion_curve, element_order, eraser,
                           faithfulness_correlation, feature_scorer, insertion_curve, leave_one_out,
                           perturbation_curves)
from .boxes import box_accuracy, map_to_box, top1_region_hit
from .grounding import (energy_pointing_game, mask_auroc, pointing_game,
                        relevance_mass_accuracy, relevance_rank_accuracy, topk_intersection)
from .sanity import model_randomisation, permutation_test

__all__ = [
    "AOPC_FRACTIONS", "BASELINES", "Curve", "METHODS", "REASONS", "attribution_agreement", "attributions",
    "baseline_maps", "box_accuracy", "centre_map", "curve_auc", "deletion_curve", "element_order",
    "energy_pointing_game", "eraser", "faithfulness_correlation", "feature_scorer", "grounding_baselines",
    "insertion_curve", "leave_one_out", "map_to_box", "mask_auroc", "model_randomisation", "perturbation_curves",
    "permutation_test", "pointing_game", "random_map", "rank_agreement", "reason_text", "relevance_mass_accuracy",
    "relevance_rank_accuracy", "top1_region_hit", "topk_intersection", "topk_overlap", "uniform_map",
]
