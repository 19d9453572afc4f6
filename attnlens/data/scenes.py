"""Built-in grounded scenes: the default dataset of attnlens.

Each sample is a small RGB image (default 64 x 64) with 2-6 coloured shapes on a light-grey,
mildly noisy background, and exact ground truth:

* ``objects``: shape, colour, size and the tight ``xyxy`` box of every object
  (pixel-centre, half-open convention of ``METRICS.md``); ``object_map`` gives the object id of
  every pixel (-1 for background).
* ``captions``: :class:`~attnlens.types.GroundedCaption` s from a small grammar with attributes
  and spatial relations ("a small red circle left of a blue square"); each noun phrase is a
  :class:`~attnlens.types.Phrase` with ``entity_id = str(object_id)``, ``types = (shape,)`` and
  its object's box.
* ``regions``: exactly ``n_regions`` detector-like proposals (object boxes, jittered copies,
  halves of objects, background boxes; shuffled) whose ``labels`` (and ``proposal_object``)
  name the object each matches (IoU >= 0.5, or a part of it), -1 otherwise.
* ``questions``: question-answer pairs with a unique answer and the boxes it depends on.

Scenes contain distractors: further objects share the colour or the shape of earlier ones, so
that "red circle" must be told apart from "red square" and "blue circle". (shape, colour) pairs
are unique within a scene, so a colour-and-shape phrase always names exactly one object.

Determinism: sample ``i`` of ``generate(n, seed=s)`` is drawn from
``numpy.random.default_rng((s, i))`` only, so it does not depend on ``n`` and the same
arguments give byte-identical images and captions.

>>> samples = generate(2, seed=0)
>>> samples[0].image.shape, samples[0].image.dtype, len(samples[0].regions)
((64, 64, 3), dtype('uint8'), 16)
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
import numpy as np

from ..errors import UnknownNameError
from ..types import GroundedCaption, Regions
from .scenes_grammar import make_captions, make_questions
from .scenes_proposals import make_proposals, match_proposals
from .scenes_render import compose, place, render
from .scenes_spec import (ANSWERS, COLOR_RGB, COLORS, NUMBERS, SHAPES, SIZES, VOCABULARY, QuestionAnswer,
                          SceneConfig, SceneObject)

SPLITS = {"train": 2000, "val": 200, "test": 200}
_SPLIT_SEEDS = {"train": 7_919, "val": 104_729, "test": 1_299_709}


@dataclass(frozen=True, eq=False)
class SceneSample:
    """One generated scene with its ground truth (see the module docstring).

    Attributes:
        image_id: ``"scene<seed>-<index>"``.
        image: ``uint8 [H, W, 3]`` RGB (read-only).
        objects: the objects, ``objects[k].object_id == k``.
        regions: ``n_regions`` proposals; ``labels`` = matched object id or -1; ``scores`` made up.
        proposal_object: ``int64 [R]`` matched object id of each proposal, -1 for none.
        captions: ``captions_per_image`` grounded captions.
        questions: question-answer pairs.
        object_map: ``int16 [H, W]`` object id of each pixel (-1 background, top object wins).
        proposal_kind: ``[R]`` how each proposal was made: object, jitter, part, background.
    """

    image_id: str
    image: np.ndarray
    objects: tuple[SceneObject, ...]
    regions: Regions
    proposal_object: np.ndarray
    captions: tuple[GroundedCaption, ...]
    questions: tuple[QuestionAnswer, ...]
    object_map: np.ndarray | None = None
    proposal_kind: tuple[str, ...] = ()

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self.image.shape[:2]

    @property
    def boxes(self) -> np.ndarray:
        """``[n, 4]`` object boxes (the layout, for text-to-image)."""
        return np.stack([o.box for o in self.objects]) if self.objects else np.zeros((0, 4))

    def layout(self) -> list[dict]:
        """The scene's layout: one ``{"shape", "color", "size", "box"}`` dict per object."""
        return [dict(shape=o.shape, color=o.color, size=o.size, box=o.box.tolist()) for o in self.objects]

    def __repr__(self) -> str:
        objs = ", ".join(f"{o.color} {o.shape}" for o in self.objects)
        return f"SceneSample({self.image_id}: {objs}; {len(self.regions)} regions, {len(self.captions)} captions)"


