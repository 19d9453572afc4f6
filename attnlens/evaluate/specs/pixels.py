"""Specs for patch models on pixels: ViLT and BLIP image-text matching (shared pixel helpers).

Preprocessing: without a processor the image is resized to ``size x size`` (``size``: the
model's ``config.image_size``), scaled to ``[-1, 1]`` (ViLT's mean/std 0.5) and cut into the
model's ``patch_size`` grid, so the transform recorded for :func:`attnlens.capture.patches.patch_boxes`
is ``{"resize": (size, size)}``. With a transformers processor its own resize/pad is used and the
transform comes from the capture adapter (ViLT: read from ``pixel_mask``), so the patch cells are
mapped back to original pixels through exactly what the processor did.

The map: :func:`attnlens.capture` with the ViLT adapter (text rows x the image's grid cells, each
kept patch at its cell), one layer (``layer``, default the last), heads fused (``heads``:
``mean`` / ``max`` / ``min`` / an index); ``rollout``, ``gradient_weighted`` and
``attention_x_gradient`` through :func:`attnlens.explain.explain` (profile ``vilt``, the same rows
and grid cells). Output: the ITM logit (``ViltForImageAndTextRetrieval``).

BLIP (``BlipForImageTextRetrieval``): the image is resized to ``config.vision_config.image_size``
(BLIP's processor resizes to a square, so the transform is the same), normalised with CLIP's
mean and std; the map is :func:`attnlens.explain.explain` with the ``blip`` profile (text ->
patch cross attention of the text encoder, the image ``[CLS]`` dropped), so every explainer
applies; output: the ITM "match" logit ``itm_score[:, 1]``.
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

__all__ = ["PatchSpec", "ViltSpec", "BlipSpec", "resize_pixels"]


def resize_pixels(image: np.ndarray, size: tuple[int, int], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> torch.Tensor:
    """``[1, 3, h, w]`` float of an ``[H, W, 3]`` uint8 image resized to ``size`` (bilinear,
    OpenCV, pixel edges on pixel edges), scaled to ``[0, 1]`` and normalised by ``mean`` / ``std``.

    >>> resize_pixels(np.full((4, 6, 3), 255, np.uint8), (2, 2)).flatten().tolist()
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    import cv2

    h, w = (int(v) for v in size)
    x = cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(x).permute(2, 0, 1)[None].float().div(255.0)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _fuse(w: torch.Tensor, heads) -> torch.Tensor:
    if heads in (None, "mean"):
        return w.mean(0)
    if heads == "max":
        return w.max(0).values
    if heads == "min":
        return w.min(0).values
    return w[int(heads)]


class PatchSpec(ModelSpec):
    """Common part of the pixel specs: image, patch grid, patch-cell removal (module docstring)."""

    key_dim = "patch"
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    def __init__(self, processor=None, tokenizer=None, size: int | None = None):
        self.processor, self.size = processor, size
        self.tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)

    def _config(self, model):
        """The config holding the vision tower's ``image_size`` and ``patch_size``."""
        return model.config

    def _tok(self, model):
        return self.tokenizer if self.tokenizer is not None else HashTokenizer(int(self._text_config(model).vocab_size))

    def _text_config(self, model):
        return model.config

    def _size(self, model) -> int:
        return int(self.size or self._config(model).image_size)

    def _patch(self, model) -> int:
        return int(self._config(model).patch_size)

    def _image(self, item) -> np.ndarray:
        if item.image is None:
            raise ShapeError(f"spec {self.name!r} runs on pixels; item {item.item_id} has no image file")
        return item.image

    def _pixels(self, model, item) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.processor is not None:
            px = self.processor.image_processor(images=self._image(item), return_tensors="pt")
            return px["pixel_values"], px.get("pixel_mask")
        s = self._size(model)
        return resize_pixels(self._image(item), (s, s), self.mean, self.std), None

    def _grid(self, model, inputs) -> tuple[int, int]:
        p = self._patch(model)
        H, W = inputs["pixel_values"].shape[-2:]
        return H // p, W // p

    def regions(self, model, item, inputs) -> Regions:
        s = self._size(model)
        return patch_boxes_of(self._grid(model, inputs), {"resize": (s, s)}, item.image_size)

    def word_positions(self, model, item, inputs) -> list[list[int]]:
        return encode_words(self._tok(model), item.tokens)[1]

    def _cells(self, model, inputs, keep: torch.Tensor) -> torch.Tensor:
        """``[M, 1, H, W]`` bool: pixels of the kept cells (``keep [M, rows * cols]``)."""
        rows, cols = self._grid(model, inputs)
        if keep.shape[1] != rows * cols:
            raise ShapeError(f"keep has {keep.shape[1]} columns for a {rows} x {cols} patch grid")
        p = self._patch(model)
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


