"""Explain profiles of the families capture reads with full attention: ViLT, CLIP / SigLIP, LLaVA-style.

Each reads the capture adapter's ``block="full"`` taps (:mod:`attnlens.capture.adapters`), whose
maps are each layer's whole self-attention ``[batch, head, query, key]`` in the autograd graph,
with ``meta["text_positions"]`` / ``meta["image_positions"]``:

* ``vilt`` -- single stream (``ViltModel`` inside any head): each layer's joint self-attention
  over ``[text; image [CLS]; kept patches]``. Rows are the text tokens, columns the patches
  ViLT kept, each placed at its grid cell (the key axis is the image's ``(rows, cols)`` grid,
  row-major, ``Side.grid``); cells ViLT dropped or masked are 0; the image ``[CLS]`` is not a
  column (it is a token of the sequence, so relevance flows through it). Default target: the
  top logit (``ViltForImageAndTextRetrieval``: its one ITM logit). Captum features: the patch
  embedding's feature map ``[B, D, rows, cols]`` read as one token per grid cell (before ViLT
  selects patches, so the attributions' columns are the grid cells too).
* ``dual_encoder`` -- CLIP and SigLIP (``CLIPModel``, ``SiglipModel``): no cross-modal attention,
  so rollout and Chefer's self-attention rule run inside each tower (the text tower's steps are
  traced too, but nothing mixes it with the image), and the map is **one row**
  (``query_dim = "output"``) over the image patches: CLIP's image ``[CLS]`` row (the token its
  pooled embedding is read from) without the ``[CLS]`` column; SigLIP has no ``[CLS]`` (its
  attention-pooling head reads every patch), so its row is the mean of the patch rows (the
  pooling head's own probe attention is not propagated). ``dual_encoder_profile(model, "text")``
  reads the text tower the same way: the row of the token it pools (CLIP's end-of-text token,
  SigLIP's last token) over the text tokens. Target: the pair's similarity
  ``logits_per_image[b, b]`` (image ``b`` with text ``b``: as many images as texts). Captum
  features: the vision embeddings' output (CLIP without its ``[CLS]``).
* ``decoder`` -- LLaVA-style decoder-only models (LLaVA, LLaVA-NeXT, PaliGemma, Qwen2-VL,
  Qwen2.5-VL ``*ForConditionalGeneration``): the language model's layers, each a self-attention
  of the joint sequence (causal: row ``i`` has zeros right of ``i``, PaliGemma's prefix is
  bidirectional; Chefer's rule needs no change for either). Rows are the non-image tokens (every
  position of ``input_ids`` that is not the model's image token), columns the image tokens, with
  the vision grid when the image tokens are exactly it. Default target: the top logit of the
  **last position** (the next token's logit); pass ``target=`` for a given answer token, e.g.
  ``lambda o: o.logits[:, -2, answer_id]`` for teacher-forced scoring. The vision tower's own
  attention is not traced (the relevance starts at the image tokens of the language model).
  Captum features: the multimodal projector's output (the image tokens' embeddings) for LLaVA
  and PaliGemma (LLaVA-NeXT's crops and Qwen2-VL's merged patches are not one ``[B, N, D]``
  tensor: refused). LLaVA-NeXT's any-resolution image tokens have no single grid (``grid`` None).

* ``blip2`` -- BLIP-2 (``Blip2ForConditionalGeneration`` with a decoder-only language model) and
  InstructBLIP:
  three streams. ``image``: the vision tower's self-attention (``[CLS]`` + patches); ``query``: the
  Q-Former's self-attention over its query tokens and its cross-attention from the queries to the
  vision tower's output (the bi-modal rule, as for BLIP); ``joint``: the language model's
  self-attention. The Q-Former's outputs *are* the language model's image tokens (projected), a
  **link** (:mod:`.relevance`, :mod:`.rollout`): each image-token position of the language model
  starts with the relevance of its query token over the patches, and the language model's
  self-attention rule carries it to the text tokens. Rows: the non-image tokens; columns: the
  patches (the vision ``[CLS]`` dropped), with the patch grid. Target: the last position's top
  logit. ``raw`` and ``attention_x_gradient`` need a text -> image attention call, which BLIP-2
  does not have (capture's ``qformer`` and ``llava`` adapters record its two blocks for raw maps).
  InstructBLIP (``InstructBlipForConditionalGeneration``) the same way: its Q-Former's
  self-attention also reads the instruction tokens (``qformer_input_ids``), which do not
  cross-attend (zero rows in the cross-attention step: they pass through) and are not handed to
  the language model (the link takes the first ``num_query_tokens`` tokens of the query stream).
"""
from __future__ import annotations

