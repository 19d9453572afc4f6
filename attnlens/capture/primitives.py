"""Capture ``nn.MultiheadAttention`` and the layers of ``nn.TransformerEncoder`` / ``Decoder``.

Every ``nn.MultiheadAttention`` (MHA) of a model is a site named by its module path
(``"encoder.layers.0.self_attn"``, ``"decoder.layers.1.multihead_attn"``; the model's class name
when the model is the MHA). Its maps are the **per-head** weights ``[batch, head, query, key]``
whatever the call asked for (``need_weights=False``, ``average_attn_weights=True``), with
``batch_first`` either way (unbatched calls get a batch axis of 1), ``key_padding_mask`` and
``attn_mask`` (bool or float, 2-D or 3-D), separate ``kdim`` / ``vdim`` projections. With
``add_bias_kv`` / ``add_zero_attn`` the keys gain the columns torch appends (the bias key, then
the zero key; ``meta["appended_keys"]`` names them), so rows still sum to 1. The weights are
before dropout unless noted (``meta["dropout"]``).

**Default mode: the output is bitwise unchanged.** The call runs as it would without the
capture (fused ``scaled_dot_product_attention`` or torch's native fast path included); afterwards
the weights are recomputed from the call's own inputs (:func:`mha_weights`: the query and key
projections, ``softmax(q k^T / sqrt(d) + masks)``, dropout off; ``meta["method"] =
"recomputed"``), or taken from the output when the caller asked for per-head weights
(``"returned"``). They equal the weights the fused kernels use up to float rounding (float32:
about 1e-6).

**The encoder layer's fast path.** In eval mode without gradients ``nn.TransformerEncoderLayer``
runs one fused kernel and never calls ``self_attn``; it also refuses that path whenever any of its
submodules has a forward hook. So these sites use no per-module hook: they watch calls through
:mod:`attnlens.capture.dispatch`, and when a layer returns without having called its
``self_attn`` the weights are recomputed from the layer's input (``norm1(src)`` when
``norm_first``) and masks (``meta["method"] = "fast-path-recomputed"``; the fast path ignores
``is_causal`` without a mask, and so does the recomputation). When ``nn.TransformerEncoder``
packs a padded batch into a nested tensor, the maps are padded back to the encoder's input
length; padded keys get weight 0 and padded queries all-zero rows.

**Grad mode** (``capture(..., grad=True)``): the weights torch returns with ``need_weights=True``
are a view made *after* they were used, so they are not upstream of the output. Instead, after
the call, its output is replaced by the same attention computed explicitly from the call's
inputs (:func:`explicit_mha`: projections, ``softmax(q k^T / sqrt(d) + masks)``, ``@ v``, output
projection); the recorded map (``meta["method"] = "explicit"``) is the tensor that output was
computed from. The caller still receives what it asked for (``None``, the per-head weights or
their head mean, from the same tensor). The output changes within float rounding (float32:
about 1e-6 relative); with dropout active in training, dropout is applied to the weights used
(a different random mask from the one the original call drew) and the map holds the weights
before dropout. An encoder layer on its fast path (no autograd: nothing to differentiate) is
recorded as in the default mode.

Modality is ``"unknown"`` on both sides: a self-attention primitive does not say what its
tokens are. Name them with :func:`mha_site`.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CaptureError
from ..models.attention import ProbeRecord
from . import dispatch
from .sites import Emit, Tap, this_thread

DIMS = ("batch", "head", "query", "key")
_SIGNATURES: dict[type, inspect.Signature] = {}


_MHA_PARAMS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights")


def mha_like(cls: type) -> bool:
    """Whether ``cls`` is an ``nn.MultiheadAttention`` whose ``forward`` takes MHA's arguments."""
    if not issubclass(cls, nn.MultiheadAttention):
        return False
    if cls not in _SIGNATURES:
        _SIGNATURES[cls] = inspect.signature(cls.forward)
    return all(p in _SIGNATURES[cls].parameters for p in _MHA_PARAMS)


def bind(module: nn.Module, args, kwargs) -> dict:
    """The arguments of one call of ``module.forward`` by name, defaults filled in."""
    cls = type(module)
    if cls not in _SIGNATURES:
        _SIGNATURES[cls] = inspect.signature(cls.forward)
    try:
        bound = _SIGNATURES[cls].bind(module, *args, **kwargs)
    except TypeError as exc:
        raise CaptureError(f"cannot read the arguments of a {cls.__name__} call: {exc}") from exc
    bound.apply_defaults()
    out = dict(bound.arguments)
    out.pop(next(iter(_SIGNATURES[cls].parameters)))  # self
    return out


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))


