"""BLIP image-text matching (transformers ``BlipForImageTextRetrieval`` and others with BLIP's text
encoder): text-to-patch cross attention in every text-encoder layer.

The text encoder's layers ``text_encoder.encoder.layer.{i}.crossattention.self`` attend from the
caption's tokens to the vision encoder's output: one ``[CLS]`` image token followed by the
``rows x cols`` patch tokens in row-major order. The model never returns these weights at top
level; the module returns them to its caller, and the adapter records them
(``meta["method"] = "returned"``). Maps have dims ``("batch", "head", "word", "patch")`` and
rows that sum to 1. The key side carries the patch grid (``Side.grid``, from the vision config,
or the square root of the patch count when the image size differs); by default the ``[CLS]``
key is kept at index 0 and flagged with ``meta["prefix_keys"] = 1`` (select the grid cells
with ``amap.isel(patch=slice(1, None))``). With ``drop_cls=True`` (:func:`taps`) it is removed,
so keys are exactly the grid cells, and rows sum to 1 minus the ``[CLS]`` weight.
"""
from __future__ import annotations

import math

from torch import nn

from ...models.attention import ProbeRecord
from ..sites import Emit, Tap, layer_from_path
from .generic import hook_returned_weights

_MODULE = "transformers.models.blip"
DIMS = ("batch", "head", "word", "patch")


def _is(module: nn.Module, cls: str) -> bool:
    t = type(module)
    return t.__name__ == cls and t.__module__.startswith(_MODULE)


def config_grid(model: nn.Module) -> tuple[int, int] | None:
    """``(rows, cols)`` of the patch grid from a BLIP model's vision config, or ``None``."""
    vc = getattr(getattr(model, "config", None), "vision_config", None)
    if vc is None:
        return None
    size, patch = vc.image_size, vc.patch_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return h // ph, w // pw


class BlipCrossTap(Tap):
    """The cross attention of one BLIP text-encoder layer."""

    def __init__(self, path: str, module: nn.Module, grid: tuple[int, int] | None, drop_cls: bool):
        super().__init__([path], module, {path: layer_from_path(path)})
        self.grid, self.drop_cls = grid, drop_cls

    def _grid_for(self, n_patches: int) -> tuple[int, int] | None:
        if self.grid is not None and self.grid[0] * self.grid[1] == n_patches:
            return self.grid
        side = math.isqrt(n_patches)
        return (side, side) if side * side == n_patches else None

    def attach(self, emit: Emit, wanted: frozenset[str]) -> list:
        (name,) = self.names

        def on_weights(args, kwargs, weights):
            encoder_states = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
            if encoder_states is None:  # called as self-attention (use_itm_head=False): not a cross call
                return
            n_patches = weights.shape[-1] - 1
            meta = {"method": "returned", "alignment": "scaled_dot", "direction": "t2i",
                    "query_modality": "text", "key_modality": "image", "key_grid": self._grid_for(n_patches)}
            meta["query_positions"] = list(range(weights.shape[-2]))
            meta["key_positions"] = list(range(1 if self.drop_cls else 0, weights.shape[-1]))
            if self.drop_cls:
                weights = weights[..., 1:]
                meta["dropped_prefix_keys"] = 1
            else:
                meta["prefix_keys"] = 1
                meta["cls_index"] = 0
            emit(name, ProbeRecord(weights, None, DIMS, meta=meta))

        return hook_returned_weights(self.module, on_weights, force=False)


def taps(model: nn.Module, *, drop_cls: bool = False) -> list[Tap]:
    """One :class:`BlipCrossTap` per cross-attention module of BLIP's text encoder in ``model``.

    Args:
        drop_cls: remove the ``[CLS]`` image token from the keys (keys = grid cells only).
    """
    found = [(path, m) for path, m in model.named_modules()
             if _is(m, "BlipTextSelfAttention") and path.endswith("crossattention.self")]
    if not found:  # read the config only for a BLIP model (other configs may refuse unknown attributes)
        return []
    grid = config_grid(model)
    return [BlipCrossTap(path, m, grid, drop_cls) for path, m in found]


find_taps = taps
