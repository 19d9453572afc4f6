"""ViLT (transformers ``ViltModel`` and the heads wrapping it): text -> image-patch blocks.

ViLT is single-stream: each layer's self-attention runs over ``[text tokens (T)] + [image
[CLS]] + [kept patches]``. The patches are the cells of the image's ``(rows, cols)`` feature
grid that ViLT keeps: the valid cells under ``pixel_mask``, at most
``config.max_image_length`` of them (drawn at random when there are more, padded with masked
cells when fewer), in the order drawn. The adapter reads that choice (ViLT's ``patch_index``
and mask, by wrapping ``embeddings.visual_embed`` for the capture) and places each kept
patch's column at its grid cell::

    encoder.layer.{i}.attention.attention/t2i   [batch, head, word, patch]  patch = rows * cols cells, row-major

so the key axis is exactly the image grid (``Side.grid = meta["grid"] = (rows, cols)``; the
grid covers ``pixel_values``, ``meta["input_size"]``). ``meta["transforms"]`` holds, per
example, the image transform of ViLT's processor read from ``pixel_mask`` (resize to the valid
region, then pad bottom/right to the batch's size): with the original image size,
:func:`~attnlens.capture.patches.patch_boxes` maps each cell back to original pixels (cells in
the padding come back empty); for a single example it is also ``Side.transform``. Cells ViLT did not keep (dropped or
masked) have weight 0 and key position -1 in ``meta["key_positions"]``; the image ``[CLS]``
(position ``T``, ``meta["cls_position"]``) is kept apart: it is not in the block. Rows are
parts of rows summing to 1 over the whole sequence.

``taps(model, block="full")`` emits each layer's whole self-attention with
``meta["text_positions"]``, ``meta["image_positions"]`` (kept, valid patches, in sequence
order) and ``meta["image_cells"]`` (their grid cells).
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import CaptureError
from ...models.attention import ProbeRecord
from ..sites import Emit, Tap, layer_from_path
from .generic import _Undo, hook_returned_weights
from .hf import is_hf, positions

BLOCKS = ("t2i", "full")


class ViltTap(Tap):
    """Every self-attention layer of one ViLT model."""

    def __init__(self, embeddings: nn.Module, layers: dict[str, nn.Module], block: str = "t2i", tokenizer=None):
        self.embeddings, self.layer_modules, self.block = embeddings, layers, block
        tok = getattr(tokenizer, "tokenizer", tokenizer)  # a processor carries its tokenizer
        self.to_tokens = None if tok is None else (
            lambda ids: [str(t) for t in tok.convert_ids_to_tokens([int(i) for i in ids])])
        names = {f"{p}/{block}": m for p, m in layers.items()}
        super().__init__(list(names), names, {n: layer_from_path(n.rsplit("/", 1)[0]) for n in names})

    def attach(self, emit: Emit, wanted: frozenset[str]) -> list:
        state: dict = {"text": None, "cells": None, "valid": None, "grid": None, "input": None, "ids": None}
        emb = self.embeddings
        original = emb.__dict__.get("visual_embed")  # an instance attribute already there (nested capture)
        bound = emb.visual_embed

        def visual_embed(pixel_values, pixel_mask, *a, **kw):
            x, x_mask, (patch_index, (height, width)) = bound(pixel_values, pixel_mask, *a, **kw)
            state["cells"] = (patch_index[..., 0] * width + patch_index[..., 1]).long()
            state["valid"] = x_mask[:, 1:].bool()
            state["grid"] = (int(height), int(width))
            H, W = int(pixel_values.shape[-2]), int(pixel_values.shape[-1])
            state["input"] = (H, W)
            valid_px = pixel_mask.bool()  # ViLT's processor: resize, then pad bottom/right to the batch's size
            state["transforms"] = [{"resize": (int(v.any(1).sum()), int(v.any(0).sum())),
                                    "pad": (0, 0, H - int(v.any(1).sum()), W - int(v.any(0).sum()))}
                                   for v in valid_px]
            return x, x_mask, (patch_index, (height, width))

        def on_embed(mod, args, kwargs):
            ids = args[0] if args else kwargs.get("input_ids")
            embeds = args[5] if len(args) > 5 else kwargs.get("inputs_embeds")
            src = ids if ids is not None else embeds
            state["text"] = None if src is None else int(src.shape[1])
            state["cells"], state["ids"] = None, ids

        def undo():
            if original is None:
                emb.__dict__.pop("visual_embed", None)
            else:
                emb.visual_embed = original

        emb.visual_embed = visual_embed
        handles: list = [_Undo(undo)]
        try:
            handles.append(emb.register_forward_pre_hook(on_embed, with_kwargs=True))
            for path, module in self.layer_modules.items():
                if f"{path}/{self.block}" in wanted:
                    handles += hook_returned_weights(module, self._callback(path, state, emit),
                                                     flag="output_attentions", position=2)
        except BaseException:
            for h in reversed(handles):
                h.remove()
            raise
        return handles

    def _callback(self, path: str, state: dict, emit: Emit):
        name = f"{path}/{self.block}"

        def on_weights(args, kwargs, weights):
            t = state["text"]
            if t is None:
                raise CaptureError(f"ViLT site {name!r}: the text length is unknown (the embeddings were not "
                                   "called with input_ids or inputs_embeds)")
            if state["cells"] is None:
                raise CaptureError(f"ViLT site {name!r}: the patch grid is unknown (image_embeds were passed "
                                   "instead of pixel_values); capture with pixel_values")
            b, h, _, k = weights.shape
            cells, valid = state["cells"].to(weights.device), state["valid"].to(weights.device)
            rows, cols = state["grid"]
            n = rows * cols
            if k != t + 1 + cells.shape[1]:
                raise CaptureError(f"ViLT site {name!r}: {k} keys, expected {t} text + 1 [CLS] + "
                                   f"{cells.shape[1]} patches")
            meta = {"method": "returned", "alignment": "scaled_dot", "text_length": t, "cls_position": t,
                    "grid": (rows, cols), "input_size": state["input"], "transforms": state["transforms"]}
            if b == 1:
                meta["transform"] = meta["key_transform"] = state["transforms"][0]
            if self.block == "full":
                seq = torch.arange(t + 1, k, device=weights.device).expand(b, -1)
                counts = valid.sum(1)
                img = [seq[i][valid[i]] for i in range(b)]
                cel = [cells[i][valid[i]] for i in range(b)]
                same = bool((counts == counts[0]).all())
                meta.update(block="full", direction=None, query_modality="mixed", key_modality="mixed",
                            text_positions=list(range(t)),
                            image_positions=positions(torch.stack(img)) if same else [x.tolist() for x in img],
                            image_cells=positions(torch.stack(cel)) if same else [x.tolist() for x in cel],
                            query_positions=list(range(k)), key_positions=list(range(k)))
                emit(name, ProbeRecord(weights, None, ("batch", "head", "query", "key"), meta=meta))
                return
            src = weights[:, :, :t, t + 1:]
            index = torch.where(valid, cells, torch.full_like(cells, n))  # dropped/masked -> spare column n
            index = index[:, None, None, :].expand(b, h, t, -1)
            block = src.new_zeros(b, h, t, n + 1).scatter(3, index, src)[..., :n]
            keypos = torch.full((b, n + 1), -1, dtype=torch.long, device=weights.device)
            keypos.scatter_(1, torch.where(valid, cells, torch.full_like(cells, n)),
                            torch.arange(t + 1, k, device=weights.device).expand(b, -1))
            meta.update(block="t2i", direction="t2i", query_modality="text", key_modality="image",
                        key_grid=(rows, cols), query_positions=list(range(t)),
                        key_positions=positions(keypos[:, :n]), text_positions=list(range(t)))
            if self.to_tokens is not None and b == 1 and state["ids"] is not None:
                meta["query_tokens"] = self.to_tokens(state["ids"][0])
            emit(name, ProbeRecord(block, None, ("batch", "head", "word", "patch"), meta=meta))

        return on_weights


def taps(model: nn.Module, *, block: str = "t2i", tokenizer=None) -> list[Tap]:
    """One :class:`ViltTap` per ``ViltModel`` inside ``model``.

    Args:
        block: ``"t2i"`` (text rows x grid cells, default) or ``"full"`` (whole self-attention).
        tokenizer: a tokenizer or processor; the text rows then carry their tokens (batch of 1).
    """
    if block not in BLOCKS:
        raise CaptureError(f"block must be one of {BLOCKS}, got {block!r}")
    out = []
    for path, m in model.named_modules():
        if is_hf(m, "ViltModel"):
            prefix = f"{path}." if path else ""
            layers = {f"{prefix}{p}": s for p, s in m.named_modules() if is_hf(s, "ViltSelfAttention")}
            out.append(ViltTap(m.embeddings, layers, block, tokenizer))
    return out


def find_taps(model: nn.Module) -> list[Tap]:
    """The default (``block="t2i"``) taps of :func:`taps`."""
    return taps(model)
