"""Specs for transformers models over region features with boxes: LXMERT and VisualBERT.

Inputs: the item's words through the model's tokenizer (a transformers fast tokenizer, or a
:class:`~attnlens.evaluate.spec.HashTokenizer` for a model built from a config with random
weights), the item's region features ``[1, R, D]`` and, for LXMERT, its boxes normalised by the
image size (``visual_pos``, ``x / W``, ``y / H``). Output: the image-text match logit
(LXMERT ``cross_relationship_score[:, 1]``, "matched"; VisualBERT ``seq_relationship_logits[:, 0]``,
"sentence matches image"). Removal: ``"mask"`` drops regions from the visual attention mask,
``"zero"`` / ``"mean"`` set their features to 0 / the mean feature. Gradient agreement:
``feature_forward`` (the output as a function of the region features).

A user with a checkpoint changes one line::

    model = LxmertForPreTraining.from_pretrained("unc-nlp/lxmert-base-uncased")
    spec = LxmertSpec(tokenizer=LxmertTokenizerFast.from_pretrained("unc-nlp/lxmert-base-uncased"))
"""
from __future__ import annotations

import torch

from ...errors import ShapeError
from ...types import Regions
from ..spec import HashTokenizer, ModelSpec, _removed, encode_words

__all__ = ["RegionFeatureSpec", "LxmertSpec", "VisualBertSpec"]


class RegionFeatureSpec(ModelSpec):
    """Common part of the region-feature transformers specs (module docstring)."""

    feature_key = "visual_feats"
    mask_key = "visual_attention_mask"
    match_index = 1

    def __init__(self, tokenizer=None, max_length: int | None = None):
        self.tokenizer, self.max_length = tokenizer, max_length

    def _tok(self, model):
        return self.tokenizer if self.tokenizer is not None else HashTokenizer(int(model.config.vocab_size))

    def _text(self, model, item):
        return encode_words(self._tok(model), item.tokens, self.max_length)

    def _visual(self, model, item) -> dict:
        raise NotImplementedError

    def inputs(self, model, item) -> dict:
        if item.features is None:
            raise ShapeError(f"spec {self.name!r} needs region features and boxes; item {item.item_id} has none "
                             "(pass features= to as_items / load_data)")
        ids, _ = self._text(model, item)
        n = len(ids)
        return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, n, dtype=torch.long),
                "token_type_ids": torch.zeros(1, n, dtype=torch.long), **self._visual(model, item)}

    def regions(self, model, item, inputs) -> Regions:
        return item.regions

    def word_positions(self, model, item, inputs) -> list[list[int]]:
        return self._text(model, item)[1]

    def target(self, output) -> torch.Tensor:
        for key in ("cross_relationship_score", "seq_relationship_logits", "logits"):
            x = getattr(output, key, None)
            if x is not None:
                return x[:, self.match_index if x.shape[-1] > 1 else 0].float()
        return super().target(output)

    def remove(self, model, item, inputs: dict, keep: torch.Tensor, removal: str) -> dict:
        M = len(keep)
        out = {k: v.expand(M, *v.shape[1:]) for k, v in inputs.items()}
        if removal == "mask":
            out[self.mask_key] = keep.to(out[self.mask_key].dtype)
        else:
            out[self.feature_key] = _removed(out[self.feature_key], keep, removal)
        return out

    def feature_forward(self, model, item, inputs):
        """``(forward(features [N, R, D]) -> [N], the item's features [1, R, D])``."""
        def forward(features: torch.Tensor) -> torch.Tensor:
            N = len(features)
            batch = {k: v.expand(N, *v.shape[1:]) for k, v in inputs.items() if k != self.feature_key}
            return self.target(model(**batch, **{self.feature_key: features}))

        return forward, inputs[self.feature_key]


class LxmertSpec(RegionFeatureSpec):
    """LXMERT (``LxmertForPreTraining``) image-text matching on region features with boxes."""

    name = "lxmert"

    def _visual(self, model, item) -> dict:
        H, W = item.image_size
        pos = torch.as_tensor(item.boxes, dtype=torch.float32) / torch.tensor([W, H, W, H], dtype=torch.float32)
        R = len(item.boxes)
        return {"visual_feats": torch.as_tensor(item.features, dtype=torch.float32)[None], "visual_pos": pos[None],
                "visual_attention_mask": torch.ones(1, R, dtype=torch.long)}


class VisualBertSpec(RegionFeatureSpec):
    """VisualBERT (``VisualBertForPreTraining``) sentence-image matching on region features."""

    name = "visualbert"
    feature_key = "visual_embeds"
    match_index = 0

    def _visual(self, model, item) -> dict:
        R = len(item.boxes)
        return {"visual_embeds": torch.as_tensor(item.features, dtype=torch.float32)[None],
                "visual_attention_mask": torch.ones(1, R, dtype=torch.long),
                "visual_token_type_ids": torch.ones(1, R, dtype=torch.long)}