import re

import torch
from torch import nn

from ..attention_map import AttentionMap
from ..capture.adapters import dual as _dual, llava as _llava, vilt as _vilt
from ..capture.adapters.hf import WeightsTap, attention_modules, is_hf, method_of, vision_grid
from ..errors import ExplainError
from ..models.attention import ProbeRecord
from . import profiles as _p
from .profiles import Profile
from .trace import Layout


def _tensor(pos, what: str) -> torch.Tensor:
    """``[n]`` (one list shared by the batch) or ``[B, n]`` positions from capture meta."""
    if pos is None:
        raise ExplainError(f"the capture map carries no {what}: capture with the adapter's block='full' taps")
    if pos and isinstance(pos[0], (list, tuple)):
        lengths = {len(p) for p in pos}
        if len(lengths) != 1:
            raise ExplainError(f"the examples of the batch have different numbers of {what} "
                               f"{sorted(lengths)}; explain one example at a time")
        return torch.tensor(pos, dtype=torch.long)
    return torch.tensor(list(pos), dtype=torch.long)


def _first_meta(maps: list[AttentionMap]) -> dict:
    if not maps:
        raise ExplainError("no attention map was recorded")
    return maps[0].meta


# ----------------------------------------------------------------------------- ViLT
def _vilt_sites(model, inputs):
    return _vilt.taps(model, block="full")


def _vilt_layout(model, inputs, streams, maps) -> Layout:
    meta = _first_meta(maps)
    cells, image = meta.get("image_cells"), meta.get("image_positions")
    if image and isinstance(image[0], (list, tuple)) and len({len(p) for p in image}) > 1:
        # examples keep different numbers of patches: pad with a repeated position whose cell is -1 (dropped)
        n = max(len(p) for p in image)
        image = [list(p) + [p[0]] * (n - len(p)) for p in image]
        cells = [list(c) + [-1] * (n - len(c)) for c in cells]
    return Layout(("joint", _tensor(meta.get("text_positions"), "text positions")),
                  ("joint", _tensor(image, "image positions")), key_dim="patch", grid=tuple(meta["grid"]),
                  cells=_tensor(cells, "image cells"))


def vilt_profile(model: nn.Module) -> Profile:
    """Profile of transformers' ViLT models (module docstring)."""
    root = _p._find(model, "ViltModel", "transformers.models.vilt")
    return Profile("vilt", _vilt_sites, _p._joint_classify, _vilt_layout,
                   features=lambda m, inputs: ("grid", _p._join(root, "embeddings.patch_embeddings")),
                   description="single stream: joint self-attention over [text; image CLS; kept patches], "
                               "columns at their grid cells", key_dim="patch")


# ----------------------------------------------------------------------------- CLIP / SigLIP
_DUAL = ("CLIPModel", "SiglipModel")


