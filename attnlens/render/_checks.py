"""Input checks shared by the public render functions: one rule, one typed error, the argument named.

* Options (``alpha``, ``top_k``, ``dpi`` ...): a value of the wrong type raises
  :class:`~attnlens.errors.DTypeError` (a ``TypeError``); a non-finite or out-of-range value raises
  :class:`~attnlens.errors.ParameterError` (a ``ValueError``). ``bool`` is not a number.
* Heat (``heat``, ``scores``, ``weights``): numpy arrays, torch tensors of any float type
  (bfloat16 and float16 are widened to float32), integers and booleans (read as 0/1) are accepted;
  strings, objects and complex numbers are not.
* Boxes: ``[n, 4]`` xyxy with finite coordinates and ``x1 <= x2``, ``y1 <= y2``.

>>> real_option(0.5, "alpha", "overlay", lo=0, hi=1)
0.5
>>> heat_array([True, False], "heat", "overlay").tolist()
[1.0, 0.0]
"""
from __future__ import annotations

import numbers

import numpy as np

from ..errors import DTypeError, NonFiniteError, ShapeError
from ..params import int_param as int_option  # the one rule for scalar options (attnlens.params)
from ..params import real_param as real_option

__all__ = ["real_option", "int_option", "choice_option", "heat_array", "check_boxes", "word_list", "text_option"]


def choice_option(value, name: str, fn: str, choices) -> str:
    """``value`` when it is one of the string ``choices``."""
    from ..errors import UnknownNameError

    if not isinstance(value, str):
        raise DTypeError(f"{fn}: {name} must be one of {list(choices)}, got {type(value).__name__} {value!r:.60}")
    if value not in choices:
        raise UnknownNameError(f"{fn} {name}", value, list(choices))
    return value


def word_list(words, name: str, fn: str) -> tuple[str, ...]:
    """Words as a tuple of strings: a string is split on whitespace; a sequence's items become
    strings; anything else (``None``, a number, a dict) is a :class:`DTypeError`."""
    if isinstance(words, str):
        return tuple(words.split())
    if isinstance(words, (bytes, dict)) or not hasattr(words, "__iter__"):
        raise DTypeError(f"{fn}: {name} must be a string or a sequence of words, got {type(words).__name__}")
    return tuple(str(w) for w in words)


def text_option(value, name: str, fn: str) -> str | None:
    """``None`` or a text (numbers are written as text); other types are a :class:`DTypeError`."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return str(value)
    raise DTypeError(f"{fn}: {name} must be a string, got {type(value).__name__}")


def heat_array(heat, name: str, fn: str, *, dtype=np.float64) -> np.ndarray:
    """A heat (array, tensor, list, AttentionMap weights) as a float numpy array; typed errors."""
    if hasattr(heat, "dims") and hasattr(heat, "weights"):
        heat = heat.weights
    if hasattr(heat, "detach"):
        t = heat.detach().cpu()
        if t.is_complex():
            raise DTypeError(f"{fn}: {name} must be real, got a complex tensor ({t.dtype})")
        if t.is_floating_point() and t.element_size() < 4:  # bfloat16/float16 have no numpy twin
            t = t.float()
        heat = t.numpy()
    try:
        a = np.asarray(heat)
    except (ValueError, TypeError) as exc:  # ragged lists
        raise ShapeError(f"{fn}: {name} is not a rectangular array ({exc})") from None
    if a.dtype.kind == "b":
        a = a.astype(dtype)
    if a.dtype.kind not in "fiu":
        raise DTypeError(f"{fn}: {name} must hold real numbers, got dtype {a.dtype}")
    if a.dtype.kind != "f" or a.dtype.itemsize < 4:
        a = a.astype(dtype)
    return a


def check_boxes(boxes, name: str, fn: str) -> np.ndarray:
    """``[n, 4]`` float64 xyxy boxes (a copy) with finite, non-inverted coordinates."""
    b = getattr(boxes, "boxes", boxes)
    if hasattr(b, "detach"):
        b = b.detach().cpu().double().numpy()
    try:
        b = np.array(b, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise DTypeError(f"{fn}: {name} must be an [n, 4] array of numbers ({exc})") from None
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ShapeError(f"{fn}: {name} must be a Regions or an [n, 4] xyxy array, got shape {tuple(b.shape)}")
    bad = ~np.isfinite(b).all(axis=1)
    if bad.any():
        raise NonFiniteError(f"{fn}: {name} has non-finite coordinates in rows {np.nonzero(bad)[0][:8].tolist()}")
    inv = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if inv.any():
        i = int(np.nonzero(inv)[0][0])
        raise ShapeError(f"{fn}: {name} row {i} is inverted (x1 > x2 or y1 > y2): {b[i].tolist()}; boxes are xyxy")
    return b
