"""Decoder-only vision-language models: the language model's text -> image-token block.

LLaVA-style ``*ForConditionalGeneration`` models (``LlavaForConditionalGeneration``,
``LlavaNextForConditionalGeneration``, ``PaliGemmaForConditionalGeneration``,
``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VL``, and the language-model side of
``Blip2ForConditionalGeneration`` / ``InstructBlipForConditionalGeneration``) put the image's
tokens into the language model's sequence at the positions of the model's own image token id
(``config.image_token_id``) in ``input_ids``. Every language-model layer's self-attention is
recorded and sliced **inside the hook**::

    {lm}.layers.{i}.self_attn/t2i   weights[b, :, text rows, image columns]   ("batch", "head", "word", "patch")

Rows are the non-image query tokens of the call, columns the image tokens (found in the
``input_ids`` of the last call that contained them); ``meta["query_positions"]`` and
``meta["key_positions"]`` give their positions in the layer's full sequence. During
``generate()`` each KV-cache step has one query, so each step adds one row per layer (its
position is the step's cache position). Rows are parts of rows summing to 1 over the whole
sequence (``meta["block"] = "t2i"``).

The key side's patch grid (``Side.grid`` and ``meta["grid"]``) is the vision tower's
``(rows, cols)`` when the image columns are exactly that grid (LLaVA, PaliGemma; Qwen2-VL from
``image_grid_thw`` after the 2x2 merge); LLaVA-NeXT's any-resolution tokens carry no single
grid, its base-resolution grid is ``meta["base_grid"]`` (the first ``rows * cols`` image
columns). BLIP-2 / InstructBLIP columns are the Q-Former's query tokens (dims ``("batch",
"head", "word", "qtoken")``, key modality ``"qformer_query"``, no grid).

How the weights are obtained (``meta["method"]``): on SDPA, ``"rows"`` (:mod:`.rows`: the
fused kernel computes the output, exactly as without the capture, and the text rows' weights
are recomputed from the call's own query/key states and mask: no ``T x T`` matrix); otherwise
(or ``taps(model, method="eager")``) the language model's config is switched to eager
attention for the capture and restored on exit (``"eager-switch"``; ``"returned"`` when it
already ran eagerly). Either way the weights equal those of ``output_attentions=True`` under
eager attention.

``taps(model, block="full")`` (eager) emits each layer's whole ``[batch, head, query, key]`` instead,
with ``meta["text_positions"]`` / ``meta["image_positions"]`` (key positions of each kind).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ...errors import CaptureError
from ...models.attention import ProbeRecord
from ..sites import Tap
from .generic import eager_switch
from .hf import WeightsTap, attention_modules, is_hf, positions, take, vision_grid
from .rows import use_rows

# top classes -> kind of image columns
FAMILIES = {
    "LlavaForConditionalGeneration": "grid", "LlavaModel": "grid",
    "LlavaNextForConditionalGeneration": "anyres", "LlavaNextModel": "anyres",
    "PaliGemmaForConditionalGeneration": "grid", "PaliGemmaModel": "grid",
    "Qwen2VLForConditionalGeneration": "thw", "Qwen2VLModel": "thw",
    "Qwen2_5_VLForConditionalGeneration": "thw", "Qwen2_5_VLModel": "thw",
    "Blip2ForConditionalGeneration": "qformer", "InstructBlipForConditionalGeneration": "qformer",
}
BLOCKS = ("t2i", "full")
METHODS = ("auto", "rows", "eager")


def _image_token_id(config) -> int:
    for attr in ("image_token_id", "image_token_index"):
        v = getattr(config, attr, None)
        if v is not None:
            return int(v)
    raise CaptureError(f"{type(config).__name__} has no image_token_id: cannot find the image tokens")


def _language_model(model: nn.Module) -> tuple[str, nn.Module]:
    for path, m in model.named_modules():
        if path.rsplit(".", 1)[-1] == "language_model":
            return path, m
    raise CaptureError(f"{type(model).__name__} has no language_model submodule")


def _tokens(tokenizer):
    tok = getattr(tokenizer, "tokenizer", tokenizer)  # a processor carries its tokenizer
    if tok is None:
        return None
    return lambda ids: [str(t) for t in tok.convert_ids_to_tokens([int(i) for i in ids])]


class _State:
    def __init__(self):
        self.ids = None            # input_ids of the current call
        self.image = None          # [batch, n_image] positions from the last call with image tokens
        self.has_image = False     # the current call contains image tokens
        self.grid = None           # per-call grid (Qwen2-VL)
        self.batch = 1             # batch size of the current call
        self.selected = {}         # (batch, q, k, device) -> (text, image) positions, for the current call
        self.method = None         # "rows", "eager-switch" or "returned" (set when the capture starts)


def _decoder_tap(path: str, model: nn.Module, kind: str, block: str, tokenizer=None,
                 method: str = "auto") -> Tap | None:
    cfg = model.config
    image_id = _image_token_id(cfg)
    lm_path, lm = _language_model(model)
    prefix = f"{path}.{lm_path}" if path else lm_path
    layers = attention_modules(lm, prefix)
    seq2seq = bool(getattr(lm.config, "is_encoder_decoder", False))
    if seq2seq:  # an encoder-decoder language model: the image/query tokens are in the encoder's sequence
        layers = {p: m for p, m in layers.items() if ".encoder." in f"{p[len(prefix):]}."}
    if not layers:  # e.g. BLIP-2 with Flan-T5, whose attention returns no weights at output[1]
        return None
    state = _State()
    to_tokens = _tokens(tokenizer)
    grid, transform = vision_grid(getattr(cfg, "vision_config", None))
    if kind == "qformer":
        dims, key_modality = ("batch", "head", "word", "qtoken"), "qformer_query"
    else:
        dims, key_modality = ("batch", "head", "word", "patch"), "image"

    def on_call(mod, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
        state.ids = ids
        state.selected = {}
        state.has_image = bool(ids is not None and (ids == image_id).any())
        if state.has_image:
            mask = ids == image_id
            counts = mask.sum(1)
            if not bool((counts == counts[0]).all()):
                raise CaptureError(f"{type(model).__name__}: the batch's examples hold different numbers of image "
                                   f"tokens {counts.tolist()}; capture one example at a time")
            state.image = mask.nonzero()[:, 1].view(ids.shape[0], -1)
            thw = kwargs.get("image_grid_thw")
            if kind == "thw" and thw is not None:
                merge = getattr(getattr(cfg, "vision_config", None), "spatial_merge_size", 2)
                t, h, w = (int(v) for v in thw[0])
                patch = getattr(cfg.vision_config, "patch_size", 14)
                state.grid = ((h // merge, w // merge) if t == 1 else None,
                              {"resize": (h * patch, w * patch)})

    def select(where: str, b: int, q: int, k: int, device):
        """(text positions [b, r], image positions [b, n]) of a call with q queries over k keys, or None."""
        if q == k and not state.has_image:
            return None  # a text-only call: no image columns
        cached = state.selected.get((b, q, k, str(device)))
        if cached is not None:  # every layer of a call asks the same
            return cached
        if state.image is None or int(state.image.max()) >= k:
            raise CaptureError(f"layer {where!r}: image token positions unknown for a call with {q} queries over "
                               f"{k} keys; call the model with input_ids containing its image token id {image_id}")
        image = state.image.to(device)
        if image.shape[0] != b:
            raise CaptureError(f"layer {where!r}: batch {b} but the image tokens were found for batch {image.shape[0]}")
        qpos = torch.arange(k - q, k, device=device).expand(b, q)
        is_text = ~(qpos[:, :, None] == image[:, None, :]).any(-1)
        n_text = is_text.sum(1)
        if not bool((n_text == n_text[0]).all()):
            raise CaptureError(f"layer {where!r}: the examples have different numbers of text queries "
                               f"{n_text.tolist()}")
        state.selected[(b, q, k, str(device))] = chosen = (qpos[is_text].view(b, -1), image)
        return chosen

    def plan_for(where: str) -> Callable:
        def plan(q: int, k: int):
            chosen = select(where, state.batch, q, k, torch.device("cpu"))
            if chosen is None or chosen[0].shape[1] == 0:
                return None
            return chosen[0] - (k - q)
        return plan

    def queries_of(args, kwargs) -> tuple[int, int]:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        return int(hidden.shape[0]), int(hidden.shape[1])

    def on_weights(lpath, args, kwargs, weights, emit, wanted):
        b, q = queries_of(args, kwargs)
        k = weights.shape[-1]
        chosen = select(lpath, b, q, k, weights.device)
        if chosen is None:
            return
        text, image = chosen
        g, tr = (state.grid if kind == "thw" and state.grid is not None else (grid, transform))
        n_img = image.shape[1]
        meta = {"method": state.method, "alignment": "scaled_dot", "image_token_id": image_id,
                "image_positions": positions(image), "text_positions": None}
        if kind in ("grid", "thw") and g is not None and g[0] * g[1] == n_img:
            meta.update(key_grid=tuple(g), grid=tuple(g), key_transform=tr, transform=tr)
        elif kind == "anyres" and g is not None and n_img >= g[0] * g[1]:
            meta["base_grid"] = tuple(g)
        if block == "full":
            name = f"{lpath}/full"
            if name not in wanted:
                return
            allk = torch.arange(k, device=weights.device).expand(b, k)
            key_is_text = ~(allk[:, :, None] == image[:, None, :]).any(-1)
            qpos = torch.arange(k - q, k, device=weights.device).expand(b, q)
            meta.update(text_positions=positions(allk[key_is_text].view(b, -1)), query_positions=positions(qpos),
                        key_positions=list(range(k)), block="full", direction=None, query_modality="mixed",
                        key_modality="mixed")
            emit(name, ProbeRecord(weights, None, ("batch", "head", "query", "key"), meta=meta))
            return
        name = f"{lpath}/t2i"
        if name not in wanted or text.shape[1] == 0:
            return
        meta.update(text_positions=positions(text), query_positions=positions(text), key_positions=positions(image),
                    block="t2i", direction="t2i", query_modality="text", key_modality=key_modality)
        if to_tokens is not None and b == 1 and state.ids is not None and state.ids.shape[1] == q:
            meta["query_tokens"] = to_tokens(state.ids[0, (text[0] - (k - q)).cpu()])
        # the rows method returned the text rows only; eager weights have every query row
        rows = None if weights.shape[2] == text.shape[1] else text - (k - q)
        emit(name, ProbeRecord(take(weights, rows, image), None, dims, meta=meta))

    def on_batch(mod, args, kwargs):
        on_call(mod, args, kwargs)
        ids = state.ids
        embeds = kwargs.get("inputs_embeds")
        state.batch = int(ids.shape[0]) if ids is not None else (int(embeds.shape[0]) if embeds is not None else 1)

    def switch(paths) -> list:
        impl = getattr(lm.config, "_attn_implementation_internal", None)
        if block == "t2i" and method in ("auto", "rows") and impl == "sdpa" and not seq2seq:
            state.method = "rows"
            return use_rows(lm, {layers[p]: plan_for(p) for p in paths})
        if method == "rows":
            raise CaptureError(f"method='rows' needs a decoder-only language model on SDPA attention and "
                               f"block='t2i' (attention implementation {impl!r}, block {block!r})")
        undo, switched = eager_switch(lm)
        state.method = "eager-switch" if switched else "returned"
        return [undo]

    parent = model.get_submodule(lm_path.rpartition(".")[0]) if "." in lm_path else model

    def extra():  # the language model's parent gets input_ids (whether called by the top model or directly)
        return [parent.register_forward_pre_hook(on_batch, with_kwargs=True)]

    sites = {f"{p}/{block}": p for p in layers}
    return WeightsTap(layers, sites, on_weights, switch=switch, extra_hooks=extra)


def taps(model: nn.Module, *, block: str = "t2i", tokenizer=None, method: str = "auto") -> list[Tap]:
    """One tap per decoder-only vision-language model inside ``model``.

    Args:
        model: e.g. a ``LlavaForConditionalGeneration``.
        block: ``"t2i"`` (text rows x image columns, the default) or ``"full"`` (each layer's
            whole self-attention, with ``meta["text_positions"]`` / ``meta["image_positions"]``).
        tokenizer: a tokenizer or processor; the text rows then carry their tokens (batch of 1).
        method: ``"auto"`` (default: ``"rows"`` for the ``t2i`` block of a language model on SDPA
            attention, else ``"eager"``), ``"rows"`` (the fused output, plus the text rows'
            weights recomputed from the call's own states: no ``T x T`` matrix, see
            :mod:`.rows`) or ``"eager"`` (switch to eager attention for the capture).
    """
    if block not in BLOCKS:
        raise CaptureError(f"block must be one of {BLOCKS}, got {block!r}")
    if method not in METHODS:
        raise CaptureError(f"method must be one of {METHODS}, got {method!r}")
    out, seen = [], []
    for path, m in model.named_modules():
        if any(s == "" or path.startswith(s + ".") for s in seen):
            continue
        kind = FAMILIES.get(type(m).__name__) if is_hf(m) else None
        if kind is not None:
            seen.append(path)
            tap = _decoder_tap(path, m, kind, block, tokenizer, method)
            if tap is not None:
                out.append(tap)
    return out


def find_taps(model: nn.Module) -> list[Tap]:
    """The default (``block="t2i"``) taps of :func:`taps`."""
    return taps(model)