def _attention(mha: nn.MultiheadAttention, query, key, value, key_padding_mask, attn_mask, is_causal,
               values: bool):
    """Scores ``[B, H, L, S']`` (masks added; torch's bias key and zero key appended) and, with
    ``values``, the per-head values ``[B, H, S', d]`` and the caller's layout ``(L, B, E, batched)``."""
    if is_causal and attn_mask is None:
        raise CaptureError("nn.MultiheadAttention needs attn_mask with is_causal=True")
    batched = query.dim() == 3
    if not batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
    elif mha.batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    L, B, E = query.shape
    H = mha.num_heads
    d = E // H
    if mha._qkv_same_embed_dim:
        wq, wk, wv = mha.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    bq, bk, bv = (None,) * 3 if mha.in_proj_bias is None else mha.in_proj_bias.chunk(3)
    q, k = F.linear(query, wq, bq), F.linear(key, wk, bk)
    v = F.linear(value, wv, bv) if values else None
    am = _additive(attn_mask, q.dtype)
    kp = _additive(key_padding_mask, q.dtype)
    if mha.bias_k is not None:
        k = torch.cat([k, mha.bias_k.repeat(1, B, 1)])
        v = None if v is None else torch.cat([v, mha.bias_v.repeat(1, B, 1)])
        am = None if am is None else F.pad(am, (0, 1))
        kp = None if kp is None else F.pad(kp, (0, 1))

    def heads(x):  # [T, B, E] -> [B, H, T, d], torch's (b * H + h) order
        return x.reshape(x.shape[0], B * H, d).transpose(0, 1).reshape(B, H, x.shape[0], d)

    q, k = heads(q), heads(k)
    v = None if v is None else heads(v)
    if mha.add_zero_attn:
        k = torch.cat([k, k.new_zeros(B, H, 1, d)], dim=2)
        v = None if v is None else torch.cat([v, v.new_zeros(B, H, 1, d)], dim=2)
        am = None if am is None else F.pad(am, (0, 1))
        kp = None if kp is None else F.pad(kp, (0, 1))
    scores = (q * math.sqrt(1.0 / d)) @ k.transpose(-2, -1)
    if am is not None:
        scores = scores + (am.reshape(B, H, L, -1) if am.dim() == 3 else am)
    if kp is not None:
        scores = scores + kp[:, None, None, :]
    return scores, v, (L, B, E, batched)


