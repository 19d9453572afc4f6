"""The explainer axis of the study: each example's map from an :mod:`attnlens.explain` method.

For an explanation method ``m`` (``StudyConfig.explainers``), every analysed example gets a copy
whose ``attention`` is ``attnlens.explain.explain(...)``'s map of the same output the study
scores: the task's ``region_forward`` (the scorer's output as a differentiable function of the
example's region features: the pair's similarity for matching, the predicted answer's
probability for VQA) is wrapped as a module whose forward takes those features, so the
explainers see the task model's own attention sites (through capture) and its own output. The
copies are scored by exactly the same metrics as the attention (grounding, faithfulness,
agreement), and their rows carry ``method = "explainer:<m>"``; :func:`attnlens.study.analysis.combine_units`
turns them into the row label ``<alignment>+<m>``, so the summary ranks them next to the
alignment functions (paired statistics on the same examples) with the baselines beside them.

Word x region form (``("word", "region")``, the study's): a map whose query axis is the words
is used as is; VQA's single question row and the captum methods' single output row (one
importance per region, :mod:`attnlens.explain.attribution`) are repeated for every word, which
``attention.meta["derived"]`` says. ``raw`` is the task's attention itself (its rows are the
``attention`` rows), so it adds nothing. A task without ``region_forward`` (generation) has no
explainer rows; the unit record says why.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch
from torch import nn

from ..attention_map import AttentionMap, Side

__all__ = ["RegionForwardModule", "explained_examples", "unavailable_reason"]


class RegionForwardModule(nn.Module):
    """``forward(features [N, R, D]) -> [N]``: a task's ``region_forward`` as a module (the task
    model is a submodule, so its attention sites are found by capture)."""

    def __init__(self, model: nn.Module, forward):
        super().__init__()
        self.model = model
        self._fn = forward
        self.explain_features = ("input", "features")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self._fn(features)


def unavailable_reason(task) -> str | None:
    """Why ``task`` cannot have explainer rows, or None."""
    if getattr(task, "region_forward", None) is None:
        return str(getattr(task, "region_forward_undefined", "the task has no region_forward"))
    return None


def _word_region(amap: AttentionMap, example) -> AttentionMap:
    w = amap.weights[0].detach().float().cpu()
    n_words = len(example.tokens)
    meta = {k: v for k, v in amap.meta.items() if k != "options"}
    meta["options"] = dict(amap.meta.get("options", {}))
    if w.shape[0] != n_words:
        if w.shape[0] != 1:
            raise ValueError(f"explainer {amap.meta.get('explainer')!r} gave {w.shape[0]} rows for an example with "
                             f"{n_words} words ({example.example_id})")
        w = w.expand(n_words, -1).clone()
        meta["derived"] = f"one {amap.dims[1]!r} row (one importance per region), repeated for every word"
    return AttentionMap(w, ("word", "region"), None, Side("word", "text", tuple(example.tokens)),
                        Side("region", "image", regions=example.regions), None, amap.direction, amap.layer,
                        amap.site, meta)


def explained_examples(task, model: nn.Module, examples: Sequence, method: str, **options) -> list:
    """Copies of ``examples`` whose ``attention`` is ``method``'s word x region map (module docstring)."""
    from ..explain import explain

    out = []
    for example in examples:
        rf = task.region_forward(model, example)
        wrapped = RegionForwardModule(model, rf.forward)
        amap = explain(wrapped, {"features": rf.inputs}, method, **options)
        out.append(replace(example, attention=_word_region(amap, example),
                           meta={**dict(example.meta), "explainer": method}))
    return out
