"""easy-VQA (the ``easy-vqa`` package's shipped images and questions; extra ``easyvqa``).

Each easy-VQA image (64 x 64 PNG) shows one shape on a flat background; the box of the shape is
derived from the pixels: the tight box of every pixel whose colour differs from the background
(the most common border colour) by more than ``threshold`` in some channel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DTypeError, FormatError, ShapeError, require
from ..params import int_param, real_param
from ._files import progress_bar, require_path
from .vocab import simple_tokenize


@dataclass(frozen=True, eq=False)
class EasyVQAItem:
    """One easy-VQA question.

    Attributes:
        image_id: the image's number (as a string).
        image: ``uint8 [H, W, 3]`` RGB (read-only; shared by the questions of one image).
        tokens: the question's tokens (lower-case, no punctuation).
        answer: the answer (one of ``easy_vqa.get_answers()``).
        box: ``(4,)`` xyxy box of the shape (pixels, half-open).
        question: the raw question text.
    """

    image_id: str
    image: np.ndarray
    tokens: tuple[str, ...]
    answer: str
    box: np.ndarray
    question: str

    @property
    def boxes(self) -> np.ndarray:
        """``[1, 4]`` the box of the single shape (what every answer depends on)."""
        return self.box[None]

    def __repr__(self) -> str:
        return f"EasyVQAItem({self.question!r} -> {self.answer!r}, image={self.image_id})"


def shape_box(image: np.ndarray, threshold: int = 40) -> np.ndarray:
    """Tight ``xyxy`` box of the pixels that differ from the background colour.

    The background colour is the most common colour of the border pixels.

    Args:
        image: ``uint8 [H, W, 3]``.
        threshold: a pixel is foreground when some channel differs by more than this.

    Returns:
        ``(4,)`` float box; the whole image when no pixel stands out.

    >>> img = np.full((8, 8, 3), 200, np.uint8); img[2:5, 3:7] = (255, 0, 0)
    >>> shape_box(img).tolist()
    [3.0, 2.0, 7.0, 5.0]
    """
    img = np.asarray(image)
    if img.dtype.kind not in "biuf":
        raise DTypeError(f"shape_box: image must hold numbers, got dtype {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ShapeError(f"shape_box: image must be a non-empty [H, W, C] array, got shape {img.shape}")
    if img.dtype.kind == "f" and not np.isfinite(img).all():
        raise ShapeError("shape_box: image contains NaN or infinite values")
    threshold = real_param(threshold, "threshold", "shape_box", lo=0)
    h, w = img.shape[:2]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]).reshape(-1, img.shape[-1])
    colours, counts = np.unique(border, axis=0, return_counts=True)
    bg = colours[np.argmax(counts)].astype(np.float64 if img.dtype.kind == "f" else np.int64)
    fg = (np.abs(img.astype(bg.dtype) - bg) > threshold).any(axis=-1)
    rows = np.flatnonzero(fg.any(axis=1))
    cols = np.flatnonzero(fg.any(axis=0))
    if len(rows) == 0:
        return np.array([0.0, 0.0, float(w), float(h)])
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def load_easy_vqa(split: str = "train", *, n: int | None = None, threshold: int = 40,
                  progress: bool | None = None) -> list[EasyVQAItem]:
    """Load easy-VQA questions with their images and shape boxes.

    Args:
        split: ``"train"`` (38,575 questions, 4,000 images) or ``"test"`` (9,673 / 1,000).
        n: keep only the first ``n`` questions (their images only are read).
        threshold: foreground threshold of :func:`shape_box`.
        progress: tqdm progress bar (``None``: only for many images).

    Raises:
        MissingDependencyError: the ``easy-vqa`` package is not installed (extra ``easyvqa``).
        MissingFileError / FormatError: an image is missing or unreadable.

    >>> items = load_easy_vqa("test", n=3)
    >>> items[0].image.shape, items[0].answer in get_answers()
    ((64, 64, 3), True)
    """
    if split not in ("train", "test"):
        from ..errors import UnknownNameError

        raise UnknownNameError("easy-VQA split", split, ["train", "test"])
    if n is not None:
        n = int_param(n, "n", "load_easy_vqa", lo=0)
    threshold = real_param(threshold, "threshold", "load_easy_vqa", lo=0)
    ev = require("easy_vqa", "easyvqa")
    texts, answers, image_ids = ev.get_train_questions() if split == "train" else ev.get_test_questions()
    paths = ev.get_train_image_paths() if split == "train" else ev.get_test_image_paths()
    if n is not None:
        texts, answers, image_ids = texts[:n], answers[:n], image_ids[:n]
    import cv2

    cache: dict = {}
    for iid in progress_bar(dict.fromkeys(image_ids), enabled=progress, desc=f"easy-vqa {split}"):
        if iid not in paths:
            raise FormatError(f"question refers to image {iid}, which the package does not ship")
        path = require_path(paths[iid], f"easy-VQA image {iid}")
        try:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        except cv2.error as exc:
            reason = (str(exc).strip().splitlines() or ["cv2 error"])[-1]
            raise FormatError(f"unreadable image ({reason})", path=path) from None
        if bgr is None:
            raise FormatError("unreadable image (not an image file?)", path=path)
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        rgb.setflags(write=False)
        box = shape_box(rgb, threshold)
        box.setflags(write=False)
        cache[iid] = (rgb, box)
    out = []
    for text, answer, iid in zip(texts, answers, image_ids):
        rgb, box = cache[iid]
        out.append(EasyVQAItem(str(iid), rgb, tuple(simple_tokenize(text, punctuation=False)), str(answer), box, text))
    return out


def get_answers() -> list[str]:
    """easy-VQA's 13 answers, in the package's order (``easy_vqa.get_answers()``)."""
    return list(require("easy_vqa", "easyvqa").get_answers())
