"""Watch calls of chosen modules without putting hooks on them.

``nn.TransformerEncoderLayer`` only takes its fused fast path (eval + no grad) when neither it
nor any of its submodules has a forward hook: a per-module hook on ``layer.self_attn`` would
silently switch the layer to its slower path and change its output in the last bits. To record
such a module without changing what it computes, :func:`watch` registers callbacks in a
process-wide table served by one pair of torch's *global* module hooks (installed while at least
one callback is registered, removed with the last one).

Each callback belongs to the thread that registered it and is called only for calls that thread
makes; calls from other threads (and of unwatched modules) pass through. ``pre(module, args)``
runs before ``forward`` (the global pre-hook sees positional arguments only);
``post(module, args, kwargs, output, failed)`` runs after it, also when it raised
(``failed=True``, ``kwargs={}``, ``output=None``). A ``post`` that returns something other than
``None`` replaces the output (for that thread's call only; later callbacks see the replacement);
inputs are never changed.

>>> from torch import nn
>>> lin, seen = nn.Linear(2, 2), []
>>> handle = watch(lin, post=lambda m, a, k, out, failed: seen.append(tuple(out.shape)))
>>> _ = lin(torch.zeros(3, 2)); handle.remove(); _ = lin(torch.zeros(1, 2))
>>> seen, installed()
([(3, 2)], False)
"""
from __future__ import annotations

import threading
from typing import Callable

import torch  # noqa: F401  (the doctest uses it)
from torch import nn
from torch.nn.modules import module as torch_module

_lock = threading.Lock()
_table: dict[int, tuple["_Watch", ...]] = {}
_handles: list = []


class _Watch:
    __slots__ = ("module", "thread", "pre", "post")

    def __init__(self, module, thread, pre, post):
        self.module, self.thread, self.pre, self.post = module, thread, pre, post

    def remove(self) -> None:
        """Unregister (idempotent); the global hooks go with the last callback."""
        with _lock:
            key = id(self.module)
            rest = tuple(w for w in _table.get(key, ()) if w is not self)
            if rest:
                _table[key] = rest
            else:
                _table.pop(key, None)
            if not _table:
                handles, _handles[:] = list(_handles), []
                for h in handles:
                    h.remove()


def _pre(module, args):
    watches = _table.get(id(module))
    if watches:
        me = threading.get_ident()
        for w in watches:
            if w.thread == me and w.module is module and w.pre is not None:
                w.pre(module, args)
    return None


def _post(module, args, *rest):
    watches = _table.get(id(module))
    if watches:
        me = threading.get_ident()
        failed = len(rest) != 2  # torch calls always_call hooks as (module, args, result) after an error
        kwargs, output = ({}, None) if failed else rest
        replaced = None
        for w in reversed(watches):
            if w.thread == me and w.module is module and w.post is not None:
                new = w.post(module, args, kwargs, output, failed)
                if new is not None and not failed:
                    output = replaced = new
        return replaced
    return None


def watch(module: nn.Module, *, pre: Callable | None = None, post: Callable | None = None) -> _Watch:
    """Call ``pre`` / ``post`` around every call of ``module`` made by the calling thread.

    Returns:
        A handle whose ``remove()`` unregisters the callbacks.
    """
    w = _Watch(module, threading.get_ident(), pre, post)
    with _lock:
        if not _handles:
            _handles.append(torch_module.register_module_forward_pre_hook(_pre))
            _handles.append(torch_module.register_module_forward_hook(_post, with_kwargs=True, always_call=True))
        _table[id(module)] = (*_table.get(id(module), ()), w)
    return w


def installed() -> bool:
    """Whether the global hooks are installed (some callback is registered)."""
    return bool(_handles)


__all__ = ["installed", "watch"]
