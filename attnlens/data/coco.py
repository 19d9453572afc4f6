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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FormatError, require
from ..geometry import clip_boxes, xywh_to_xyxy
from ..io import confine
from ..types import GroundedCaption, Phrase, Regions
from ._json import read_json
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
    data = read_json(path, what)
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


def _ids(items: list, path, section: str, key: str) -> list:
    """Check that ``items[i][key]`` is an integer or string id (JSON ``null``, lists, floats refused)."""
    for i, item in enumerate(items):
        v = item[key]
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise FormatError(f"element {section}[{i}].{key} is {v!r}, expected an integer or string id", path=path)
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
    _ids(caps, captions_json, "annotations", "image_id")
    images = {im["id"]: im for im in _ids(_check(cap_data, captions_json, "images", ("id", "file_name")),
                                           captions_json, "images", "id")}
    cap_images = set(images)
    ins_anns = _check(ins_data, instances_json, "annotations", ("image_id", "bbox", "category_id"))
    _ids(ins_anns, instances_json, "annotations", "image_id")
    _ids(ins_anns, instances_json, "annotations", "category_id")
    for i, c in enumerate(_ids(_check(ins_data, instances_json, "categories", ("id", "name")), instances_json,
                               "categories", "id")):
        if not isinstance(c["name"], str) or not simple_tokenize(c["name"]):
            raise FormatError(f"element categories[{i}].name is {c['name']!r}, expected a non-empty string",
                              path=instances_json)
    for im in _ids(_check(ins_data, instances_json, "images", ("id",)), instances_json, "images", "id"):
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
            per_image[iid] = _image_regions(coco, im, cats, instances_json, include_crowd, folder,
                                            captions_json if iid in cap_images else instances_json)
        regions, cat_boxes, path = per_image[iid]
        if not isinstance(ann["caption"], str):
            raise FormatError(f"element annotations[{k}].caption is {type(ann['caption']).__name__} "
                              f"{ann['caption']!r}, expected a string", path=captions_json)
        if not isinstance(ann["id"], int) or isinstance(ann["id"], bool):
            raise FormatError(f"element annotations[{k}].id is {ann['id']!r}, expected an integer",
                              path=captions_json)
        tokens = tuple(simple_tokenize(ann["caption"]))
        if not tokens:
            raise FormatError(f"element annotations[{k}].caption {ann['caption']!r} has no words", path=captions_json)
        phrases = []
        if link_categories and cat_boxes:
            names = {cid: tuple(simple_tokenize(cats[cid]["name"])) for cid in cat_boxes}
            for cid, start, n in _link(tokens, names):
                phrases.append(Phrase(str(cid), (str(cats[cid].get("supercategory", cats[cid]["name"])),),
                                      start, tokens[start:start + n], cat_boxes[cid]))
        caption = GroundedCaption(str(iid), tokens, tuple(phrases), regions.image_size)
        out.append(CocoCaption(caption, regions, int(ann["id"]), str(im.get("file_name", "")), path))
    return out


def _image_regions(coco, im: dict, cats: dict, instances_json, include_crowd: bool, folder, source=None):
    iid = im["id"]
    if "height" not in im or "width" not in im:
        raise FormatError(f"image {iid} lacks 'height'/'width'", path=instances_json)
    size = []
    for key in ("height", "width"):
        v = im[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0 or v != int(v):
            raise FormatError(f"image {iid} has {key} {v!r}; expected a positive integer", path=instances_json)
        size.append(int(v))
    size = tuple(size)
    anns = [a for a in coco.imgToAnns.get(iid, []) if include_crowd or not a.get("iscrowd", 0)]
    for a in anns:
        bbox = a["bbox"]
        ok = isinstance(bbox, list) and len(bbox) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in bbox)
        if not ok:
            raise FormatError(f"annotation {a.get('id')} (image {iid}) has bbox {bbox!r}, expected four finite "
                              f"numbers [x, y, w, h]", path=instances_json)
        if bbox[2] < 0 or bbox[3] < 0:
            raise FormatError(f"annotation {a.get('id')} (image {iid}) has bbox {bbox!r} with a negative width or "
                              f"height (an inverted box)", path=instances_json)
        try:
            known = a["category_id"] in cats
        except TypeError:  # an unhashable category_id (a list, an object)
            known = False
        if not known:
            raise FormatError(f"annotation {a.get('id')} has unknown category_id {a['category_id']!r}",
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
        # file_name comes from the JSON: it must name a file inside images_dir (no absolute path, no "..")
        path = confine(im.get("file_name", ""), folder, source=source,
                       what=f"images[id={iid}].file_name")
        if not path.is_file():
            raise MissingFileError(f"image {iid} not found", path=path)
    return regions, cat_boxes, path
