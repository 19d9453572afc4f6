"""Vocabulary, attributes and record types of the built-in grounded scenes.

Kept apart from :mod:`attnlens.data.scenes` so that the renderer, the caption grammar and the
proposal generator can share them without import cycles. Everything here is re-exported by
:mod:`attnlens.data.scenes`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from ..errors import ShapeError, UnknownNameError
from ..types import _as_boxes

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
#: RGB of each colour; far from each other and from the light-grey background.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 180),
}
COLORS: tuple[str, ...] = tuple(COLOR_RGB)
SIZES: tuple[str, ...] = ("small", "large")
RELATIONS: tuple[tuple[str, ...], ...] = (("left", "of"), ("right", "of"), ("above",), ("below",))
NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
PLURALS: dict[str, str] = {s: s + "s" for s in SHAPES}
MAX_OBJECTS = 10
MAX_REGIONS = 36

_FUNCTION_WORDS = ("a", "the", "and", "there", "is", "are", "left", "right", "of", "above", "below",
                   "what", "color", "shape", "size", "object", "objects", "how", "many", "yes", "no")
#: Every token a caption or a question can contain (fixed order).
VOCABULARY: tuple[str, ...] = (_FUNCTION_WORDS + SIZES + COLORS + SHAPES + tuple(PLURALS.values())
                               + NUMBERS)
#: Every possible answer of a scene question (fixed order).
ANSWERS: tuple[str, ...] = ("yes", "no") + COLORS + SHAPES + SIZES + NUMBERS

assert len(set(VOCABULARY)) == len(VOCABULARY)
assert set(ANSWERS) <= set(VOCABULARY)


@dataclass(frozen=True, eq=False)
class SceneObject:
    """One object drawn in a scene.

    Attributes:
        object_id: index of the object in its scene (drawing order: later objects are on top).
        shape, color, size: attributes, members of ``SHAPES``, ``COLORS``, ``SIZES``.
        box: ``(4,)`` xyxy float box, the tight extent of the drawn shape (before occlusion).
        visible: fraction of the shape's pixels not covered by later objects (1.0 without occlusion).
    """

    object_id: int
    shape: str
    color: str
    size: str
    box: np.ndarray
    visible: float = 1.0

    def __post_init__(self):
        box = np.asarray(self.box)
        if box.shape != (4,):
            raise ShapeError(f"SceneObject.box must be one finite xyxy box, got {self.box!r}")
        try:
            box = _as_boxes(box[None], "SceneObject.box")[0]   # finite, not inverted, a read-only copy
        except ShapeError:
            raise ShapeError(f"SceneObject.box must be one finite xyxy box, got {self.box!r}") from None
        object.__setattr__(self, "box", box)

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The fill colour as ``(r, g, b)``."""
        return COLOR_RGB[self.color]

    def __repr__(self) -> str:
        return f"SceneObject({self.object_id}: {self.size} {self.color} {self.shape}, box={self.box.tolist()})"


@dataclass(frozen=True, eq=False)
class QuestionAnswer:
    """A question about a scene with its unique answer.

    Attributes:
        tokens: the question's tokens (no punctuation).
        answer: the answer, a member of ``ANSWERS``.
        object_ids: the objects the answer depends on (empty for "is there ..." -> "no").
        boxes: ``[n, 4]`` xyxy boxes of those objects.
        kind: the question template (``"color"``, ``"shape"``, ``"size"``, ``"exists"``, ``"count"``).
    """

    tokens: tuple[str, ...]
    answer: str
    object_ids: tuple[int, ...]
    boxes: np.ndarray
    kind: str = ""

    def __post_init__(self):
        if type(self.tokens) is not tuple:
            object.__setattr__(self, "tokens", tuple(self.tokens))
        ids = self.object_ids
        if type(ids) is not tuple or not all(type(i) is int for i in ids):
            object.__setattr__(self, "object_ids", tuple(int(i) for i in ids))
        boxes = _as_boxes(self.boxes, "QuestionAnswer.boxes")   # finite, not inverted, a read-only copy
        if len(boxes) != len(self.object_ids):
            raise ShapeError(f"QuestionAnswer has {len(self.object_ids)} object ids but {len(boxes)} boxes")
        object.__setattr__(self, "boxes", boxes)

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

    def __repr__(self) -> str:
        return f"QuestionAnswer({self.text!r} -> {self.answer!r}, objects={list(self.object_ids)})"