class ViltSpec(PatchSpec):
    """ViLT image-text matching on pixels (module docstring)."""

    name = "vilt"
    explainers = ("raw", "rollout", "gradient_weighted", "attention_x_gradient")  # the explain profile "vilt"

    def inputs(self, model, item) -> dict:
        ids, _ = encode_words(self._tok(model), item.tokens, int(model.config.max_position_embeddings))
        pixels, mask = self._pixels(model, item)
        if mask is None:
            mask = torch.ones(1, *pixels.shape[-2:], dtype=torch.long)
        n = len(ids)
        return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, n, dtype=torch.long),
                "token_type_ids": torch.zeros(1, n, dtype=torch.long), "pixel_values": pixels, "pixel_mask": mask}

    def _maps(self, model, inputs):
        from ...capture import capture

        with torch.no_grad(), capture(model) as rec:
            model(**inputs)
        maps = [m for m in rec.maps if m.site.endswith("/t2i")]
        if not maps:
            raise ShapeError(f"capture recorded no ViLT text -> patch map in {type(model).__name__}")
        return maps

    def regions(self, model, item, inputs) -> Regions:
        if self.processor is None:
            return super().regions(model, item, inputs)
        m = self._maps(model, inputs)[-1]  # the processor's resize/pad, read from pixel_mask by the adapter
        return patch_boxes_of(self._grid(model, inputs), m.key.transform, item.image_size,
                              tuple(inputs["pixel_values"].shape[-2:]))

    def attention(self, model, item, inputs: dict, method: str, **options) -> torch.Tensor:
        self.check_explainer(method)
        if method != "raw":  # through attnlens.explain (profile "vilt": text rows x grid cells)
            return super().attention(model, item, inputs, method, **options)
        maps = self._maps(model, inputs)
        m = maps[int(options.get("layer", -1))]
        return _fuse(m.weights.detach().float()[0], options.get("heads", "mean"))  # [head, word, patch]

    def target(self, output) -> torch.Tensor:
        return output.logits[:, 0].float()


class TowersSpec(PatchSpec):
    """Models with a vision and a text config (BLIP, CLIP, SigLIP): CLIP's pixel mean / std, the
    words as ids, the image resized to the vision tower's size."""

    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

    def _config(self, model):
        return model.config.vision_config

    def _text_config(self, model):
        return model.config.text_config

    def inputs(self, model, item) -> dict:
        ids, _ = encode_words(self._tok(model), item.tokens, int(self._text_config(model).max_position_embeddings))
        pixels, _ = self._pixels(model, item)
        return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
                "pixel_values": pixels}


class BlipSpec(TowersSpec):
    """BLIP image-text matching on pixels (module docstring)."""

    name = "blip"

    def target(self, output) -> torch.Tensor:
        return output.itm_score[:, 1].float()


def patch_boxes_of(grid, transform, image_size, input_size=None) -> Regions:
    from ...capture.patches import patch_boxes

    return patch_boxes(grid, transform, image_size, input_size)
