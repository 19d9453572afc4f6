"""Shared pieces of the transformers family adapters (transformers is never imported here).

* :func:`is_hf` -- class-name detection of a transformers module;
* :func:`attention_modules` -- the outermost attention modules under a module, in order;
* :func:`vision_grid` -- ``(rows, cols)`` and the image transform from a vision config;
* :func:`positions` -- the position meta of an emitted block (see :mod:`attnlens.capture.adapters`);
* :class:`WeightsTap` -- one tap over the attention modules of one model: switches their
  configs to eager attention for the capture (restored on exit), reads the weights the
  modules return as ``output[1]`` and hands them to a slicing callback that emits blocks;
* :func:`find_fallback` -- any transformers model whose attention modules return weights.

Modern transformers attention modules always return ``(output, weights)``; ``weights`` is the
softmax under eager attention and ``None`` under SDPA/flash, and the layers drop it unless
``output_attentions`` was asked for. Switching ``config._attn_implementation_internal`` to
``"eager"`` (per config, no propagation) is therefore enough for the weights to appear; the
attention masks built by the model follow the same config.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ...errors import CaptureError
from ...models.attention import ProbeRecord
from ..sites import Emit, Tap, layer_from_path
from .generic import eager_switch

_PREFIX = "transformers.models."


def is_hf(module: nn.Module, *names: str) -> bool:
    """Whether ``module``'s class is one of the transformers classes ``names``.

    >>> is_hf(nn.Linear(1, 1), "Linear")
    False
    """
    t = type(module)
    return t.__module__.startswith(_PREFIX) and (not names or t.__name__ in names)


def attention_modules(root: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """``{path: module}`` of the outermost transformers ``*Attention`` modules under ``root``.

    Only modules that hold a transformers ``config`` (the ones whose forward returns
    ``(output, weights)``) are kept; a module nested inside a kept one is skipped. T5-style
    attention (``has_relative_attention_bias``) returns ``(output, position_bias, ...)`` instead
    and is not found.
    """
    found: dict[str, nn.Module] = {}
    for path, m in root.named_modules():
        name = type(m).__name__
        if not (is_hf(m) and name.endswith("Attention") and hasattr(getattr(m, "config", None),
                                                                     "_attn_implementation_internal")):
            continue
        if hasattr(m, "has_relative_attention_bias"):
            continue
        if any(path.startswith(p + ".") for p in found):
            continue
        found[path] = m
    return {(f"{prefix}.{p}" if prefix and p else prefix or p): m for p, m in found.items()}


def vision_grid(vision_config, drop: int = 0) -> tuple[tuple[int, int] | None, dict | None]:
    """``(rows, cols)`` of the patch grid and the processor's ``{"resize": (h, w)}`` from a vision config.

    >>> class C: image_size, patch_size = 32, 8
    >>> vision_grid(C())
    ((4, 4), {'resize': (32, 32)})
    """
    try:  # some configs raise their own errors for absent attributes
        size, patch = getattr(vision_config, "image_size", None), getattr(vision_config, "patch_size", None)
    except Exception:
        return None, None
    if size is None or patch is None:
        return None, None
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return (h // ph, w // pw), {"resize": (int(h), int(w))}


def positions(idx: torch.Tensor) -> list:
    """Position meta of a block: ``idx`` is ``[batch, n]`` (positions in the layer's sequence).

    One list of ints when every batch element has the same positions, else one list per element.

    >>> positions(torch.tensor([[3, 4], [3, 4]])), positions(torch.tensor([[0, 1], [1, 2]]))
    ([3, 4], [[0, 1], [1, 2]])
    """
    rows = idx.tolist()
    return rows[0] if all(r == rows[0] for r in rows) else rows


def take(weights: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None) -> torch.Tensor:
    """``weights[b, :, rows[b]][..., cols[b]]`` for ``[batch, head, query, key]`` weights (a copy).

    ``rows`` / ``cols`` are ``[batch, n]`` position tensors (``None`` keeps the axis whole).
    Always copies, so the block never keeps the full ``query x key`` tensor alive.

    >>> w = torch.arange(16.).view(1, 1, 4, 4)
    >>> take(w, torch.tensor([[0, 1]]), torch.tensor([[2, 3]])).tolist()
    [[[[2.0, 3.0], [6.0, 7.0]]]]
    """
    b, h, q, k = weights.shape
    if rows is not None:
        r = rows.to(weights.device)[:, None, :, None].expand(b, h, rows.shape[1], k)
        weights = weights.gather(2, r)
    if cols is not None:
        c = cols.to(weights.device)[:, None, None, :].expand(b, h, weights.shape[2], cols.shape[1])
        weights = weights.gather(3, c)
    return weights if (rows is not None or cols is not None) else weights.clone()


OnWeights = Callable[[str, tuple, dict, torch.Tensor, Emit, frozenset], None]


class WeightsTap(Tap):
    """The attention modules of one model, switched to eager for the capture.

    Args:
        layers: ``{path: attention module}``.
        sites: ``{site name: path}`` for every site this tap can produce (several per path).
        on_weights: ``(path, args, kwargs, weights, emit, wanted)`` called after each module
            call with the weights it returned (``[batch, head, query, key]``).
        switch: the module whose configs are switched to eager (default: each layer's), or a
            callable ``(paths) -> list of handles`` that prepares the wanted layers its own way.
        extra_hooks: ``() -> list of handles`` installed first (e.g. to read ``input_ids``).
        index: position of the weights in the module's output.
    """

    def __init__(self, layers: dict[str, nn.Module], sites: dict[str, str], on_weights: OnWeights, *,
                 switch: nn.Module | Callable[[set], list] | None = None,
                 extra_hooks: Callable[[], list] | None = None, index: int = 1):
        modules = {name: layers[path] for name, path in sites.items()}
        super().__init__(list(sites), modules, {n: layer_from_path(p) for n, p in sites.items()})
        self.layer_modules, self.site_paths = layers, dict(sites)
        self.on_weights, self.switch, self.extra_hooks, self.index = on_weights, switch, extra_hooks, index

    def attach(self, emit: Emit, wanted: frozenset[str]) -> list:
        paths = {p for n, p in self.site_paths.items() if n in wanted}
        handles: list = []
        try:
            if callable(self.switch) and not isinstance(self.switch, nn.Module):
                handles += self.switch(paths)
            else:
                targets = [self.switch] if self.switch is not None else [self.layer_modules[p] for p in sorted(paths)]
                for t in targets:
                    handles.append(eager_switch(t)[0])
            if self.extra_hooks is not None:
                handles += self.extra_hooks()
            for path in sorted(paths):
                handles.append(self.layer_modules[path].register_forward_hook(
                    self._hook(path, emit, wanted), with_kwargs=True))
        except BaseException:
            for h in reversed(handles):
                h.remove()
            raise
        return handles

    def _hook(self, path: str, emit: Emit, wanted: frozenset[str]):
        def hook(module, args, kwargs, output):
            weights = output[self.index] if isinstance(output, (tuple, list)) and len(output) > self.index else None
            if not isinstance(weights, torch.Tensor):
                raise CaptureError(f"attention module {path!r} ({type(module).__name__}) returned no weights at "
                                   f"output[{self.index}] even with eager attention (got {type(weights).__name__})")
            if weights.ndim != 4:
                raise CaptureError(f"attention module {path!r} ({type(module).__name__}) returned output[{self.index}] "
                                   f"of shape {tuple(weights.shape)}, not [batch, head, query, key] weights")
            self.on_weights(path, args, kwargs, weights, emit, wanted)
        return hook


def method_of(module: nn.Module) -> str:
    """``"returned"`` when every transformers config in ``module`` already runs eager attention, else
    ``"eager-switch"`` (what :func:`~attnlens.capture.adapters.generic.eager_switch` will do)."""
    impls = {getattr(m.config, "_attn_implementation_internal", None) for m in module.modules()
             if hasattr(getattr(m, "config", None), "_attn_implementation_internal")}
    return "returned" if impls <= {"eager", None} else "eager-switch"


def whole(method: str, modality_q: str = "unknown", modality_k: str = "unknown", **meta) -> OnWeights:
    """An ``on_weights`` that emits each module's full weights under the site named by its path."""
    def on_weights(path, args, kwargs, weights, emit, wanted):
        if path in wanted:
            q, k = weights.shape[-2], weights.shape[-1]
            emit(path, ProbeRecord(weights, None, ("batch", "head", "query", "key"), meta={
                "method": method, "query_modality": modality_q, "key_modality": modality_k,
                "query_positions": list(range(k - q, k)), "key_positions": list(range(k)), **meta}))
    return on_weights


def find_fallback(model: nn.Module) -> list[Tap]:
    """Every transformers attention module of ``model`` returning weights, modality unknown.

    Used by :func:`attnlens.capture.adapters.find_taps` only when no family adapter knows the
    model. Sites are the module paths; maps are ``("batch", "head", "query", "key")``.
    """
    layers = attention_modules(model)
    if not layers:
        return []
    return [WeightsTap(layers, {p: p for p in layers}, whole(method_of(model)), switch=model)]
