"""Model specs: how :func:`attnlens.evaluate` runs one model on one grounded item.

A spec answers, for a model and an :class:`~attnlens.evaluate.items.EvalItem`:

* ``inputs(model, item)``: the keyword arguments of ``model(**inputs)`` for that item (batch 1);
* ``target(output) -> [B]``: which scalar of the output is scored (the explainers' target and
  the faithfulness curves' output);
* ``regions(model, item, inputs)``: the boxes (original-image pixels, ``xyxy``) of the map's
  image columns: the item's region boxes, or the patch cells mapped back through the processor's
  resize/crop/pad (:func:`attnlens.capture.patches.patch_boxes`);
* ``word_positions(model, item, inputs)``: for each word of the item, its positions among the
  map's text rows (a word cut into sub-word pieces averages their rows);
* ``remove(model, item, inputs, keep, removal)``: ``M`` copies of the inputs with the regions /
  patches where ``keep [M, R]`` is False removed (``"mask"``: masked out of the attention where the
  model has a mask, ``"zero"``: features / pixels set to the baseline 0, ``"mean"``: to their mean);
* ``attention(model, item, inputs, method, **options)``: the map ``[text rows, R]`` of one
  explainer; by default :func:`attnlens.explain.explain` with the spec's profile (attention
  reaches it only through :func:`attnlens.capture`).

Subclass :class:`ModelSpec` and override what differs; the ready specs live in
:mod:`attnlens.evaluate.specs`. A user's own module needs ``inputs``, ``regions``,
``word_positions`` and ``remove`` (see :class:`ModuleSpec` for a worked example).
"""
from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import ShapeError, UnknownNameError
from ..types import Regions

__all__ = ["ModelSpec", "ModuleSpec", "HashTokenizer", "encode_words", "word_rows", "REMOVALS"]

REMOVALS = ("mask", "zero", "mean")


