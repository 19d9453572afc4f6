"""Capture ``F.scaled_dot_product_attention`` (SDPA) calls made inside any module.

Fused attention (``F.scaled_dot_product_attention``: timm, open_clip, most research code) never
materialises its weights. An SDPA site is a module path; the capture records every SDPA call
made by the forward of that module itself (not by its submodules: a call is attributed to the
**innermost** module of the model whose forward is running, found from the Python call stack),
with the weights the call's own arguments imply::

    scores  = q @ k^T * scale + bias        scale = 1 / sqrt(q.size(-1)) unless ``scale=`` is given
    bias    = -inf where a bool ``attn_mask`` is False (True = attend), the float ``attn_mask``
              itself otherwise, and -inf above the diagonal for ``is_causal`` (top-left aligned)
    weights = softmax(scores, -1)           rows whose keys are all masked are 0 (as SDPA returns 0)

With ``enable_gqa`` the key heads are repeated (``repeat_interleave``) to the query heads, so a
map always has one row block per query head. ``dropout_p`` is ignored: the weights are those
before dropout. Maps have dims ``("batch", "head", "query", "key")`` for 4-D calls
(``default_dims`` for other ranks), ``meta["method"] = "sdpa"`` and modality ``"unknown"``
unless the site was made with :func:`sdpa_site` and the modalities given.

**How the call is intercepted.** While a watched module's forward runs, the capturing thread
has a ``torch.overrides.TorchFunctionMode`` on its stack. Modes are thread-local and see the call
however the function was imported (``from torch.nn.functional import
scaled_dot_product_attention as sdpa`` included); nothing is patched, so
``F.scaled_dot_product_attention`` stays the original object, and the mode is pushed and popped
around each watched call (:mod:`attnlens.capture.dispatch`; also popped on exit if an error
escaped). Other threads and modules are never intercepted. The innermost module is read from
the Python frames of the call (the nearest ``Module.__call__`` or ``forward`` frame whose
``self`` belongs to the model) only when an SDPA call arrives, instead of keeping a module stack
with hooks on every module: such hooks would cost on every module call and switch
``nn.TransformerEncoderLayer`` off its fused fast path. A mode makes torch's fused fast
paths step aside, so an ``nn.MultiheadAttention`` *inside* a watched module runs its regular
path for the capture (its own site, :mod:`attnlens.capture.primitives`, does not need this).

**Outputs.** By default the original SDPA is called with the original arguments, so the
module's output is bitwise unchanged, and the weights are computed next to it without
gradient. With ``capture(..., grad=True)`` the call's output is computed from the recorded
weights, ``softmax(scores) @ v`` (dropout applied to the weights when ``dropout_p > 0``), so the
weights are in the autograd graph; that output equals the fused kernel's up to float rounding
(float32: about 1e-6 relative).

Which modules are found with no site named: those whose class (or a plain function it calls,
two levels deep) mentions ``scaled_dot_product_attention`` in its code. Name any other module by
its path.
"""
from __future__ import annotations

import math
import sys
import types
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import CaptureError, ShapeError
from ..models.attention import ProbeRecord
from . import dispatch
from .sites import Emit, Tap

SDPA = F.scaled_dot_product_attention
_CALL_IMPL = nn.Module._call_impl.__code__
_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}


