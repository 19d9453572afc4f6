"""The capture context: ``attnlens.capture(model, ...)`` records attention while the model runs.

::

    with attnlens.capture(model, "sim.attn", reduce_heads="mean") as rec:
        model(images, captions, lengths)
    rec.maps[0]              # an AttentionMap, one per call of a site, in call order
    rec.by_site()            # {site: maps}
    rec.concat("sim.attn")   # SCAN's chunked all-pairs calls stitched into one map

Inside the context the model runs unchanged; forward hooks on the chosen sites (see
:mod:`attnlens.capture.sites`) turn each :class:`~attnlens.models.attention.ProbeRecord` into an
:class:`~attnlens.attention_map.AttentionMap`. Every hook handle is removed in ``finally``,
whether the block ends normally or with an exception.

A capture belongs to the thread that opened it: only the calls that thread makes are recorded.
Another thread running the same model meanwhile is neither recorded nor changed (no forced
``output_attentions``, nothing stripped from its outputs). Captures nest: two open captures of
one model each record every call. ``heads=``, ``queries=`` and ``layers=`` take an int or a flat
sequence of ints; anything else raises a ``DTypeError`` / ``ShapeError`` naming the argument.

Maps are detached (and on the CPU with ``to_cpu``), unless ``grad=True`` keeps them in the
autograd graph for gradient-based explanations. Padded queries (masked by the site) have
all-zero rows and padded keys zero weight; the masks themselves are not kept.

Each map's ``meta`` gets ``call_index`` (position among all recorded calls) and
``forward_index`` (which call of ``model`` itself produced it; 0-based), next to the site's own
metadata (alignment, norm, temperature, chunk offsets such as ``image_offset``).
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from ..attention_map import AttentionMap, Side
from ..errors import CaptureError, DTypeError, ShapeError
from ..models.attention import ProbeRecord
from . import dispatch
from .sites import Emitter, check_indices, select, this_thread
from .store import MapStore

_PROMOTED = ("alignment", "direction", "layer")


class MapView(Sequence):
    """A lazy view of some maps of a recorder (e.g. those of one site)."""

    def __init__(self, store: MapStore, indices: list[int]):
        self._store, self._indices = store, indices

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._store[j] for j in self._indices[i]]
        return self._store[self._indices[i]]

    def __repr__(self) -> str:
        return f"MapView(n={len(self)})"


class Recorder:
    """The maps recorded by one capture context.

    Attributes:
        maps: every recorded :class:`AttentionMap` in call order (spilled ones load lazily).
        sites: the names of the sites that were hooked.
        counts: how many maps each site recorded.
    """

    def __init__(self, sites: list[str], store: MapStore):
        self.sites = list(sites)
        self.counts = {s: 0 for s in sites}
        self.silent_sites: list[str] = []
        self._store = store

    @property
    def maps(self) -> MapStore:
        return self._store

    @property
    def store(self) -> MapStore:
        """The underlying :class:`~attnlens.capture.store.MapStore` (memory use, shards)."""
        return self._store

    def __len__(self) -> int:
        return len(self._store)

    def __getitem__(self, i):
        return self._store[i]

    def __iter__(self):
        return iter(self._store)

    def by_site(self) -> dict[str, MapView]:
        """``{site: maps of that site in call order}`` (lazy views)."""
        groups: dict[str, list[int]] = {}
        for i in range(len(self._store)):
            groups.setdefault(self._store.metadata(i).site, []).append(i)
        return {s: MapView(self._store, idx) for s, idx in groups.items()}

    def concat(self, site: str, forward_index: int | None = None) -> AttentionMap:
        """Stitch the chunked calls of ``site`` back into one map using their offsets.

        SCAN scores all image x caption pairs in chunks; each call carries ``image_offset`` and
        ``caption_offset`` in its meta. The result is the full ``[image, caption, word, region]``
        map (shorter padded axes are zero-filled). With several forward calls of the model,
        pick one with ``forward_index`` (default: the only one).
        """
        groups = self.by_site()
        if site not in groups:
            raise CaptureError(f"no map recorded for site {site!r}; recorded sites: {sorted(groups)}")
        maps = list(groups[site])
        forwards = sorted({m.meta.get("forward_index") for m in maps}, key=str)
        if forward_index is None and len(forwards) > 1:
            offsets = [tuple(sorted((k, v) for k, v in m.meta.items() if k.endswith("_offset"))) for m in maps]
            if len(set(offsets)) != len(offsets):
                raise CaptureError(f"site {site!r} was recorded in {len(forwards)} forward calls whose chunks "
                                   f"overlap; pick one with concat({site!r}, forward_index=...) from {forwards}")
        if forward_index is not None:
            maps = [m for m in maps if m.meta.get("forward_index") == forward_index]
            if not maps:
                raise CaptureError(f"site {site!r} has no map for forward_index={forward_index}; have {forwards}")
        return stitch(maps)

    def close(self) -> None:
        """Drop the maps and delete spilled shards."""
        self._store.close()

    def __repr__(self) -> str:
        return (f"Recorder(maps={len(self)}, sites={len(self.sites)}, in_memory={self._store.bytes_in_memory} B, "
                f"spilled={self._store.spilled_count})")


def stitch(maps: Sequence[AttentionMap]) -> AttentionMap:
    """Place chunk maps into one map using their ``{dim}_offset`` meta entries.

    Every map must have the same dims; an axis ``d`` with ``meta[f"{d}_offset"]`` is placed at
    that offset, every other axis is aligned at 0 and zero-padded to the largest size. Chunks may
    not overlap.

    >>> a = AttentionMap(torch.ones(1, 2, 3), ("image", "word", "region"), meta={"image_offset": 0})
    >>> b = AttentionMap(torch.zeros(2, 1, 3), ("image", "word", "region"), meta={"image_offset": 1})
    >>> full = stitch([a, b])
    >>> full.shape, full.weights[:, :, 0].tolist()
    ({'image': 3, 'word': 2, 'region': 3}, [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    """
    if not maps:
        raise CaptureError("nothing to stitch: no maps")
    first = maps[0]
    dims = first.dims
    for m in maps:
        if m.dims != dims:
            raise ShapeError(f"cannot stitch maps with dims {first.dims} and {m.dims}")
    starts = [[int(m.meta.get(f"{d}_offset", 0)) for d in dims] for m in maps]
    size = [max(s[a] + m.weights.shape[a] for s, m in zip(starts, maps)) for a in range(len(dims))]
    keep_scores = all(m.scores is not None for m in maps)
    weights = first.weights.new_zeros(size)
    scores = first.scores.new_zeros(size) if keep_scores else None
    filled = torch.zeros(size[: len(dims) - 2] or [1], dtype=torch.bool)
    for s, m in zip(starts, maps):
        region = tuple(slice(o, o + n) for o, n in zip(s, m.weights.shape))
        outer = region[: len(dims) - 2] or (slice(0, 1),)
        if filled[outer].any():
            raise CaptureError(f"chunks of site {m.site!r} overlap at offsets {dict(zip(dims, s))}")
        filled[outer] = True
        weights[region] = m.weights.to(weights.device)
        if keep_scores:
            scores[region] = m.scores.to(scores.device)
    meta = {k: v for k, v in first.meta.items() if not k.endswith("_offset") and k not in ("call_index",)}
    meta["chunks"] = len(maps)
    sides = {}
    for which in ("query", "key"):
        side = getattr(first, which)
        if side.dim in dims and size[dims.index(side.dim)] != first.weights.shape[dims.index(side.dim)]:
            side = Side(side.dim, side.modality, grid=side.grid, transform=side.transform)
        sides[which] = side
    return AttentionMap(weights, dims, scores, sides["query"], sides["key"], first.alignment, first.direction,
                        first.layer, first.site, meta)


def _storage_dtype(dtype) -> torch.dtype | None:
    """``dtype=`` of :func:`capture` as a floating torch dtype (or ``None``).

    >>> _storage_dtype("float16"), _storage_dtype(None)
    (torch.float16, None)
    """
    if dtype is None:
        return None
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise DTypeError(f"dtype must be a floating torch dtype or its name (e.g. torch.float16, 'bfloat16'), "
                         f"got {dtype!r}")
    return resolved


class Capture:
    """Context manager behind :func:`capture`; ``__enter__`` returns the :class:`Recorder`."""

    def __init__(self, model: nn.Module, sites=None, *, heads=None, queries=None, layers=None,
                 reduce_heads: str | None = None, keep_scores: bool = True, to_cpu: bool = True,
                 memory_budget: int | None = None, spill_dir=None, spill_format: str = "safetensors",
                 tokens: Sequence[str] | None = None, regions=None, region_meta: Mapping[str, Any] | None = None,
                 strict: bool = True, grad: bool = False, dtype: torch.dtype | str | None = None):
        if grad and memory_budget is not None:
            raise CaptureError("grad=True keeps each map in the autograd graph; it cannot spill to disk, so "
                               f"memory_budget must be None (got {memory_budget})")
        if reduce_heads not in (None, "mean", "max"):
            raise CaptureError(f"reduce_heads must be None, 'mean' or 'max', got {reduce_heads!r}")
        heads, queries, layers = (check_indices(n, v) for n, v in
                                  (("heads", heads), ("queries", queries), ("layers", layers)))
        self.model = model
        self.explicit = sites is not None
        self.taps = select(model, sites, layers)
        if not self.taps:
            raise CaptureError(f"the site filter {sites!r} (layers={layers}) selected no site of "
                               f"{type(model).__name__}")
        self.heads = None if heads is None else torch.tensor(heads, dtype=torch.long)
        self.queries = None if queries is None else torch.tensor(queries, dtype=torch.long)
        self.layers = None if layers is None else set(layers)
        self.reduce_heads, self.keep_scores, self.to_cpu, self.strict = reduce_heads, keep_scores, to_cpu, strict
        self.grad = bool(grad)
        self.dtype = _storage_dtype(dtype)
        if isinstance(tokens, str):
            tokens = tokens.split()
        self.tokens = None if tokens is None else tuple(str(t) for t in tokens)
        self.regions = regions
        self.region_meta = dict(region_meta or {})
        self.store = MapStore(memory_budget, spill_dir, spill_format)
        self.recorder = Recorder(list(self.taps), self.store)
        self._handles: list = []
        self._forward = -1
        self._owner: int | None = None

    # ----------------------------------------------------------------- hooks
    def __enter__(self) -> Recorder:
        if self._handles:
            raise CaptureError("this capture context is already active; make a new one with attnlens.capture(...)")
        self._owner = threading.get_ident()
        emit = Emitter(self._emit, grad=self.grad, owner=self._owner)
        try:
            if isinstance(self.model, (nn.TransformerEncoderLayer, nn.MultiheadAttention)):
                # a hook on these would switch an encoder layer off its fused fast path
                self._handles.append(dispatch.watch(self.model, pre=self._count_forward))
            else:
                self._handles.append(self.model.register_forward_pre_hook(this_thread(self._count_forward)))
            attached = set()
            for name, tap in self.taps.items():
                if id(tap) in attached:
                    continue
                attached.add(id(tap))
                wanted = frozenset(n for n in tap.names if n in self.taps)
                self._handles.extend(tap.attach(emit, wanted))
        except BaseException:
            self._remove()
            raise
        return self.recorder

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._remove()
        if exc_type is None:
            silent = [s for s, n in self.recorder.counts.items() if n == 0]
            self.recorder.silent_sites = silent
            fired = len(silent) < len(self.recorder.counts)
            if self.strict and silent and (self.explicit or not fired):
                hints = {getattr(self.taps[s], "silent_hint", "") for s in silent} - {""}
                raise CaptureError(
                    f"capture site(s) {', '.join(map(repr, silent))} never produced attention weights inside the "
                    f"capture context (recorded {len(self.recorder)} maps from other sites). Was the model run "
                    "inside the `with` block, through the path that uses these modules"
                    f"{' and layers ' + str(sorted(self.layers)) if self.layers else ''}? "
                    + "".join(f"{h} " for h in sorted(hints)) + "Pass strict=False to allow silent sites.")
        return False

    def _remove(self) -> None:
        handles, self._handles = self._handles, []
        errors = []
        for h in handles:  # remove every handle even if one fails
            try:
                h.remove()
            except Exception as exc:  # pragma: no cover - torch handles do not fail
                errors.append(exc)
        if errors:  # pragma: no cover
            raise errors[0]

    def _count_forward(self, module, args):
        self._forward += 1

    # ----------------------------------------------------------------- records -> maps
    def _emit(self, site: str, record: ProbeRecord) -> None:
        if site not in self.taps or threading.get_ident() != self._owner:
            return
        meta = dict(record.meta)
        layer = meta.pop("layer", None)
        layer = self.taps[site].layers.get(site) if layer is None else int(layer)
        if self.layers is not None and layer is not None and layer not in self.layers:
            return
        dims = tuple(record.dims)
        weights = record.weights if self.grad else record.weights.detach()
        scores = None
        if self.keep_scores and record.scores is not None:
            scores = record.scores if self.grad else record.scores.detach()
        if self.heads is not None or self.reduce_heads is not None:
            if "head" not in dims:
                raise CaptureError(f"site {site!r} gives maps with dims {dims}: no 'head' axis for "
                                   f"heads={self.heads} / reduce_heads={self.reduce_heads!r}")
            ax = dims.index("head")
            if self.heads is not None:
                n = weights.shape[ax]
                if int(self.heads.max()) >= n or int(self.heads.min()) < -n:
                    raise CaptureError(f"heads {self.heads.tolist()} out of range for site {site!r} with {n} heads")
                idx = self.heads.remainder(n).to(weights.device)
                weights = weights.index_select(ax, idx)
                scores = None if scores is None else scores.index_select(ax, idx)
                meta["heads"] = self.heads.tolist()
            if self.reduce_heads is not None:
                op = torch.mean if self.reduce_heads == "mean" else torch.amax
                weights = op(weights, dim=ax)
                scores = None if scores is None else op(scores, dim=ax)
                dims = dims[:ax] + dims[ax + 1:]
                meta["reduced_head"] = self.reduce_heads
        if self.queries is not None:
            ax = len(dims) - 2
            n = weights.shape[ax]
            if int(self.queries.max()) >= n or int(self.queries.min()) < -n:
                raise CaptureError(f"queries {self.queries.tolist()} out of range for axis {dims[ax]!r} "
                                   f"of size {n} at site {site!r}")
            idx = self.queries.remainder(n).to(weights.device)
            weights = weights.index_select(ax, idx)
            scores = None if scores is None else scores.index_select(ax, idx)
            meta["queries"] = self.queries.tolist()
        if self.dtype is not None:  # a copy: the stored map never keeps a larger tensor alive
            weights = weights.to(self.dtype, copy=True)
            scores = None if scores is None else scores.to(self.dtype, copy=True)
        if self.to_cpu and not self.grad:
            weights = weights.cpu()
            scores = None if scores is None else scores.cpu()
        meta["call_index"] = len(self.store)
        meta["forward_index"] = max(self._forward, 0)
        query, key = self._sides(site, dims, weights.shape, meta)
        amap = AttentionMap(weights, dims, scores, query, key, meta.pop("alignment", None),
                            meta.pop("direction", None), layer, site, meta)
        self.store.append(amap)
        self.recorder.counts[site] += 1

    def _sides(self, site: str, dims, shape, meta) -> tuple[Side, Side]:
        sides = []
        for which, default in (("query", "text"), ("key", "image")):
            dim = dims[-2] if which == "query" else dims[-1]
            n = shape[-2] if which == "query" else shape[-1]
            modality = meta.pop(f"{which}_modality", default)
            tokens = meta.pop(f"{which}_tokens", None)
            regions, grid, transform = None, meta.pop(f"{which}_grid", None), None
            if modality == "text" and self.tokens is not None and tokens is None:
                if len(self.tokens) != n:
                    raise CaptureError(f"tokens= has {len(self.tokens)} tokens but axis {dim!r} of site {site!r} "
                                       f"has size {n}; pass tokens for a single example, or attach them later "
                                       "with AttentionMap.with_sides")
                tokens = self.tokens
            elif modality == "unknown" and self.tokens is not None and tokens is None and len(self.tokens) == n:
                tokens = self.tokens  # a primitive's side of unknown modality that fits the given tokens
            transform = meta.pop(f"{which}_transform", None)
            if modality == "image":
                grid = self.region_meta.get("grid", grid)
                transform = self.region_meta.get("transform", transform)
                if self.regions is not None:
                    if len(self.regions) != n:
                        raise CaptureError(f"regions= has {len(self.regions)} boxes but axis {dim!r} of site "
                                           f"{site!r} has size {n}")
                    regions = self.regions
            sides.append(Side(dim, modality, tokens, regions, None if grid is None else tuple(grid), transform))
        return sides[0], sides[1]


def capture(model: nn.Module, sites=None, *, heads=None, queries=None, layers: Iterable[int] | None = None,
            reduce_heads: str | None = None, keep_scores: bool = True, to_cpu: bool = True,
            memory_budget: int | None = None, spill_dir=None, spill_format: str = "safetensors",
            tokens: Sequence[str] | None = None, regions=None, region_meta: Mapping[str, Any] | None = None,
            strict: bool = True, grad: bool = False, dtype: torch.dtype | str | None = None) -> Capture:
    """Record the attention maps of ``model`` while it runs inside a ``with`` block.

    Args:
        model: any ``nn.Module``; attnlens models expose their attention through
            ``AttentionProbe`` modules, transformers models through the adapters, torch
            primitives (MHA, transformer layers, SDPA) through their own taps.
        sites: ``None`` (every site), an fnmatch/regex pattern on site names, a callable
            ``(name, module) -> bool``, a :class:`~attnlens.capture.sites.Tap`, or a list. A
            module path that names no other site records the ``F.scaled_dot_product_attention``
            calls of that module (:mod:`attnlens.capture.sdpa`); ``nn.MultiheadAttention``
            modules are sites of their own (:mod:`attnlens.capture.primitives`).
        heads: head indices to keep (maps with a ``"head"`` axis; the axis is kept).
        queries: indices to keep along the query axis (second-last).
        layers: layer indices to keep (from the site's meta or its module path). ``heads``,
            ``queries`` and ``layers`` take an int or a flat sequence (list, tuple, range, 1-D
            integer tensor or array) of ints; a str, float, bool or nested value raises
            ``DTypeError`` / ``ShapeError`` naming the argument.
        reduce_heads: ``"mean"`` or ``"max"`` over the head axis, on the fly.
        keep_scores: also keep the pre-normalisation scores when the site provides them.
        to_cpu: move maps to the CPU (they are always detached).
        memory_budget: bytes of map tensors to hold in memory; beyond it maps are written to
            disk shards and read back lazily (see :mod:`attnlens.capture.store`).
        spill_dir: folder for the shards (default: a temporary folder deleted with the recorder).
        spill_format: ``"safetensors"`` or ``"npz"``.
        tokens: words of the text side (a list, or a string split on whitespace), for a single
            example; for batches of different captions attach them later with
            ``amap.isel(batch=i).with_sides(tokens=...)``. Also attached to a side of
            ``"unknown"`` modality (torch primitives) whose length they match.
        regions: :class:`~attnlens.types.Regions` of the image side, for a single example.
        region_meta: ``{"grid": (rows, cols), "transform": {...}}`` for a patch model's image
            side (see :func:`attnlens.capture.patches.patch_boxes`).
        strict: raise :class:`CaptureError` when the block ends normally and a chosen site never
            produced weights (with ``sites=None``: when no site did).
        grad: keep each map's tensors in the autograd graph (not detached, left on their
            device), so that gradients of the model's output with respect to the attention
            weights can be taken (``torch.autograd.grad(out, [m.weights for m in rec.maps])``);
            used by :mod:`attnlens.explain`. Needs ``memory_budget=None``.
        dtype: store the maps' tensors in this floating dtype (``torch.float16`` or
            ``"float16"`` halves their memory and spill size); ``None`` keeps the model's.

    Returns:
        A context manager whose ``__enter__`` returns the :class:`Recorder`.

    >>> from attnlens.models import CrossAttention
    >>> attn = CrossAttention("dot", 8)
    >>> with capture(attn, tokens=["a", "red", "circle"]) as rec:
    ...     _ = attn(torch.randn(1, 3, 8), torch.randn(1, 5, 8))
    >>> rec.maps[0].sel(query="red").shape
    {'batch': 1, 'key': 5}
    """
    return Capture(model, sites, heads=heads, queries=queries, layers=layers, reduce_heads=reduce_heads,
                   keep_scores=keep_scores, to_cpu=to_cpu, memory_budget=memory_budget, spill_dir=spill_dir,
                   spill_format=spill_format, tokens=tokens, regions=regions, region_meta=region_meta,
                   strict=strict, grad=grad, dtype=dtype)