def generate_one(index: int, *, seed: int = 0, config: SceneConfig | None = None, **options) -> SceneSample:
    """Sample ``index`` of ``generate(n, seed=seed, ...)`` (for lazy, random-access datasets).

    >>> generate_one(3, seed=1).image_id == generate(4, seed=1)[3].image_id
    True
    """
    cfg = config if config is not None and not options else SceneConfig.from_options(config, **options)
    return _generate_one(int(index), int(seed), cfg)


def _generate_one(index: int, seed: int, cfg: SceneConfig) -> SceneSample:
    rng = np.random.default_rng((seed, index))
    S = int(cfg.image_size)
    placed = place(rng, compose(rng, cfg), cfg)
    image, omap, boxes, visible = render(rng, placed, cfg)
    image.setflags(write=False)
    omap.setflags(write=False)
    objects = tuple(SceneObject(k, shape, color, size, boxes[k], float(visible[k]))
                    for k, (shape, color, size, *_rest) in enumerate(placed))
    pboxes, matched, scores, kind = make_proposals(rng, boxes, S, int(cfg.n_regions))
    matched.setflags(write=False)
    image_id = f"scene{seed}-{index:06d}"
    regions = Regions(pboxes, (S, S), labels=tuple(matched.tolist()), scores=scores)
    captions = make_captions(rng, image_id, objects, cfg, (S, S))
    questions = make_questions(rng, objects, cfg)
    return SceneSample(image_id, image, objects, regions, matched, captions, questions, omap, tuple(kind))


def generate(n: int, *, seed: int = 0, config: SceneConfig | None = None, progress: bool = False,
             **options) -> list[SceneSample]:
    """Generate ``n`` scenes.

    Args:
        n: number of scenes.
        seed: seed; sample ``i`` uses ``default_rng((seed, i))`` only.
        config: a :class:`SceneConfig` (defaults if ``None``); ``options`` override its fields
            (``image_size``, ``min_objects``, ``max_objects``, ``n_regions``,
            ``captions_per_image``, ``questions_per_image``, ``occlusion``, ``noise`` ...).
        progress: show a tqdm progress bar.

    Returns:
        ``n`` :class:`SceneSample` s.

    >>> s = generate(1, seed=5, image_size=48, n_regions=10)[0]
    >>> s.image.shape, len(s.regions), len(s.captions)
    ((48, 48, 3), 10, 5)
    """
    cfg = SceneConfig.from_options(config, **options)
    indices = range(int(n))
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="scenes", leave=False)
    return [_generate_one(i, int(seed), cfg) for i in indices]


def load_split(split: str, n: int | None = None, *, seed: int = 0, **options) -> list[SceneSample]:
    """A fixed split of the built-in scenes.

    Each split has its own derived seed, so the splits never share a scene; the same arguments
    give identical data (results are cached, images are read-only). Default sizes:
    ``train`` 2000, ``val`` 200, ``test`` 200 scenes.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        n: number of scenes (default: the split's size); a smaller ``n`` gives a prefix.
        seed: shifts every split's seed (for a fresh set of splits).
        **options: :class:`SceneConfig` fields.

    >>> len(load_split("val", 3)), load_split("val", 3)[0].image_id == load_split("test", 3)[0].image_id
    (3, False)
    """
    if split not in SPLITS:
        raise UnknownNameError("split", split, SPLITS)
    n = SPLITS[split] if n is None else int(n)
    cfg = SceneConfig.from_options(**options)
    return list(_cached_split(_SPLIT_SEEDS[split] + 10_000_019 * int(seed), n, cfg))


@lru_cache(maxsize=8)
def _cached_split(seed: int, n: int, cfg: SceneConfig) -> tuple[SceneSample, ...]:
    return tuple(generate(n, seed=seed, config=cfg))


def scenes_vocabulary():
    """The fixed :class:`~attnlens.data.vocab.Vocabulary` of the scenes (see ``vocab.scenes_vocabulary``)."""
    from .vocab import scenes_vocabulary as _v

    return _v()


def object_pixels(sample: SceneSample, object_id: int) -> np.ndarray:
    """``bool [H, W]`` pixels showing object ``object_id`` (visible part)."""
    if sample.object_map is None:
        raise ValueError("sample has no object_map")
    return sample.object_map == object_id


__all__ = ["SHAPES", "COLORS", "COLOR_RGB", "SIZES", "NUMBERS", "VOCABULARY", "ANSWERS", "SPLITS",
           "SceneConfig", "SceneObject", "QuestionAnswer", "SceneSample", "generate", "generate_one",
           "load_split", "scenes_vocabulary", "match_proposals", "object_pixels"]
