"""Typed data shared by every layer of attnlens.

Conventions (see ``shared/METRICS.md``):

* Boxes are ``xyxy`` floats in pixels of the **original** image. Pixel ``(u, v)`` (column, row)
  lies inside a box when its centre ``(u + 0.5, v + 0.5)`` satisfies ``x1 <= . < x2`` and
  ``y1 <= . < y2`` (half-open). Other box formats are converted by :mod:`attnlens.geometry`.
* Image sizes are ``(height, width)``.
* Token spans are 0-based: a phrase covers ``tokens[first_token : first_token + len(phrase.tokens)]``.

The classes are frozen dataclasses that validate in ``__post_init__``; indexing a
:class:`Regions` returns a :class:`Regions`. :class:`AttentionMap` lives in
:mod:`attnlens.attention_map` and is re-exported here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .errors import ShapeError


def _as_boxes(boxes, what: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ShapeError(f"{what} must be an (n, 4) xyxy array, got shape {tuple(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise ShapeError(f"{what} contains NaN or infinite coordinates")
    arr = arr.copy()
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Regions:
    """Image regions (boxes) of one image.

    Attributes:
        boxes: ``[R, 4]`` float64 ``xyxy`` in original-image pixels (read-only).
        image_size: ``(height, width)`` of the original image.
        labels: optional ``R`` labels (e.g. the object a proposal belongs to).
        scores: optional ``[R]`` detector scores.

    >>> r = Regions([[0, 0, 10, 10], [5, 5, 20, 20]], image_size=(32, 32), labels=["a", "b"])
    >>> len(r), r[1].labels
    (2, ('b',))
    """

    boxes: np.ndarray
    image_size: tuple[int, int]
    labels: tuple | None = None
    scores: np.ndarray | None = None

    def __post_init__(self):
        object.__setattr__(self, "boxes", _as_boxes(self.boxes, "Regions.boxes"))
        h, w = (int(v) for v in self.image_size)
        if h <= 0 or w <= 0:
            raise ShapeError(f"Regions.image_size must be positive (height, width), got {self.image_size}")
        object.__setattr__(self, "image_size", (h, w))
        n = len(self.boxes)
        if self.labels is not None:
            labels = tuple(self.labels)
            if len(labels) != n:
                raise ShapeError(f"Regions has {n} boxes but {len(labels)} labels")
            object.__setattr__(self, "labels", labels)
        if self.scores is not None:
            scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
            if len(scores) != n:
                raise ShapeError(f"Regions has {n} boxes but {len(scores)} scores")
            scores.setflags(write=False)
            object.__setattr__(self, "scores", scores)

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index) -> "Regions":
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        return Regions(
            self.boxes[idx],
            self.image_size,
            None if self.labels is None else tuple(self.labels[i] for i in idx),
            None if self.scores is None else self.scores[idx],
        )

    @property
    def areas(self) -> np.ndarray:
        """``[R]`` box areas in square pixels (0 for degenerate boxes)."""
        wh = np.clip(self.boxes[:, 2:] - self.boxes[:, :2], 0, None)
        return wh[:, 0] * wh[:, 1]

    def __repr__(self) -> str:
        return f"Regions(n={len(self)}, image_size={self.image_size})"


@dataclass(frozen=True, eq=False)
class Phrase:
    """A phrase of a caption linked to an entity and its boxes.

    Attributes:
        entity_id: identifier of the entity (Flickr30K Entities' ``EN#`` number, an object id).
        types: entity types, e.g. ``("people",)``; several are allowed.
        first_token: index of the phrase's first token in the caption.
        tokens: the phrase's tokens.
        boxes: ``[n, 4]`` xyxy boxes of the entity, empty when the phrase has no box.
    """

    entity_id: str
    types: tuple[str, ...]
    first_token: int
    tokens: tuple[str, ...]
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))

    def __post_init__(self):
        object.__setattr__(self, "entity_id", str(self.entity_id))
        object.__setattr__(self, "types", tuple(self.types))
        object.__setattr__(self, "tokens", tuple(self.tokens))
        object.__setattr__(self, "first_token", int(self.first_token))
        if self.first_token < 0:
            raise ShapeError(f"Phrase.first_token must be >= 0, got {self.first_token}")
        object.__setattr__(self, "boxes", _as_boxes(self.boxes, f"boxes of phrase {self.text!r}"))

    @property
    def span(self) -> range:
        """Token indices of the phrase in its caption."""
        return range(self.first_token, self.first_token + len(self.tokens))

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

    @property
    def has_box(self) -> bool:
        return len(self.boxes) > 0

    def __repr__(self) -> str:
        return f"Phrase({self.text!r}, entity={self.entity_id}, boxes={len(self.boxes)})"


@dataclass(frozen=True, eq=False)
class GroundedCaption:
    """A caption whose phrases are linked to boxes of an image.

    >>> p = Phrase("1", ("shape",), 1, ("red", "circle"), [[0, 0, 4, 4]])
    >>> c = GroundedCaption("img0", ("a", "red", "circle"), (p,))
    >>> c.phrase_for_token(2).text
    'red circle'
    """

    image_id: str
    tokens: tuple[str, ...]
    phrases: tuple[Phrase, ...] = ()
    image_size: tuple[int, int] | None = None

    def __post_init__(self):
        object.__setattr__(self, "image_id", str(self.image_id))
        object.__setattr__(self, "tokens", tuple(self.tokens))
        object.__setattr__(self, "phrases", tuple(self.phrases))
        for p in self.phrases:
            end = p.first_token + len(p.tokens)
            if end > len(self.tokens) or tuple(self.tokens[p.first_token:end]) != p.tokens:
                raise ShapeError(
                    f"phrase {p.text!r} at token {p.first_token} does not match caption tokens "
                    f"{self.tokens[p.first_token:end]!r} (caption has {len(self.tokens)} tokens)"
                )

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

    def phrase_for_token(self, index: int) -> Phrase | None:
        """The phrase covering token ``index``, or ``None``."""
        for p in self.phrases:
            if index in p.span:
                return p
        return None

    def __repr__(self) -> str:
        return f"GroundedCaption({self.text!r}, image={self.image_id}, phrases={len(self.phrases)})"


def as_token_tuple(tokens: Sequence[str] | str) -> tuple[str, ...]:
    """Tokens as a tuple; a string is split on whitespace."""
    if isinstance(tokens, str):
        return tuple(tokens.split())
    return tuple(str(t) for t in tokens)


from .attention_map import AttentionMap, Side  # noqa: E402  (re-export)

__all__ = ["Regions", "Phrase", "GroundedCaption", "AttentionMap", "Side", "as_token_tuple"]
