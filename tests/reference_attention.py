"""Slow references for torch's attention primitives, written from the equations.

Explicit projections, a Python loop over batch and heads, masks applied element by element; no
call of ``F.multi_head_attention_forward`` or ``F.scaled_dot_product_attention``.
"""
from __future__ import annotations

import math

import torch

NEG = float("-inf")


def _softmax_row(s: torch.Tensor) -> torch.Tensor:
    if torch.isneginf(s).all():
        return torch.zeros_like(s)
    e = torch.exp(s - s.max())
    return e / e.sum()


def _mask_value(mask: torch.Tensor, i: int, j: int, masked_is_true: bool) -> float:
    v = mask[i, j]
    if mask.dtype == torch.bool:
        return NEG if bool(v) == masked_is_true else 0.0
    return float(v)


def mha_projections(mha, query, key, value):
    """(Q [B, L, E], K [B, S, E], V [B, S, E]) in batch-first layout, batched."""
    batched = query.dim() == 3
    if not batched:
        query, key, value = query[None], key[None], value[None]
    elif not mha.batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    E = mha.embed_dim
    if mha._qkv_same_embed_dim:
        wq, wk, wv = mha.in_proj_weight[:E], mha.in_proj_weight[E:2 * E], mha.in_proj_weight[2 * E:]
    else:
        wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    b = mha.in_proj_bias if mha.in_proj_bias is not None else torch.zeros(3 * E)
    Q = query @ wq.T + b[:E]
    K = key @ wk.T + b[E:2 * E]
    V = value @ wv.T + b[2 * E:]
    if mha.bias_k is not None:
        K = torch.cat([K, mha.bias_k.reshape(1, 1, E).expand(K.shape[0], 1, E)], 1)
        V = torch.cat([V, mha.bias_v.reshape(1, 1, E).expand(V.shape[0], 1, E)], 1)
    return Q, K, V


def mha_weights(mha, query, key, value, key_padding_mask=None, attn_mask=None):
    """Per-head weights [B, H, L, S'] of ``mha(query, key, value, ...)`` (dropout off)."""
    Q, K, _ = mha_projections(mha, query, key, value)
    B, L, E = Q.shape
    H, d = mha.num_heads, E // mha.num_heads
    S = K.shape[1] - (mha.bias_k is not None)  # the caller's keys; torch appends bias_k, then a zero key
    kpm = key_padding_mask
    if kpm is not None and kpm.dim() == 1:
        kpm = kpm[None]
    out = torch.zeros(B, H, L, K.shape[1] + bool(mha.add_zero_attn), dtype=Q.dtype)
    for b in range(B):
        for h in range(H):
            q = Q[b, :, h * d:(h + 1) * d]
            k = K[b, :, h * d:(h + 1) * d]
            if mha.add_zero_attn:
                k = torch.cat([k, torch.zeros(1, d)])
            s = (q * math.sqrt(1.0 / d)) @ k.T
            for i in range(L):
                for j in range(S):  # appended keys are never masked
                    if attn_mask is not None:
                        m = attn_mask if attn_mask.dim() == 2 else attn_mask[b * H + h]
                        s[i, j] = s[i, j] + _mask_value(m, i, j, masked_is_true=True)
                    if kpm is not None:
                        s[i, j] = s[i, j] + _mask_value(kpm, b, j, masked_is_true=True)
                out[b, h, i] = _softmax_row(s[i])
    return out


def mha_output_from_weights(mha, weights, query, key, value):
    """The MHA output [B, L, E] (batch-first) computed from per-head ``weights`` [B, H, L, S']."""
    _, _, V = mha_projections(mha, query, key, value)
    B, H = weights.shape[:2]
    d = mha.embed_dim // H
    heads = []
    for h in range(H):
        v = V[:, :, h * d:(h + 1) * d]
        if mha.add_zero_attn:
            v = torch.cat([v, torch.zeros(B, 1, d)], 1)
        heads.append(weights[:, h] @ v)
    return torch.cat(heads, -1) @ mha.out_proj.weight.T + mha.out_proj.bias


def sdpa_weights(q, k, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """Weights [B, Hq, L, S] of ``F.scaled_dot_product_attention(q, k, v, ...)`` for 4-D q, k."""
    B, Hq, L, E = q.shape
    Hk, S = k.shape[1], k.shape[2]
    group = Hq // Hk if enable_gqa else 1
    factor = 1.0 / math.sqrt(E) if scale is None else scale
    out = torch.zeros(B, Hq, L, S, dtype=q.dtype)
    for b in range(B):
        for h in range(Hq):
            s = (q[b, h] @ k[b, h // group].T) * factor
            for i in range(L):
                for j in range(S):
                    if is_causal and j > i:
                        s[i, j] = NEG
                    if attn_mask is not None:
                        m = attn_mask.expand(B, Hq, L, S)[b, h]
                        s[i, j] = s[i, j] + _mask_value(m, i, j, masked_is_true=False)
                out[b, h, i] = _softmax_row(s[i])
    return out
