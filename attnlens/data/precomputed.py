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
from ..io import confine
from ..params import int_param
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

    def __init__(self, root, split: str, *, lowercase: bool = True, check_finite: bool = True):
        root = require_path(root, "precomputed data", folder=True)
        if not isinstance(split, str) or not split:
            raise FormatError(f"split must be a non-empty name such as 'test', got {split!r}")
        self.root, self.split = root, split
        ims_path = require_path(confine(f"{split}_ims.npy", root, what=f"split {split!r}"),
                                f"features of split {split!r}")
        caps_path = require_path(root / f"{split}_caps.txt", f"captions of split {split!r}")
        self.images = _open(ims_path)
        if self.images.ndim != 3:
            raise FormatError(f"features must have shape (N, R, D), got {self.images.shape}", path=ims_path)
        _check_real(self.images, ims_path, "features", check_finite)
        n, r = self.images.shape[:2]
        raw = _lines(caps_path)
        while raw and not raw[-1]:
            raw.pop()
        self.captions = [simple_tokenize(c) if lowercase else c.split() for c in raw]
        empty = [k + 1 for k, c in enumerate(self.captions) if not c]
        if empty:
            raise FormatError(f"caption has no token (an empty or punctuation-free blank line; {len(empty)} such "
                              f"lines)", path=caps_path, line=empty[0])
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
            _check_real(self.boxes, boxes_path, "boxes", True)
            b = self.boxes
            inverted = np.argwhere((b[..., 2] < b[..., 0]) | (b[..., 3] < b[..., 1]))
            if len(inverted):
                i, j = inverted[0].tolist()
                raise FormatError(f"element [{i}, {j}] is an inverted box {self.boxes[i, j].tolist()} "
                                  f"(x2 < x1 or y2 < y1)", path=boxes_path)
        ids_path = root / f"{split}_ids.txt"
        if ids_path.is_file():
            ids = [line.strip() for line in _lines(ids_path) if line.strip()]
            if len(ids) != n:
                raise FormatError(f"{len(ids)} image ids for {n} images", path=ids_path)
            if len(set(ids)) != len(ids):
                dup = next(i for i in ids if ids.count(i) > 1)
                raise FormatError(f"image id {dup!r} is listed more than once", path=ids_path)
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
        index = int_param(index, "index", f"PrecomputedSplit({self.split!r})")
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
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise FormatError(f"not a readable .npy array: {exc}", path=path) from None
    if not isinstance(arr, np.ndarray):   # an .npz archive under the .npy name
        raise FormatError(f"not a .npy array (a {type(arr).__name__})", path=path)
    return arr


def _check_real(arr: np.ndarray, path: Path, what: str, finite: bool, rows: int = 4096) -> None:
    """Refuse non-numeric (string, complex, bool, structured) arrays; with ``finite``, NaN/inf values
    (scanned in blocks of ``rows`` images so that a memory map is never read whole at once)."""
    if arr.dtype.kind not in "iuf" or arr.dtype.names is not None:
        raise FormatError(f"{what} must be real numbers, got dtype {arr.dtype}", path=path)
    if not finite or arr.dtype.kind != "f":
        return
    for start in range(0, len(arr), rows):
        block = np.asarray(arr[start:start + rows])
        ok = np.isfinite(block).reshape(len(block), -1).all(1) if block.size else np.ones(len(block), bool)
        if not ok.all():
            i = start + int(np.flatnonzero(~ok)[0])
            raise FormatError(f"{what} of image {i} contain NaN or infinite values", path=path)


def _lines(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as f:   # a byte-order mark is not part of the first line
            return [line.strip() for line in f]
    except UnicodeDecodeError as exc:
        raise FormatError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", path=path) from None


def load_precomputed(root, split: str, *, lowercase: bool = True, check_finite: bool = True) -> PrecomputedSplit:
    """Open a split of precomputed region features in SCAN's layout (memory-mapped).

    Args:
        root: the folder (SCAN: ``data/f30k_precomp`` or ``data/coco_precomp``).
        split: the file prefix (``train``, ``dev``, ``test``, ``testall``).
        lowercase: tokenise like SCAN (lower-case, punctuation split); ``False`` splits on spaces.
        check_finite: scan the features once (in blocks) for NaN/inf values; ``False`` skips the
            scan for very large, trusted files.

    Raises:
        MissingFileError: a missing folder or file.
        FormatError: naming the file and the line or element at fault: features or boxes that are
            not real numbers (strings, complex, structured) or hold NaN/inf, inverted boxes, empty
            captions, a caption count that does not divide among the images, duplicated ids.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> np.save(d / "test_ims.npy", np.zeros((2, 36, 8), np.float32))
    >>> _ = (d / "test_caps.txt").write_text("A dog.\\nA cat.\\nTwo dogs.\\nA bird.\\n")
    >>> ds = load_precomputed(d, "test")
    >>> len(ds), ds.captions_per_image, ds[1].captions[0], type(ds.images).__name__
    (2, 2, ('two', 'dogs', '.'), 'memmap')
    """
    return PrecomputedSplit(root, split, lowercase=lowercase, check_finite=check_finite)
