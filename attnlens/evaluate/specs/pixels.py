"""Specs for patch models on pixels: ViLT image-text matching (and the shared pixel helpers).

Preprocessing: without a processor the image is resized to ``size x size`` (``size``: the
model's ``config.image_size``), scaled to ``[-1, 1]`` (ViLT's mean/std 0.5) and cut into the
model's ``patch_size`` grid, so the transform recorded for :func:`attnlens.capture.patches.patch_boxes`
is ``{"resize": (size, size)}``. With a transformers processor its own resize/pad is used and the
transform comes from the capture adapter (ViLT: read from ``pixel_mask``), so the patch cells are
mapped back to original pixels through exactly what the processor did.

The map: :func:`attnlens.capture` with the ViLT adapter (text rows x the image's grid cells, each
kept patch at its cell), one layer (``layer``, default the last), heads fused (``heads``:
``mean`` / ``max`` / ``min`` / an index). Output: the ITM logit (``ViltForImageAndTextRetrieval``).
Removal of patch cells: ``"zero"`` (and ``"mask"``: ViLT reads ``pixel_mask`` as one top-left
rectangle per image, so single cells cannot be masked out of its attention) sets the cell's pixels
to 0 (mid-grey after normalisation), ``"mean"`` to the image's mean per channel.

A user with a checkpoint changes::

    model = ViltForImageAndTextRetrieval.from_pretrained("dandelin/vilt-b32-finetuned-coco")
    spec = ViltSpec(processor=ViltProcessor.from_pretrained("dandelin/vilt-b32-finetuned-coco"))
"""
from __future__ import annotations

import numpy as np
import torch

from ...errors import ShapeError
from ...types import Regions
from ..spec import HashTokenizer, ModelSpec, encode_words

__all__ = ["ViltSpec", "resize_pixels"]


def resize_pixels(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``[1, 3, h, w]`` float in ``[-1, 1]`` of an ``[H, W, 3]`` uint8 image resized to ``size``
    (bilinear, OpenCV, pixel edges on pixel edges)."""
    import cv2

    h, w = (int(v) for v in size)
    x = cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(x).permute(2, 0, 1)[None].float().div(255.0).sub(0.5).div(0.5)


def _fuse(w: torch.Tensor, heads) -> torch.Tensor:
    if heads in (None, "mean"):
        return w.mean(0)
    if heads == "max":
        return w.max(0).values
    if heads == "min":
        return w.min(0).values
    return w[int(heads)]


class ViltSpec(ModelSpec):
    """ViLT image-text matching on pixels (module docstring)."""

    name = "vilt"
    key_dim = "patch"
    explainers = ("raw",)

    def __init__(self, processor=None, tokenizer=None, size: int | None = None):
        self.processor, self.size = processor, size
        self.tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)

    def _tok(self, model):
        return self.tokenizer if self.tokenizer is not None else HashTokenizer(int(model.config.vocab_size))

    def _size(self, model) -> int:
        return int(self.size or model.config.image_size)

    def _image(self, item) -> np.ndarray:
        if item.image is None:
            raise ShapeError(f"spec {self.name!r} runs on pixels; item {item.item_id} has no image file")
        return item.image

    def inputs(self, model, item) -> dict:
        ids, _ = encode_words(self._tok(model), item.tokens, int(model.config.max_position_embeddings))
        if self.processor is not None:
            px = self.processor.image_processor(images=self._image(item), return_tensors="pt")
            pixels, mask = px["pixel_values"], px["pixel_mask"]
        else:
            s = self._size(model)
            pixels = resize_pixels(self._image(item), (s, s))
            mask = torch.ones(1, s, s, dtype=torch.long)
        n = len(ids)
        return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, n, dtype=torch.long),
                "token_type_ids": torch.zeros(1, n, dtype=torch.long), "pixel_values": pixels, "pixel_mask": mask}

    def _grid(self, model, inputs) -> tuple[int, int]:
        p = int(model.config.patch_size)
        H, W = inputs["pixel_values"].shape[-2:]
        return H // p, W // p

    def _maps(self, model, inputs):
        from ...capture import capture

        with torch.no_grad(), capture(model) as rec:
            model(**inputs)
        maps = [m for m in rec.maps if m.site.endswith("/t2i")]
        if not maps:
            raise ShapeError(f"capture recorded no ViLT text -> patch map in {type(model).__name__}")
        return maps

    def regions(self, model, item, inputs) -> Regions:
        grid = self._grid(model, inputs)
        if self.processor is None:
            s = self._size(model)
            return patch_boxes_of(grid, {"resize": (s, s)}, item.image_size)
        m = self._maps(model, inputs)[-1]
        return patch_boxes_of(grid, m.key.transform, item.image_size, tuple(inputs["pixel_values"].shape[-2:]))

    def word_positions(self, model, item, inputs) -> list[list[int]]:
        return encode_words(self._tok(model), item.tokens)[1]

    def attention(self, model, item, inputs: dict, method: str, **options) -> torch.Tensor:
        self.check_explainer(method)
        maps = self._maps(model, inputs)
        m = maps[int(options.get("layer", -1))]
        w = m.weights.detach().float()[0]  # [head, word, patch]
        return _fuse(w, options.get("heads", "mean"))

    def target(self, output) -> torch.Tensor:
        return output.logits[:, 0].float()

    def _cells(self, model, inputs, keep: torch.Tensor) -> torch.Tensor:
        """``[M, 1, H, W]`` bool: pixels of the kept cells (``keep [M, rows * cols]``)."""
        rows, cols = self._grid(model, inputs)
        if keep.shape[1] != rows * cols:
            raise ShapeError(f"keep has {keep.shape[1]} columns for a {rows} x {cols} patch grid")
        p = int(model.config.patch_size)
        H, W = inputs["pixel_values"].shape[-2:]
        k = keep.reshape(-1, 1, rows, cols).repeat_interleave(p, 2).repeat_interleave(p, 3)
        full = torch.ones(len(keep), 1, H, W, dtype=torch.bool)
        full[:, :, :rows * p, :cols * p] = k
        return full

    def remove(self, model, item, inputs: dict, keep: torch.Tensor, removal: str) -> dict:
        M = len(keep)
        out = {k: v.expand(M, *v.shape[1:]) for k, v in inputs.items()}
        cells = self._cells(model, inputs, keep)
        px = out["pixel_values"]
        base = px.mean((2, 3), keepdim=True).expand_as(px) if removal == "mean" else torch.zeros_like(px)
        out["pixel_values"] = torch.where(cells, px, base)
        return out


def patch_boxes_of(grid, transform, image_size, input_size=None) -> Regions:
    from ...capture.patches import patch_boxes

    return patch_boxes(grid, transform, image_size, input_size)
