"""BLIP-2 and InstructBLIP: the Q-Former's query -> image-patch cross attention.

The Q-Former's learned query tokens attend to the vision encoder's output (``[CLS]`` then the
``rows x cols`` patches, row-major) in every ``cross_attention_frequency``-th layer::

    qformer.encoder.layer.{i}.crossattention.attention/q2i   [batch, head, qtoken, patch]

The ``[CLS]`` key (position 0, ``meta["cls_position"]``) is kept apart, so the key axis is
exactly the patch grid (``Side.grid = meta["grid"]``, from the vision config, with its
``{"resize": (size, size)}`` transform); rows sum to 1 minus the ``[CLS]`` weight. Only the
query tokens take part (InstructBLIP's instruction tokens do not cross-attend). The weights are
the module's own, with the Q-Former config switched to eager attention for the capture.

The language model's text -> query-token block of these models comes from
:mod:`attnlens.capture.adapters.llava` (the query tokens sit at the model's image token id).
``taps(model, block="full")`` keeps the ``[CLS]`` key (whole cross attention).
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import CaptureError
from ...models.attention import ProbeRecord
from ..sites import Tap
from .hf import WeightsTap, is_hf, take, vision_grid

TOPS = ("Blip2ForConditionalGeneration", "Blip2Model", "Blip2ForImageTextRetrieval",
        "InstructBlipForConditionalGeneration", "InstructBlipModel")
CROSS = ("Blip2QFormerMultiHeadAttention", "InstructBlipQFormerMultiHeadAttention")
BLOCKS = ("q2i", "full")


def _tap(path: str, model: nn.Module, block: str) -> Tap | None:
    prefix = f"{path}." if path else ""
    layers = {f"{prefix}{p}": m for p, m in model.named_modules()
              if is_hf(m, *CROSS) and p.endswith("crossattention.attention")}
    if not layers:
        return None
    grid, transform = vision_grid(getattr(model.config, "vision_config", None))
    qformer = next(m for p, m in model.named_modules() if p.rsplit(".", 1)[-1] == "qformer")
    method = "returned" if getattr(qformer.config, "_attn_implementation_internal", None) == "eager" \
        else "eager-switch"

    def on_weights(lpath, args, kwargs, weights, emit, wanted):
        name = f"{lpath}/{block}"
        if name not in wanted:
            return
        b, _, q, k = weights.shape
        meta = {"method": method, "alignment": "scaled_dot", "query_modality": "qformer_query",
                "key_modality": "image", "query_positions": list(range(q)), "cls_position": 0}
        if block == "full":
            meta.update(block="full", direction=None, key_positions=list(range(k)), image_positions=list(range(1, k)))
            emit(name, ProbeRecord(weights, None, ("batch", "head", "qtoken", "patch"), meta=meta))
            return
        keys = torch.arange(1, k, device=weights.device).expand(b, -1)
        meta.update(block="q2i", direction="q2i", key_positions=list(range(1, k)), dropped_prefix_keys=1)
        if grid is not None and grid[0] * grid[1] == k - 1:
            meta.update(key_grid=grid, grid=grid, key_transform=transform, transform=transform)
        emit(name, ProbeRecord(take(weights, None, keys), None, ("batch", "head", "qtoken", "patch"), meta=meta))

    sites = {f"{p}/{block}": p for p in layers}
    return WeightsTap(layers, sites, on_weights, switch=qformer)


def taps(model: nn.Module, *, block: str = "q2i") -> list[Tap]:
    """One tap per BLIP-2 / InstructBLIP model in ``model`` (its Q-Former cross-attention layers).

    Args:
        block: ``"q2i"`` (query tokens x grid cells, default) or ``"full"`` (with the ``[CLS]`` key).
    """
    if block not in BLOCKS:
        raise CaptureError(f"block must be one of {BLOCKS}, got {block!r}")
    out, seen = [], []
    for path, m in model.named_modules():
        if any(s == "" or path.startswith(s + ".") for s in seen) or not is_hf(m, *TOPS):
            continue
        seen.append(path)
        tap = _tap(path, m, block)
        if tap is not None:
            out.append(tap)
    return out


def find_taps(model: nn.Module) -> list[Tap]:
    """The default (``block="q2i"``) taps of :func:`taps`."""
    return taps(model)