class HashTokenizer:
    """A vocabulary-free tokenizer for models built from a config with random weights: ``[CLS]``
    (id 1), one id per word (a stable hash into ``3 .. vocab_size - 1``), ``[SEP]`` (id 2).
    A real checkpoint uses its own tokenizer instead (any transformers fast tokenizer).

    >>> HashTokenizer(100).encode(["a", "dog"])[1]
    [[1], [2]]
    """

    def __init__(self, vocab_size: int):
        if vocab_size < 4:
            raise ShapeError(f"HashTokenizer needs vocab_size >= 4, got {vocab_size}")
        self.vocab_size = int(vocab_size)

    def word_id(self, word: str) -> int:
        h = int.from_bytes(hashlib.blake2b(word.lower().encode(), digest_size=4).digest(), "little")
        return 3 + h % (self.vocab_size - 3)

    def encode(self, words: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        """``(ids, positions of each word)``."""
        return [1, *(self.word_id(w) for w in words), 2], [[i + 1] for i in range(len(words))]


def encode_words(tokenizer, words: Sequence[str], max_length: int | None = None) -> tuple[list[int], list[list[int]]]:
    """``(input ids, positions of each word)`` with a :class:`HashTokenizer` or a transformers fast
    tokenizer (``is_split_into_words``; its ``word_ids`` give the positions).

    >>> encode_words(HashTokenizer(50), ["two", "dogs"])[1]
    [[1], [2]]
    """
    if isinstance(tokenizer, HashTokenizer):
        ids, pos = tokenizer.encode(words)
    else:
        tok = getattr(tokenizer, "tokenizer", tokenizer)
        enc = tok(list(words), is_split_into_words=True, truncation=max_length is not None, max_length=max_length)
        ids = list(enc["input_ids"])
        pos = [[] for _ in words]
        for p, w in enumerate(enc.word_ids()):
            if w is not None:
                pos[w].append(p)
    if max_length is not None and len(ids) > max_length:
        raise ShapeError(f"the text has {len(ids)} tokens, more than the model's {max_length}")
    return ids, pos


def word_rows(weights: torch.Tensor, positions: Sequence[Sequence[int]]) -> torch.Tensor:
    """``[words, R]`` from a map ``[Q, R]`` over the model's text rows: each word the mean of its
    pieces' rows, renormalised to sum to 1 over the columns (a zero row stays zero); a single
    ``output`` row (captum methods) is repeated for every word. Signed maps (a negative value
    anywhere: attributions) are not renormalised.

    >>> word_rows(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), [[0, 1], [2]]).tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """
    w = weights.detach().float().cpu()
    if w.ndim != 2:
        raise ShapeError(f"word_rows needs a [rows, regions] map, got shape {tuple(w.shape)}")
    if w.shape[0] == 1 and any(len(p) and max(p) > 0 for p in positions):
        rows = w.expand(len(positions), -1)
    else:
        hi = max((max(p) for p in positions if len(p)), default=-1)
        if hi >= w.shape[0]:
            raise ShapeError(f"word positions reach row {hi} but the map has {w.shape[0]} text rows")
        rows = torch.stack([w[list(p)].mean(0) if len(p) else torch.zeros(w.shape[1]) for p in positions])
    if bool((rows < 0).any()):  # signed attributions (captum methods) are kept as they are
        return rows.clone()
    total = rows.sum(-1, keepdim=True)
    return torch.where(total > 0, rows / total.clamp_min(1e-30), torch.zeros_like(rows))


class ModelSpec:
    """Base of every spec (module docstring). Subclasses set :attr:`name` and override methods.

    Attributes:
        name: the spec's name (registry key, report labels).
        key_dim: ``"region"`` or ``"patch"``.
        explainers: the explainers this spec supports (``None``: every :mod:`attnlens.explain` method
            the model's profile can run).
    """

    name = "custom"
    key_dim = "region"
    explainers: tuple[str, ...] | None = None

    # -- what every spec provides
    def inputs(self, model, item) -> dict:
        raise NotImplementedError(f"{type(self).__name__}.inputs(model, item)")

    def regions(self, model, item, inputs) -> Regions:
        raise NotImplementedError(f"{type(self).__name__}.regions(model, item, inputs)")

    def word_positions(self, model, item, inputs) -> list[list[int]]:
        raise NotImplementedError(f"{type(self).__name__}.word_positions(model, item, inputs)")

    def remove(self, model, item, inputs: dict, keep: torch.Tensor, removal: str) -> dict:
        raise NotImplementedError(f"{type(self).__name__}.remove(model, item, inputs, keep, removal)")

    # -- defaults
    def target(self, output) -> torch.Tensor:
        """``[B]`` scores of the output (default: the first logit / the output itself)."""
        x = output
        if not isinstance(x, torch.Tensor):
            x = getattr(output, "logits", None)
            if x is None:
                x = output[0]
        x = x.float()
        return x.reshape(len(x), -1)[:, 0]

    def score(self, model, inputs: dict, item=None) -> torch.Tensor:
        """``[B]`` the scored output of ``model(**inputs)`` (``item``: the item the inputs are of)."""
        with torch.no_grad():
            return self.target(model(**inputs)).detach().float().cpu()

    def region_valid(self, model, item, inputs) -> np.ndarray:
        return np.ones(len(self.regions(model, item, inputs)), dtype=bool)

    def profile(self, model, inputs):
        """The :mod:`attnlens.explain` profile (``None``: found from the model)."""
        return None

    def attention(self, model, item, inputs: dict, method: str, **options) -> torch.Tensor:
        """``[text rows, R]`` map of ``method`` on one item."""
        from ..explain import explain

        amap = explain(model, inputs, method, target=self.target, profile=self.profile(model, inputs), **options)
        return amap.weights[0]

    def check_explainer(self, method: str) -> None:
        if self.explainers is not None and method not in self.explainers:
            raise UnknownNameError(f"explainer of spec {self.name!r}", method, self.explainers)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _removed(x: torch.Tensor, keep: torch.Tensor, removal: str, dim_regions: int = 1) -> torch.Tensor:
    """``x [M, R, ...]`` with removed rows zeroed (``zero``/``mask``) or set to their mean (``mean``)."""
    k = keep.to(x.device).reshape(*keep.shape, *([1] * (x.ndim - 2)))
    if removal == "mean":
        return torch.where(k, x, x.mean(1, keepdim=True).expand_as(x))
    return x * k.to(x.dtype)


class ModuleSpec(ModelSpec):
    """A spec for a user's own module whose forward takes region features and word ids.

    The model is called as ``model(features=[1, R, D], tokens=[1, L], **extra)`` and returns a
    score ``[B]`` (or logits whose first column is scored); its attention is whatever
    :func:`attnlens.capture` finds at ``sites`` (default: every site), read through
    :func:`attnlens.explain.explain` with a :func:`~attnlens.explain.profiles.single_stream`-like
    reading: the map's rows are the words in order, its columns the regions. Removal: feature
    zeroing / mean (``"mask"`` zeroes too, unless the forward takes ``region_mask``).

    Worked example (a module with one ``nn.MultiheadAttention`` from words to regions):

    >>> from torch import nn
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.emb, self.att = nn.Embedding(50, 8), nn.MultiheadAttention(8, 1, batch_first=True)
    ...     def forward(self, features, tokens):
    ...         ctx, _ = self.att(self.emb(tokens), features, features)
    ...         return ctx.mean((1, 2))
    >>> spec = ModuleSpec(vocab_size=50)
    >>> from attnlens.evaluate.items import EvalItem
    >>> item = EvalItem("0/0", ("a", "dog"), (), (8, 8), boxes=np.array([[0, 0, 4, 4], [4, 4, 8, 8.]]),
    ...                 features=np.ones((2, 8), np.float32))
    >>> torch.manual_seed(0) and None
    >>> spec.attention(Net(), item, spec.inputs(Net(), item), "raw").shape
    torch.Size([2, 2])
    """

    name = "module"

    def __init__(self, *, vocab_size: int = 30522, tokenizer=None, sites=None, mask_key: str | None = None,
                 target: Callable | None = None, head_fusion: str = "mean"):
        self.tokenizer = tokenizer if tokenizer is not None else HashTokenizer(vocab_size)
        self.sites, self.mask_key, self._target, self.head_fusion = sites, mask_key, target, head_fusion

    def target(self, output) -> torch.Tensor:
        return self._target(output) if self._target is not None else super().target(output)

    def inputs(self, model, item) -> dict:
        if item.features is None:
            raise ShapeError(f"spec {self.name!r} needs region features; item {item.item_id} has none")
        words = [w for w in item.tokens]
        ids = [self.tokenizer.word_id(w) for w in words] if isinstance(self.tokenizer, HashTokenizer) else \
            encode_words(self.tokenizer, words)[0]
        out = {"features": torch.as_tensor(item.features, dtype=torch.float32)[None],
               "tokens": torch.tensor([ids], dtype=torch.long)}
        if self.mask_key:
            out[self.mask_key] = torch.ones(1, len(item.features), dtype=torch.bool)
        return out

    def regions(self, model, item, inputs) -> Regions:
        return item.regions

    def word_positions(self, model, item, inputs) -> list[list[int]]:
        if isinstance(self.tokenizer, HashTokenizer):
            return [[i] for i in range(len(item.tokens))]
        return encode_words(self.tokenizer, item.tokens)[1]

    def remove(self, model, item, inputs: dict, keep: torch.Tensor, removal: str) -> dict:
        M = len(keep)
        out = {k: v.expand(M, *v.shape[1:]) for k, v in inputs.items()}
        if removal == "mask" and self.mask_key:
            out[self.mask_key] = keep.to(torch.bool)
        else:
            out["features"] = _removed(out["features"], keep, "zero" if removal == "mask" else removal)
        return out

    def attention(self, model, item, inputs: dict, method: str, **options) -> torch.Tensor:
        if method != "raw":
            return super().attention(model, item, inputs, method, **options)
        from ..capture import capture
        from ..explain.run import to_bhqk

        layer = int(options.get("layer", -1))
        with torch.no_grad(), capture(model, self.sites) as rec:
            model(**inputs)
        maps = list(rec.maps)
        if not maps:
            raise ShapeError(f"capture found no attention map in {type(model).__name__} at sites {self.sites!r}")
        m = maps[layer]
        w = to_bhqk(m.weights.detach().float(), m.dims, m.site)[0]
        fused = {"mean": w.mean(0), "max": w.max(0).values, "min": w.min(0).values}
        return fused[options.get("heads", self.head_fusion)]
