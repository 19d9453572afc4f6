"""LLaVA-style decoder models (``LlavaForConditionalGeneration`` and kin) answering a question or
describing an image.

Inputs: ``[BOS] + <image> x N + text`` where ``<image>`` is the model's ``image_token_id``
repeated once per image token (``N`` = the vision tower's patch grid, without its ``[CLS]``), the
text the item's words (one piece per word with a :class:`~attnlens.evaluate.spec.HashTokenizer`,
or the model's tokenizer) followed, for a VQA item (``meta["answer"]``), by the answer's words. The
image is resized to the vision tower's ``image_size`` and normalised with CLIP's mean and std.

Scored output: the mean log-probability of the scored span given everything before it (teacher
forcing): the answer's words for a VQA item, else the item's own words after the first (how
likely the model finds the description of this image).

The map: :func:`attnlens.capture` with the decoder adapter: one language-model layer (``layer``,
default the last) of text rows x image-token columns, heads fused (``heads``); each word's row is
the row at its position; ``rollout``, ``gradient_weighted`` and ``attention_x_gradient`` through
:func:`attnlens.explain.explain` (profile ``decoder``, the same rows and image columns, target the
last position's top logit). Removal of patch cells: their pixels set to 0 / the image mean
(``"mask"`` as ``"zero"``).

A user with a checkpoint changes::

    model = LlavaForConditionalGeneration.from_pretrained("llava-hf/llava-1.5-7b-hf")
    spec = LlavaSpec(tokenizer=AutoProcessor.from_pretrained("llava-hf/llava-1.5-7b-hf").tokenizer)
"""
from __future__ import annotations

import torch

from ...errors import ShapeError
from ..spec import HashTokenizer, encode_words
from .pixels import PatchSpec, _fuse

__all__ = ["LlavaSpec"]


class LlavaSpec(PatchSpec):
    """A LLaVA-style model answering a question or describing an image (module docstring)."""

    name = "llava"
    explainers = ("raw", "rollout", "gradient_weighted", "attention_x_gradient")  # explain profile "decoder"
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

    def _config(self, model):
        return model.config.vision_config

    def _text_config(self, model):
        return model.config.text_config

    def _n_image(self, model) -> int:
        return (self._size(model) // self._patch(model)) ** 2

    def _layout(self, model, item):
        """``(ids, positions of each word, scored span)``."""
        tok = self._tok(model)
        words = list(item.tokens)
        answer = str(item.meta.get("answer", "")).split()
        ids_w, pos_w = encode_words(tok, words + answer)
        if isinstance(tok, HashTokenizer):  # drop its [CLS] / [SEP] framing: [BOS] + image + words
            ids_w, pos_w = ids_w[1:-1], [[p - 1 for p in ps] for ps in pos_w]
        bos = getattr(self._text_config(model), "bos_token_id", None)
        head = ([int(bos)] if bos is not None else []) + [int(model.config.image_token_id)] * self._n_image(model)
        ids = head + list(ids_w)
        pos = [[len(head) + p for p in ps] for ps in pos_w]
        if answer:
            span = [p for ps in pos[len(words):] for p in ps]
        else:
            span = [p for ps in pos[1:] for p in ps]
        return ids, pos[:len(words)], span

    def inputs(self, model, item) -> dict:
        ids, _, _ = self._layout(model, item)
        pixels, _ = self._pixels(model, item)
        return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
                "pixel_values": pixels}

    def _map(self, model, inputs, layer: int = -1):
        from ...capture import capture

        with torch.no_grad(), capture(model) as rec:
            model(**inputs)
        maps = [m for m in rec.maps if m.site.endswith("/t2i")]
        if not maps:
            raise ShapeError(f"capture recorded no text -> image-token map in {type(model).__name__}")
        return maps[layer]

    def word_positions(self, model, item, inputs) -> list[list[int]]:
        _, pos, _ = self._layout(model, item)
        rows = self._map(model, inputs).meta["query_positions"]
        index = {p: i for i, p in enumerate(rows)}
        return [[index[p] for p in ps] for ps in pos]

    def attention(self, model, item, inputs: dict, method: str, **options) -> torch.Tensor:
        self.check_explainer(method)
        if method != "raw":  # attnlens.explain, profile "decoder": the same non-image rows x image tokens
            return super().attention(model, item, inputs, method, **options)
        m = self._map(model, inputs, int(options.get("layer", -1)))
        if m.weights.shape[-1] != self._n_image(model):
            raise ShapeError(f"the map has {m.weights.shape[-1]} image tokens, the patch grid {self._n_image(model)}")
        return _fuse(m.weights.detach().float()[0], options.get("heads", "mean"))

    def score(self, model, inputs: dict, item=None) -> torch.Tensor:
        if item is None:
            raise ShapeError("LlavaSpec.score needs the item (its scored span)")
        ids = inputs["input_ids"][0].tolist()
        span = self._layout(model, item)[2]
        with torch.no_grad():
            logp = torch.log_softmax(model(**inputs).logits.float(), -1)  # [B, T, V]
        targets = torch.tensor([ids[p] for p in span])
        prev = torch.tensor([p - 1 for p in span])
        return logp[:, prev, targets].mean(-1).cpu()

    def target(self, output) -> torch.Tensor:  # the gradient explainers' target: the next token's top logit
        return output.logits[:, -1].max(-1).values.float()
