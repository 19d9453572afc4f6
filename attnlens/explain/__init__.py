"""Explainers: attention-based and gradient-based explanations as word x region maps.

``attnlens.explain.explain(model, inputs, method, target=...)`` turns one batch of a model's
inputs into an :class:`~attnlens.attention_map.AttentionMap` ``[batch, word, region]`` (or
``patch``), the form capture produces, so every metric, renderer and report applies unchanged.
All attention reaches the explainers through :func:`attnlens.capture` (``grad=True`` for the
gradient methods), read by the model family's :mod:`~attnlens.explain.profiles`.

Methods (:func:`available`; add one with :func:`register`):

* ``raw`` -- one layer's attention, head fusion mean/max/min/one head (:mod:`.raw`);
* ``rollout`` -- Abnar & Zuidema's rollout over the joint token graph (:mod:`.rollout`);
* ``gradient_weighted`` -- Chefer, Gur & Wolf 2021's relevance propagation (:mod:`.relevance`);
* ``attention_x_gradient`` -- one layer's ``mean_h (grad * A)^+`` (:mod:`.raw`);
* ``integrated_gradients``, ``input_x_gradient``, ``gradcam`` -- captum attributions of the
  image features, one row per example (:mod:`.attribution`);
* ``attention_flow`` -- Abnar & Zuidema's max-flow, for small token counts (:mod:`.flow`).

:func:`attnlens.explain.sanity.randomisation_check` runs the model-parameter randomisation test.
"""
from __future__ import annotations

from . import attribution, families, flow, profiles, raw as _raw, relevance, rollout as _rollout
from .profiles import Profile, profile_for, single_stream
from .registry import Context, Result, available, explain, register

register("raw", _raw.raw, overwrite=True)
register("rollout", _rollout.rollout, overwrite=True)
register("gradient_weighted", relevance.gradient_weighted, overwrite=True)
register("attention_x_gradient", _raw.attention_x_gradient, overwrite=True)
register("integrated_gradients", attribution.integrated_gradients, overwrite=True)
register("input_x_gradient", attribution.input_x_gradient, overwrite=True)
register("gradcam", attribution.gradcam, overwrite=True)
register("attention_flow", flow.attention_flow, overwrite=True)


def __getattr__(name):
    if name == "sanity":
        import importlib

        return importlib.import_module(".sanity", __name__)
    raise AttributeError(f"module 'attnlens.explain' has no attribute {name!r}")


__all__ = ["Context", "Profile", "Result", "available", "explain", "profile_for", "profiles", "register",
           "single_stream", "attribution", "families", "flow", "relevance"]
