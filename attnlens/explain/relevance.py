"""Gradient-weighted attention relevance (Chefer, Gur & Wolf, ICCV 2021, "Generic
attention-model explainability for interpreting bi-modal and encoder-decoder transformers").

Relevance matrices for every pair of streams ``s, q``: ``R^{ss} = I`` and ``R^{sq} = 0`` at
the start. Each attention step contributes ``Abar = mean_h (dOut/dA * A)^+`` (the head-mean of
the positive part of gradient x attention; one backward pass gives every layer's gradient):

* self-attention of stream ``s`` (eqs. 6-7): ``R^{ss} += Abar R^{ss}`` and, for every other
  stream ``q``, ``R^{sq} += Abar R^{sq}``;
* co-/cross-attention from ``s`` (queries) to ``q`` (keys) (eqs. 10-11):
  ``R^{sq} += (Rhat^{ss})^T Abar Rhat^{qq}`` and ``R^{ss} += Abar R^{qs}``, with the normalised
  self-relevance (eqs. 8-9) ``Rhat^{xx} = Rbar^{xx} + I``, ``Rbar^{xx} = R^{xx} - I`` with each
  row divided by its sum. A row of ``R^{xx} - I`` that is still all zero (no self-attention has
  reached it yet) stays zero (the authors' code would divide 0 by 0), so ``Rhat = I`` there.

* a **link** from stream ``q`` to stream ``s`` (BLIP-2: the Q-Former's query outputs become the
  language model's image tokens, selection ``L[i, j] = 1`` when token ``i`` of ``s`` is token ``j`` of
  ``q``): ``R^{st} += L R^{qt}`` for every stream ``t != s`` (the linked tokens carry the relevance
  of the tokens they are, over the image and the queries, into the next stream's self-attention
  rule; ``R^{ss}`` keeps its identity).

Steps of one stage (LXMERT's two co-attention directions; its two self-attentions) read the
same state and their additions are summed after. The word x region map is ``R^{text,image}``
(for a single-stream model, the text-rows x image-columns block of ``R^{joint,joint}``): row
``w`` is the relevance of each region for the target through the representation of word ``w``;
the authors read the row of ``[CLS]`` (``amap.isel(word=0)`` for BERT-style models).
With ``normalise=False`` the bi-modal rule uses ``R^{xx}`` unnormalised (the paper's ablation).
"""
from __future__ import annotations

import torch


def normalised_self(r: torch.Tensor) -> torch.Tensor:
    """``Rhat = Rbar + I`` with ``Rbar = R - I`` row-normalised to sum 1 (all-zero rows stay 0).

    >>> normalised_self(torch.tensor([[[3.0, 2.0], [0.0, 1.0]]])).tolist()
    [[[1.5, 0.5], [0.0, 1.0]]]
    """
    eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device)
    bar = r - eye
    total = bar.sum(-1, keepdim=True)
    bar = torch.where(total != 0, bar / torch.where(total != 0, total, torch.ones_like(total)), torch.zeros_like(bar))
    return bar + eye


def relevance_matrices(trace, normalise: bool = True) -> dict[tuple[str, str], torch.Tensor]:
    """Every ``R^{sq}`` ``[B, n_s, n_q]`` after all the trace's steps (module docstring)."""
    names = list(trace.streams)
    ref = trace.steps[0].weights
    R = {}
    for s in names:
        for q in names:
            if s == q:
                eye = torch.eye(trace.streams[s], dtype=ref.dtype, device=ref.device)
                R[(s, q)] = eye.expand(trace.batch, -1, -1).clone()
            else:
                R[(s, q)] = ref.new_zeros(trace.batch, trace.streams[s], trace.streams[q])
    for stage in trace.stages():
        add: dict[tuple[str, str], torch.Tensor] = {}

        def plus(key, value):
            add[key] = add[key] + value if key in add else value

        for step in stage:
            s, q = step.query, step.key
            if step.kind == "link":  # token i of s is token j of q: it takes over j's relevance (eq. in docstring)
                sel = step.weights[:, 0]
                for t in names:
                    if t != s:
                        plus((s, t), torch.bmm(sel, R[(q, t)]))
                continue
            abar = (step.grad * step.weights).clamp(min=0).mean(1)
            if s == q:
                for t in names:
                    plus((s, t), torch.bmm(abar, R[(s, t)]))
            else:
                rss = normalised_self(R[(s, s)]) if normalise else R[(s, s)]
                rqq = normalised_self(R[(q, q)]) if normalise else R[(q, q)]
                plus((s, q), torch.bmm(rss.transpose(1, 2), torch.bmm(abar, rqq)))
                plus((s, s), torch.bmm(abar, R[(q, s)]))
        for key, value in add.items():
            R[key] = R[key] + value
    return R


def gradient_weighted(ctx, normalise: bool = True):
    """Chefer et al.'s relevance of the image tokens for each text token (module docstring)."""
    trace = ctx.trace(grad=True)
    block, transposed = trace.block(relevance_matrices(trace, normalise))
    meta = {"normalise_self": bool(normalise), "n_steps": len(trace.steps), "n_stages": len(trace.stages()),
            "streams": dict(trace.streams)}
    if transposed:
        meta["transposed"] = "R^{image,text} transposed (the text never attends over the image)"
    return ctx.result(block, trace, **meta)
