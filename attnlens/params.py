"""Checks of parameters and numeric inputs shared by every layer: one rule, one error type.

Each check returns the value converted (``float`` or ``int``) or raises
:class:`~attnlens.errors.ParameterError` (a ``ValueError``) naming the function, the parameter and
the value; a value of the wrong type (a string, a tensor with several elements) raises
:class:`~attnlens.errors.DTypeError` (a ``TypeError``). ``bool`` is not accepted as a number.

>>> real_param(0.5, "tolerance", "pointing_game", lo=0)
0.5
>>> real_param(float("nan"), "tolerance", "pointing_game")
Traceback (most recent call last):
...
attnlens.errors.ParameterError: pointing_game: tolerance must be a finite number, got nan
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import DTypeError, ParameterError

__all__ = ["int_param", "real_param", "fraction_param", "real_array"]


def _scalar(value, name: str, fn: str):
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 and not isinstance(value, bool):
        try:
            value = value.item()
        except (TypeError, ValueError):  # pragma: no cover - exotic array scalars
            pass
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DTypeError(f"{fn}: {name} must be a real number, got {type(value).__name__} {value!r}")
    return value


def real_param(value, name: str, fn: str, *, lo: float | None = None, hi: float | None = None,
               lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a finite ``float`` within ``[lo, hi]`` (``(lo`` / ``hi)`` when open)."""
    v = float(_scalar(value, name, fn))
    if not math.isfinite(v):
        raise ParameterError(f"{fn}: {name} must be a finite number, got {v}")
    below = lo is not None and (v <= lo if lo_open else v < lo)
    above = hi is not None and (v >= hi if hi_open else v > hi)
    if below or above:
        left = "-inf" if lo is None else f"{lo:g}"
        right = "inf" if hi is None else f"{hi:g}"
        interval = f"{'(' if lo_open or lo is None else '['}{left}, {right}{')' if hi_open or hi is None else ']'}"
        raise ParameterError(f"{fn}: {name} must lie in {interval}, got {v}")
    return v


def fraction_param(value, name: str, fn: str, *, open_low: bool = False) -> float:
    """A finite fraction in ``[0, 1]`` (``(0, 1]`` with ``open_low``)."""
    return real_param(value, name, fn, lo=0.0, hi=1.0, lo_open=open_low)


def int_param(value, name: str, fn: str, *, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an ``int`` within ``[lo, hi]``; a float is accepted only when integral."""
    v = _scalar(value, name, fn)
    if not isinstance(v, numbers.Integral):
        if not math.isfinite(float(v)) or float(v) != int(v):
            raise ParameterError(f"{fn}: {name} must be an integer, got {v!r}")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else (f"<= {hi}" if lo is None else f"in [{lo}, {hi}]")
        raise ParameterError(f"{fn}: {name} must be {rng}, got {v}")
    return v


def real_array(x, what: str) -> np.ndarray:
    """``x`` (array, list, tensor of any real dtype, bfloat16 included) as a float64 numpy array;
    strings, ``None``, ragged, object and complex data raise :class:`~attnlens.errors.DTypeError`
    naming ``what``. Values are not checked for finiteness (callers say what they accept).

    >>> real_array([1, 2], "boxes").dtype
    dtype('float64')
    >>> real_array(["a"], "boxes")
    Traceback (most recent call last):
    ...
    attnlens.errors.DTypeError: boxes must be real numbers, got dtype <U1
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor (torch is not imported here)
        x = x.detach().cpu()
        x = (x.float() if str(x.dtype) == "torch.bfloat16" else x).numpy()
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise DTypeError(f"{what} must be an array of numbers ({exc})") from None
    if arr.dtype.kind not in "biuf":
        raise DTypeError(f"{what} must be real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64)
