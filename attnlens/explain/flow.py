"""Attention flow (Abnar & Zuidema, ACL 2020): the maximum flow from each word to each image token
through the layers' attention graph.

The graph has one node per token and stage boundary (``S + 1`` levels of ``N`` tokens, the joint
token graph of :mod:`.rollout`); stage ``s`` links token ``a`` at level ``s + 1`` to token ``b`` at
level ``s`` with capacity ``W'_s[a, b]`` (``0.5 A + 0.5 I``, rows renormalised, heads fused: the
rollout's stage matrices). The value of word ``w`` for image token ``r`` is the maximum flow from
``w`` at the top level to ``r`` at level 0. Rollout multiplies the same capacities along every path;
flow lets each path carry at most its bottleneck and shares capacity between paths.

Limits: one max-flow problem per (example, word, image token), each on ``(S + 1) N`` nodes and
up to ``S N^2`` edges, solved with ``scipy.sparse.csgraph.maximum_flow`` (Dinic) on integer
capacities: weights are scaled by ``scale`` (default ``10**6``) and rounded, so values are exact
to about ``N / scale`` per flow. It is meant for small token counts: more than ``max_tokens``
tokens in the joint graph (default 64) is refused.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ExplainError
from .rollout import stage_matrices


def max_flows(mats: np.ndarray, sources, sinks, scale: float = 1e6) -> np.ndarray:
    """Max flow from each top-level token in ``sources`` to each level-0 token in ``sinks``.

    ``mats [S, N, N]``: stage ``s`` links token ``a`` at level ``s + 1`` to ``b`` at level ``s`` with
    capacity ``mats[s, a, b]``.

    >>> m = np.array([[[0.5, 0.5], [0.0, 1.0]]])          # one stage: flow = the capacity itself
    >>> max_flows(m, [0, 1], [0, 1]).tolist()
    [[0.5, 0.5], [0.0, 1.0]]
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_flow

    S, N, _ = mats.shape
    cap = np.rint(np.clip(mats, 0, None) * scale).astype(np.int64)
    rows, cols, vals = [], [], []
    for s in range(S):  # node id = level * N + token; edges from level s + 1 down to level s
        a, b = np.nonzero(cap[s])
        rows.append((s + 1) * N + a)
        cols.append(s * N + b)
        vals.append(cap[s][a, b])
    graph = csr_matrix((np.concatenate(vals).astype(np.int32), (np.concatenate(rows), np.concatenate(cols))),
                       shape=((S + 1) * N, (S + 1) * N))
    out = np.zeros((len(sources), len(sinks)))
    for i, src in enumerate(sources):
        for j, dst in enumerate(sinks):
            out[i, j] = maximum_flow(graph, S * N + int(src), int(dst), method="dinic").flow_value / scale
    return out


def attention_flow(ctx, heads="mean", max_tokens: int = 64, scale: float = 1e6):
    """The maximum flow from each word (top level) to each image token (level 0) (module docstring)."""
    trace = ctx.trace(grad=False)
    n = sum(trace.streams.values())
    if n > max_tokens:
        raise ExplainError(f"attention_flow solves one max-flow problem per word and image token on a graph of "
                           f"{n} tokens x {len(trace.stages()) + 1} levels; that is more than max_tokens={max_tokens} "
                           "tokens (raise max_tokens to accept the cost, or use rollout)")
    mats, off = stage_matrices(trace, heads)
    stacked = torch.stack(mats, 1).detach().double().cpu().numpy()            # [B, S, N, N]
    (ts, tp), (is_, ip) = trace.layout.text, trace.layout.image
    attn = [s for s in trace.steps if s.kind == "attention"]
    transposed = ts != is_ and not any(s.query == ts and s.key == is_ for s in attn) and \
        any(s.query == is_ and s.key == ts for s in attn)
    if transposed:  # the text never attends over the image: flow from the image tokens to the words
        ts, tp, is_, ip = is_, ip, ts, tp
    if any(p is not None and p.ndim > 1 for p in (tp, ip)):
        raise ExplainError("attention_flow needs the same text and image positions for every example of the batch; "
                           "explain one example at a time")
    rows = off[ts] + (np.arange(trace.streams[ts]) if tp is None else tp.numpy())
    cols = off[is_] + (np.arange(trace.streams[is_]) if ip is None else ip.numpy())
    flows = np.stack([max_flows(stacked[b], rows, cols, scale) for b in range(trace.batch)])
    w = torch.as_tensor(flows, dtype=trace.steps[0].weights.dtype)
    meta = {"heads": heads, "residual": 0.5, "scale": scale, "n_stages": len(mats), "n_tokens": n}
    if transposed:
        w = w.transpose(1, 2)
        meta["transposed"] = "flow from the image tokens to the words, transposed (the text never attends the image)"
    return ctx.result(trace.layout.place(w), trace, **meta)