def mha_weights(mha: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
    """Per-head weights ``[batch, head, query, key]`` of one ``mha(query, key, value, ...)`` call.

    The query and key projections, ``softmax(q k^T / sqrt(d) + masks)``, dropout off; the
    inputs are laid out as the module expects them (``batch_first`` or not, or unbatched). Rows
    whose keys are all masked are 0.

    >>> mha = nn.MultiheadAttention(8, 2, batch_first=True)
    >>> x = torch.randn(1, 3, 8)
    >>> w = mha_weights(mha, x, x, x)
    >>> torch.allclose(w, mha(x, x, x, average_attn_weights=False)[1], atol=1e-6)
    True
    """
    from .sdpa import safe_softmax

    return safe_softmax(_attention(mha, query, key, value, key_padding_mask, attn_mask, is_causal, False)[0])


def explicit_mha(mha: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 key_padding_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                 is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(output, weights)`` of one MHA call computed so that ``weights [batch, head, query, key]``
    is upstream of ``output`` (grad mode). Same equations as torch's; dropout (in training) is
    applied to the weights used, not to the returned ones.

    >>> mha = nn.MultiheadAttention(8, 2)
    >>> x = torch.randn(3, 1, 8)
    >>> out, w = explicit_mha(mha, x, x, x)
    >>> torch.allclose(out, mha(x, x, x)[0], atol=1e-6), w.shape
    (True, torch.Size([1, 2, 3, 3]))
    """
    from .sdpa import safe_softmax

    scores, v, (L, B, E, batched) = _attention(mha, query, key, value, key_padding_mask, attn_mask, is_causal,
                                               True)
    weights = safe_softmax(scores)
    used = F.dropout(weights, mha.dropout) if mha.training and mha.dropout > 0 else weights
    out = (used @ v).permute(2, 0, 1, 3).reshape(L, B, E)
    out = F.linear(out, mha.out_proj.weight, mha.out_proj.bias)
    if not batched:
        out = out.squeeze(1)
    elif mha.batch_first:
        out = out.transpose(0, 1)
    return out, weights


def _unnest(x: torch.Tensor, length: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A nested ``[batch, (seq), dim]`` tensor padded with zeros, and its padding mask (True = pad)."""
    lengths = torch.tensor([t.shape[0] for t in x.unbind()])
    size = None if length is None else (len(lengths), max(int(length), int(lengths.max())), x.size(-1))
    padded = x.to_padded_tensor(0.0, output_size=size) if size else x.to_padded_tensor(0.0)
    pad = torch.arange(padded.shape[1])[None, :] >= lengths[:, None]
    return padded, pad.to(padded.device)


class MhaTap(Tap):
    """One ``nn.MultiheadAttention`` site (and, for an encoder layer's ``self_attn``, the layer's
    fast path).

    Args:
        name: the site name (the module path).
        mha: the module.
        layer: the ``nn.TransformerEncoderLayer`` whose ``self_attn`` this is, if any.
        encoder: the ``nn.TransformerEncoder`` holding ``layer``, if any.
        meta: recorded with each map.
    """

    def __init__(self, name: str, mha: nn.MultiheadAttention, *, layer: nn.Module | None = None,
                 encoder: nn.Module | None = None, meta=None):
        super().__init__([name], mha)
        self.layer, self.encoder = layer, encoder
        self.meta = {"query_modality": "unknown", "key_modality": "unknown", **dict(meta or {})}

    def _record(self, weights: torch.Tensor, method: str, mha: nn.Module, **extra) -> ProbeRecord:
        appended = (["bias_k"] if mha.bias_k is not None else []) + (["zero_attn"] if mha.add_zero_attn else [])
        meta = {"method": method, "alignment": "scaled_dot", **self.meta, **extra}
        if appended:
            meta["appended_keys"] = appended
        return ProbeRecord(weights, None, DIMS, meta=meta)

    def attach(self, emit: Emit, wanted: frozenset[str]) -> list:
        (name,) = self.names
        grad = bool(getattr(emit, "grad", False))
        calls: list[dict] = []  # open calls of the owning layer (this thread only)
        state = {"length": None}

        def on_mha(module, args, kwargs, output, failed):
            if calls:
                calls[-1]["fired"] = True
            if failed:
                return None
            a = bind(module, args, kwargs)
            if grad:
                return self._explicit(emit, name, module, a)
            returned = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            dropout = module.training and module.dropout > 0
            if (a["need_weights"] and not a["average_attn_weights"] and isinstance(returned, torch.Tensor)
                    and not dropout):
                weights, method = returned.detach(), "returned"
                weights = weights if a["query"].dim() == 3 else weights.unsqueeze(0)
            else:
                with torch.no_grad():
                    weights = mha_weights(module, a["query"], a["key"], a["value"], a["key_padding_mask"],
                                          a["attn_mask"], a.get("is_causal", False))
                method = "recomputed"
            emit(name, self._record(weights, method, module))
            return None

        handles = [dispatch.watch(self.module, post=on_mha)]
        if self.layer is not None:
            def on_layer_pre(module, args):
                calls.append({"fired": False})

            def on_layer_post(module, args, kwargs, output, failed):
                call = calls.pop() if calls else {"fired": True}
                if failed or call["fired"]:
                    return
                self._fast_path(emit, name, module, bind(module, args, kwargs), state["length"])

            handles.append(dispatch.watch(self.layer, pre=on_layer_pre, post=on_layer_post))
        if self.encoder is not None:
            def on_encoder(module, args, kwargs):
                src = args[0] if args else kwargs.get("src")
                batch_first = self.module.batch_first
                state["length"] = None if src is None or src.is_nested else src.shape[1 if batch_first else 0]

            try:
                handles.append(self.encoder.register_forward_pre_hook(this_thread(on_encoder), with_kwargs=True))
            except BaseException:
                for h in handles:
                    h.remove()
                raise
        return handles

    def _fast_path(self, emit: Emit, name: str, layer: nn.Module, a: dict, length: int | None) -> None:
        mha = self.module
        src, pad = a["src"], a["src_key_padding_mask"]
        nested = src.is_nested
        with torch.no_grad():
            if nested:
                src, pad = _unnest(src, length)
            x = src
            if getattr(layer, "norm_first", False):
                x = F.layer_norm(src, layer.norm1.normalized_shape, layer.norm1.weight, layer.norm1.bias,
                                 layer.norm1.eps)
            weights = mha_weights(mha, x, x, x, pad, a["src_mask"], False)
            if nested:
                weights = weights.masked_fill(pad[:, None, :, None], 0.0)
        emit(name, self._record(weights, "fast-path-recomputed", mha, nested=nested))

    # ----------------------------------------------------------------- grad: weights upstream of the output
    def _explicit(self, emit: Emit, name: str, module: nn.Module, a: dict):
        """Grad mode: the call's output replaced by :func:`explicit_mha`, in what the caller asked for."""
        out, weights = explicit_mha(module, a["query"], a["key"], a["value"], a["key_padding_mask"],
                                    a["attn_mask"], a.get("is_causal", False))
        dropout = module.training and module.dropout > 0
        emit(name, self._record(weights, "explicit", module, dropout="applied" if dropout else "none"))
        batched = a["query"].dim() == 3
        if not a["need_weights"]:
            return out, None
        if a["average_attn_weights"]:
            return out, weights.mean(dim=1) if batched else weights.mean(dim=1).squeeze(0)
        return out, weights if batched else weights.squeeze(0)


def mha_site(model: nn.Module, module_path: str, *, direction: str | None = None,
             query_modality: str = "unknown", key_modality: str = "unknown", **meta) -> Tap:
    """A capture site for the ``nn.MultiheadAttention`` at ``module_path``, with its modalities.

    >>> import attnlens
    >>> net = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1).eval()
    >>> tap = mha_site(net, "layers.0.self_attn", query_modality="image", key_modality="image")
    >>> with torch.no_grad(), attnlens.capture(net, tap) as rec:
    ...     _ = net(torch.randn(2, 5, 8))
    >>> rec.maps[0].shape, rec.maps[0].meta["method"]
    ({'batch': 2, 'head': 2, 'query': 5, 'key': 5}, 'fast-path-recomputed')
    """
    from .adapters.generic import module_at

    mha = module_at(model, module_path)
    if not mha_like(type(mha)):
        raise CaptureError(f"module {module_path!r} of {type(model).__name__} is a {type(mha).__name__}, "
                           "not an nn.MultiheadAttention taking its arguments")
    return _mha_taps(model, {"direction": direction, "query_modality": query_modality,
                             "key_modality": key_modality, **meta}, only=mha)[0]


def _mha_taps(model: nn.Module, meta=None, only=None, exclude=frozenset()) -> list[Tap]:
    modules = dict(model.named_modules())
    taps = []
    for path, m in modules.items():
        if not mha_like(type(m)) or id(m) in exclude or (only is not None and m is not only):
            continue
        parent_path, _, attr = path.rpartition(".")
        parent = modules.get(parent_path) if path else None
        layer = encoder = None
        role = {}
        if isinstance(parent, nn.TransformerEncoderLayer) and attr == "self_attn":
            layer = parent
            owner_path = parent_path.rpartition(".")[0].rpartition(".")[0]  # "enc.layers.0" -> "enc"
            owner = modules.get(owner_path) if parent_path else None
            if isinstance(owner, nn.TransformerEncoder) and any(lay is parent for lay in owner.layers):
                encoder = owner
            role = {"attention": "self"}
        elif isinstance(parent, nn.TransformerDecoderLayer):
            role = {"attention": "self" if attr == "self_attn" else "cross"}
        taps.append(MhaTap(path or type(model).__name__, m, layer=layer, encoder=encoder,
                           meta={**role, **dict(meta or {})}))
    return taps


def primitive_taps(model: nn.Module, exclude=frozenset()) -> list[Tap]:
    """Taps for every ``nn.MultiheadAttention`` of ``model`` and one for the modules whose code
    calls ``F.scaled_dot_product_attention`` (modules whose ids are in ``exclude`` left out)."""
    from .sdpa import SdpaTap, sdpa_paths

    taps = _mha_taps(model, exclude=exclude)
    paths = sdpa_paths(model, exclude)
    if paths:
        taps.append(SdpaTap(model, paths))
    return taps


__all__ = ["MhaTap", "bind", "explicit_mha", "mha_site", "mha_weights", "primitive_taps"]
