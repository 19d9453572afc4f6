"""Capture: record region-word attention maps from attnlens models and third-party models.

``attnlens.capture`` is both this package and a function::

    with attnlens.capture(model, sites="sim.attn") as rec:
        model(images, captions, lengths)
    rec.maps[0]            # AttentionMap

See :mod:`attnlens.capture.core` (the context and recorder), :mod:`attnlens.capture.sites`
(finding and choosing sites), :mod:`attnlens.capture.store` (memory budget, disk shards),
:mod:`attnlens.capture.patches` (patch cells back to original-image boxes),
:mod:`attnlens.capture.adapters` (transformers vision-language families, any transformers
attention module, any module's output), :mod:`attnlens.capture.primitives` (``nn.MultiheadAttention``,
``nn.Transformer*Layer``, fast path included), :mod:`attnlens.capture.sdpa`
(``F.scaled_dot_product_attention`` inside any module) and :mod:`attnlens.capture.dispatch`
(watching modules without per-module hooks).
"""
from __future__ import annotations

import sys
import types

from .core import Capture, MapView, Recorder, capture, stitch
from .patches import patch_boxes
from .primitives import mha_site
from .sdpa import sdpa_site
from .sites import ProbeTap, Tap, discover, layer_from_path, select
from .store import MapStore
from . import adapters  # noqa: E402  (after core: adapters import sites)


class _CallableModule(types.ModuleType):
    """Makes ``attnlens.capture(model, ...)`` call :func:`attnlens.capture.core.capture`."""

    def __call__(self, model, sites=None, **options) -> Capture:
        return capture(model, sites, **options)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["Capture", "MapStore", "MapView", "ProbeTap", "Recorder", "Tap", "adapters", "capture", "discover",
           "layer_from_path", "mha_site", "patch_boxes", "sdpa_site", "select", "stitch"]
