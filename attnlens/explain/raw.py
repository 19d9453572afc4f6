"""``raw`` attention and ``attention_x_gradient``: one layer's word x region block.

Which layer: the *candidate* steps are those whose queries are the text tokens and whose keys
include the image tokens, in call order: LXMERT's language-to-vision co-attention of each
cross-modality layer, each joint self-attention layer of a single-stream model (its
text-rows x image-columns block), each word-over-region call of an attnlens model. ``layer``
indexes that list (``-1``: the last). A model whose only cross-modal attention runs from the
image to the text (attnlens' image-to-text SCAN, the generator) has the region x word block
transposed (``meta["transposed"]``; rows are then not distributions over the regions).

* ``raw``: the attention weights with head fusion ``heads``: ``"mean"``, ``"max"``, ``"min"``
  or a head index. In a single-stream model the block's rows sum to the mass the word gives to
  the image tokens, not to 1.
* ``attention_x_gradient``: the head-mean of the positive part of gradient x attention,
  ``mean_h (dOut/dA_h * A_h)^+`` (Chefer et al. 2021's ``Abar``) of the chosen layer.
"""
from __future__ import annotations

import torch

from ..errors import ExplainError, UnknownNameError
from .trace import Step, Trace, select

HEADS = ("mean", "max", "min")


def fuse_heads(w: torch.Tensor, heads="mean") -> torch.Tensor:
    """``[B, H, Q, K] -> [B, Q, K]`` by ``heads``: ``"mean"``, ``"max"``, ``"min"`` or a head index.

    >>> w = torch.tensor([[[[0.2, 0.8]], [[0.6, 0.4]]]])
    >>> fuse_heads(w, "max").tolist(), fuse_heads(w, 1).tolist()
    ([[[0.6000000238418579, 0.800000011920929]]], [[[0.6000000238418579, 0.4000000059604645]]])
    """
    if isinstance(heads, bool) or not isinstance(heads, (str, int)):
        raise ExplainError(f"heads must be one of {HEADS} or a head index, got {heads!r}")
    if isinstance(heads, int):
        n = w.shape[1]
        if not -n <= heads < n:
            raise ExplainError(f"head {heads} out of range: the attention has {n} heads")
        return w[:, heads]
    if heads not in HEADS:
        raise UnknownNameError("head fusion", heads, HEADS)
    return {"mean": torch.mean, "max": torch.amax, "min": torch.amin}[heads](w, dim=1)


def candidates(trace: Trace) -> tuple[list[Step], bool]:
    """The steps from the text tokens to the image tokens (or back, then ``True``), in call order."""
    (ts, _), (is_, _) = trace.layout.text, trace.layout.image
    steps = [s for s in trace.steps if s.kind == "attention"]
    forward = [s for s in steps if s.query == ts and s.key == is_]
    if forward:
        return forward, False
    back = [s for s in steps if s.query == is_ and s.key == ts]
    if back:
        return back, True
    raise ExplainError(f"no attention step from the text stream {ts!r} to the image stream {is_!r} "
                       f"(steps: {sorted({(s.query, s.key) for s in trace.steps})})")


def pick(trace: Trace, layer: int) -> tuple[Step, bool, int]:
    """The candidate step ``layer`` (python indexing), whether it is transposed, and how many there are."""
    steps, transposed = candidates(trace)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -len(steps) <= layer < len(steps):
        raise ExplainError(f"layer={layer!r} out of range: {len(steps)} text-image attention layers "
                           f"({', '.join(s.site for s in steps)})")
    return steps[layer], transposed, len(steps)


def text_image_block(trace: Trace, t: torch.Tensor, transposed: bool) -> torch.Tensor:
    """The ``[B, text, image]`` block of a step's ``[B, Q, K]`` tensor (layout positions, :meth:`Layout.place`)."""
    (_, tp), (_, ip) = trace.layout.text, trace.layout.image
    rows, cols = (ip, tp) if transposed else (tp, ip)
    t = select(select(t, t.ndim - 2, rows), t.ndim - 1, cols)
    return trace.layout.place(t.transpose(-1, -2) if transposed else t)


def _meta(step: Step, index: int, n: int, transposed: bool, **extra) -> dict:
    meta = {"layer_index": index % n, "n_layers": n, "site": step.site, "layer": step.layer, **extra}
    if transposed:
        meta["transposed"] = "image-to-text attention (image queries over words) transposed to word x image"
    return meta


def raw(ctx, layer: int = -1, heads="mean"):
    """The captured attention of one text-image layer with head fusion ``heads`` (module docstring)."""
    trace = ctx.trace(grad=False)
    step, transposed, n = pick(trace, layer)
    w = text_image_block(trace, fuse_heads(step.weights, heads), transposed)
    res = ctx.result(w, trace, **_meta(step, layer, n, transposed, heads=heads))
    res.site, res.layer = step.site, step.layer
    return res


def attention_x_gradient(ctx, layer: int = -1):
    """``mean_h (dOut/dA * A)^+`` of one text-image layer (module docstring)."""
    trace = ctx.trace(grad=True)
    step, transposed, n = pick(trace, layer)
    abar = (step.grad * step.weights).clamp(min=0).mean(1)
    res = ctx.result(text_image_block(trace, abar, transposed), trace,
                     **_meta(step, layer, n, transposed, heads="mean of (grad * attention)^+"))
    res.site, res.layer = step.site, step.layer
    return res
