"""Grounded datasets as :class:`EvalItem` s: what :func:`attnlens.evaluate` feeds a model spec.

An item is one (image, text) pair with the text's grounded spans: tokens, targets (token spans
with their ground-truth boxes, original-image pixels, ``xyxy``), the image (``[H, W, 3]`` uint8
RGB, or ``None`` when the dataset has none on disk), and, for region-feature models, the image's
region boxes and features (``[R, 4]`` and ``[R, D]``, SCAN / bottom-up layout).

:func:`as_items` turns what the loaders of :mod:`attnlens.data` return into items:
``GroundedCaption`` (Flickr30K Entities), ``CocoCaption``, ``ReferringExpression`` (RefCOCO),
``GroundedAnswer`` (VQA answer grounding) and a ``PrecomputedSplit`` (SCAN layout; with
``groundings`` for its targets). :func:`load_data` reads a folder in one of those formats.

Region features for a dataset without them (Flickr30K, COCO) come from ``features=``: a mapping
``image_id -> (boxes [R, 4], features [R, D])`` or a folder of ``<image_id>.npz`` files holding
``boxes`` (or ``bbox``) and ``features`` (or ``x``), the usual bottom-up-attention dump.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import FormatError, ShapeError
from ..types import GroundedCaption, Regions

__all__ = ["EvalItem", "as_items", "load_data", "read_image", "FORMATS"]

FORMATS = ("auto", "flickr30k", "coco", "precomputed", "refcoco", "vqa_grounding")


@dataclass(frozen=True, eq=False)
class EvalItem:
    """One grounded (image, text) pair.

    Attributes:
        item_id: stable id (``"<image_id>/<k>"``).
        tokens: the text's words.
        targets: ``attnlens.tasks.base.GroundingTarget`` s (token spans with boxes).
        image_size: ``(H, W)`` of the original image.
        image: ``[H, W, 3]`` uint8 RGB or ``None`` (no image file).
        boxes: ``[R, 4]`` region boxes (of the features, or proposals / object boxes of a model
            that pools its own features from the pixels), or ``None``.
        features: ``[R, D]`` region features (with ``boxes``), or ``None``.
        meta: extras (question, answer, file name, ...).
    """

    item_id: str
    tokens: tuple[str, ...]
    targets: tuple
    image_size: tuple[int, int]
    image: np.ndarray | None = None
    boxes: np.ndarray | None = None
    features: np.ndarray | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not self.tokens:
            raise ShapeError(f"item {self.item_id}: no tokens")
        if self.image is not None and (self.image.ndim != 3 or self.image.shape[2] != 3):
            raise ShapeError(f"item {self.item_id}: image must be [H, W, 3] uint8 RGB, got {self.image.shape}")
        if self.features is not None and self.boxes is None:
            raise ShapeError(f"item {self.item_id}: region features need their boxes")
        if self.boxes is not None and (self.boxes.ndim != 2 or self.boxes.shape[1] != 4 or (
                self.features is not None and (self.features.ndim != 2 or len(self.features) != len(self.boxes)))):
            raise ShapeError(f"item {self.item_id}: boxes must be [R, 4] and features [R, D], got "
                             f"{self.boxes.shape} and {getattr(self.features, 'shape', None)}")

    @property
    def regions(self) -> Regions | None:
        """The region boxes as :class:`Regions` (``None`` for pixel models' items)."""
        return None if self.boxes is None else Regions(self.boxes, self.image_size)

    def __repr__(self) -> str:
        return f"EvalItem({self.item_id!r}, {' '.join(self.tokens)!r}, targets={len(self.targets)})"


def read_image(path) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of an image file (OpenCV)."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FormatError("not a readable image", path=path)
    return np.ascontiguousarray(img[:, :, ::-1])


def _features_for(features, image_id: str):
    if features is None:
        return None, None
    if isinstance(features, (str, Path)):
        path = Path(features) / f"{image_id}.npz"
        if not path.is_file():
            raise FormatError(f"no region features for image {image_id}", path=path)
        with np.load(path, allow_pickle=False) as z:
            bkey = "boxes" if "boxes" in z else "bbox"
            fkey = "features" if "features" in z else "x"
            if bkey not in z or fkey not in z:
                raise FormatError(f"needs arrays 'boxes' (or 'bbox') and 'features' (or 'x'), has {sorted(z)}",
                                  path=path)
            return np.asarray(z[bkey], dtype=np.float64), np.asarray(z[fkey], dtype=np.float32)
    if image_id not in features:
        raise ShapeError(f"features= has no entry for image {image_id!r}")
    b, f = features[image_id]
    return np.asarray(b, dtype=np.float64), np.asarray(f, dtype=np.float32)


def _caption_item(caption: GroundedCaption, k: int, image, size, features, meta=None, boxes=None) -> EvalItem:
    from ..tasks.common import caption_targets

    if size is None:
        if image is None:
            raise ShapeError(f"caption of image {caption.image_id}: no image size and no image")
        size = image.shape[:2]
    fboxes, feats = _features_for(features, caption.image_id)
    boxes = fboxes if fboxes is not None else (None if boxes is None else np.asarray(boxes, dtype=np.float64))
    return EvalItem(f"{caption.image_id}/{k}", tuple(caption.tokens), caption_targets(caption), tuple(size), image,
                    boxes, feats, dict(meta or {}))


def as_items(data, *, images_dir=None, features=None, groundings: Mapping[str, GroundedCaption] | None = None,
             limit: int | None = None) -> list[EvalItem]:
    """Items of a loaded dataset (module docstring).

    Args:
        data: a list of ``GroundedCaption`` / ``CocoCaption`` / ``ReferringExpression`` /
            ``GroundedAnswer`` / built-in ``SceneSample`` / ``EvalItem``, or a ``PrecomputedSplit``.
            COCO and RefCOCO items keep the image's object boxes, scenes their region proposals
            (``boxes`` without features: for models that pool features from the pixels).
        images_dir: folder of ``<image_id>.jpg`` for ``GroundedCaption`` s (Flickr30K's
            ``flickr30k-images``); the other types carry their image paths.
        features: region features (module docstring) for datasets without them.
        groundings: for a ``PrecomputedSplit``: ``{"<image_id>/<k>": GroundedCaption}`` (its
            caption ``k``'s phrases and boxes); captions without one have no targets.
        limit: keep the first ``limit`` items.

    >>> from attnlens.types import Phrase
    >>> cap = GroundedCaption("7", ("a", "dog"), (Phrase("1", ("animals",), 1, ("dog",), [[0, 0, 4, 4]]),), (8, 8))
    >>> as_items([cap])[0].item_id, len(as_items([cap])[0].targets)
    ('7/0', 1)
    """
    from ..data.precomputed import PrecomputedSplit

    if isinstance(data, PrecomputedSplit):
        return _precomputed_items(data, groundings or {}, limit)
    out: list[EvalItem] = []
    seen: dict[str, int] = {}
    cache: dict[str, np.ndarray | None] = {}
    for d in data:
        if limit is not None and len(out) >= limit:
            break
        if isinstance(d, EvalItem):
            out.append(d)
            continue
        if _is_scene(d):  # a built-in scene: every caption, with the scene's image and region proposals
            for k, caption in enumerate(d.captions):
                if limit is None or len(out) < limit:
                    out.append(_caption_item(caption, k, np.asarray(d.image), d.image.shape[:2], features,
                                             {"scene": d.image_id}, d.regions.boxes))
            continue
        caption, path, size, meta, boxes = _unpack(d, images_dir)
        if path is not None and str(path) not in cache:
            cache.clear()  # consecutive captions of one image share it
            cache[str(path)] = read_image(path) if Path(path).is_file() else None
        image = cache.get(str(path)) if path is not None else None
        k = seen.get(caption.image_id, 0)
        seen[caption.image_id] = k + 1
        out.append(_caption_item(caption, k, image, size, features, meta, boxes))
    return out


def _is_scene(d) -> bool:
    from ..data.scenes import SceneSample

    return isinstance(d, SceneSample)


def _unpack(d, images_dir):
    """``(caption, image path or None, image size or None, meta, object boxes or None)`` of one record."""
    from ..data.coco import CocoCaption
    from ..data.refcoco import ReferringExpression
    from ..data.vqa_grounding import GroundedAnswer

    if isinstance(d, GroundedCaption):
        path = None if images_dir is None else Path(images_dir) / f"{d.image_id}.jpg"
        return d, path, d.image_size, {}, None
    if isinstance(d, CocoCaption):
        return (d.caption, d.image_path, d.image_size, {"caption_id": d.caption_id, "file_name": d.file_name},
                d.regions.boxes if len(d.regions) else None)
    if isinstance(d, ReferringExpression):
        return (d.caption, d.image_path, d.caption.image_size or d.regions.image_size,
                {"ref_id": d.ref_id, "sent_id": d.sent_id}, d.regions.boxes if len(d.regions) else None)
    if isinstance(d, GroundedAnswer):
        return d.question, d.image_path, d.image_size, {"answer": d.answer}, None
    raise ShapeError(f"as_items: cannot read a {type(d).__name__} (expected GroundedCaption, CocoCaption, "
                     "ReferringExpression, GroundedAnswer, EvalItem or a PrecomputedSplit)")


def _precomputed_items(split, groundings: Mapping[str, GroundedCaption], limit) -> list[EvalItem]:
    from ..tasks.common import caption_targets

    if split.boxes is None:
        raise FormatError(f"split {split.split!r} has no {split.split}_boxes.npy: grounding needs the region boxes",
                          path=split.root)
    out = []
    for i in range(len(split)):
        item = split[i]
        boxes = np.asarray(item.boxes, dtype=np.float64)
        size = (int(np.ceil(boxes[:, 3].max())) or 1, int(np.ceil(boxes[:, 2].max())) or 1)
        for k, tokens in enumerate(item.captions):
            if limit is not None and len(out) >= limit:
                return out
            key = f"{item.image_id}/{k}"
            g = groundings.get(key)
            targets = ()
            if g is not None:
                if tuple(g.tokens) != tuple(tokens):
                    raise ShapeError(f"grounding of {key} has tokens {g.tokens} but the split's caption is {tokens}")
                targets = caption_targets(g)
                size = g.image_size or size
            out.append(EvalItem(key, tuple(tokens), targets, tuple(size), None, boxes,
                                np.array(item.features, dtype=np.float32), {}))  # a copy of the memory map
    return out


def _one(folder: Path, pattern: str, what: str) -> Path:
    hits = sorted(folder.glob(pattern))
    if len(hits) != 1:
        raise FormatError(f"expected one {what} file matching {pattern!r}, found {[h.name for h in hits]}", path=folder)
    return hits[0]


def detect_format(path) -> str:
    """The format of a dataset folder (see :func:`load_data`)."""
    p = Path(path)
    if list(p.glob("*_ims.npy")):  # before Flickr30K: a SCAN-layout folder may hold its groundings
        return "precomputed"
    if (p / "Sentences").is_dir() and (p / "Annotations").is_dir():
        return "flickr30k"
    if list(p.glob("captions*.json")) and list(p.glob("instances*.json")):
        return "coco"
    if list(p.glob("refs*.json")):
        return "refcoco"
    if list(p.glob("*.json")):
        return "vqa_grounding"
    raise FormatError("not a dataset folder of a known format (Flickr30K Entities: Sentences/ + Annotations/; "
                      "COCO: captions*.json + instances*.json; SCAN layout: <split>_ims.npy; RefCOCO: refs*.json)",
                      path=p)


def load_data(path, format: str = "auto", *, split: str | None = None, features=None,
              limit: int | None = None) -> list[EvalItem]:
    """Read a dataset folder as items.

    Layouts: ``flickr30k`` (``Sentences/``, ``Annotations/``, optional ``flickr30k-images/`` and
    split files), ``coco`` (one ``captions*.json``, one ``instances*.json``, optional ``images/``),
    ``precomputed`` (SCAN layout, split ``split`` or ``test``, with ``<split>_boxes.npy``;
    targets from an optional Flickr30K-Entities ``Sentences/`` + ``Annotations/`` pair inside,
    keyed by the split's image ids), ``refcoco`` (``refs*.json`` + ``instances.json``, optional
    ``images/``), ``vqa_grounding`` (one ``*.json``, optional ``masks/``, ``images/``).
    ``features``: region features for Flickr30K / COCO (see :func:`as_items`; default: a
    ``features/`` folder inside when there is one).
    """
    from .. import data as D

    p = Path(path)
    fmt = detect_format(p) if format == "auto" else format
    if fmt not in FORMATS:
        from ..errors import UnknownNameError

        raise UnknownNameError("dataset format", fmt, FORMATS)
    if features is None and (p / "features").is_dir():
        features = p / "features"
    images = p / "images" if (p / "images").is_dir() else None
    if fmt == "flickr30k":
        caps = D.load_flickr30k_entities(p, split)
        folder = p / "flickr30k-images"
        return as_items(caps, images_dir=folder if folder.is_dir() else None, features=features, limit=limit)
    if fmt == "coco":
        caps = D.load_coco(_one(p, "captions*.json", "captions"), _one(p, "instances*.json", "instances"), images)
        return as_items(caps, features=features, limit=limit)
    if fmt == "precomputed":
        ds = D.load_precomputed(p, split or "test")
        groundings = {}
        if (p / "Sentences").is_dir():
            caps = D.load_flickr30k_entities(p, None, lowercase=True)
            seen: dict[str, int] = {}
            for c in caps:
                k = seen.get(c.image_id, 0)
                seen[c.image_id] = k + 1
                groundings[f"{c.image_id}/{k}"] = c
        return as_items(ds, groundings=groundings, limit=limit)
    if fmt == "refcoco":
        refs = D.load_refcoco(_one(p, "refs*.json", "refs"), _one(p, "instances*.json", "instances"),
                              split=split, images_dir=images)
        return as_items(refs, features=features, limit=limit)
    masks = p / "masks" if (p / "masks").is_dir() else None
    return as_items(D.load_vqa_grounding(_one(p, "*.json", "annotations"), masks_dir=masks, images_dir=images),
                    features=features, limit=limit)
