"""COCO captions with the image's object boxes (through pycocotools, extra ``coco``).

``captions_json`` is a ``captions_<split>.json`` file (``images``, ``annotations`` with
``image_id`` and ``caption``); ``instances_json`` the matching ``instances_<split>.json``
(``images``, ``annotations`` with ``bbox`` as ``[x, y, width, height]`` in pixels,
``category_id``, ``iscrowd``; ``categories``). Boxes are converted with
:func:`attnlens.geometry.xywh_to_xyxy` and clipped to the image with a warning.

COCO captions have no phrase annotations. As a weak grounding signal, a caption word (or word
sequence) equal to a category name present in the image, or its plural with ``s``/``es``,
becomes a :class:`~attnlens.types.Phrase` linked to every box of that category
(``entity_id`` = category id, ``types`` = (supercategory,)); turn this off with
``link_categories=False``.
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FormatError, require
from ..geometry import clip_boxes, xywh_to_xyxy
from ..types import GroundedCaption, Phrase, Regions
from ._files import MissingFileError, progress_bar, require_path
from .vocab import simple_tokenize


@dataclass(frozen=True, eq=False)
class CocoCaption:
    """One COCO caption with its image's object boxes.

    Attributes:
        caption: the caption as a :class:`~attnlens.types.GroundedCaption` (phrases linked to
            category boxes, see the module docstring).
        regions: the image's object boxes, ``labels`` = category names.
        caption_id: the COCO annotation id of the caption.
        file_name: the image's file name; image_path: its path when ``images_dir`` was given.
    """

    caption: GroundedCaption
    regions: Regions
    caption_id: int
    file_name: str
    image_path: Path | None = None

    @property
    def image_id(self) -> str:
        return self.caption.image_id

    @property
    def tokens(self) -> tuple[str, ...]:
        return self.caption.tokens

    @property
    def phrases(self):
        return self.caption.phrases

    @property
    def image_size(self):
        return self.caption.image_size

    def __repr__(self) -> str:
        return f"CocoCaption({self.caption.text!r}, image={self.image_id}, objects={len(self.regions)})"


def _read(path, what: str) -> dict:
    path = require_path(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise FormatError(f"invalid JSON: {exc.msg}", path=path, line=exc.lineno) from None
    except UnicodeDecodeError as exc:
        raise FormatError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", path=path) from None
    if not isinstance(data, dict):
        raise FormatError("expected a JSON object at the top level", path=path)
    return data


def _check(data: dict, path, section: str, keys: tuple[str, ...]) -> list:
    items = data.get(section)
    if not isinstance(items, list):
        raise FormatError(f"missing list {section!r}", path=path)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise FormatError(f"element {section}[{i}] is not an object", path=path)
        for k in keys:
            if k not in item:
                raise FormatError(f"element {section}[{i}] lacks {k!r}", path=path)
    return items


def _coco_index(data: dict):
    coco_mod = require("pycocotools.coco", "coco")
    coco = coco_mod.COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _link(tokens: tuple[str, ...], names: dict[int, tuple[str, ...]]) -> list[tuple[int, int, int]]:
    """Non-overlapping ``(category_id, start, length)`` matches, longest names first, left to right."""
    used = [False] * len(tokens)
    out = []
    for cid, name in sorted(names.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        n = len(name)
        for s in range(len(tokens) - n + 1):
            window = tokens[s:s + n]
            last = window[-1]
            if window[:-1] != name[:-1] or last not in (name[-1], name[-1] + "s", name[-1] + "es"):
                continue
            if any(used[s:s + n]):
                continue
            used[s:s + n] = [True] * n
            out.append((cid, s, n))
    return sorted(out, key=lambda t: t[1])


def load_coco(captions_json, instances_json, images_dir=None, *, link_categories: bool = True,
              include_crowd: bool = False, progress: bool | None = None) -> list[CocoCaption]:
    """Load COCO captions with each image's object boxes.

    Args:
        captions_json: ``captions_<split>.json``.
        instances_json: ``instances_<split>.json``.
        images_dir: optional folder with the images; every captioned image must exist there.
        link_categories: link caption words naming a present category to its boxes.
        include_crowd: keep ``iscrowd`` boxes.
        progress: tqdm progress bar (``None``: only for many captions).

    Returns:
        One :class:`CocoCaption` per caption, in the order of ``captions_json``.

    Raises:
        MissingDependencyError: pycocotools is not installed (extra ``coco``).
        MissingFileError: a missing JSON file, image folder or image.
        FormatError: malformed JSON (file and line) or a missing field (file and element).
    """
    cap_data = _read(captions_json, "COCO captions")
    ins_data = _read(instances_json, "COCO instances")
    caps = _check(cap_data, captions_json, "annotations", ("image_id", "caption", "id"))
    images = {im["id"]: im for im in _check(cap_data, captions_json, "images", ("id", "file_name"))}
    _check(ins_data, instances_json, "annotations", ("image_id", "bbox", "category_id"))
    _check(ins_data, instances_json, "categories", ("id", "name"))
    for im in _check(ins_data, instances_json, "images", ("id",)):
        images.setdefault(im["id"], im)
    coco = _coco_index(ins_data)
    cats = {c["id"]: c for c in ins_data["categories"]}
    folder = require_path(images_dir, "COCO images", folder=True) if images_dir is not None else None
    per_image: dict = {}
    out = []
    for k, ann in enumerate(progress_bar(caps, enabled=progress, desc="coco captions")):
        iid = ann["image_id"]
        if iid not in images:
            raise FormatError(f"element annotations[{k}] refers to image {iid} not listed in 'images'",
                              path=captions_json)
        im = images[iid]
        if iid not in per_image:
            per_image[iid] = _image_regions(coco, im, cats, instances_json, include_crowd, folder)
        regions, cat_boxes, path = per_image[iid]
        tokens = tuple(simple_tokenize(str(ann["caption"])))
        phrases = []
        if link_categories and cat_boxes:
            names = {cid: tuple(simple_tokenize(cats[cid]["name"])) for cid in cat_boxes}
            for cid, start, n in _link(tokens, names):
                phrases.append(Phrase(str(cid), (str(cats[cid].get("supercategory", cats[cid]["name"])),),
                                      start, tokens[start:start + n], cat_boxes[cid]))
        caption = GroundedCaption(str(iid), tokens, tuple(phrases), regions.image_size)
        out.append(CocoCaption(caption, regions, int(ann["id"]), str(im.get("file_name", "")), path))
    return out


def _image_regions(coco, im: dict, cats: dict, instances_json, include_crowd: bool, folder):
    iid = im["id"]
    if "height" not in im or "width" not in im:
        raise FormatError(f"image {iid} lacks 'height'/'width'", path=instances_json)
    size = (int(im["height"]), int(im["width"]))
    anns = [a for a in coco.imgToAnns.get(iid, []) if include_crowd or not a.get("iscrowd", 0)]
    for a in anns:
        if len(a["bbox"]) != 4:
            raise FormatError(f"annotation {a.get('id')} has bbox {a['bbox']!r}, expected [x, y, w, h]",
                              path=instances_json)
        if a["category_id"] not in cats:
            raise FormatError(f"annotation {a.get('id')} has unknown category_id {a['category_id']}",
                              path=instances_json)
    boxes = xywh_to_xyxy([a["bbox"] for a in anns]) if anns else np.zeros((0, 4))
    boxes = clip_boxes(boxes, size, what=f"{instances_json} image {iid}")
    labels = tuple(cats[a["category_id"]]["name"] for a in anns)
    regions = Regions(boxes, size, labels=labels)
    cat_boxes: dict[int, np.ndarray] = {}
    for a, b in zip(anns, boxes):
        cat_boxes.setdefault(a["category_id"], []).append(b)
    cat_boxes = {c: np.stack(v) for c, v in cat_boxes.items()}
    path = None
    if folder is not None:
        path = folder / str(im.get("file_name", ""))
        if not path.is_file():
            raise MissingFileError(f"image {iid} not found", path=path)
    return regions, cat_boxes, path
