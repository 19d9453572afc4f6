"""Captions and questions of the built-in scenes, from a small grammar.

Noun phrases name an object by colour and shape (unique in a scene), with its size at rate
``size_rate`` ("a small red circle"); a shape alone ("a star") only when no other object has that
shape. A caption names one object (rare: ``single_rate``), two, or three (``triple_rate``) distinct
objects; the first two are joined by a spatial relation (``relation_rate``, "a red circle left of
a blue square") or by "and", a third always by "and". Every noun phrase is a :class:`Phrase` linked
to its object's box. Questions have exactly one answer in their scene and list the objects the answer
depends on.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from ..types import GroundedCaption, Phrase
from .scenes_spec import COLORS, NUMBERS, PLURALS, SHAPES, QuestionAnswer, SceneConfig, SceneObject

_NO_BOX = np.zeros((0, 4))


def _pick(rng, seq):
    return seq[int(rng.random() * len(seq))]


def noun_phrase(rng, obj: SceneObject, shape_counts: Counter, size_rate: float) -> tuple[str, ...]:
    """Tokens of a noun phrase that names ``obj`` uniquely in its scene (``shape_counts``: objects per shape)."""
    if shape_counts[obj.shape] == 1 and rng.random() < 0.15:
        return ("a", obj.shape)
    if rng.random() < size_rate:
        return ("a", obj.size, obj.color, obj.shape)
    return ("a", obj.color, obj.shape)


def relation(a: SceneObject, b: SceneObject) -> tuple[str, ...]:
    """Spatial relation of ``a`` to ``b`` along the axis where their centres differ most."""
    ax0, ay0, ax1, ay1 = a.box.tolist()   # Python floats: the same IEEE operations as numpy's, far faster
    bx0, by0, bx1, by1 = b.box.tolist()
    dx = (ax0 + ax1) / 2 - (bx0 + bx1) / 2
    dy = (ay0 + ay1) / 2 - (by0 + by1) / 2
    if abs(dx) >= abs(dy):
        return ("left", "of") if dx < 0 else ("right", "of")
    return ("above",) if dy < 0 else ("below",)


def caption_size(rng, n_objects: int, cfg: SceneConfig) -> int:
    """How many objects (1-3) a caption of a scene with ``n_objects`` names."""
    u = rng.random()
    if n_objects == 1 or u < cfg.single_rate:
        return 1
    if n_objects >= 3 and u >= 1.0 - cfg.triple_rate:
        return 3
    return 2


def _caption_parts(rng, objects, cfg: SceneConfig, shape_counts: Counter):
    """Draw one caption: ``(tokens, [(object, noun-phrase tokens, first token)])``.

    All random draws of a caption happen here, in a fixed order; building the typed
    :class:`GroundedCaption` (validation included) is left to :func:`_build_caption`, so a caption
    rejected as a duplicate costs only its draws.
    """
    order = np.arange(len(objects))
    rng.shuffle(order)   # = rng.permutation(len(objects)) (numpy shuffles an arange): same draws, less overhead
    named = [objects[i] for i in order.tolist()[:caption_size(rng, len(objects), cfg)]]
    if len(named) == 1:
        parts: list = [("there", "is") if rng.random() < 0.3 else (), named[0]]
    else:
        link = relation(named[0], named[1]) if rng.random() < cfg.relation_rate else ("and",)
        parts = [named[0], link, named[1]]
        if len(named) == 3:
            parts += [("and",), named[2]]
    tokens: list[str] = []
    spans = []
    for part in parts:
        if isinstance(part, SceneObject):
            np_tokens = noun_phrase(rng, part, shape_counts, cfg.size_rate)
            spans.append((part, np_tokens, len(tokens)))
            tokens.extend(np_tokens)
        else:
            tokens.extend(part)
    return tuple(tokens), spans


def _build_caption(image_id: str, tokens: tuple, spans, image_size, phrase_cache: dict) -> GroundedCaption:
    phrases = []
    for obj, np_tokens, first in spans:
        key = (obj.object_id, np_tokens, first)
        phrase = phrase_cache.get(key)
        if phrase is None:
            phrase = phrase_cache[key] = Phrase(str(obj.object_id), (obj.shape,), first, np_tokens, obj.box[None])
        phrases.append(phrase)
    return GroundedCaption(image_id, tokens, tuple(phrases), image_size)


def make_caption(rng, image_id: str, objects, cfg: SceneConfig, image_size,
                 shape_counts: Counter | None = None, phrase_cache: dict | None = None) -> GroundedCaption:
    """One grounded caption of a scene (``phrase_cache`` shares equal, immutable phrases between captions)."""
    if shape_counts is None:
        shape_counts = Counter(o.shape for o in objects)
    tokens, spans = _caption_parts(rng, objects, cfg, shape_counts)
    return _build_caption(image_id, tokens, spans, image_size, {} if phrase_cache is None else phrase_cache)


def make_captions(rng, image_id: str, objects, cfg: SceneConfig, image_size) -> tuple[GroundedCaption, ...]:
    """``cfg.captions_per_image`` captions, distinct where the scene allows."""
    out: list[GroundedCaption] = []
    seen: set = set()
    tries = 0
    counts = Counter(o.shape for o in objects)
    cache: dict = {}
    while len(out) < cfg.captions_per_image:
        tokens, spans = _caption_parts(rng, objects, cfg, counts)
        tries += 1
        if tokens in seen and tries < 10 * cfg.captions_per_image:
            continue
        seen.add(tokens)
        out.append(_build_caption(image_id, tokens, spans, image_size, cache))
    return tuple(out)


def _qa(tokens, answer, objs, kind) -> QuestionAnswer:
    boxes = (objs[0].box[None] if len(objs) == 1 else np.stack([o.box for o in objs])) if objs else _NO_BOX
    return QuestionAnswer(tuple(tokens), answer, tuple(o.object_id for o in objs), boxes, kind)


def _question(rng, kind: str, objects, counts: Counter) -> QuestionAnswer | None:
    obj = _pick(rng, objects)
    if kind == "color":
        if counts[obj.shape] > 1:
            return None
        return _qa(("what", "color", "is", "the", obj.shape), obj.color, [obj], kind)
    if kind == "shape":
        if counts[obj.color] > 1:
            return None
        return _qa(("what", "shape", "is", "the", obj.color, "object"), obj.shape, [obj], kind)
    if kind == "size":
        return _qa(("what", "size", "is", "the", obj.color, obj.shape), obj.size, [obj], kind)
    if kind == "exists_yes":
        return _qa(("is", "there", "a", obj.color, obj.shape), "yes", [obj], "exists")
    if kind == "exists_no":  # an absent pair sharing the colour or the shape of a present object
        present = {(o.shape, o.color) for o in objects}
        options = [(obj.shape, c) for c in COLORS] + [(s, obj.color) for s in SHAPES]
        options = [p for p in options if p not in present]
        if not options:
            return None
        shape, color = _pick(rng, options)
        return _qa(("is", "there", "a", color, shape), "no", [], "exists")
    if kind == "count_shape":
        shape = obj.shape if rng.random() < 0.85 else _pick(rng, SHAPES)
        objs = [o for o in objects if o.shape == shape]
        return _qa(("how", "many", PLURALS[shape], "are", "there"), NUMBERS[len(objs)], objs, "count")
    if kind == "count_color":
        color = obj.color if rng.random() < 0.85 else _pick(rng, COLORS)
        objs = [o for o in objects if o.color == color]
        return _qa(("how", "many", color, "objects", "are", "there"), NUMBERS[len(objs)], objs, "count")
    raise ValueError(kind)


QUESTION_KINDS = ("color", "shape", "size", "exists_yes", "exists_no", "count_shape", "count_color")


def make_questions(rng, objects, cfg: SceneConfig) -> tuple[QuestionAnswer, ...]:
    """``cfg.questions_per_image`` distinct questions of mixed kinds (fewer if the scene allows no more)."""
    out: list[QuestionAnswer] = []
    seen: set = set()
    kinds = list(QUESTION_KINDS)
    counts = Counter(o.shape for o in objects) + Counter(o.color for o in objects)  # names are disjoint
    tries = 0
    while len(out) < cfg.questions_per_image and tries < 12 * max(cfg.questions_per_image, 1):
        if tries % len(kinds) == 0:
            order = np.arange(len(kinds))
            rng.shuffle(order)   # = rng.permutation(len(kinds)), less overhead
            order = order.tolist()
        kind = kinds[order[tries % len(kinds)]]
        tries += 1
        qa = _question(rng, kind, objects, counts)
        if qa is None or qa.tokens in seen:
            continue
        seen.add(qa.tokens)
        out.append(qa)
    return tuple(out)
