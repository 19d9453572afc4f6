"""LXMERT (transformers ``LxmertModel`` and the models wrapping it): cross-modality attention.

Each cross-modality layer ``encoder.x_layers.{i}`` runs one shared ``LxmertAttention`` module
(``visual_attention.att``) twice: language queries over visual keys, then visual queries over
language keys. The adapter gives each direction its own site::

    encoder.x_layers.{i}.visual_attention.att/t2i   dims ("batch", "head", "word", "region")
    encoder.x_layers.{i}.visual_attention.att/i2t   dims ("batch", "head", "region", "word")

LXMERT computes its attention eagerly and returns the weights when asked; the adapter sets the
module's ``output_attentions`` for the call and strips the weights from the output again
(``meta["method"] = "returned"``), so the ``t2i`` maps equal the model's
``cross_encoder_attentions`` exactly, and the model's outputs are unchanged.
"""
from __future__ import annotations

from torch import nn

from ...models.attention import ProbeRecord
from ..sites import Emit, Tap, layer_from_path, this_thread
from .generic import hook_returned_weights

_MODULE = "transformers.models.lxmert"

DIMS = {"t2i": ("batch", "head", "word", "region"), "i2t": ("batch", "head", "region", "word")}
MODALITIES = {"t2i": ("text", "image"), "i2t": ("image", "text")}


def _is(module: nn.Module, cls: str) -> bool:
    t = type(module)
    return t.__name__ == cls and t.__module__.startswith(_MODULE)


class LxmertCrossTap(Tap):
    """Both directions of one LXMERT cross-modality layer."""

    def __init__(self, path: str, xlayer: nn.Module):
        self.base = f"{path}.visual_attention.att" if path else "visual_attention.att"
        self.xlayer = xlayer
        names = [f"{self.base}/t2i", f"{self.base}/i2t"]
        layer = layer_from_path(path)
        super().__init__(names, xlayer.visual_attention.att, {n: layer for n in names})

    def attach(self, emit: Emit, wanted: frozenset[str]) -> list:
        state = {"lang": None, "visual": None, "calls": 0}

        @this_thread
        def on_layer(mod, args, kwargs):
            state["lang"] = args[0] if len(args) > 0 else kwargs.get("lang_feats")
            state["visual"] = args[2] if len(args) > 2 else kwargs.get("visual_feats")
            state["calls"] = 0

        def on_weights(args, kwargs, weights):
            hidden = args[0] if args else kwargs.get("hidden_states")
            if hidden is state["lang"]:
                direction = "t2i"
            elif hidden is state["visual"]:
                direction = "i2t"
            else:  # called outside LxmertXLayer.cross_att: fall back on LXMERT's call order
                direction = "t2i" if state["calls"] % 2 == 0 else "i2t"
            state["calls"] += 1
            name = f"{self.base}/{direction}"
            if name not in wanted:
                return
            q, k = MODALITIES[direction]
            emit(name, ProbeRecord(weights, None, DIMS[direction], meta={
                "method": "returned", "alignment": "scaled_dot", "direction": direction,
                "query_modality": q, "key_modality": k}))

        handles = [self.xlayer.register_forward_pre_hook(on_layer, with_kwargs=True)]
        try:
            handles += hook_returned_weights(self.module, on_weights, flag="output_attentions", position=3)
        except BaseException:
            for h in handles:
                h.remove()
            raise
        return handles


def find_taps(model: nn.Module) -> list[Tap]:
    """One :class:`LxmertCrossTap` per ``LxmertXLayer`` of ``model`` (none if not LXMERT)."""
    return [LxmertCrossTap(path, m) for path, m in model.named_modules() if _is(m, "LxmertXLayer")]
