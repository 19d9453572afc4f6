"""RefCOCO, RefCOCO+ and RefCOCOg referring expressions with the box each expression refers to.

Two JSON layouts are read (a pickled ``refs(unc).p`` is refused, see :mod:`._json`):

* **REFER layout** (:func:`load_refcoco`): a refs file, a JSON list of
  ``{"ref_id", "ann_id", "image_id", "split", "sentences": [{"sent_id", "tokens", "sent" | "raw"}]}``
  (the content of ``refs(unc).p`` / ``refs(umd).p`` / ``refs(google).p``), plus the dataset's
  ``instances.json`` in COCO layout (``images`` with ``height``/``width``/``file_name``,
  ``annotations`` with ``bbox`` ``[x, y, w, h]`` and ``category_id``, ``categories``).
* **MDETR layout** (:func:`load_mdetr_refexp`): ``final_refcoco_<split>.json`` and siblings, a
  COCO-style file whose ``images`` are one expression each (``caption``, ``file_name``,
  ``height``, ``width``) and whose ``annotations`` give the referred box with
  ``tokens_positive``, the character spans of the caption that name it.

Each expression becomes a :class:`ReferringExpression`: a
:class:`~attnlens.types.GroundedCaption` whose phrase (the whole expression, or the
``tokens_positive`` words) is linked to the referred box, and the image's candidate objects as
:class:`~attnlens.types.Regions` (REFER layout: every COCO object of the image, ``labels`` =
category names, ``target`` = the referred one's index). Boxes are ``xyxy`` in original-image pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FormatError
from ..geometry import clip_boxes
from ..types import GroundedCaption, Phrase, Regions
from ._files import MissingFileError, progress_bar, require_path
from ._json import field, image_size, read_json, xywh_box
from .vocab import simple_tokenize, word_spans


@dataclass(frozen=True, eq=False)
class ReferringExpression:
    """One referring expression with its referred box and the image's candidate objects.

    Attributes:
        caption: the expression's tokens; its one phrase (entity = the referred annotation id)
            holds the referred box.
        regions: candidate objects of the image (REFER layout: every COCO object of the image;
            MDETR layout: the referred box(es) only).
        target: index of the referred object in ``regions``.
        ref_id, sent_id: ids of the reference and of the sentence (``""`` when absent).
        split: the split named in the file (``""`` when absent).
        file_name: the image's file name; image_path: its path when ``images_dir`` was given.
    """

    caption: GroundedCaption
    regions: Regions
    target: int
    ref_id: str
    sent_id: str
    split: str
    file_name: str
    image_path: Path | None = None

    @property
    def tokens(self) -> tuple[str, ...]:
        return self.caption.tokens

    @property
    def box(self) -> np.ndarray:
        """``[4]`` xyxy box of the referred object."""
        return self.regions.boxes[self.target]

    def __repr__(self) -> str:
        return f"ReferringExpression({self.caption.text!r}, image={self.caption.image_id}, split={self.split!r})"


def _image_path(folder: Path | None, file_name: str, source: Path, where: str) -> Path | None:
    """``folder / file_name`` confined to ``folder``; FormatError for names that escape it."""
    if folder is None:
        return None
    name = Path(file_name)
    if not file_name or name.is_absolute() or ".." in name.parts:
        raise FormatError(f"{where}.file_name {file_name!r} is not a relative path inside the images folder",
                          path=source)
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise FormatError(f"{where}.file_name {file_name!r} resolves outside the images folder {folder}",
                          path=source)
    if not path.is_file():
        raise MissingFileError(f"image of {where} not found", path=path)
    return path


def _sentence_tokens(sent, path: Path, where: str, lowercase: bool) -> tuple[str, ...]:
    tokens = sent.get("tokens") if isinstance(sent, dict) else None
    if isinstance(tokens, list) and tokens and all(isinstance(t, str) and t.strip() for t in tokens):
        tokens = [t.strip() for t in tokens]
    else:
        text = sent.get("sent", sent.get("raw")) if isinstance(sent, dict) else None
        if not isinstance(text, str):
            raise FormatError(f"{where} has neither 'tokens' nor a 'sent'/'raw' string", path=path)
        tokens = simple_tokenize(text.lstrip("\ufeff"))
    if not tokens:
        raise FormatError(f"{where} is an empty expression", path=path)
    return tuple(t.lower() for t in tokens) if lowercase else tuple(tokens)


def _index_instances(instances: dict, path: Path):
    if not isinstance(instances, dict):
        raise FormatError("expected a JSON object with 'images', 'annotations' and 'categories'", path=path)
    images, anns, cats, per_image = {}, {}, {}, {}
    for k, im in enumerate(field(instances, "images", list, path, "instances")):
        iid = field(im, "id", (int, str), path, f"images[{k}]")
        images[iid] = (image_size(im, path, f"images[{k}]"), str(im.get("file_name", "")))
    for k, c in enumerate(field(instances, "categories", list, path, "instances")):
        cats[field(c, "id", (int, str), path, f"categories[{k}]")] = str(field(c, "name", str, path,
                                                                             f"categories[{k}]"))
    for k, a in enumerate(field(instances, "annotations", list, path, "instances")):
        where = f"annotations[{k}]"
        aid, iid = field(a, "id", (int, str), path, where), field(a, "image_id", (int, str), path, where)
        cid = field(a, "category_id", (int, str), path, where)
        if iid not in images:
            raise FormatError(f"{where} refers to image {iid!r} not listed in 'images'", path=path)
        if cid not in cats:
            raise FormatError(f"{where} has unknown category_id {cid!r}", path=path)
        anns[aid] = (iid, xywh_box(a.get("bbox"), path, where), cats[cid])
        per_image.setdefault(iid, []).append(aid)
    return images, anns, per_image


def load_refcoco(refs_json, instances_json, *, split: str | None = None, images_dir=None,
                 lowercase: bool = True, progress: bool | None = None) -> list[ReferringExpression]:
    """Load RefCOCO / RefCOCO+ / RefCOCOg expressions in the REFER layout (refs as JSON).

    Args:
        refs_json: the refs as a JSON list (see the module docstring); a pickle is refused.
        instances_json: the dataset's ``instances.json`` (COCO layout).
        split: keep only refs of this split (``"train"``, ``"val"``, ``"testA"``, ``"testB"``,
            ``"test"``); ``None`` keeps all.
        images_dir: optional folder of the COCO images; each image must exist there.
        lowercase: lower-case the tokens.
        progress: tqdm progress bar (``None``: only for many refs).

    Returns:
        One :class:`ReferringExpression` per sentence, in file order; ``regions`` are the
        image's objects (boxes clipped to the image) and ``target`` the referred one.

    Raises:
        FormatError: a pickled file, malformed JSON, or a record with a missing or invalid
            field (the message names the file and the element).
        MissingFileError: a missing file, images folder or image.

    >>> import json, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "instances.json").write_text(json.dumps({
    ...     "images": [{"id": 7, "height": 20, "width": 30, "file_name": "a.jpg"}],
    ...     "categories": [{"id": 1, "name": "dog"}],
    ...     "annotations": [{"id": 3, "image_id": 7, "category_id": 1, "bbox": [2, 4, 10, 6]},
    ...                     {"id": 4, "image_id": 7, "category_id": 1, "bbox": [15, 0, 5, 5]}]}))
    >>> _ = (d / "refs.json").write_text(json.dumps([{"ref_id": 0, "ann_id": 4, "image_id": 7, "split": "val",
    ...     "sentences": [{"sent_id": 9, "tokens": ["right", "dog"]}]}]))
    >>> ref = load_refcoco(d / "refs.json", d / "instances.json")[0]
    >>> ref.caption.text, ref.target, ref.box.tolist(), ref.caption.phrases[0].boxes.tolist()
    ('right dog', 1, [15.0, 0.0, 20.0, 5.0], [[15.0, 0.0, 20.0, 5.0]])
    """
    refs_path, ins_path = Path(refs_json), Path(instances_json)
    refs = read_json(refs_path, "RefCOCO refs")
    if not isinstance(refs, list):
        raise FormatError("expected a JSON list of refs at the top level", path=refs_path)
    images, anns, per_image = _index_instances(read_json(ins_path, "RefCOCO instances"), ins_path)
    folder = require_path(images_dir, "COCO images", folder=True) if images_dir is not None else None
    regions_of: dict = {}
    out: list[ReferringExpression] = []
    for k, ref in enumerate(progress_bar(refs, enabled=progress, desc="refcoco")):
        where = f"refs[{k}]"
        ref_split = str(ref.get("split", "")) if isinstance(ref, dict) else ""
        if split is not None and ref_split != split:
            continue
        aid = field(ref, "ann_id", (int, str), refs_path, where)
        if aid not in anns:
            raise FormatError(f"{where}.ann_id {aid!r} is not an annotation of {ins_path.name}", path=refs_path)
        iid = anns[aid][0]
        if "image_id" in ref and ref["image_id"] != iid:
            raise FormatError(f"{where}.image_id {ref['image_id']!r} differs from the image {iid!r} of "
                              f"annotation {aid!r}", path=refs_path)
        size, file_name = images[iid]
        if iid not in regions_of:
            ids = per_image[iid]
            boxes = clip_boxes(np.array([anns[a][1] for a in ids]), size, what=f"{ins_path} image {iid}")
            regions_of[iid] = (Regions(boxes, size, labels=tuple(anns[a][2] for a in ids)), ids,
                               _image_path(folder, file_name, ins_path, f"image {iid}"))
        regions, ids, path = regions_of[iid]
        target = ids.index(aid)
        for j, sent in enumerate(field(ref, "sentences", list, refs_path, where)):
            tokens = _sentence_tokens(sent, refs_path, f"{where}.sentences[{j}]", lowercase)
            phrase = Phrase(str(aid), (regions.labels[target],), 0, tokens, regions.boxes[target:target + 1])
            caption = GroundedCaption(str(iid), tokens, (phrase,), size)
            out.append(ReferringExpression(caption, regions, target, str(ref.get("ref_id", "")),
                                           str(sent.get("sent_id", "")), ref_split, file_name, path))
    return out


def load_mdetr_refexp(path, *, images_dir=None, progress: bool | None = None) -> list[ReferringExpression]:
    """Load referring expressions from MDETR's COCO-style files (``final_refcoco_<split>.json``).

    Each entry of ``images`` is one expression (``caption``); its ``annotations`` hold the
    referred box(es) with ``tokens_positive`` character spans. The phrase covers the tokens
    that overlap those spans (the whole expression when there are none); ``regions`` are the
    entry's annotated boxes, ``target`` = 0. Tokens are :func:`~attnlens.data.simple_tokenize`'s
    (lower case).

    Raises:
        FormatError: malformed JSON or a record with a missing or invalid field (file and element).
        MissingFileError: a missing file, images folder or image.

    >>> import json, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "final_refcoco_val.json").write_text(json.dumps({
    ...     "images": [{"id": 0, "file_name": "a.jpg", "height": 20, "width": 30, "caption": "the left cat"}],
    ...     "annotations": [{"id": 1, "image_id": 0, "bbox": [0, 0, 8, 8], "category_id": 17,
    ...                      "tokens_positive": [[9, 12]]}]}))
    >>> ref = load_mdetr_refexp(d / "final_refcoco_val.json")[0]
    >>> ref.caption.phrases[0].tokens, ref.box.tolist()
    (('cat',), [0.0, 0.0, 8.0, 8.0])
    """
    path = Path(path)
    data = read_json(path, "MDETR referring expressions")
    if not isinstance(data, dict):
        raise FormatError("expected a JSON object with 'images' and 'annotations'", path=path)
    by_image: dict = {}
    for k, a in enumerate(field(data, "annotations", list, path, "file")):
        iid = field(a, "image_id", (int, str), path, f"annotations[{k}]")
        by_image.setdefault(iid, []).append((k, a))
    folder = require_path(images_dir, "COCO images", folder=True) if images_dir is not None else None
    out: list[ReferringExpression] = []
    for k, im in enumerate(progress_bar(field(data, "images", list, path, "file"), enabled=progress,
                                        desc="mdetr refexp")):
        where = f"images[{k}]"
        iid = field(im, "id", (int, str), path, where)
        size = image_size(im, path, where)
        text = field(im, "caption", str, path, where).lstrip("\ufeff")
        spans = word_spans(text)
        if not spans:
            raise FormatError(f"{where}.caption {text!r} has no tokens", path=path)
        anns = by_image.get(iid, [])
        if not anns:
            raise FormatError(f"{where} (id {iid!r}) has no annotation with its box", path=path)
        boxes = np.array([xywh_box(a.get("bbox"), path, f"annotations[{j}]") for j, a in anns])
        boxes = clip_boxes(boxes, size, what=f"{path} {where}")
        positive = [tuple(s) for _, a in anns[:1] for s in a.get("tokens_positive") or []]
        for s in positive:
            if len(s) != 2 or not all(isinstance(v, int) for v in s) or not 0 <= s[0] < s[1] <= len(text):
                raise FormatError(f"{where}: tokens_positive span {list(s)!r} is not inside the caption", path=path)
        picked = [i for i, (_, a, b) in enumerate(spans) if any(a < e and s < b for s, e in positive)]
        first, last = (picked[0], picked[-1]) if picked else (0, len(spans) - 1)
        tokens = tuple(t for t, _, _ in spans)
        labels = tuple(str(a.get("category_id", "")) for _, a in anns)
        phrase = Phrase(str(anns[0][1].get("id", "")), (labels[0],), first, tokens[first:last + 1], boxes[:1])
        caption = GroundedCaption(str(im.get("original_id", iid)), tokens, (phrase,), size)
        file_name = str(im.get("file_name", ""))
        out.append(ReferringExpression(caption, Regions(boxes, size, labels=labels), 0, str(im.get("ref_id", "")),
                                       str(im.get("sentence_id", "")), str(im.get("split", "")), file_name,
                                       _image_path(folder, file_name, path, where)))
    return out
