"""VisualBERT (transformers ``VisualBertModel`` and wrappers): text-region blocks of self-attention.

VisualBERT is single-stream: text tokens and visual tokens are concatenated (text first) and
every layer runs self-attention over the joint sequence. The adapter records each layer's
``attention.self`` weights ``[batch, head, T+V, T+V]`` and splits them at the text length ``T``
(the length of ``input_ids`` / ``inputs_embeds``, read from the embeddings' call)::

    encoder.layer.{i}.attention.self/t2i   weights[:, :, :T, T:]   ("batch", "head", "word", "region")
    encoder.layer.{i}.attention.self/i2t   weights[:, :, T:, :T]   ("batch", "head", "region", "word")

``meta["query_positions"]`` / ``meta["key_positions"]`` give the rows' and columns' positions in
the joint sequence (see :mod:`attnlens.capture.adapters`). These blocks are parts of rows that
sum to 1 over all T+V keys, so a block's rows sum to the mass given to the other modality
(``meta["block"]`` says which block). The weights are the module's own, returned by setting
its ``output_attentions`` for the call
(``meta["method"] = "returned"``); they equal the matching block of the model's
``attentions`` with ``output_attentions=True``.
"""
from __future__ import annotations

from torch import nn

from ...errors import CaptureError
from ...models.attention import ProbeRecord
from ..sites import Emit, Tap, layer_from_path, this_thread
from .generic import hook_returned_weights

_MODULE = "transformers.models.visual_bert"


def _is(module: nn.Module, cls: str) -> bool:
    t = type(module)
    return t.__name__ == cls and t.__module__.startswith(_MODULE)


class VisualBertTap(Tap):
    """Every self-attention layer of one VisualBERT model, split into text/visual blocks."""

    def __init__(self, embeddings: nn.Module, layers: dict[str, nn.Module]):
        self.embeddings = embeddings
        self.layer_modules = layers
        names, modules, layer_ix = [], {}, {}
        for path, module in layers.items():
            for d in ("t2i", "i2t"):
                names.append(f"{path}/{d}")
                modules[f"{path}/{d}"] = module
                layer_ix[f"{path}/{d}"] = layer_from_path(path)
        super().__init__(names, modules, layer_ix)

    def attach(self, emit: Emit, wanted: frozenset[str]) -> list:
        state = {"text": None}

        @this_thread
        def on_embed(mod, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            embeds = kwargs.get("inputs_embeds")
            src = ids if ids is not None else embeds
            state["text"] = None if src is None else int(src.shape[1])

        handles = [self.embeddings.register_forward_pre_hook(on_embed, with_kwargs=True)]
        try:
            for path, module in self.layer_modules.items():
                handles += hook_returned_weights(module, self._callback(path, state, emit, wanted),
                                                 flag="output_attentions", position=2)
        except BaseException:
            for h in handles:
                h.remove()
            raise
        return handles

    @staticmethod
    def _callback(path, state, emit, wanted):
        def on_weights(args, kwargs, weights):
            t = state["text"]
            if t is None:
                raise CaptureError(f"VisualBERT site {path!r}: the text length is unknown (the embeddings "
                                   "module was not called with input_ids or inputs_embeds)")
            if weights.shape[-1] <= t:  # text-only layer (bypass_transformer): no visual block
                return
            blocks = {"t2i": (weights[..., :t, t:], ("batch", "head", "word", "region"), "text", "image"),
                      "i2t": (weights[..., t:, :t], ("batch", "head", "region", "word"), "image", "text")}
            for d, (w, dims, q, k) in blocks.items():
                name = f"{path}/{d}"
                if name in wanted:
                    text, visual = list(range(t)), list(range(t, weights.shape[-1]))
                    emit(name, ProbeRecord(w, None, dims, meta={
                        "method": "returned", "alignment": "scaled_dot", "direction": d, "block": d,
                        "text_length": t, "query_modality": q, "key_modality": k,
                        "query_positions": text if d == "t2i" else visual,
                        "key_positions": visual if d == "t2i" else text,
                        "text_positions": text, "image_positions": visual}))
        return on_weights


def find_taps(model: nn.Module) -> list[Tap]:
    """One :class:`VisualBertTap` per VisualBERT model inside ``model``."""
    taps = []
    for path, m in model.named_modules():
        if _is(m, "VisualBertModel"):
            prefix = f"{path}." if path else ""
            layers = {f"{prefix}{p}": s for p, s in m.named_modules() if _is(s, "VisualBertSelfAttention")}
            taps.append(VisualBertTap(m.embeddings, layers))
    return taps
