"""Chosen attention rows next to the fused kernel: no ``T x T`` matrix is ever formed.

Switching a model to eager attention to see its weights materialises every layer's full
``[batch, head, T, T]`` softmax (and its temporaries) during the forward, even when only a few
query rows are wanted (the text rows of a decoder-only vision-language model: tens of rows
against hundreds of image tokens). The **rows** attention implementation instead

* computes the layer's output with transformers' own SDPA function, on the same inputs and
  mask as the plain fused forward (so the model's outputs are those of the plain forward), and
* recomputes the softmax weights of the chosen query rows only, from the call's own query and
  key states and mask, as eager attention does (``softmax(q k^T * scaling + mask)`` in float32,
  grouped-query keys repeated), and returns them ``[batch, head, rows, key]`` as the module's
  weights.

The rows are chosen per attention module by a *plan* ``(query_length, key_length) ->
[batch, rows]`` index tensor (or ``None``: no weights for this call), installed by
:func:`use_rows` for the capture and removed with it. The implementation is registered once
under the name ``"attnlens_rows"`` in transformers' attention and mask registries (with
transformers' SDPA mask function), and selected by setting a config's
``_attn_implementation_internal`` for the capture only, restored on exit. Weights are those
of eval mode (attention dropout, which SDPA applies internally, is not reflected in them).
"""
from __future__ import annotations

import sys
from typing import Callable

import torch
from torch import nn

from ...errors import CaptureError, MissingDependencyError
from .generic import _Undo

NAME = "attnlens_rows"
Plan = Callable[[int, int], "torch.Tensor | None"]
_PLANS: dict[int, Plan] = {}


def rows_weights(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor,
                 scaling: float, is_causal: bool) -> torch.Tensor:
    """Eager softmax weights ``[batch, head, rows, key]`` of the query ``rows`` (``[batch, n]``).

    ``query`` is ``[batch, head, Q, d]``; ``key`` ``[batch, head, K, d]`` (heads already
    repeated); ``mask`` boolean (True = attend) or additive, broadcastable to
    ``[batch, head, Q, K]``, or ``None`` with ``is_causal`` (SDPA's top-left causal rule).

    >>> q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    >>> full = torch.softmax((q @ k.transpose(-1, -2)) * 0.5, dim=-1)
    >>> torch.allclose(rows_weights(q, k, None, torch.tensor([[0, 2]]), 0.5, False), full[:, :, [0, 2]])
    True
    """
    b, h, _, d = query.shape
    kl = key.shape[2]
    idx = rows.to(query.device)
    q = query.gather(2, idx[:, None, :, None].expand(b, h, idx.shape[1], d))
    scores = torch.matmul(q, key.transpose(2, 3)) * scaling
    if mask is not None:
        m = mask.expand(b, mask.shape[1], mask.shape[2], kl)
        m = m.gather(2, idx[:, None, :, None].expand(b, m.shape[1], idx.shape[1], kl))
        if m.dtype == torch.bool:  # as transformers' eager mask: 0 where allowed, the dtype's min elsewhere
            m = torch.where(m, 0.0, torch.finfo(scores.dtype).min).to(scores.dtype)
        scores = scores + m
    elif is_causal:
        allowed = torch.arange(kl, device=query.device)[None, None, None, :] <= idx[:, None, :, None]
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)


def _forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                    is_causal=is_causal, **kwargs)
    plan = _PLANS.get(id(module))
    rows = None if plan is None else plan(query.shape[2], key.shape[2])
    if rows is None:
        return out, None
    if kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None:
        raise CaptureError(f"{type(module).__name__}: the rows attention handles no position_bias/softcap; "
                           "capture this model with method='eager'")
    groups = getattr(module, "num_key_value_groups", 1)
    key = repeat_kv(key, groups) if groups > 1 else key
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(query.shape[2] > 1 and attention_mask is None and causal)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return out, rows_weights(query, key, attention_mask, rows, scale, causal)


def _register() -> None:
    """Register ``"attnlens_rows"`` with transformers (once; a new name, nothing else changes)."""
    if "transformers" not in sys.modules:
        raise MissingDependencyError("the rows attention needs transformers (pip install transformers)")
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, _forward)
    if NAME not in AttentionMaskInterface._global_mapping:
        AttentionMaskInterface.register(NAME, sdpa_mask)


def use_rows(config_owner: nn.Module, plans: dict[nn.Module, Plan]) -> list:
    """Switch ``config_owner``'s config to the rows attention and install ``plans``; returns undo handles.

    Only configs running SDPA are switched (the caller checks); every plan and the config's
    implementation are restored by the handles' ``remove()``.
    """
    _register()
    cfg = config_owner.config
    old = cfg._attn_implementation_internal
    cfg._attn_implementation_internal = NAME
    ids = [id(m) for m in plans]
    for m, plan in plans.items():
        _PLANS[id(m)] = plan

    def undo():
        cfg._attn_implementation_internal = old
        for i in ids:
            _PLANS.pop(i, None)

    return [_Undo(undo)]
