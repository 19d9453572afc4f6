"""Helpers shared by the tasks: grounding targets from phrases, word x region maps from probe
records, region removal for faithfulness scorers. The tasks read attention through
:func:`attnlens.capture` like any external model does.

Conventions: maps handed to the study have dims ``("word", "region")`` (rows = text tokens, sum
to 1 over the valid regions); region removal modes are ``"mask"`` (drop the region from the
attention), ``"zero"`` (zero its feature) and ``"mean"`` (replace its feature by the mean of the
image's valid region features, computed before any removal).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..attention_map import AttentionMap, Side
from ..errors import DTypeError, ShapeError, UnknownNameError
from ..types import GroundedCaption, Phrase, Regions
from .base import REMOVALS, GroundingTarget


def phrase_target(phrase: Phrase, *, token_offset: int = 0) -> GroundingTarget:
    """The :class:`GroundingTarget` of one phrase (head = the phrase's last token, the noun).

    >>> p = Phrase("1", ("circle",), 1, ("red", "circle"), [[0, 0, 4, 4]])
    >>> t = phrase_target(p)
    >>> t.tokens, t.head, t.label
    ((1, 2), 2, 'red circle')
    """
    span = tuple(i + token_offset for i in phrase.span)
    if not span:
        raise ShapeError(f"phrase {phrase!r} has no tokens")
    return GroundingTarget(tokens=span, boxes=np.asarray(phrase.boxes, dtype=np.float64), label=phrase.text,
                           head=span[-1])


def caption_targets(caption: GroundedCaption, *, token_offset: int = 0,
                    n_tokens: int | None = None) -> tuple[GroundingTarget, ...]:
    """Targets of every phrase of ``caption`` that has boxes (and lies within ``n_tokens``).

    >>> p = Phrase("0", ("square",), 1, ("square",), [[1, 1, 5, 5]])
    >>> [t.label for t in caption_targets(GroundedCaption("i", ("a", "square"), (p,)))]
    ['square']
    """
    out = []
    for p in caption.phrases:
        if not p.has_box:
            continue
        t = phrase_target(p, token_offset=token_offset)
        if n_tokens is not None and t.tokens[-1] >= n_tokens:
            continue
        out.append(t)
    return tuple(out)


def word_region_map(weights: torch.Tensor, *, tokens: Sequence[str], regions: Regions | None,
                    scores: torch.Tensor | None = None, alignment: str | None = None,
                    direction: str | None = None, site: str = "", meta: dict | None = None) -> AttentionMap:
    """An :class:`AttentionMap` with dims ``("word", "region")`` from ``weights [L, R]``."""
    if weights.ndim != 2:
        raise ShapeError(f"word x region weights must be [L, R], got shape {tuple(weights.shape)}")
    return AttentionMap(weights.detach().cpu(), ("word", "region"),
                        scores=None if scores is None else scores.detach().cpu(),
                        query=Side("word", "text", tuple(tokens)), key=Side("region", "image", regions=regions),
                        alignment=alignment, direction=direction, site=site, meta=dict(meta or {}))


def region_word_to_word_region(weights: torch.Tensor, region_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Turn image-to-text weights ``[R, L]`` (rows: regions over words) into ``[L, R]`` rows over
    regions: transpose, zero invalid regions, renormalise each word's row to sum to 1 (a word no
    region attends to gets a zero row).

    >>> region_word_to_word_region(torch.tensor([[0.5, 0.5], [1.0, 0.0]])).mul(3).round().tolist()
    [[1.0, 2.0], [3.0, 0.0]]
    >>> region_word_to_word_region(torch.tensor([[0.0, 1.0], [0.0, 1.0]])).tolist()
    [[0.0, 0.0], [0.5, 0.5]]
    """
    w = weights.transpose(0, 1)
    if region_valid is not None:
        w = w * region_valid[None, :].to(w.dtype)
    total = w.sum(-1, keepdim=True)
    return torch.where(total > 0, w / total.clamp_min(torch.finfo(w.dtype).tiny), torch.zeros_like(w))


def site_meta(amap: AttentionMap) -> dict:
    """The scalar metadata of a captured map (alignment, direction, norm, temperature, ...) for an
    example's ``attention.meta``, without the capture's bookkeeping (call and forward indices).

    >>> m = AttentionMap(torch.ones(1, 2), ("word", "region"), alignment="dot", meta={"call_index": 0, "norm": "softmax"})
    >>> site_meta(m)
    {'alignment': 'dot', 'norm': 'softmax'}
    """
    meta = {"alignment": amap.alignment, "direction": amap.direction, "layer": amap.layer, **amap.meta}
    return {k: v for k, v in meta.items()
            if isinstance(v, (str, int, float)) and k not in ("call_index", "forward_index")}


def scorer_regions(examples: Sequence, removal: str) -> int:
    """Validate a scorer's examples and removal mode; returns their common region count ``R``."""
    if removal not in REMOVALS:
        raise UnknownNameError("removal", removal, REMOVALS)
    if not examples:
        raise ShapeError("scorer needs at least one example")
    sizes = {len(e.regions) for e in examples}
    if len(sizes) != 1:
        raise ShapeError(f"examples have different region counts {sorted(sizes)}")
    return sizes.pop()


def check_keep(keep: torch.Tensor, index: torch.Tensor, n_examples: int, n_regions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a scorer's ``keep [M, R]`` (bool) and ``index [M]`` (long); returns them on CPU."""
    keep, index = torch.as_tensor(keep), torch.as_tensor(index)
    if keep.dtype != torch.bool:
        raise DTypeError(f"keep must be a bool tensor [M, R], got {keep.dtype}")
    if keep.ndim != 2 or keep.shape[1] != n_regions:
        raise ShapeError(f"keep must be [M, R] with R = {n_regions}, got shape {tuple(keep.shape)}")
    if index.ndim != 1 or index.shape[0] != keep.shape[0]:
        raise ShapeError(f"index must be [M] = ({keep.shape[0]},) for keep {tuple(keep.shape)}, "
                         f"got shape {tuple(index.shape)}")
    if index.dtype.is_floating_point or index.dtype == torch.bool:
        raise DTypeError(f"index must be an integer tensor, got {index.dtype}")
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= n_examples):
        raise ShapeError(f"index values must lie in [0, {n_examples}) (number of examples), got "
                         f"[{int(index.min())}, {int(index.max())}]")
    return keep.cpu(), index.cpu().long()


def remove_regions(feats: torch.Tensor, keep: torch.Tensor, valid: torch.Tensor,
                   removal: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a removal mode to region features.

    Args:
        feats: ``[M, R, D]`` region features.
        keep: ``[M, R]`` bool, regions kept.
        valid: ``[M, R]`` bool, real (non-padded) regions.
        removal: ``"mask"``, ``"zero"`` or ``"mean"``.

    Returns:
        ``(features [M, R, D], attention mask [M, R])``. For ``mask`` the features are unchanged
        and removed regions leave the mask; for ``zero`` / ``mean`` the mask stays ``valid``.

    >>> f = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    >>> keep, valid = torch.tensor([[True, False]]), torch.tensor([[True, True]])
    >>> remove_regions(f, keep, valid, "mean")[0].tolist()
    [[[1.0, 0.0], [0.5, 0.5]]]
    """
    if removal not in REMOVALS:
        raise UnknownNameError("removal", removal, REMOVALS)
    keep = keep.to(feats.device)
    valid = valid.to(feats.device)
    if removal == "mask":
        return feats, valid & keep
    if removal == "zero":
        return feats * keep[..., None].to(feats.dtype), valid
    v = valid[..., None].to(feats.dtype)
    mean = (feats * v).sum(1, keepdim=True) / v.sum(1, keepdim=True).clamp_min(1.0)
    return torch.where(keep[..., None], feats, mean.expand_as(feats)), valid


def scene_slice(split: str, start: int, n: int | None, **options) -> list:
    """Scenes ``start .. start + n - 1`` of a built-in split: the same objects as
    ``load_split(split, start + n)[start:]`` (a split's first scenes do not depend on its size).

    From 0 this is ``load_split(split, n)``; from later starts inside the split's default size the
    whole split is generated once per process (cached) and sliced, so shards of a split cost one
    generation, not one per shard. ``n=None``: to the end of the default size.

    >>> from attnlens.data.scenes import load_split
    >>> [s.image_id for s in scene_slice("val", 2, 2)] == [s.image_id for s in load_split("val", 4)[2:]]
    True
    """
    from ..data.scenes import SPLITS, load_split

    start = int(start)
    if start < 0:
        raise ShapeError(f"start must be >= 0, got {start}")
    stop = None if n is None else start + int(n)
    if start == 0:
        return load_split(split, stop, **options)
    size = SPLITS.get(split, 0)
    whole = load_split(split, size if stop is None else max(stop, size), **options)
    return whole[start:stop]
