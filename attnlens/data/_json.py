"""Reading the JSON annotation files of the loaders, with errors that name the file and element.

Pickled annotation files (RefCOCO's ``refs(unc).p``) are refused without being opened by
pickle: unpickling runs arbitrary code. Convert such a file to JSON once, in an environment
you trust, or use a distribution that ships JSON.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import FormatError
from ._files import require_path

_PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")


def read_json(path, what: str):
    """The parsed JSON of ``path``; :class:`FormatError` for pickles, bad JSON or non-UTF-8 text."""
    path = require_path(path, what)
    with open(path, "rb") as f:
        head = f.read(2)
    if path.suffix.lower() in _PICKLE_SUFFIXES or head[:1] == b"\x80":
        raise FormatError(f"{what} is a pickled file; attnlens never unpickles annotation files (unpickling "
                          "runs code). Convert it to JSON once in an environment you trust, e.g. "
                          "json.dump(pickle.load(f), out), and pass the .json file", path=path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise FormatError(f"invalid JSON: {exc.msg}", path=path, line=exc.lineno) from None
    except UnicodeDecodeError as exc:
        raise FormatError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", path=path) from None


def field(record, key: str, kinds, path: Path, where: str):
    """``record[key]`` checked to be of ``kinds``; :class:`FormatError` naming ``where`` otherwise."""
    if not isinstance(record, dict):
        raise FormatError(f"{where} is a {type(record).__name__}, expected an object", path=path)
    if key not in record:
        raise FormatError(f"{where} has no field {key!r}", path=path)
    value = record[key]
    if not isinstance(value, kinds) or isinstance(value, bool):
        names = kinds.__name__ if isinstance(kinds, type) else "/".join(k.__name__ for k in kinds)
        raise FormatError(f"{where}.{key} is {value!r}, expected {names}", path=path)
    return value


def image_size(record, path: Path, where: str) -> tuple[int, int]:
    """``(height, width)`` of an image record: positive whole numbers, else :class:`FormatError`."""
    size = []
    for key in ("height", "width"):
        v = field(record, key, (int, float), path, where)
        if v != v or v <= 0 or v != int(v):
            raise FormatError(f"{where}.{key} is {v!r}, expected a positive whole number of pixels", path=path)
        size.append(int(v))
    return size[0], size[1]


def xywh_box(value, path: Path, where: str) -> list[float]:
    """A COCO ``[x, y, w, h]`` box as ``xyxy``; :class:`FormatError` for a malformed or empty box."""
    import math

    if (not isinstance(value, (list, tuple)) or len(value) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise FormatError(f"{where}.bbox is {value!r}, expected [x, y, width, height]", path=path)
    x, y, w, h = (float(v) for v in value)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise FormatError(f"{where}.bbox is {value!r}: coordinates must be finite and the size positive",
                          path=path)
    return [x, y, x + w, y + h]
