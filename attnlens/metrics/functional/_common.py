"""Input checks and NaN reasons shared by the functional metrics.

Every metric returns per-example values with NaN where the metric is undefined. The private
``_*_update`` functions also return an integer *reason code* per example (0 = defined) so that
summaries can count why examples were excluded; :data:`REASONS` names the codes.
"""
from __future__ import annotations

import numpy as np
import torch

from ...errors import DTypeError, NonFiniteError, ShapeError

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
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as exc:
        raise DTypeError(f"{what} must be a tensor or array, got {type(x).__name__}") from exc


def check_maps(maps, masks, fn: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``maps`` ``[N, H, W]`` (float) and ``masks`` ``[N, H, W]`` (bool)."""
    maps = as_tensor(maps, f"{fn}: maps")
    masks = as_tensor(masks, f"{fn}: masks")
    if maps.ndim != 3:
        raise ShapeError(f"{fn}: maps must be [N, H, W], got shape {tuple(maps.shape)}")
    if masks.shape != maps.shape:
        raise ShapeError(f"{fn}: maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must have the same "
                         f"shape [N, H, W]")
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
        bad = ~torch.isfinite(maps).reshape(len(maps), -1).all(1)
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
        return torch.from_numpy(np.argmax(flat.detach().numpy(), axis=1))
    return flat.argmax(1)