def pair_logit(output) -> torch.Tensor:
    """A dual encoder's target: the similarity ``logits_per_image[b, b]`` of image ``b`` with text ``b``.

    >>> from types import SimpleNamespace
    >>> pair_logit(SimpleNamespace(logits_per_image=torch.tensor([[2.0, 0.5], [0.1, 3.0]]))).tolist()
    [2.0, 3.0]
    """
    logits = getattr(output, "logits_per_image", None)
    if not isinstance(logits, torch.Tensor):
        raise ExplainError("a dual encoder's default target is logits_per_image[b, b]; the output has no "
                           "logits_per_image (pass target=)")
    return _p.pair_similarity(logits)


def _dual_classify(amap: AttentionMap):
    q, k = amap.query.modality, amap.key.modality
    if q not in ("image", "text") or q != k:
        raise ExplainError(f"dual-encoder profile: unexpected map {amap.site!r} ({q} -> {k})")
    return q, k, (q, amap.site)


def _dual_root(model) -> str:
    for path, m in model.named_modules():
        if is_hf(m, *_DUAL):
            return path
    raise ExplainError(f"{type(model).__name__} holds no CLIPModel / SiglipModel")


def pooled_text_position(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """``[B, 1]`` position of the token a dual encoder's text tower pools: CLIP's end-of-text token
    (``argmax`` of the ids for the legacy ``eos_token_id == 2``, else the first ``eos_token_id``),
    SigLIP's last token (transformers' own rules)."""
    root = model.get_submodule(_dual_root(model))
    b, n = input_ids.shape
    if not type(root).__name__.startswith("CLIP"):
        return torch.full((b, 1), n - 1, dtype=torch.long)
    eos = root.text_model.eos_token_id
    if eos == 2:
        return input_ids.argmax(-1, keepdim=True)
    return (input_ids == eos).int().argmax(-1, keepdim=True)


def _dual_text_layout(model, inputs, streams, maps) -> Layout:
    if "text" not in streams:
        raise ExplainError("the dual encoder's text tower recorded no self-attention")
    rows = pooled_text_position(model, inputs["input_ids"])
    return Layout(("text", rows), ("text", None), query_dim="output", key_dim="word", key_modality="text")


def _dual_layout(model, inputs, streams, maps) -> Layout:
    image = [m for m in maps if m.query.modality == "image"]
    if not image:
        raise ExplainError("the dual encoder's image tower recorded no self-attention")
    meta, n = image[0].meta, streams["image"]
    cls = int(meta.get("prefix_keys", 0))
    grid = meta.get("grid")
    grid = tuple(grid) if grid is not None and grid[0] * grid[1] == n - cls else None
    if cls:
        return Layout(("image", torch.tensor([0])), ("image", torch.arange(cls, n)), query_dim="output",
                      key_dim="patch", grid=grid)
    return Layout(("image", None), ("image", None), query_dim="output", key_dim="patch", grid=grid, row_mean=True)


def _dual_features(model, inputs):
    return "layer", _p._join(_dual_root(model), "vision_model.embeddings")


def dual_encoder_profile(model: nn.Module, tower: str = "image") -> Profile:
    """Profile of transformers' CLIP / SigLIP dual encoders (module docstring).

    Args:
        tower: ``"image"`` (the default, found by :func:`~attnlens.explain.profiles.profile_for`): one
            row over the patches; ``"text"``: the row of the token the text tower pools (CLIP's
            end-of-text token, SigLIP's last token) over the text tokens, dims ``("batch", "output",
            "word")`` (pass ``profile=dual_encoder_profile(model, "text")`` to :func:`~attnlens.explain.explain`).
    """
    if tower not in ("image", "text"):
        raise ExplainError(f"tower must be 'image' or 'text', got {tower!r}")
    root = model.get_submodule(_dual_root(model))
    clip = type(root).__name__.startswith("CLIP")
    if tower == "text":
        return Profile("dual_encoder", lambda m, inputs: _dual.taps(m), _dual_classify, _dual_text_layout,
                       target=pair_logit, key_dim="word",
                       description="self-attention within each tower; the text tower's pooled row over the text "
                                   "tokens; target logits_per_image[b, b]")
    return Profile("dual_encoder", lambda m, inputs: _dual.taps(m), _dual_classify, _dual_layout, target=pair_logit,
                   features=_dual_features, key_dim="patch", feature_keep=slice(1, None) if clip else None,
                   description="self-attention within each tower; the image [CLS] row (SigLIP: the mean patch row) "
                               "over the patches; target logits_per_image[b, b]")


# ----------------------------------------------------------------------------- LLaVA-style decoders
def next_token_top(output) -> torch.Tensor:
    """A decoder's default target: the top logit at the last position (the predicted next token).

    >>> from types import SimpleNamespace
    >>> next_token_top(SimpleNamespace(logits=torch.tensor([[[0.0, 9.0], [1.0, 4.0]]]))).tolist()
    [4.0]
    """
    logits = getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
        raise ExplainError("a decoder's default target is the top logit at the last position of logits "
                           "[batch, position, vocab]; pass target= for other outputs")
    return logits[:, -1].amax(-1)


def _decoder_root(model) -> tuple[str, str] | None:
    for path, m in model.named_modules():
        kind = _llava.FAMILIES.get(type(m).__name__) if is_hf(m) else None
        if kind is not None:
            return (path, kind) if kind != "qformer" else None
    return None


def _decoder_layout(model, inputs, streams, maps) -> Layout:
    meta = _first_meta(maps)
    q, k = maps[0].weights.shape[-2:]
    if q != k:
        raise ExplainError(f"the decoder's attention has {q} queries over {k} keys: explain runs one full forward "
                           "pass (no KV cache, not generate()); pass the whole sequence as input_ids")
    grid = meta.get("grid")
    return Layout(("joint", _tensor(meta.get("text_positions"), "text positions")),
                  ("joint", _tensor(meta.get("image_positions"), "image positions")), key_dim="patch",
                  grid=None if grid is None else tuple(grid))


def _decoder_features(model, inputs):
    root, kind = _decoder_root(model)
    if kind != "grid":  # LLaVA-NeXT's crops, Qwen2-VL's merged patches: the projector output is not [B, N, D]
        raise ExplainError(f"{type(model).__name__}: the captum attributions need the image tokens' embeddings as "
                           "one [batch, tokens, dim] tensor, which only LLaVA and PaliGemma's projector gives")
    for path, m in model.named_modules():
        if path.rsplit(".", 1)[-1] == "multi_modal_projector" and (not root or path.startswith(root + ".")
                                                                   or path == root):
            return "layer", path
    raise ExplainError(f"{type(model).__name__} has no multi_modal_projector whose output [B, N, D] are the image "
                       "tokens' embeddings: the captum attributions are not available for it")


def decoder_profile(model: nn.Module) -> Profile:
    """Profile of LLaVA-style decoder-only vision-language models (module docstring)."""
    return Profile("decoder", lambda m, inputs: _llava.taps(m, block="full"), _p._joint_classify, _decoder_layout,
                   target=next_token_top, features=_decoder_features, key_dim="patch",
                   description="language-model self-attention (causal) over [text; image tokens]; rows the non-image "
                               "tokens, columns the image tokens; target the last position's top logit")


# ----------------------------------------------------------------------------- BLIP-2
_BLIP2 = (("vision_model", re.compile(r"vision_model\.encoder\.layers\.(\d+)\.self_attn$"), "image", "image", "v"),
          ("qformer", re.compile(r"qformer\.encoder\.layer\.(\d+)\.attention\.attention$"), "query", "query", "q-self"),
          ("qformer", re.compile(r"qformer\.encoder\.layer\.(\d+)\.crossattention\.attention$"), "query", "image",
           "q-cross"))


_BLIP2_TOPS = ("Blip2ForConditionalGeneration", "InstructBlipForConditionalGeneration")


def _blip2_root(model) -> str | None:
    for path, m in model.named_modules():
        if is_hf(m, *_BLIP2_TOPS):
            return path
    return None


def _blip2_sites(model, inputs):
    root = _blip2_root(model)
    top = model.get_submodule(root) if root else model
    taps, seen = [], {"query": None}
    for part in ("vision_model", "qformer"):
        sub = top.get_submodule(part)
        layers = {p: m for p, m in attention_modules(sub, _p._join(root, part)).items()
                  if any(rule.search(p) for _, rule, *_ in _BLIP2)}
        method = method_of(sub)

        def on_weights(path, args, kwargs, weights, emit, wanted, _m=method):
            if path not in wanted:
                return
            b, h, q, k = weights.shape
            if path.endswith(".attention.attention") and not path.endswith("crossattention.attention"):
                seen["query"] = q  # the Q-Former's self-attention: queries (+ InstructBLIP's instruction tokens)
            elif path.endswith("crossattention.attention") and seen["query"] and seen["query"] > q:
                # only the queries cross-attend: the instruction tokens' rows are zero (they pass through)
                weights = torch.cat([weights, weights.new_zeros(b, h, seen["query"] - q, k)], 2)
            emit(path, ProbeRecord(weights, None, ("batch", "head", "query", "key"), meta={
                "method": _m, "alignment": "scaled_dot", "block": "full",
                "query_positions": list(range(weights.shape[2])), "key_positions": list(range(k))}))

        taps.append(WeightsTap(layers, {p: p for p in layers}, on_weights, switch=sub))
    return taps + _llava.taps(model, block="full")


def _blip2_classify(amap: AttentionMap):
    for _, rule, q, k, stage in _BLIP2:
        hit = rule.search(amap.site)
        if hit:
            return q, k, (stage, int(hit.group(1)))
    if amap.site.endswith("/full"):
        return "joint", "joint", ("lm", amap.site)
    raise ExplainError(f"BLIP-2 profile: unexpected site {amap.site!r}")


def _lm_map(maps) -> AttentionMap:
    lm = [m for m in maps if m.site.endswith("/full")]
    if not lm:
        raise ExplainError("BLIP-2: the language model recorded no attention (are the query tokens in input_ids?)")
    return lm[0]


def _blip2_layout(model, inputs, streams, maps) -> Layout:
    meta, n = _lm_map(maps).meta, streams["image"]
    grid, _ = vision_grid(model.get_submodule(_p._join(_blip2_root(model) or "", "vision_model")).config)
    return Layout(("joint", _tensor(meta.get("text_positions"), "text positions")), ("image", torch.arange(1, n)),
                  key_dim="patch", grid=grid if grid is not None and grid[0] * grid[1] == n - 1 else None)


def _blip2_links(model, inputs, maps):
    return [("joint", _tensor(_lm_map(maps).meta.get("image_positions"), "image positions"), "query")]


def blip2_profile(model: nn.Module) -> Profile:
    """Profile of BLIP-2 with a decoder-only language model (module docstring)."""
    root = _blip2_root(model) or ""
    return Profile("blip2", _blip2_sites, _blip2_classify, _blip2_layout, target=next_token_top,
                   features=lambda m, inputs: ("layer", _p._join(root, "vision_model.embeddings")), key_dim="patch",
                   feature_keep=slice(1, None), links=_blip2_links,
                   description="vision self-attention, Q-Former self- and query -> image cross-attention, linked to "
                               "the language model's image tokens, language-model self-attention")


_p.register("blip2", lambda m: _blip2_root(m) is not None, blip2_profile)
_p.register("vilt", lambda m: _p._find(m, "ViltModel", "transformers.models.vilt") is not None, vilt_profile)
_p.register("dual_encoder", lambda m: any(is_hf(s, *_DUAL) for s in m.modules()), dual_encoder_profile)
_p.register("decoder", lambda m: _decoder_root(m) is not None, decoder_profile)
