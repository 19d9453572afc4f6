"""VQA with answer grounding: where in the image the answer is (VizWiz-VQA-Grounding layout).

The VizWiz-VQA-Grounding distribution has, per split, ``<split>_grounding.json`` (an object
keyed by image file name, or a list of records with an ``image`` field) whose records hold the
``question``, the ``answers`` (strings, or VQA-style ``{"answer": ...}`` objects), optionally
``most_common_answer``, ``height``/``width`` and ``answer_grounding`` (a polygon, a list of
``{"x", "y"}`` points in pixels), and a folder ``binary_masks_png/<split>/<image stem>.png``
with the answer's binary mask (non-zero = answer). A record's mask comes from the PNG when
``masks_dir`` is given, else from its polygon.

Each record becomes a :class:`GroundedAnswer`: the question as a
:class:`~attnlens.types.GroundedCaption` whose one phrase (the whole question, entity
``"answer"``) holds the boxes around the mask's connected parts, the boolean ``[H, W]`` mask
itself (the grounding metrics take it directly, see :func:`attnlens.metrics.pointing_game`), and
the answers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FormatError
from ..types import GroundedCaption, Phrase
from ._files import MissingFileError, progress_bar, require_path
from ._json import field, image_size, read_json
from .vocab import simple_tokenize


@dataclass(frozen=True, eq=False)
class GroundedAnswer:
    """A visual question with its answers and the image area that holds the answer.

    Attributes:
        question: the question's tokens; one phrase (entity ``"answer"``) with ``mask_boxes``.
        answers: every annotator answer, in file order.
        answer: the most common answer (``most_common_answer``, else the most frequent answer).
        mask: ``[H, W]`` bool, True where the answer is.
        mask_boxes: ``[n, 4]`` xyxy boxes of the mask's connected parts.
        file_name: the image's file name; image_path: its path when ``images_dir`` was given.
    """

    question: GroundedCaption
    answers: tuple[str, ...]
    answer: str
    mask: np.ndarray
    mask_boxes: np.ndarray
    file_name: str
    image_path: Path | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        return self.mask.shape[:2]

    def __repr__(self) -> str:
        return f"GroundedAnswer({self.question.text!r} -> {self.answer!r}, mask={int(self.mask.sum())} px)"


def mask_boxes(mask: np.ndarray) -> np.ndarray:
    """``[n, 4]`` xyxy boxes of the 8-connected parts of a boolean mask (largest first).

    >>> m = np.zeros((6, 8), bool); m[1:3, 1:4] = True; m[4:6, 6:8] = True
    >>> mask_boxes(m).tolist()
    [[1.0, 1.0, 4.0, 3.0], [6.0, 4.0, 8.0, 6.0]]
    """
    import cv2

    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    parts = sorted(stats[1:n].tolist(), key=lambda s: -s[4])
    return np.array([[x, y, x + w, y + h] for x, y, w, h, _ in parts], dtype=np.float64).reshape(-1, 4)


def _answers(record, path: Path, where: str) -> tuple[str, ...]:
    raw = record.get("answers", [])
    if not isinstance(raw, list):
        raise FormatError(f"{where}.answers is {type(raw).__name__}, expected a list", path=path)
    out = []
    for j, a in enumerate(raw):
        a = a.get("answer") if isinstance(a, dict) else a
        if not isinstance(a, str):
            raise FormatError(f"{where}.answers[{j}] is {a!r}, expected a string or {{'answer': str}}", path=path)
        out.append(a.strip())
    return tuple(out)


def _polygon_mask(points, size: tuple[int, int], path: Path, where: str) -> np.ndarray:
    import cv2

    if not isinstance(points, list) or len(points) < 3:
        raise FormatError(f"{where}.answer_grounding needs a polygon of >= 3 points", path=path)
    xy = []
    for j, p in enumerate(points):
        v = (p.get("x"), p.get("y")) if isinstance(p, dict) else (p if isinstance(p, (list, tuple)) else ())
        if len(v) != 2 or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and np.isfinite(c)
                                  for c in v):
            raise FormatError(f"{where}.answer_grounding[{j}] is {p!r}, expected {{'x': number, 'y': number}}",
                              path=path)
        xy.append(v)
    mask = np.zeros(size, np.uint8)
    cv2.fillPoly(mask, [np.round(np.array(xy)).astype(np.int32)], 1)
    return mask.astype(bool)


def _png_mask(folder: Path, file_name: str, size, path: Path, where: str) -> np.ndarray:
    import cv2

    stem = Path(file_name).stem
    mask_path = folder / f"{stem}.png"
    if not mask_path.is_file():
        raise MissingFileError(f"answer mask of {where} not found", path=mask_path)
    img = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FormatError("not a readable PNG image (answer mask)", path=mask_path)
    img = img if img.ndim == 2 else img[..., :3].max(-1)
    if size is not None and img.shape[:2] != size:
        raise FormatError(f"mask is {img.shape[1]}x{img.shape[0]} but {where} says {size[1]}x{size[0]}",
                          path=mask_path)
    return img > 0


def load_vqa_grounding(path, *, masks_dir=None, images_dir=None, progress: bool | None = None) -> list[GroundedAnswer]:
    """Load answer-grounded VQA records (VizWiz-VQA-Grounding layout, see the module docstring).

    Args:
        path: ``<split>_grounding.json``.
        masks_dir: folder of the binary mask PNGs (``binary_masks_png/<split>``); without it each
            record's ``answer_grounding`` polygon is rasterised (then ``height``/``width`` are needed).
        images_dir: optional folder of the images; each must exist there.
        progress: tqdm progress bar (``None``: only for many records).

    Question tokens are :func:`~attnlens.data.simple_tokenize`'s (lower case).

    Raises:
        FormatError: malformed JSON, a record with a missing or invalid field, an unreadable mask,
            or a file name that leaves its folder (the message names the file and the record).
        MissingFileError: a missing file, folder, mask or image.

    >>> import json, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "val_grounding.json").write_text(json.dumps({"VizWiz_val_1.jpg": {
    ...     "question": "What colour is this shirt?", "answers": ["blue", "blue", "navy"],
    ...     "height": 10, "width": 12, "answer_grounding": [{"x": 2, "y": 2}, {"x": 8, "y": 2}, {"x": 8, "y": 6}]}}))
    >>> item = load_vqa_grounding(d / "val_grounding.json")[0]
    >>> item.answer, item.question.tokens[:3], item.mask.shape, item.mask_boxes.tolist()
    ('blue', ('what', 'colour', 'is'), (10, 12), [[2.0, 2.0, 9.0, 7.0]])
    """
    path = Path(path)
    data = read_json(path, "VQA grounding")
    if isinstance(data, dict):
        records = list(data.items())
    elif isinstance(data, list):
        records = [(field(r, "image", str, path, f"[{k}]"), r) for k, r in enumerate(data)]
    else:
        raise FormatError("expected a JSON object keyed by image file name, or a list of records", path=path)
    masks = require_path(masks_dir, "answer masks", folder=True) if masks_dir is not None else None
    images = require_path(images_dir, "VQA images", folder=True) if images_dir is not None else None
    out = []
    for file_name, record in progress_bar(records, enabled=progress, desc="vqa grounding"):
        where = f"record {file_name!r}"
        name = Path(file_name)
        if not file_name or name.is_absolute() or ".." in name.parts or len(name.parts) != 1:
            raise FormatError(f"{where}: the image name must be a plain file name", path=path)
        text = field(record, "question", str, path, where).lstrip("\ufeff")
        tokens = tuple(simple_tokenize(text))
        if not tokens:
            raise FormatError(f"{where}.question is empty", path=path)
        size = image_size(record, path, where) if "height" in record or "width" in record else None
        if masks is not None:
            mask = _png_mask(masks, file_name, size, path, where)
        elif size is None:
            raise FormatError(f"{where} has no height/width to rasterise its polygon (pass masks_dir)", path=path)
        else:
            mask = _polygon_mask(record.get("answer_grounding"), size, path, where)
        answers = _answers(record, path, where)
        answer = record.get("most_common_answer")
        if not isinstance(answer, str):
            answer = max(answers, key=answers.count) if answers else ""
        boxes = mask_boxes(mask)
        phrase = Phrase("answer", ("answer",), 0, tokens, boxes)
        question = GroundedCaption(name.stem, tokens, (phrase,), mask.shape[:2])
        image_path = None
        if images is not None:
            image_path = images / name
            if not image_path.is_file():
                raise MissingFileError(f"image of {where} not found", path=image_path)
        mask.setflags(write=False)
        out.append(GroundedAnswer(question, answers, answer.strip(), mask, boxes, file_name, image_path))
    return out
