"""Flickr30K Entities: phrase-grounded captions.

Layout under ``root`` (as distributed)::

    Sentences/<image_id>.txt      5 sentences, one per line, with phrase markup
    Annotations/<image_id>.xml    VOC-style boxes per entity id
    train.txt, val.txt, test.txt  optional split files listing image ids
    flickr30k-images/<id>.jpg     optional images

Sentence markup: ``[/EN#<entity>/<type>[/<type>...] words]``, e.g.
``[/EN#18/people A man] with [/EN#19/clothing pierced ears] .``; entity ``0`` ("notvisual")
never has a box. Annotation XML: ``<size>`` (``width``, ``height``), then ``<object>`` s each with
one or more ``<name>`` (entity ids sharing that box) and either a ``<bndbox>`` (``xmin ymin xmax
ymax``, 1-based inclusive pixels) or ``<nobndbox>1</nobndbox>`` / ``<scene>1</scene>``. An entity
may have several boxes (several objects with its name); a phrase's ``boxes`` are all of them
(the union is the ground truth region, :func:`attnlens.geometry.union_box` the protocol box).
Boxes are converted with :func:`attnlens.geometry.voc_to_xyxy` and clipped to the image with a
warning.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FormatError
from ..geometry import clip_boxes, voc_to_xyxy
from ..io import confine
from ..types import GroundedCaption, Phrase
from ._files import MissingFileError, progress_bar, require_path

_PHRASE = re.compile(r"\[(/EN#\S*)\s+([^\[\]]*)\]")
_HEADER = re.compile(r"/EN#(\d+)((?:/[^/\s\[\]]+)+)")
NO_BOX_ENTITY = "0"


@dataclass
class FlickrAnnotation:
    """The parsed annotation XML of one image.

    Attributes:
        image_id: the file's stem.
        image_size: ``(height, width)``.
        boxes: entity id -> ``[n, 4]`` xyxy boxes (half-open, clipped to the image).
        nobox: entity ids marked ``<nobndbox>1``.
        scene: entity ids marked ``<scene>1``.
    """

    image_id: str
    image_size: tuple[int, int]
    boxes: dict[str, np.ndarray] = field(default_factory=dict)
    nobox: set[str] = field(default_factory=set)
    scene: set[str] = field(default_factory=set)


def parse_sentence(line: str, *, path=None, line_no: int | None = None):
    """Parse one line of markup into ``(tokens, [(entity_id, types, first_token, phrase_tokens)])``.

    >>> toks, ents = parse_sentence("[/EN#18/people A man] rides [/EN#0/notvisual/other it] .")
    >>> toks, ents[0], ents[1][:3]
    (['A', 'man', 'rides', 'it', '.'], ('18', ('people',), 0, ('A', 'man')), ('0', ('notvisual', 'other'), 3))
    """
    tokens: list[str] = []
    entities = []
    pos = 0

    def outside(text: str, column: int):
        for ch in "[]":
            if ch in text:
                raise FormatError(f"unbalanced or malformed phrase markup near column {column + text.index(ch) + 1}: "
                                  f"{line.strip()!r}", path=path, line=line_no)
        tokens.extend(text.split())

    for m in _PHRASE.finditer(line):
        outside(line[pos:m.start()], pos)
        header, words = m.group(1), m.group(2).split()
        hm = _HEADER.fullmatch(header)
        if hm is None:
            raise FormatError(f"malformed entity tag {header!r} (expected /EN#<number>/<type>[/<type>...])",
                              path=path, line=line_no)
        if not words:
            raise FormatError(f"phrase {m.group(0)!r} has no words", path=path, line=line_no)
        entities.append((str(int(hm.group(1))), tuple(hm.group(2).strip("/").split("/")), len(tokens), tuple(words)))
        tokens.extend(words)
        pos = m.end()
    outside(line[pos:], pos)
    return tokens, entities


def parse_sentences(path) -> list[tuple[list[str], list]]:
    """Parse a ``Sentences/<id>.txt`` file: one ``parse_sentence`` result per non-empty line."""
    path = require_path(path, "Flickr30K Entities sentences")
    out = []
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is not a token
            lines = f.read().split("\n")
    except UnicodeDecodeError as exc:
        raise FormatError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", path=path) from None
    for i, line in enumerate(lines, start=1):
        if line.strip():
            out.append(parse_sentence(line, path=path, line_no=i))
    return out


def _number(parent: ET.Element, tag: str, path, where: str) -> float:
    el = parent.find(tag)
    if el is None or el.text is None or not el.text.strip():
        raise FormatError(f"missing <{tag}> in element {where}", path=path)
    try:
        value = float(el.text.strip())
    except ValueError:
        raise FormatError(f"element {where}/{tag} is not a number: {el.text.strip()!r}", path=path) from None
    if not np.isfinite(value):
        raise FormatError(f"element {where}/{tag} is not a finite number: {el.text.strip()!r}", path=path)
    return value


def _flag(obj: ET.Element, tag: str, path, where: str) -> bool:
    el = obj.find(tag)
    if el is None or el.text is None or not el.text.strip():
        return False
    try:
        return int(el.text.strip()) > 0
    except ValueError:
        raise FormatError(f"element {where}/{tag} is not an integer: {el.text.strip()!r}", path=path) from None


def parse_annotation(path, image_size: tuple[int, int] | None = None) -> FlickrAnnotation:
    """Parse an ``Annotations/<id>.xml`` file (see the module docstring).

    Args:
        path: the XML file.
        image_size: ``(height, width)`` (or a function returning it or ``None``) to use when the
            file has no ``<size>``.

    Raises:
        FormatError: naming the file and the element (``object[3]/bndbox/xmin`` ...) at fault.
        MissingFileError: when the file does not exist.
    """
    path = require_path(path, "Flickr30K Entities annotation")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise FormatError(f"invalid XML: {exc}", path=path, line=exc.position[0]) from None
    size = root.find("size")
    if size is not None:
        w, h = _number(size, "width", path, "size"), _number(size, "height", path, "size")
        if w <= 0 or h <= 0 or w != int(w) or h != int(h):
            raise FormatError(f"element size/width x height must be positive integers, got {w:g}x{h:g}", path=path)
        hw = (int(h), int(w))
    else:
        hw = image_size() if callable(image_size) else image_size
        if hw is None:
            raise FormatError("missing element <size> (and no image to read the size from)", path=path)
        hw = (int(hw[0]), int(hw[1]))
        if hw[0] <= 0 or hw[1] <= 0:
            raise FormatError(f"missing element <size> and the image size {hw} is not positive", path=path)
    ann = FlickrAnnotation(Path(path).stem, hw)
    lists: dict[str, list] = {}
    for k, obj in enumerate(root.findall("object")):
        where = f"object[{k}]"
        names = [(n.text or "").strip() for n in obj.findall("name")]
        if not names or not all(names):
            raise FormatError(f"element {where} has no (or an empty) <name>", path=path)
        bad = [n for n in names if not n.isdigit()]
        if bad:
            raise FormatError(f"element {where}/name is not an entity number: {bad[0]!r}", path=path)
        names = [str(int(n)) for n in names]
        bnd = obj.find("bndbox")
        if bnd is not None:
            x1, y1, x2, y2 = (_number(bnd, t, path, f"{where}/bndbox") for t in ("xmin", "ymin", "xmax", "ymax"))
            if x2 < x1 or y2 < y1:
                raise FormatError(f"element {where}/bndbox has max < min: {(x1, y1, x2, y2)}", path=path)
            box = voc_to_xyxy([[x1, y1, x2, y2]])[0]
            for n in names:
                lists.setdefault(n, []).append(box)
        else:
            if _flag(obj, "nobndbox", path, where):
                ann.nobox.update(names)
            if _flag(obj, "scene", path, where):
                ann.scene.update(names)
    for n, boxes in lists.items():
        ann.boxes[n] = clip_boxes(np.stack(boxes), hw, what=f"{path} entity {n}")
    return ann


def image_path(root, image_id: str) -> Path:
    """Path of an image: ``root/flickr30k-images/<image_id>.jpg`` (``image_id`` confined there).

    Raises:
        UnsafePathError: an id that is absolute or leaves the image folder (``../x``).
    """
    return confine(f"{image_id}.jpg", Path(root) / "flickr30k-images", what=f"image id {image_id!r}")


def _split_ids(root: Path, split: str | None) -> list[tuple[str, object, int | None]]:
    """``(image_id, source file, line)`` of every image of the split; ids are plain file stems."""
    if split is None:
        folder = require_path(root / "Sentences", "Flickr30K Entities Sentences", folder=True)
        ids = [p.stem for p in folder.glob("*.txt")]
        ids = sorted(ids, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
        return [(i, folder, None) for i in ids]
    if not isinstance(split, str):
        raise FormatError(f"split must be a split name such as 'train', got {type(split).__name__} {split!r}")
    path = require_path(confine(f"{split}.txt", root, what=f"split {split!r}"), f"split {split!r}")
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().split("\n")
    except UnicodeDecodeError as exc:
        raise FormatError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", path=path) from None
    out = []
    for k, line in enumerate(lines, start=1):
        image_id = line.strip()
        if not image_id:
            continue
        # an id names files in three folders: it must be a plain name (no separators, no "..")
        for sub, ext in (("Sentences", ".txt"), ("Annotations", ".xml"), ("flickr30k-images", ".jpg")):
            confine(image_id + ext, root / sub, source=path, line=k, what="image id")
        if "/" in image_id or "\\" in image_id or image_id in (".", ".."):
            raise FormatError(f"image id {image_id!r} is not a plain file name", path=path, line=k)
        out.append((image_id, path, k))
    return out


def load_flickr30k_entities(root, split: str | None = None, *, lowercase: bool = False,
                            check_images: bool = False, progress: bool | None = None) -> list[GroundedCaption]:
    """Load Flickr30K Entities captions with their phrases' boxes.

    Args:
        root: folder holding ``Sentences/`` and ``Annotations/`` (and optionally split files and
            ``flickr30k-images/``).
        split: ``None`` for every image in ``Sentences/``, else the name of a split file
            ``root/<split>.txt`` listing image ids (``"train"``, ``"val"``, ``"test"``).
        lowercase: lower-case the tokens.
        check_images: require ``flickr30k-images/<id>.jpg`` to exist for every image.
        progress: tqdm progress bar (``None``: only for large splits).

    Returns:
        One :class:`~attnlens.types.GroundedCaption` per sentence (in file order), with
        ``image_size`` from the XML. Each marked phrase becomes a :class:`~attnlens.types.Phrase`
        (``entity_id``, ``types``, token span, ``boxes`` of the entity; empty for entity 0,
        ``<nobndbox>``/``<scene>`` entities and entities absent from the XML).

    Raises:
        MissingFileError: a missing folder, split file, annotation file or (with
            ``check_images``) image.
        UnsafePathError: an image id in the split file (or a split name) that is absolute or
            leaves its folder (``../x``); names the split file and line.
        FormatError: malformed markup (file and line) or XML (file and element).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> (d / "Sentences").mkdir(); (d / "Annotations").mkdir()
    >>> _ = (d / "Sentences" / "1.txt").write_text("[/EN#5/animals A dog] runs .\\n")
    >>> _ = (d / "Annotations" / "1.xml").write_text(
    ...     "<annotation><size><width>10</width><height>8</height></size>"
    ...     "<object><name>5</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>4</xmax><ymax>8</ymax></bndbox>"
    ...     "</object></annotation>")
    >>> caps = load_flickr30k_entities(d)
    >>> caps[0].phrases[0].boxes.tolist(), caps[0].image_size
    ([[0.0, 1.0, 4.0, 8.0]], (8, 10))
    """
    root = require_path(root, "Flickr30K Entities root", folder=True)
    out: list[GroundedCaption] = []
    for image_id, _, _ in progress_bar(_split_ids(root, split), enabled=progress, desc="flickr30k entities"):
        if check_images and not image_path(root, image_id).is_file():
            raise MissingFileError(f"image of {image_id} not found", path=image_path(root, image_id))
        sentences = parse_sentences(root / "Sentences" / f"{image_id}.txt")
        ann = parse_annotation(root / "Annotations" / f"{image_id}.xml", lambda: _image_size(root, image_id))
        for tokens, entities in sentences:
            if lowercase:
                tokens = [t.lower() for t in tokens]
            phrases = []
            for entity, types, first, words in entities:
                words = tuple(w.lower() for w in words) if lowercase else words
                boxes = ann.boxes.get(entity) if entity != NO_BOX_ENTITY else None
                phrases.append(Phrase(entity, types, first, words, boxes if boxes is not None else np.zeros((0, 4))))
            out.append(GroundedCaption(image_id, tuple(tokens), tuple(phrases), ann.image_size))
    return out


def _image_size(root: Path, image_id: str):
    """Size of the image on disk (only used when the XML has no ``<size>``), else ``None``."""
    p = image_path(root, image_id)
    if not p.is_file():
        return None
    import cv2

    try:
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # a file of another kind under the image's name
        reason = (str(exc).strip().splitlines() or ["cv2 error"])[-1]
        raise FormatError(f"unreadable image ({reason})", path=p) from None
    return None if img is None or img.ndim < 2 else img.shape[:2]
