"""Attention rollout (Abnar & Zuidema, ACL 2020) over the joint token graph of every stream.

Each layer's attention, heads fused (``mean``, ``max`` or ``min``), gets the residual term:
``W' = 0.5 W + 0.5 I``, rows renormalised to sum to 1, and the layers are multiplied in order,
``R = W'_L ... W'_1`` (one chain of batched ``[B, N, N]`` products, every query token at once).
The word x region map is the rolled-out matrix's text-rows x image-columns block.

What is rolled out for a **dual-stream** model (LXMERT, attnlens' cross-attention models): the
tokens of all streams form one graph of ``N = T + V`` nodes. A stage's matrix has, for each
stream that attends in the stage, the rows ``0.5 I + 0.5 A`` where ``A`` (self- or
cross-attention) sits in the key stream's columns, and identity rows for a stream that does not
attend (its tokens pass through unchanged). So LXMERT's language and visual self-attention roll
out each stream on its own, and each co-attention layer mixes the streams (both directions at
once); the feed-forward blocks and the residual's exact weights are ignored, as in the paper.
For a single-stream model this is plain rollout over the joint sequence. A **link** (BLIP-2:
the Q-Former's query outputs become the language model's image tokens) is a stage of its own
whose linked rows are the one-hot row of the token they are (no residual term): the language
model's image tokens then roll out through the Q-Former to the patches.
"""
from __future__ import annotations

import torch

from .raw import fuse_heads


def offsets(streams: dict[str, int]) -> dict[str, int]:
    """Start of each stream in the joint graph (streams in their first-seen order).

    >>> offsets({"text": 3, "image": 5})
    {'text': 0, 'image': 3}
    """
    out, at = {}, 0
    for name, n in streams.items():
        out[name] = at
        at += n
    return out


def stage_matrices(trace, heads="mean") -> tuple[list[torch.Tensor], dict[str, int]]:
    """Each stage's ``[B, N, N]`` matrix ``0.5 A + 0.5 I`` (rows renormalised; identity rows for
    streams that do not attend in the stage) and the stream offsets (module docstring)."""
    off = offsets(trace.streams)
    n = sum(trace.streams.values())
    first = trace.steps[0].weights
    eye = torch.eye(n, dtype=first.dtype, device=first.device)
    out = []
    for stage in trace.stages():
        attn = first.new_zeros(trace.batch, n, n)
        count: dict[str, int] = {}
        for step in stage:
            if step.kind == "link":
                continue
            a, b = off[step.query], off[step.key]
            q, k = step.weights.shape[-2:]
            attn[:, a:a + q, b:b + k] += fuse_heads(step.weights, heads)
            count[step.query] = count.get(step.query, 0) + 1
        m = eye.expand(trace.batch, n, n).clone()
        links = [st for st in stage if st.kind == "link"]
        for step in links:  # a linked token is the token it links to (its row: that token's one-hot)
            a, b = off[step.query], off[step.key]
            sel = step.weights[:, 0]
            q, k = sel.shape[-2:]
            linked = (sel.sum(-1, keepdim=True) > 0)
            row = m[:, a:a + q].clone()
            row[:, :, b:b + k] = torch.where(linked, sel, row[:, :, b:b + k])
            row[:, :, a:a + q] = torch.where(linked, torch.zeros_like(row[:, :, a:a + q]), row[:, :, a:a + q])
            m[:, a:a + q] = row
        for s, c in count.items():
            a, q = off[s], trace.streams[s]
            rows = 0.5 * eye[a:a + q] + 0.5 * attn[:, a:a + q] / c
            m[:, a:a + q] = rows / rows.sum(-1, keepdim=True)
        out.append(m)
    return out, off


def rollout_matrix(trace, heads="mean") -> tuple[torch.Tensor, dict[str, int]]:
    """The rolled-out ``[B, N, N]`` matrix of the trace and the stream offsets."""
    mats, off = stage_matrices(trace, heads)
    rolled = torch.eye(mats[0].shape[-1], dtype=mats[0].dtype, device=mats[0].device).expand_as(mats[0]).clone()
    for m in mats:
        rolled = torch.bmm(m, rolled)
    return rolled, off


def rollout(ctx, heads="mean"):
    """Attention rollout's word x image block (module docstring)."""
    trace = ctx.trace(grad=False)
    rolled, off = rollout_matrix(trace, heads)
    block, transposed = trace.block(rolled, off)
    meta = {"heads": heads, "residual": 0.5, "n_steps": len(trace.steps), "n_stages": len(trace.stages()),
            "rolled_out": "joint token graph of the streams " + ", ".join(f"{s}({n})" for s, n in trace.streams.items())}
    if transposed:
        meta["transposed"] = "image-rows x text-columns block transposed (the text never attends over the image)"
    return ctx.result(block, trace, **meta)
