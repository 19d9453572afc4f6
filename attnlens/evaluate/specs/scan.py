"""SCAN / RCAR on SCAN-layout precomputed region features (with their boxes): model and spec.

:class:`PrecomputedScan` is SCAN as published (Lee et al. 2018): a linear image encoder over the
precomputed features (:class:`~attnlens.models.encoders.PrecompImageEncoder`), a GRU caption
encoder (:class:`~attnlens.models.encoders.GRUTextEncoder`) and attnlens' stacked cross
attention (:class:`~attnlens.models.scan.ScanSimilarity`, any alignment function). Its forward
``(images [Ni, R, D], tokens [Nc, L], lengths [Nc], image_mask [Ni, R])`` returns the
similarities ``S [Ni, Nc]``. ``sim=`` replaces the similarity module by any module with the same
call (``sim(images, captions, lengths, image_mask) -> S``), e.g.
:class:`~attnlens.models.rcar.RCARSimilarity` for RCAR. :func:`load_scan` reads the public SCAN checkpoint layout
(``torch.load(weights_only=True)``, :func:`attnlens.models.checkpoints.load_scan_checkpoint`).

:class:`ScanSpec`: item ``i`` is its region features with its caption (one id per word from the
model's vocabulary, unknown words -> ``<unk>``); the scored output is the pair's similarity;
the map is the similarity's own word x region attention (``raw``, through capture) or any
explainer; removal: ``"mask"`` drops regions from ``image_mask``, ``"zero"`` / ``"mean"`` change
their features; ``feature_forward`` gives the gradient agreement.

A user with the public checkpoint and data changes::

    model = load_scan("runs/f30k_scan/model_best.pth.tar", vocab="vocab/f30k_precomp_vocab.json")
    items = attnlens.evaluate.load_data("data/f30k_precomp", split="test")
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import ShapeError
from ...models.encoders import GRUTextEncoder, PrecompImageEncoder
from ...models.scan import ScanSimilarity
from ...types import Regions
from ..spec import ModelSpec, _removed

__all__ = ["PrecomputedScan", "ScanSpec", "load_scan"]


class PrecomputedScan(nn.Module):
    """SCAN over precomputed region features (module docstring).

    >>> m = PrecomputedScan(vocab_size=20, img_dim=6, embed_size=8, word_dim=4)
    >>> m(torch.randn(2, 3, 6), torch.tensor([[4, 5, 6]]), torch.tensor([3])).shape
    torch.Size([2, 1])
    """

    def __init__(self, vocab_size: int = 100, img_dim: int = 2048, embed_size: int = 1024, word_dim: int = 300,
                 *, direction: str = "t2i", alignment: str = "dot", image_encoder: nn.Module | None = None,
                 text_encoder: nn.Module | None = None, vocab=None, sim: nn.Module | None = None, **scan_options):
        super().__init__()
        self.image_encoder = image_encoder if image_encoder is not None else PrecompImageEncoder(img_dim, embed_size)
        self.text_encoder = (text_encoder if text_encoder is not None
                             else GRUTextEncoder(vocab_size, word_dim, embed_size))
        self.sim = sim if sim is not None else ScanSimilarity(direction, alignment=alignment,
                                                              dim=self.image_encoder.embed_size, **scan_options)
        self.vocab = vocab
        self.explain_features = ("input", "images")

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
                image_mask: torch.Tensor | None = None) -> torch.Tensor:
        img = self.image_encoder(images)
        cap, lengths = self.text_encoder(tokens, lengths)
        return self.sim(img, cap, lengths, image_mask)


def load_scan(path, vocab=None, *, direction: str = "t2i", alignment: str = "dot", **scan_options) -> PrecomputedScan:
    """A :class:`PrecomputedScan` from a public SCAN checkpoint (``vocab``: SCAN's vocabulary JSON)."""
    from ...models.checkpoints import load_scan_checkpoint

    img, txt, opt, voc = load_scan_checkpoint(path, vocab)
    options = {"lambda_softmax": opt.get("lambda_softmax"), "agg": opt.get("agg_func", "mean").lower()
               if isinstance(opt.get("agg_func"), str) else "mean", **scan_options}
    if isinstance(opt.get("cross_attn"), str):
        direction = opt["cross_attn"]
    return PrecomputedScan(direction=direction, alignment=alignment, image_encoder=img, text_encoder=txt, vocab=voc,
                           **{k: v for k, v in options.items() if v is not None}).eval()


class SimilaritySpec(ModelSpec):
    """What the specs of attnlens' similarity models share: one row per word, the item's regions,
    the output = the pair's similarity (``[B, 1]`` column or the diagonal of ``[B, B]``)."""

    def regions(self, model, item, inputs) -> Regions:
        return item.regions

    def word_positions(self, model, item, inputs) -> list[list[int]]:
        return [[i] for i in range(len(item.tokens))]

    def target(self, output) -> torch.Tensor:
        return output[:, 0].float() if output.shape[1] == 1 else torch.diagonal(output).float()


class ScanSpec(SimilaritySpec):
    """SCAN matching on precomputed features (module docstring)."""

    name = "scan"

    def _ids(self, model, item) -> list[int]:
        voc = getattr(model, "vocab", None)
        if voc is not None:
            return list(voc.encode(list(item.tokens)))
        from ..spec import HashTokenizer

        n = int(model.text_encoder.vocab_size)
        return [HashTokenizer(n).word_id(w) for w in item.tokens]

    def inputs(self, model, item) -> dict:
        if item.features is None:
            raise ShapeError(f"spec {self.name!r} needs precomputed region features; item {item.item_id} has none")
        ids = self._ids(model, item)
        return {"images": torch.as_tensor(item.features, dtype=torch.float32)[None], "tokens": torch.tensor([ids]),
                "lengths": torch.tensor([len(ids)]), "image_mask": torch.ones(1, len(item.features), dtype=torch.bool)}


    def attention(self, model, item, inputs: dict, method: str, **options) -> torch.Tensor:
        w = super().attention(model, item, inputs, method, **options)
        return w

    def remove(self, model, item, inputs: dict, keep: torch.Tensor, removal: str) -> dict:
        M = len(keep)
        out = dict(inputs)
        out["images"] = inputs["images"].expand(M, -1, -1)
        out["image_mask"] = inputs["image_mask"].expand(M, -1)
        if removal == "mask":
            empty = ~keep.any(-1)  # nothing kept: the all-zero image, as the built-in matching task
            out["image_mask"] = torch.where(empty[:, None], out["image_mask"], keep)
            out["images"] = torch.where(empty[:, None, None], torch.zeros_like(out["images"]), out["images"])
        else:
            out["images"] = _removed(out["images"], keep, removal)
        return out

    def feature_forward(self, model, item, inputs):
        def forward(features: torch.Tensor) -> torch.Tensor:
            mask = inputs["image_mask"].expand(len(features), -1)
            return self.target(model(features, inputs["tokens"], inputs["lengths"], mask))

        return forward, inputs["images"]
