"""Generic capture: record the output of any module, and the hook helper the adapters share.

:func:`softmax_outputs` records what a chosen module returns: an ``nn.Softmax``, the dropout
after a softmax, or any attention module returning its weights. :func:`hook_returned_weights`
makes a transformers-style attention module return its weights for the capture (by setting its
``output_attentions`` argument) and strips them again when the caller did not ask for them, so
the model's outputs are unchanged; the maps carry ``meta["method"] = "returned"``.

Every hook here acts only on the calls of the thread that opened the capture
(:func:`~attnlens.capture.sites.this_thread`): another thread running the model meanwhile gets
no forced flag and nothing stripped, and is not recorded.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ...errors import CaptureError
from ...models.attention import ProbeRecord
from ..sites import Emit, Tap, this_thread


def module_at(model: nn.Module, path: str) -> nn.Module:
    """The submodule of ``model`` at ``path`` (``""`` = the model), or a CaptureError with close names."""
    modules = dict(model.named_modules())
    if path not in modules:
        import difflib

        close = difflib.get_close_matches(path, [p for p in modules if p], n=5, cutoff=0.3)
        hint = f" Close matches: {', '.join(map(repr, close))}." if close else ""
        raise CaptureError(f"{type(model).__name__} has no module {path!r}.{hint}")
    return modules[path]


def default_dims(ndim: int) -> tuple[str, ...]:
    """Axis names for an attention tensor of rank ``ndim``: ``(..., "query", "key")``.

    >>> default_dims(4), default_dims(2)
    (('batch', 'head', 'query', 'key'), ('query', 'key'))
    """
    if ndim < 2:
        raise CaptureError(f"an attention output needs >= 2 axes (query, key), got {ndim}")
    lead = {0: (), 1: ("batch",), 2: ("batch", "head")}.get(ndim - 2)
    if lead is None:
        lead = tuple(f"axis{i}" for i in range(ndim - 2))
    return (*lead, "query", "key")


class OutputTap(Tap):
    """Records the output (or ``output[index]``) of one module as attention weights."""

    def __init__(self, name: str, module: nn.Module, *, dims=None, index: int | None = None, meta=None):
        super().__init__([name], module)
        self.dims, self.index, self.meta = dims, index, dict(meta or {})

    def attach(self, emit: Emit, wanted: frozenset[str]) -> list:
        (name,) = self.names

        @this_thread
        def hook(module, args, output):
            out = output
            if isinstance(out, (tuple, list)):
                if self.index is None:
                    out = next((o for o in out if isinstance(o, torch.Tensor)), None)
                else:
                    out = out[self.index]
            if not isinstance(out, torch.Tensor):
                raise CaptureError(f"module {name!r} returned {type(output).__name__} with no tensor to record; "
                                   "pass index= to pick the attention weights")
            dims = tuple(self.dims) if self.dims is not None else default_dims(out.ndim)
            if len(dims) != out.ndim:
                raise CaptureError(f"dims {dims} name {len(dims)} axes but module {name!r} returned shape "
                                   f"{tuple(out.shape)}")
            emit(name, ProbeRecord(out, None, dims, meta={"method": "output", **self.meta}))

        return [self.module.register_forward_hook(hook)]


def softmax_outputs(model: nn.Module, module_path: str, *, dims=None, index: int | None = None,
                    direction: str | None = None, query_modality: str = "text", key_modality: str = "image",
                    **meta) -> Tap:
    """A capture site recording the output of the module at ``module_path``.

    Args:
        model: the model.
        module_path: dotted path of the module (e.g. an ``nn.Softmax``, or the dropout after it).
        dims: axis names of the output (default ``("batch", "head", "query", "key")`` cut to rank).
        index: which element to record when the module returns a tuple (default: first tensor).
        direction, query_modality, key_modality, meta: recorded with each map.

    Returns:
        A :class:`~attnlens.capture.sites.Tap` to pass as ``sites=`` to ``attnlens.capture``.

    >>> import attnlens
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=-1))
    >>> with attnlens.capture(net, softmax_outputs(net, "1")) as rec:
    ...     _ = net(torch.randn(3, 4))
    >>> rec.maps[0].dims, rec.maps[0].meta["method"]
    (('query', 'key'), 'output')
    """
    module = module_at(model, module_path)
    return OutputTap(module_path or type(model).__name__, module, dims=dims, index=index,
                     meta={"direction": direction, "query_modality": query_modality,
                           "key_modality": key_modality, **meta})


def hook_returned_weights(module: nn.Module, callback: Callable, *, flag: str = "output_attentions",
                          position: int | None = None, index: int = 1, force: bool = True) -> list:
    """Hooks that make ``module`` return its attention weights and hand them to ``callback``.

    ``callback(args, kwargs, weights)`` gets the call's arguments and ``output[index]``. With
    ``force`` the ``flag`` argument (keyword, or positional at ``position`` when passed so) is
    set to True for the call; if the caller had not asked for the weights they are removed from
    the output again, so the model sees exactly what it would have without the capture. Only
    the calls of the thread calling this function (the one opening the capture) are touched.

    Returns:
        The two hook handles.
    """
    requested: list[bool] = []

    @this_thread
    def pre(mod, args, kwargs):
        if not force:
            return None
        if position is not None and len(args) > position:
            requested.append(bool(args[position]))
            args = (*args[:position], True, *args[position + 1:])
        else:
            requested.append(bool(kwargs.get(flag, False)))
            kwargs = {**kwargs, flag: True}
        return args, kwargs

    @this_thread
    def post(mod, args, kwargs, output):
        was = requested.pop() if force else True
        callback(args, kwargs, output[index])
        if not was:
            return (*output[:index], *output[index + 1:])
        return None

    # pre-hooks run first-registered first and post-hooks (prepended) last-registered first, so
    # nested captures of one model strip the weights in the right order
    return [module.register_forward_pre_hook(pre, with_kwargs=True),
            module.register_forward_hook(post, with_kwargs=True, prepend=True)]


class _Undo:
    """A hook-handle-like object whose ``remove()`` runs an undo action once."""

    def __init__(self, undo: Callable[[], None]):
        self._undo = undo

    def remove(self) -> None:
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()


def eager_switch(module: nn.Module) -> tuple[_Undo, bool]:
    """Switch every transformers config used inside ``module`` to eager attention.

    Fused kernels (SDPA, flash) never materialise the weights; eager attention does. Returns a
    handle whose ``remove()`` restores each config's own implementation, and whether anything
    was switched. Sub-configs are switched and restored one by one (no propagation).
    """
    configs: dict[int, tuple] = {}
    for m in module.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation_internal") and id(cfg) not in configs:
            configs[id(cfg)] = (cfg, cfg._attn_implementation_internal)
    switched = [(cfg, old) for cfg, old in configs.values() if old not in (None, "eager")]
    for cfg, _ in switched:
        cfg._attn_implementation_internal = "eager"

    def undo():
        for cfg, old in switched:
            cfg._attn_implementation_internal = old

    return _Undo(undo), bool(switched)


class AttentionOutputTap(Tap):
    """Records ``output[index]`` of a transformers attention module, switching it to eager
    attention for the capture when it uses a fused kernel (``meta["method"]`` says which)."""

    def __init__(self, name: str, module: nn.Module, *, index: int = 1, dims=None, meta=None):
        super().__init__([name], module)
        self.index, self.dims, self.meta = index, dims, dict(meta or {})

    def attach(self, emit: Emit, wanted: frozenset[str]) -> list:
        (name,) = self.names
        undo, switched = eager_switch(self.module)
        method = "eager-switch" if switched else "returned"

        @this_thread
        def hook(module, args, output):
            weights = output[self.index] if isinstance(output, (tuple, list)) else None
            if not isinstance(weights, torch.Tensor):
                raise CaptureError(f"module {name!r} returned no attention weights at index {self.index} "
                                   f"(got {type(weights).__name__}) even with eager attention")
            dims = tuple(self.dims) if self.dims is not None else default_dims(weights.ndim)
            if len(dims) != weights.ndim:
                raise CaptureError(f"dims {dims} name {len(dims)} axes but module {name!r} returned weights of "
                                   f"shape {tuple(weights.shape)}")
            emit(name, ProbeRecord(weights, None, dims, meta={"method": method, **self.meta}))

        try:
            handle = self.module.register_forward_hook(hook)
        except BaseException:
            undo.remove()
            raise
        return [handle, undo]


def attention_outputs(model: nn.Module, module_path: str, *, index: int = 1, dims=None,
                      direction: str | None = None, query_modality: str = "text", key_modality: str = "text",
                      **meta) -> Tap:
    """A capture site for a transformers attention module that returns ``(output, weights)``.

    While the capture is active the module's configs are switched to eager attention if they
    use a fused kernel (``meta["method"] = "eager-switch"``; otherwise ``"returned"``), and
    restored on exit. Eager and fused attention agree up to float rounding, so the model's
    outputs may differ in the last bits during such a capture.

    Args:
        model: the model.
        module_path: path of the attention module (e.g. ``"encoder.layer.0.attention.self"``).
        index: position of the weights in the module's output tuple.
        dims: axis names (default ``("batch", "head", "query", "key")``).
        direction, query_modality, key_modality, meta: recorded with each map.
    """
    module = module_at(model, module_path)
    return AttentionOutputTap(module_path, module, index=index, dims=dims,
                              meta={"direction": direction, "query_modality": query_modality,
                                    "key_modality": key_modality, **meta})
