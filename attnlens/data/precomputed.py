"""Precomputed region features in SCAN's layout, memory-mapped.

Files under ``root`` for a split (``train``, ``dev``, ``test``, ``testall`` ...)::

    {split}_ims.npy     float [N, R, D] region features (SCAN: R = 36, D = 2048)
    {split}_caps.txt    one caption per line, k per image in image order (SCAN: k = 5)
    {split}_boxes.npy   optional float [N, R, 4] xyxy region boxes (pixels)
    {split}_ids.txt     optional image ids, one per line

Feature and box arrays are opened with ``np.load(mmap_mode="r")``: nothing reads the whole
feature file; indexing an image reads only its rows. Captions are tokenised like SCAN's
``nltk.word_tokenize(caption.lower())`` with the nltk-free :func:`~attnlens.data.vocab.simple_tokenize`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FormatError, ShapeError
from ._files import require_path
from .vocab import simple_tokenize


@dataclass(frozen=True, eq=False)
class PrecomputedItem:
    """One image of a precomputed split.

    Attributes:
        index: the image's row in the arrays.
        image_id: its id (from ``{split}_ids.txt``, else ``str(index)``).
        features: ``[R, D]`` region features (a read-only view of the memory map).
        captions: its ``k`` captions as token tuples.
        boxes: ``[R, 4]`` xyxy boxes, or ``None``.
    """

    index: int
    image_id: str
    features: np.ndarray
    captions: tuple[tuple[str, ...], ...]
    boxes: np.ndarray | None = None


class PrecomputedSplit:
    """A memory-mapped split in SCAN's layout (see the module docstring).

    Attributes:
        images: ``[N, R, D]`` memory-mapped features.
        captions: flat list of token lists, ``captions_per_image`` per image, in image order.
        boxes: ``[N, R, 4]`` memory-mapped boxes or ``None``.
        image_ids: ``N`` ids.
        captions_per_image: ``len(captions) // N``.
    """

    def __init__(self, root, split: str, *, lowercase: bool = True):
        root = require_path(root, "precomputed data", folder=True)
        self.root, self.split = root, split
        ims_path = require_path(root / f"{split}_ims.npy", f"features of split {split!r}")
        caps_path = require_path(root / f"{split}_caps.txt", f"captions of split {split!r}")
        self.images = _open(ims_path)
        if self.images.ndim != 3:
            raise FormatError(f"features must have shape (N, R, D), got {self.images.shape}", path=ims_path)
        n, r = self.images.shape[:2]
        try:
            with open(caps_path, encoding="utf-8") as f:
                raw = [line.strip() for line in f]
        except UnicodeDecodeError as exc:
            raise FormatError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", path=caps_path) from None
        while raw and not raw[-1]:
            raw.pop()
        self.captions = [simple_tokenize(c) if lowercase else c.split() for c in raw]
        if n == 0 or len(self.captions) % n or not self.captions:
            raise FormatError(f"{len(self.captions)} captions do not divide evenly among {n} images "
                              f"(expected k * {n} lines)", path=caps_path)
        self.captions_per_image = len(self.captions) // n
        boxes_path = root / f"{split}_boxes.npy"
        self.boxes = None
        if boxes_path.is_file():
            self.boxes = _open(boxes_path)
            if self.boxes.shape != (n, r, 4):
                raise FormatError(f"boxes must have shape ({n}, {r}, 4) to match the features, "
                                  f"got {self.boxes.shape}", path=boxes_path)
        ids_path = root / f"{split}_ids.txt"
        if ids_path.is_file():
            with open(ids_path, encoding="utf-8") as f:
                ids = [line.strip() for line in f if line.strip()]
            if len(ids) != n:
                raise FormatError(f"{len(ids)} image ids for {n} images", path=ids_path)
            self.image_ids = ids
        else:
            self.image_ids = [str(i) for i in range(n)]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def n_regions(self) -> int:
        return self.images.shape[1]

    @property
    def feature_dim(self) -> int:
        return self.images.shape[2]

    def captions_of(self, index: int) -> tuple[tuple[str, ...], ...]:
        """The ``captions_per_image`` token tuples of image ``index``."""
        k = self.captions_per_image
        return tuple(tuple(c) for c in self.captions[index * k:(index + 1) * k])

    def caption_image(self, caption_index: int) -> int:
        """The image index of caption ``caption_index`` (SCAN's ``index // 5``)."""
        return int(caption_index) // self.captions_per_image

    def __getitem__(self, index: int) -> PrecomputedItem:
        n = len(self)
        if not -n <= int(index) < n:
            raise ShapeError(f"image index {index} out of range for {n} images of split {self.split!r}")
        i = int(index) % n
        return PrecomputedItem(i, self.image_ids[i], self.images[i], self.captions_of(i),
                               None if self.boxes is None else self.boxes[i])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return (f"PrecomputedSplit({self.split!r}: {len(self)} images x {self.n_regions} regions x "
                f"{self.feature_dim}, {self.captions_per_image} captions each)")


def _open(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise FormatError(f"not a readable .npy array: {exc}", path=path) from None


def load_precomputed(root, split: str, *, lowercase: bool = True) -> PrecomputedSplit:
    """Open a split of precomputed region features in SCAN's layout (memory-mapped).

    Args:
        root: the folder (SCAN: ``data/f30k_precomp`` or ``data/coco_precomp``).
        split: the file prefix (``train``, ``dev``, ``test``, ``testall``).
        lowercase: tokenise like SCAN (lower-case, punctuation split); ``False`` splits on spaces.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> np.save(d / "test_ims.npy", np.zeros((2, 36, 8), np.float32))
    >>> _ = (d / "test_caps.txt").write_text("A dog.\\nA cat.\\nTwo dogs.\\nA bird.\\n")
    >>> ds = load_precomputed(d, "test")
    >>> len(ds), ds.captions_per_image, ds[1].captions[0], type(ds.images).__name__
    (2, 2, ('two', 'dogs', '.'), 'memmap')
    """
    return PrecomputedSplit(root, split, lowercase=lowercase)
