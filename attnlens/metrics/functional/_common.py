"""Input checks and NaN reasons shared by the functional metrics.

Every metric returns per-example values with NaN where the metric is undefined. The private
``_*_update`` functions also return an integer *reason code* per example (0 = defined) so that
summaries can count why examples were excluded; :data:`REASONS` names the codes.
"""
from __future__ import annotations

import numpy as np
import torch

from ...errors import DTypeError, NonFiniteError, ShapeError
from ...params import int_param, real_param  # noqa: F401  (re-exported for the metric modules)

OK, EMPTY_MASK, FULL_MASK, ZERO_MASS, DEGENERATE_BOX, NO_REGIONS, NON_POSITIVE, UNDEFINED = range(8)

#: Human-readable text of each reason code (code 0 means "defined").
REASONS = {
    OK: "",
    EMPTY_MASK: "empty mask",
    FULL_MASK: "mask covers the whole image",
    ZERO_MASS: "map has zero total mass",
    DEGENERATE_BOX: "empty or degenerate ground-truth box",
    NO_REGIONS: "no valid regions",
    NON_POSITIVE: "map has no positive value",
    UNDEFINED: "undefined (constant input or too few elements)",
}


def reason_text(codes) -> list[str]:
    """Reason strings for a tensor/array of reason codes.

    >>> reason_text(torch.tensor([0, 1]))
    ['', 'empty mask']
    """
    return [REASONS[int(c)] for c in np.asarray(codes).reshape(-1)]


def as_tensor(x, what: str) -> torch.Tensor:
    """``x`` as a tensor of numbers (bool, integer, real or complex); anything else -> DTypeError.

    PIL images, lists and numpy arrays go through ``np.asarray``; strings, ``None`` and ragged
    or object arrays are refused with an error naming ``what``.
    """
    if isinstance(x, torch.Tensor):
        return x
    try:
        arr = np.asarray(x)
        if arr.dtype.kind not in "biufc":
            raise TypeError(f"dtype {arr.dtype}")
        return torch.as_tensor(arr if arr.flags.writeable else arr.copy())  # read-only arrays (masks)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DTypeError(f"{what} must be a tensor or array of numbers, got {type(x).__name__} ({exc})") from None


def check_real(x: torch.Tensor, what: str, *, finite: bool = True) -> torch.Tensor:
    """Refuse complex and (with ``finite``) NaN/inf values; integers and bools become float64."""
    if x.is_complex():
        raise DTypeError(f"{what} must be real numbers, got {x.dtype}")
    if not x.is_floating_point():
        x = x.double()
    if finite and x.numel() and not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"{what} {tuple(x.shape)} contain NaN or infinite values")
    return x


def check_bool(x, what: str, shape=None) -> torch.Tensor:
    """A boolean mask: bool, or numbers that are all 0 or 1 (anything else -> DTypeError).

    A "mask" of other values (0.5, 2, NaN) is refused instead of being read as ``!= 0``.
    """
    x = as_tensor(x, what)
    if x.dtype != torch.bool:
        if not bool(((x == 0) | (x == 1)).all()):
            raise DTypeError(f"{what} must be boolean (or 0/1), got {x.dtype} with other values")
        x = x != 0
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise ShapeError(f"{what} {tuple(x.shape)} must have shape {tuple(shape)}")
    return x


def check_maps(maps, masks, fn: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``maps`` ``[N, H, W]`` (float) and ``masks`` ``[N, H, W]`` (bool)."""
    maps = as_tensor(maps, f"{fn}: maps")
    masks = as_tensor(masks, f"{fn}: masks")
    if maps.ndim != 3:
        raise ShapeError(f"{fn}: maps must be [N, H, W], got shape {tuple(maps.shape)}")
    if masks.shape != maps.shape:
        raise ShapeError(f"{fn}: maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must have the same "
                         f"shape [N, H, W]")
    if maps.shape[1] == 0 or maps.shape[2] == 0:
        raise ShapeError(f"{fn}: maps {tuple(maps.shape)} have no pixels (H = 0 or W = 0)")
    if masks.dtype != torch.bool:
        if masks.is_floating_point() or masks.dtype in (torch.int8, torch.int16, torch.int32, torch.int64,
                                                         torch.uint8):
            if not bool(((masks == 0) | (masks == 1)).all()):
                raise DTypeError(f"{fn}: masks must be boolean (or 0/1), got {masks.dtype} with other values")
            masks = masks.bool()
        else:
            raise DTypeError(f"{fn}: masks must be boolean, got {masks.dtype}")
    if not maps.is_floating_point():
        if maps.dtype == torch.bool or maps.is_complex():
            raise DTypeError(f"{fn}: maps must be real numbers, got {maps.dtype}")
        maps = maps.double()
    if maps.device.type == "cpu" and maps.dtype in (torch.float16, torch.float32, torch.float64):
        finite = bool(np.isfinite(maps.detach().numpy()).all()) if maps.numel() else True
    else:
        finite = bool(torch.isfinite(maps).all())
    if not finite:
        bad = ~torch.isfinite(maps).reshape(len(maps), maps.shape[1] * maps.shape[2]).all(1)
        idx = torch.nonzero(bad).reshape(-1)[:5].tolist()
        raise NonFiniteError(f"{fn}: maps {tuple(maps.shape)} contain NaN or infinite values (examples {idx})")
    return maps, masks


def chunks(n: int, size: int):
    """Slices covering ``range(n)`` in pieces of ``size``."""
    size = max(1, int(size))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def first_argmax(flat: torch.Tensor) -> torch.Tensor:
    """Index of the first maximum of each row (numpy's and torch's documented tie rule)."""
    if flat.device.type == "cpu":
        if flat.dtype in (torch.float16, torch.bfloat16):   # numpy has no bfloat16; float32 holds both exactly
            flat = flat.float()
        return torch.from_numpy(np.argmax(flat.detach().numpy(), axis=1))
    return flat.argmax(1)
