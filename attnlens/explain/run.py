"""Run a model once under :func:`attnlens.capture` and build its :class:`~attnlens.explain.trace.Trace`.

Map shapes in the common form ``[B, H, Q, K]``: the map's own ``batch`` axis (or none: one
example), its ``head`` axis (or none: ``H = 1``), query and key axes; image x caption pair maps
(``("image", "caption", query, key)``, attnlens' matching models) are read on their diagonal,
example ``b`` being image ``b`` with caption ``b`` (so there must be as many images as captions).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Mapping

import torch
from torch import nn

from ..attention_map import AttentionMap
from ..capture import capture
from ..capture.core import stitch
from ..errors import ExplainError, ShapeError
from .profiles import Profile
from .trace import Step, Trace, default_target, map_gradients, target_scores

_PAIR = ("image", "caption")


def to_bhqk(weights: torch.Tensor, dims: tuple[str, ...], site: str = "") -> torch.Tensor:
    """``weights`` with named ``dims`` as ``[B, H, Q, K]`` (module docstring).

    >>> to_bhqk(torch.ones(2, 2, 3, 4), ("image", "caption", "word", "region")).shape
    torch.Size([2, 1, 3, 4])
    >>> to_bhqk(torch.ones(5, 7), ("query", "key")).shape
    torch.Size([1, 1, 5, 7])
    """
    dims = list(dims)
    q, k = dims[-2], dims[-1]
    if all(d in dims[:-2] for d in _PAIR):
        i, c = dims.index("image"), dims.index("caption")
        if weights.shape[i] != weights.shape[c]:
            raise ShapeError(f"site {site!r}: explain reads image x caption maps on their diagonal (example b = image b "
                             f"with caption b) and needs as many images as captions, got dims {tuple(dims)} shape "
                             f"{tuple(weights.shape)}")
        weights = torch.diagonal(weights, dim1=i, dim2=c)
        dims = [d for d in dims if d not in _PAIR] + ["batch"]
    lead = [d for d in dims if d not in (q, k, "head")]
    if len(lead) > 1:
        raise ShapeError(f"site {site!r}: cannot read maps with dims {tuple(dims)} as [batch, head, query, key]")
    if not lead:
        weights, dims = weights.unsqueeze(0), ["batch", *dims]
        lead = ["batch"]
    if "head" not in dims:
        weights, dims = weights.unsqueeze(0), ["head", *dims]
    return weights.permute(*[dims.index(d) for d in (lead[0], "head", q, k)])


def _group_calls(maps: list[AttentionMap], grads: list[torch.Tensor | None]):
    """Stitch the chunks of one call (SCAN/RCAR offsets) back into one map (and its gradient)."""
    groups: list[list[int]] = []
    last: dict[tuple, int] = {}
    for i, m in enumerate(maps):
        key = (m.site, m.meta.get("forward_index"))
        offsets = [int(v) for k, v in m.meta.items() if k.endswith("_offset")]
        if key in last and any(offsets):
            groups[last[key]].append(i)
        else:
            last[key] = len(groups)
            groups.append([i])
    out_maps, out_grads = [], []
    for n, g in enumerate(groups):
        if len(g) == 1:
            m = maps[g[0]]
            out_maps.append(replace(m, meta={**m.meta, "group": n}))
            out_grads.append(grads[g[0]])
            continue
        m = stitch([replace(maps[i], weights=maps[i].weights.detach(), scores=None) for i in g])
        out_maps.append(replace(m, meta={**m.meta, "group": n, "call_index": maps[g[0]].meta.get("call_index")}))
        out_grads.append(None if grads[g[0]] is None else
                         stitch([replace(maps[i], weights=grads[i], scores=None) for i in g]).weights)
    return out_maps, out_grads


def _link(dst: str, src: str, positions: torch.Tensor, w: torch.Tensor, streams: dict, stages: dict) -> Step:
    """The link step: token ``positions[j]`` of stream ``dst`` is token ``j`` of stream ``src`` (the first
    ``len(positions)`` tokens of ``src`` are handed over)."""
    if src not in streams:
        raise ExplainError(f"stream {dst!r} links to stream {src!r}, which no earlier attention map read")
    b, n_dst, n_src = w.shape[0], w.shape[2], streams[src]
    pos = positions.to(w.device).expand(b, -1) if positions.ndim == 1 else positions.to(w.device)
    n = pos.shape[1]
    if n > n_src or (n and int(pos.max()) >= n_dst):
        raise ShapeError(f"stream {dst!r} ({n_dst} tokens): linked positions {pos.tolist()} for the first {n} of the "
                         f"{n_src} tokens of stream {src!r}")
    sel = w.new_zeros(b, 1, n_dst, n_src)
    sel[torch.arange(b)[:, None], 0, pos, torch.arange(n)[None, :]] = 1
    streams[dst] = n_dst
    return Step(f"link:{src}->{dst}", stages.setdefault(("link", dst), len(stages)), dst, src, sel, None, None, "link")


def run_trace(model: nn.Module, inputs: Mapping, profile: Profile, target: Callable | None = None, *,
              grad: bool = True) -> Trace:
    """One forward pass of ``model(**inputs)`` under capture, with gradients when ``grad``.

    Args:
        model: the model (the caller sets its mode and parameter flags, see :mod:`.guard`).
        inputs: keyword arguments of its forward.
        profile: the model family's :class:`~attnlens.explain.profiles.Profile`.
        target: ``target(output) -> [B]`` (default: the profile's, else the top logit).
        grad: differentiate the target with respect to every map (one backward pass).
    """
    sites = profile.sites(model, inputs)
    target = target or profile.target or default_target
    if grad:  # floating inputs join the graph too (a model without parameters, e.g. SCAN with "dot")
        inputs = {k: v.detach().requires_grad_(True) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                  for k, v in inputs.items()}
    with torch.set_grad_enabled(grad):
        with capture(model, sites, grad=grad, keep_scores=False, strict=False) as rec:
            output = model(**inputs)
        maps = list(rec.maps)
        if not maps:
            raise ExplainError(f"{type(model).__name__} produced no attention map at the {profile.name!r} profile's "
                               f"sites ({', '.join(rec.sites)}) during model(**inputs)")
        batch = to_bhqk(maps[0].weights, maps[0].dims, maps[0].site).shape[0]
        scores = target_scores(target, output, batch) if grad else None
        grads = map_gradients(scores, [m.weights for m in maps]) if grad else [None] * len(maps)
    if profile.group_calls:
        maps, grads = _group_calls(maps, grads)
    steps, stages, streams = [], {}, {}
    links = {dst: (pos, src) for dst, pos, src in (profile.links(model, inputs, maps) if profile.links else [])}
    for m, g in zip(maps, grads):
        q, k, key = profile.classify(m)
        w = to_bhqk(m.weights.detach(), m.dims, m.site)
        gw = None if g is None else to_bhqk(g, m.dims, m.site)
        if q in links and q not in streams:  # the stream starts from tokens of another: a link stage first
            pos, src = links.pop(q)
            steps.append(_link(q, src, pos, w, streams, stages))
        for stream, n in ((q, w.shape[2]), (k, w.shape[3])):
            if streams.setdefault(stream, n) != n:
                raise ShapeError(f"stream {stream!r} has {streams[stream]} tokens at one site but {n} at {m.site!r}")
        stage = stages.setdefault(key, len(stages))
        steps.append(Step(m.site, stage, q, k, w, gw, m.layer))
    if links:
        raise ExplainError(f"profile {profile.name!r} links streams {sorted(links)} that no attention map reads")
    batch = {int(s.weights.shape[0]) for s in steps}
    if len(batch) != 1:
        raise ShapeError(f"attention maps disagree on the batch size: {sorted(batch)}")
    if scores is not None and scores.shape[0] != steps[0].weights.shape[0]:
        raise ShapeError(f"target gave {scores.shape[0]} scores for a batch of {steps[0].weights.shape[0]} examples")
    layout = profile.layout(model, inputs, streams, maps)
    return Trace(steps, streams, layout, output, None if scores is None else scores.detach(),
                 meta={"profile": profile.name})
