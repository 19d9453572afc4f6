"""Dual encoders (CLIP, SigLIP): each tower's self-attention, labelled by modality.

A dual encoder has no cross-modal attention; its maps serve the explainers (attention rollout,
gradient-weighted relevance need every layer's full self-attention of each tower)::

    vision_model.encoder.layers.{i}.self_attn   [batch, head, query, key]   image / image
    text_model.encoder.layers.{i}.self_attn     [batch, head, query, key]   text / text

The vision maps carry the patch grid (``Side.grid = meta["grid"]``, with the processor's
``{"resize": (size, size)}`` transform); CLIP puts a ``[CLS]`` token first
(``meta["prefix_keys"] = 1``, ``meta["cls_position"] = 0``), SigLIP has none. Found only for a
dual encoder that is not part of a larger transformers model (LLaVA's CLIP vision tower is not
a site by default; name it with ``sites=`` and :func:`taps` to record it).
"""
from __future__ import annotations

from torch import nn

from ...models.attention import ProbeRecord
from ..sites import Tap
from .hf import WeightsTap, attention_modules, is_hf, method_of, vision_grid

TOPS = ("CLIPModel", "CLIPVisionModel", "CLIPTextModel", "CLIPVisionModelWithProjection",
        "CLIPTextModelWithProjection", "SiglipModel", "SiglipVisionModel", "SiglipTextModel",
        "SiglipForImageClassification")


def _tap(path: str, model: nn.Module) -> Tap | None:
    layers = attention_modules(model, path)
    if not layers:
        return None
    cfg = model.config
    vcfg = getattr(cfg, "vision_config", cfg if "Vision" in type(cfg).__name__ else None)
    grid, transform = vision_grid(vcfg)
    cls = 1 if type(model).__name__.startswith("CLIP") else 0
    method = method_of(model)

    def on_weights(lpath, args, kwargs, weights, emit, wanted):
        if lpath not in wanted:
            return
        image = "vision_model" in lpath.split(".")
        k = weights.shape[-1]
        meta = {"method": method, "alignment": "scaled_dot", "direction": "i2i" if image else "t2t",
                "query_positions": list(range(weights.shape[-2])), "key_positions": list(range(k)),
                "query_modality": "image" if image else "text", "key_modality": "image" if image else "text"}
        if image and grid is not None and grid[0] * grid[1] + cls == k:
            meta.update(grid=grid, key_grid=grid, query_grid=grid, transform=transform, key_transform=transform)
            if cls:
                meta.update(prefix_keys=1, cls_position=0)
        emit(lpath, ProbeRecord(weights, None, ("batch", "head", "query", "key"), meta=meta))

    return WeightsTap(layers, {p: p for p in layers}, on_weights, switch=model)


def taps(model: nn.Module) -> list[Tap]:
    """One tap per dual encoder (or single tower) of ``model`` whose parents are not transformers models."""
    out, hf_paths = [], []
    for path, m in model.named_modules():
        inside = any(s == "" or path.startswith(s + ".") for s in hf_paths)
        if is_hf(m):
            hf_paths.append(path)
        if inside or not is_hf(m, *TOPS):
            continue
        tap = _tap(path, m)
        if tap is not None:
            out.append(tap)
    return out


find_taps = taps
