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

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .errors import DTypeError, NonFiniteError, ShapeError


_INF = float("inf")


class NonFiniteBoxError(NonFiniteError, ShapeError):
    """Box coordinates that are NaN or infinite (a :class:`NonFiniteError` and a :class:`ShapeError`)."""


def _as_boxes(boxes, what: str) -> np.ndarray:
    """Validated read-only ``[n, 4]`` float64 copy of ``boxes``: finite, ``x1 <= x2`` and ``y1 <= y2``.

    ``what`` names the boxes in errors (a string, or a function returning one, called only on error).
    """
    if callable(what):
        try:
            return _as_boxes(boxes, "")
        except (ShapeError, DTypeError) as exc:
            raise type(exc)(f"{what()}{exc}" if str(exc).startswith(":") else f"{what()} {exc}".replace("  ", " ")) \
                from None
    if isinstance(boxes, np.ndarray) and boxes.dtype == np.float64:
        arr = boxes
    else:
        probe = boxes if isinstance(boxes, np.ndarray) else np.asarray(boxes)
        if probe.dtype.kind not in "biuf":   # strings, objects (None), complex, datetimes ...
            raise DTypeError(f"{what} must be real numbers, got dtype {probe.dtype}")
        arr = probe.astype(np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ShapeError(f"{what} must be an (n, 4) xyxy array, got shape {tuple(arr.shape)}")
    if len(arr) <= 2:   # the common one- or two-box case: plain floats are much faster than ufuncs here
        for k, (x1, y1, x2, y2) in enumerate(arr.tolist()):
            # x1 <= x2 < inf and -inf < y1 <= y2 ... written so that NaN fails the first test
            if not (-_INF < x1 <= x2 < _INF and -_INF < y1 <= y2 < _INF):
                if not (math.isfinite(x1) and math.isfinite(y1) and math.isfinite(x2) and math.isfinite(y2)):
                    raise NonFiniteBoxError(f"{what} contains NaN or infinite coordinates (box {k}: "
                                            f"{[x1, y1, x2, y2]})")
                raise ShapeError(f"{what}: box {k} {[x1, y1, x2, y2]} is inverted (x2 < x1 or y2 < y1)")
    else:
        if not np.isfinite(arr).all():
            k = int(np.flatnonzero(~np.isfinite(arr).all(1))[0])
            raise NonFiniteBoxError(f"{what} contains NaN or infinite coordinates (box {k}: {arr[k].tolist()})")
        bad = (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ShapeError(f"{what}: box {k} {arr[k].tolist()} is inverted (x2 < x1 or y2 < y1)")
    arr = arr.copy()
    arr.setflags(write=False)
    return arr


def _image_size(size, what: str) -> tuple[int, int]:
    """``(height, width)`` as two positive ints (integral floats accepted; fractions, bools refused)."""
    if type(size) is tuple and len(size) == 2 and type(size[0]) is int and type(size[1]) is int \
            and size[0] > 0 and size[1] > 0:   # the common case, checked without the general machinery
        return size
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ShapeError(f"{what} must be (height, width), got {size!r}") from None
    out = []
    for v in (h, w):
        if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or not math.isfinite(v) or v != int(v) or v <= 0:
            raise ShapeError(f"{what} must be positive integers (height, width), got {size!r}")
        out.append(int(v))
    return out[0], out[1]


def _tokens(tokens, what: str) -> tuple[str, ...]:
    """Tokens as a tuple of non-blank strings (a plain string is refused: it is not a token list)."""
    if isinstance(tokens, (str, bytes)):
        raise DTypeError(f"{what} must be a sequence of token strings, got the string {tokens!r} "
                         f"(split it first, e.g. with as_token_tuple)")
    try:
        out = tokens if type(tokens) is tuple else tuple(tokens)
    except TypeError:
        raise DTypeError(f"{what} must be a sequence of token strings, got {type(tokens).__name__}") from None
    try:
        joined = "\x00".join(out)          # one C-level pass: fails on any non-string token
    except TypeError:
        k, t = next((k, t) for k, t in enumerate(out) if not isinstance(t, str))
        raise DTypeError(f"{what}[{k}] is {type(t).__name__} {t!r}, not a string") from None
    # fast test first: no empty token, no white space, no byte-order mark -> no blank token
    head = joined.split(None, 1)   # [joined] exactly when there is no white space anywhere
    if "" in out or "\ufeff" in joined or len(head) != 1 or head[0] != joined:
        blank = next(((k, t) for k, t in enumerate(out) if not t.strip().strip("\ufeff")), None)
        if blank is not None:
            raise ShapeError(f"{what}[{blank[0]}] is a blank token {blank[1]!r}")
    return out


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
        object.__setattr__(self, "image_size", _image_size(self.image_size, "Regions.image_size"))
        n = len(self.boxes)
        if self.labels is not None:
            labels = tuple(self.labels)
            if len(labels) != n:
                raise ShapeError(f"Regions has {n} boxes but {len(labels)} labels")
            object.__setattr__(self, "labels", labels)
        if self.scores is not None:
            scores = np.asarray(self.scores)
            if scores.dtype.kind not in "biuf":
                raise DTypeError(f"Regions.scores must be real numbers, got dtype {scores.dtype}")
            scores = scores.astype(np.float64).reshape(-1)
            if len(scores) != n:
                raise ShapeError(f"Regions has {n} boxes but {len(scores)} scores")
            if not np.isfinite(scores).all():
                raise NonFiniteError(f"Regions.scores contain NaN or infinite values: {scores.tolist()[:8]}")
            scores.setflags(write=False)
            object.__setattr__(self, "scores", scores)

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index) -> "Regions":
        try:
            idx = np.atleast_1d(np.arange(len(self))[index])
        except (IndexError, TypeError, ValueError) as exc:
            raise ShapeError(f"Regions index {index!r} does not select boxes of {len(self)} regions ({exc})") from None
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
        setattr_ = object.__setattr__   # (attributes are only re-set when they change: this runs per phrase)
        if type(self.entity_id) is not str:
            setattr_(self, "entity_id", str(self.entity_id))
        if type(self.types) is not tuple:
            setattr_(self, "types", (self.types,) if isinstance(self.types, str) else tuple(self.types))
        tokens = _tokens(self.tokens, "Phrase.tokens")
        if tokens is not self.tokens:
            setattr_(self, "tokens", tokens)
        first = self.first_token
        if type(first) is not int:
            if isinstance(first, bool) or not isinstance(first, (int, np.integer)):
                raise DTypeError(f"Phrase.first_token must be an integer, got {type(first).__name__} {first!r}")
            object.__setattr__(self, "first_token", int(first))
        if self.first_token < 0:
            raise ShapeError(f"Phrase.first_token must be >= 0, got {self.first_token}")
        object.__setattr__(self, "boxes", _as_boxes(self.boxes, self._boxes_what))

    def _boxes_what(self) -> str:   # (built only for an error message)
        return f"boxes of phrase {self.text!r}"

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
        setattr_ = object.__setattr__   # (attributes are only re-set when they change: this runs per caption)
        if type(self.image_id) is not str:
            setattr_(self, "image_id", str(self.image_id))
        tokens = _tokens(self.tokens, "GroundedCaption.tokens")
        if tokens is not self.tokens:
            setattr_(self, "tokens", tokens)
        phrases = self.phrases
        if type(phrases) is not tuple:
            phrases = tuple(phrases)
            setattr_(self, "phrases", phrases)
        size = self.image_size
        if size is not None:
            checked = _image_size(size, "GroundedCaption.image_size")
            if checked is not size:
                setattr_(self, "image_size", checked)
        n = len(tokens)
        for p in phrases:
            if type(p) is not Phrase and not isinstance(p, Phrase):
                raise DTypeError(f"GroundedCaption.phrases must hold Phrase objects, got {type(p).__name__}")
            first, ptoks = p.first_token, p.tokens
            end = first + len(ptoks)
            if end > n or tokens[first:end] != ptoks:
                raise ShapeError(
                    f"phrase {p.text!r} at token {first} does not match caption tokens "
                    f"{tokens[first:end]!r} (caption has {n} tokens)"
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

__all__ = ["Regions", "Phrase", "GroundedCaption", "AttentionMap", "Side", "as_token_tuple", "NonFiniteBoxError"]