def sdpa_scores(query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
    """Masked, scaled scores ``[..., head, query, key]`` of an SDPA call (``-inf`` = masked)."""
    if is_causal and attn_mask is not None:
        raise ShapeError("scaled_dot_product_attention: attn_mask must be None when is_causal=True")
    L, S = query.size(-2), key.size(-2)
    if enable_gqa and query.dim() >= 3 and key.size(-3) != query.size(-3):
        hq, hk = query.size(-3), key.size(-3)
        if hq % hk:
            raise ShapeError(f"enable_gqa needs query heads ({hq}) to be a multiple of key heads ({hk})")
        key = key.repeat_interleave(hq // hk, dim=-3)
    work = torch.promote_types(query.dtype, torch.float32)
    factor = 1.0 / math.sqrt(query.size(-1)) if scale is None else float(scale)
    scores = torch.matmul(query.to(work), key.to(work).transpose(-2, -1)) * factor
    if is_causal:
        keep = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.to(work)
    return scores


def safe_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis with all-masked (all ``-inf``) rows set to 0 (gradient-safe)."""
    dead = torch.isneginf(scores).all(dim=-1, keepdim=True)
    return torch.softmax(scores.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)


def sdpa_weights(query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None = None,
                 is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
    """The attention weights ``[..., head, query, key]`` an SDPA call with these arguments uses.

    Computed in float32 (or wider) and returned in ``query``'s dtype; see the module docstring
    for the mask conventions.

    >>> q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    >>> sdpa_weights(q, q, is_causal=True, scale=0.0)
    tensor([[[1.0000, 0.0000],
             [0.5000, 0.5000]]])
    """
    return safe_softmax(sdpa_scores(query, key, attn_mask, is_causal, scale, enable_gqa)).to(query.dtype)


def bind_sdpa(args, kwargs) -> dict:
    """The arguments of one SDPA call by name, defaults filled in."""
    if len(args) > len(_PARAMS):
        raise CaptureError(f"scaled_dot_product_attention got {len(args)} positional arguments")
    bound = dict(_DEFAULTS)
    bound.update(zip(_PARAMS, args))
    bound.update(kwargs)
    return bound


def explicit_sdpa(a: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(output, weights)`` of an SDPA call (arguments from :func:`bind_sdpa`) computed as
    ``softmax(scores) @ v``, so that ``weights`` is in the autograd graph of ``output``; dropout
    (``dropout_p > 0``) is applied to the weights used, not to the returned ``weights``."""
    q, v = a["query"], a["value"]
    weights = safe_softmax(sdpa_scores(q, a["key"], a["attn_mask"], a["is_causal"], a["scale"],
                                       a["enable_gqa"])).to(q.dtype)
    used = F.dropout(weights, float(a["dropout_p"])) if a["dropout_p"] else weights
    if a["enable_gqa"] and v.dim() >= 3 and v.size(-3) != q.size(-3):
        v = v.repeat_interleave(q.size(-3) // v.size(-3), dim=-3)
    return torch.matmul(used.to(v.dtype), v), weights


# --------------------------------------------------------------------------- static discovery
def _mentions_sdpa(code: types.CodeType, globals_: dict, depth: int, seen: set) -> bool:
    if id(code) in seen:
        return False
    seen.add(id(code))
    for name in code.co_names:
        if name == "scaled_dot_product_attention" or globals_.get(name) is SDPA:
            return True
        target = globals_.get(name)
        if depth > 0 and isinstance(target, types.FunctionType) and \
                not (target.__module__ or "").startswith("torch"):
            if _mentions_sdpa(target.__code__, target.__globals__, depth - 1, seen):
                return True
    return any(isinstance(c, types.CodeType) and _mentions_sdpa(c, globals_, depth, seen) for c in code.co_consts)


_SCAN: dict[type, bool] = {}


def calls_sdpa(cls: type) -> bool:
    """Whether the code of ``cls`` (its methods, and plain functions they call two levels deep)
    mentions ``scaled_dot_product_attention``. torch's own modules are not scanned."""
    if cls not in _SCAN:
        found = False
        for klass in cls.__mro__:
            if (klass.__module__ or "").startswith("torch.") or klass is object:
                continue
            for attr in vars(klass).values():
                fn = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
                if isinstance(fn, types.FunctionType) and _mentions_sdpa(fn.__code__, fn.__globals__, 2, set()):
                    found = True
                    break
            if found:
                break
        _SCAN[cls] = found
    return _SCAN[cls]


def site_name(model: nn.Module, path: str) -> str:
    """The site name of the module at ``path`` (the model's class name for the model itself)."""
    return path or type(model).__name__


# --------------------------------------------------------------------------- the tap
class _Mode(TorchFunctionMode):
    def __init__(self, handler: Callable):
        super().__init__()
        self.handler = handler

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is SDPA:
            return self.handler(args, kwargs)
        return func(*args, **kwargs)


class ScopedMode:
    """A TorchFunctionMode sending SDPA calls to ``handler(args, kwargs)``, pushed by
    :meth:`enter` and popped by the matching :meth:`exit` (re-entrant: pushed once however deep).

    torch pops a mode while the mode handles a call, so SDPA calls made *inside* another torch
    function with its own override check (``F.multi_head_attention_forward``) are not seen; an
    ``nn.MultiheadAttention`` has its own site (:mod:`attnlens.capture.primitives`).

    Its ``remove()`` (a hook-handle-like method, for the capture's ``finally``) pops the mode if
    an error skipped the ``exit`` (``KeyboardInterrupt`` skips torch's always-call hooks).
    """

    def __init__(self, handler: Callable):
        self.mode, self.depth = _Mode(handler), 0

    def enter(self) -> None:
        if self.depth == 0:
            self.mode.__enter__()
        self.depth += 1

    def exit(self) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.mode.__exit__(None, None, None)

    def remove(self) -> None:
        from torch.overrides import _get_current_function_mode

        if self.depth > 0 and _get_current_function_mode() is self.mode:
            self.mode.__exit__(None, None, None)
        self.depth = 0


class SdpaTap(Tap):
    """The SDPA calls made by the forwards of some modules of a model, one site per module.

    Args:
        model: the model (to attribute a call to the innermost module running).
        paths: module paths (``""`` or the model's class name for the model itself).
        meta: recorded with each map (``query_modality``, ``key_modality``, ``direction`` ...).
    """

    silent_hint = ("A module-path site records the F.scaled_dot_product_attention calls made by that module's "
                   "own forward; calls made inside its submodules are recorded under the submodule's path "
                   "(name the module that makes the call).")

    def __init__(self, model: nn.Module, paths, meta=None):
        modules = dict(model.named_modules())
        chosen = {}
        for p in paths:
            p = "" if p == type(model).__name__ and p not in modules else p
            if p not in modules:
                raise CaptureError(f"{type(model).__name__} has no module {p!r}")
            chosen[site_name(model, p)] = modules[p]
        super().__init__(list(chosen), chosen)
        self.model = model
        self.meta = {"query_modality": "unknown", "key_modality": "unknown", **dict(meta or {})}

    def attach(self, emit: Emit, wanted: frozenset[str]) -> list:
        grad = bool(getattr(emit, "grad", False))
        everyone = {id(m): site_name(self.model, p) for p, m in self.model.named_modules()}
        names = {n for n in self.modules if n in wanted}

        def innermost() -> str | None:
            frame = sys._getframe(2)
            while frame is not None:
                code = frame.f_code
                if code is _CALL_IMPL or code.co_name == "forward":
                    name = everyone.get(id(frame.f_locals.get("self")))
                    if name is not None:
                        return name
                frame = frame.f_back
            return None

        def handler(args, kwargs):
            site = innermost()
            if site is None or site not in names:
                return SDPA(*args, **kwargs)
            a = bind_sdpa(args, kwargs)
            meta = {"method": "sdpa", "alignment": "scaled_dot", **self.meta,
                    "is_causal": bool(a["is_causal"]), "enable_gqa": bool(a["enable_gqa"]),
                    "masked": a["attn_mask"] is not None}
            if grad:
                out, weights = explicit_sdpa(a)
                if torch._C._len_torch_function_stack() > 0:  # an outer (nested) capture sees the call too
                    SDPA(*args, **kwargs)
            else:
                out = SDPA(*args, **kwargs)
                with torch.no_grad():
                    weights = sdpa_weights(a["query"], a["key"], a["attn_mask"], a["is_causal"], a["scale"],
                                           a["enable_gqa"])
            from .adapters.generic import default_dims

            emit(site, ProbeRecord(weights, None, default_dims(weights.dim()), meta=meta))
            return out

        mode = ScopedMode(handler)
        handles = [mode]
        try:
            for n, m in self.modules.items():
                if n in wanted:
                    handles.append(dispatch.watch(m, pre=lambda module, args: mode.enter(),
                                                  post=lambda module, args, kwargs, output, failed: mode.exit()))
        except BaseException:
            for h in handles:
                h.remove()
            raise
        return handles[1:] + handles[:1]


def sdpa_site(model: nn.Module, module_path: str, *, direction: str | None = None,
              query_modality: str = "unknown", key_modality: str = "unknown", **meta) -> Tap:
    """A capture site recording the ``F.scaled_dot_product_attention`` calls of one module.

    Args:
        model: the model.
        module_path: path of the module whose forward calls SDPA (``""`` = the model).
        direction, query_modality, key_modality, meta: recorded with each map.

    >>> import attnlens
    >>> class Attn(nn.Module):
    ...     def forward(self, q, k, v):
    ...         return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    >>> net = nn.Sequential(Attn())
    >>> with attnlens.capture(net, sdpa_site(net, "0", query_modality="text", key_modality="text")) as rec:
    ...     _ = net[0](*torch.randn(3, 1, 2, 4, 8))
    >>> rec.maps[0].dims, rec.maps[0].query.modality, float(rec.maps[0].weights[0, 0, 0, 1])
    (('batch', 'head', 'query', 'key'), 'text', 0.0)
    """
    return SdpaTap(model, [module_path], {"direction": direction, "query_modality": query_modality,
                                          "key_modality": key_modality, **meta})


def sdpa_paths(model: nn.Module, exclude=frozenset()) -> list[str]:
    """Paths of the modules of ``model`` whose code calls SDPA (not ``nn.MultiheadAttention``, not
    torch's own modules, not the ids in ``exclude``)."""
    from .primitives import mha_like

    return [p for p, m in model.named_modules()
            if id(m) not in exclude and not mha_like(type(m)) and calls_sdpa(type(m))]


__all__ = ["SDPA", "ScopedMode", "SdpaTap", "bind_sdpa", "calls_sdpa", "explicit_sdpa", "safe_softmax",
           "sdpa_paths", "sdpa_scores", "sdpa_site", "sdpa_weights"]