@dataclass(frozen=True)
class SceneConfig:
    """Options of the scene generator (all have defaults; pass any as keyword to ``generate``).

    Attributes:
        image_size: side of the square image in pixels.
        min_objects, max_objects: number of objects per scene (fewer when they do not fit).
        n_regions: region proposals per image (exactly this many, <= 36).
        captions_per_image: captions per image (distinct where the scene allows).
        questions_per_image: question-answer pairs per image.
        occlusion: allow objects to overlap (later ones partly cover earlier ones).
        noise: amplitude of the background's grey-level noise (0 for a flat background).
        size_rate: probability that a noun phrase names the object's size.
        relation_rate: probability that a caption naming two or more objects relates the first
            two by a spatial relation ("left of", "above" ...) rather than "and".
        single_rate: probability that a caption names one object only ("there is a red circle";
            always when the scene has one object). Such captions fit many images, so they are rare
            by default: captions should identify their image, as COCO's do.
        triple_rate: probability that a caption of a scene with three or more objects names
            three ("a small red circle left of a large blue square and a small green star");
            the rest name two.
        distractor_rate: probability that each further object shares the colour or the shape of
            an object already in the scene (so that binding colour to shape matters).
    """

    image_size: int = 64
    min_objects: int = 2
    max_objects: int = 6
    n_regions: int = 16
    captions_per_image: int = 5
    questions_per_image: int = 4
    occlusion: bool = False
    noise: int = 4
    size_rate: float = 1.0
    relation_rate: float = 1.0
    single_rate: float = 0.05
    triple_rate: float = 0.5
    distractor_rate: float = 0.8

    def __post_init__(self):
        if int(self.image_size) < 24:
            raise ShapeError(f"image_size must be >= 24 pixels, got {self.image_size}")
        if not 1 <= int(self.min_objects) <= int(self.max_objects) <= MAX_OBJECTS:
            raise ShapeError(f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, "
                             f"got {self.min_objects}, {self.max_objects}")
        if not int(self.max_objects) <= int(self.n_regions) <= MAX_REGIONS:
            raise ShapeError(f"n_regions must lie in [max_objects={self.max_objects}, {MAX_REGIONS}], "
                             f"got {self.n_regions}")
        if int(self.captions_per_image) < 1 or int(self.questions_per_image) < 0:
            raise ShapeError("captions_per_image must be >= 1 and questions_per_image >= 0")
        if not 0 <= int(self.noise) <= 40:
            raise ShapeError(f"noise must lie in [0, 40], got {self.noise}")
        for name in ("size_rate", "relation_rate", "single_rate", "triple_rate", "distractor_rate"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ShapeError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if float(self.single_rate) + float(self.triple_rate) > 1.0:
            raise ShapeError(f"single_rate + triple_rate must be <= 1, got {self.single_rate} + {self.triple_rate}")

    @classmethod
    def from_options(cls, config: "SceneConfig | None" = None, **options) -> "SceneConfig":
        """A config from a base config (or the defaults) with ``options`` overriding fields.

        >>> SceneConfig.from_options(image_size=48).image_size
        48
        """
        names = [f.name for f in fields(cls)]
        for key in options:
            if key not in names:
                raise UnknownNameError("scene option", key, names)
        base = {n: getattr(config, n) for n in names} if config is not None else {}
        base.update(options)
        return cls(**base)
