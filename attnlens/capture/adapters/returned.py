"""Record the weights a transformers attention module returns when asked (``output_attentions``).

Older transformers attention modules (BERT-style ``*SelfAttention`` of LXMERT, VisualBERT,
BLIP) return ``(context, weights)`` only when their ``output_attentions`` argument is true.
:func:`returned_weights` makes one such module return its weights for the capture (the flag is
set by position or keyword, as the module's signature says) and strips them from the output
again when the caller had not asked for them, so the model computes exactly what it would
without the capture (``meta["method"] = "returned"``). The recorded weights are the tensor the
module multiplies with its values (after dropout, the identity in eval mode), so with
``capture(..., grad=True)`` gradients with respect to them are the model's own.

Modules without the flag (the newer ``eager_attention_forward`` ones) fall back on
:func:`~attnlens.capture.adapters.generic.attention_outputs` (switched to eager attention).
"""
from __future__ import annotations

import inspect

from torch import nn

from ...models.attention import ProbeRecord
from ..sites import Emit, Tap
from .generic import attention_outputs, default_dims, hook_returned_weights, module_at

FLAG = "output_attentions"


def flag_position(module: nn.Module) -> int | None:
    """Position of ``output_attentions`` among ``module.forward``'s arguments, or ``None``.

    >>> class A(nn.Module):
    ...     def forward(self, hidden_states, attention_mask=None, output_attentions=False):
    ...         return (hidden_states,)
    >>> flag_position(A()), flag_position(nn.Linear(2, 2))
    (2, None)
    """
    try:
        params = [p for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return None
    names = [p.name for p in params]
    return names.index(FLAG) if FLAG in names else None


class ReturnedWeightsTap(Tap):
    """One attention module whose ``output_attentions`` argument is set for the capture."""

    def __init__(self, name: str, module: nn.Module, position: int, *, dims=None, meta=None):
        super().__init__([name], module)
        self.position, self.dims, self.meta = position, dims, dict(meta or {})

    def attach(self, emit: Emit, wanted: frozenset[str]) -> list:
        (name,) = self.names

        def on_weights(args, kwargs, weights):
            dims = tuple(self.dims) if self.dims is not None else default_dims(weights.ndim)
            emit(name, ProbeRecord(weights, None, dims, meta={"method": "returned", **self.meta}))

        return hook_returned_weights(self.module, on_weights, flag=FLAG, position=self.position)


def returned_weights(model: nn.Module, module_path: str, *, dims=None, direction: str | None = None,
                     query_modality: str = "text", key_modality: str = "text", **meta) -> Tap:
    """A capture site for the attention module at ``module_path`` of a transformers model.

    Args:
        model: the model.
        module_path: e.g. ``"encoder.layer.0.attention.self"``.
        dims: axis names (default ``("batch", "head", "query", "key")``).
        direction, query_modality, key_modality, meta: recorded with each map.

    >>> import attnlens, torch
    >>> class Att(nn.Module):
    ...     def forward(self, x, output_attentions=False):
    ...         w = torch.softmax(x @ x.transpose(-1, -2), -1)
    ...         return (w @ x, w) if output_attentions else (w @ x,)
    >>> net = nn.Sequential(Att())
    >>> with attnlens.capture(net, returned_weights(net, "0")) as rec:
    ...     out = net(torch.randn(1, 3, 2))
    >>> len(out), rec.maps[0].dims
    (1, ('batch', 'query', 'key'))
    """
    module = module_at(model, module_path)
    position = flag_position(module)
    info = {"direction": direction, "query_modality": query_modality, "key_modality": key_modality, **meta}
    if position is None:
        return attention_outputs(model, module_path, dims=dims, **info)
    return ReturnedWeightsTap(module_path, module, position, dims=dims, meta=info)
