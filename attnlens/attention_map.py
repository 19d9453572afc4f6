"""`AttentionMap`: attention weights with named axes and the metadata needed to read them.

An attention map is a tensor of weights whose **last axis is the key axis** (weights sum to 1
over it for every valid query) and whose second-last axis is the query axis. Every axis has a
name (``dims``), e.g. ``("batch", "head", "query", "key")`` for a transformer or
``("image", "caption", "word", "region")`` for SCAN's text-to-image attention. The two sides
(:class:`Side`) say which modality each of the query and key axes holds, with the tokens of a
text side and the :class:`~attnlens.types.Regions` (boxes) or patch grid of an image side.

Select by name, not by position::

    amap.sel(word="dog")         # the weights of the query word "dog" over the regions
    amap.sel(head=0).mean("batch")
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np
import torch

from .errors import ShapeError


@dataclass(frozen=True)
class Side:
    """One side (query or key) of an attention map.

    Attributes:
        dim: name of the axis this side indexes (e.g. ``"word"``, ``"region"``).
        modality: ``"text"`` or ``"image"`` (or another free-form name).
        tokens: labels along the axis (words for text) or ``None``.
        regions: boxes of an image side with region features, or ``None``.
        grid: ``(rows, cols)`` of a patch model's image side, or ``None``.
        transform: how the image was resized/cropped/padded before patching (for mapping keys
            back to original pixels), free-form mapping, e.g. ``{"resize": (224, 224)}``.
    """

    dim: str
    modality: str = "text"
    tokens: tuple[str, ...] | None = None
    regions: Any = None
    grid: tuple[int, int] | None = None
    transform: Mapping[str, Any] | None = None

    def __post_init__(self):
        if self.tokens is not None:
            object.__setattr__(self, "tokens", tuple(str(t) for t in self.tokens))

    @property
    def labels(self) -> tuple | None:
        if self.tokens is not None:
            return self.tokens
        if self.regions is not None and getattr(self.regions, "labels", None) is not None:
            return tuple(self.regions.labels)
        return None

    def _take(self, index) -> "Side":
        """The side after indexing its axis with an int array or slice."""
        tokens = None if self.tokens is None else tuple(np.asarray(self.tokens, dtype=object)[index].tolist())
        regions = None if self.regions is None else self.regions[index]
        return replace(self, tokens=tokens, regions=regions)


@dataclass(frozen=True, eq=False)
class AttentionMap:
    """Attention weights (and optionally pre-normalisation scores) with named axes.

    Attributes:
        weights: attention weights, any rank >= 2; last axis = key, second-last = query.
        dims: one name per axis of ``weights``.
        scores: raw alignment scores before any normalisation (same shape), or ``None``.
        query: the query side; ``query.dim`` must be ``dims[-2]`` while that axis exists.
        key: the key side; ``key.dim`` must be ``dims[-1]`` while that axis exists.
        alignment: name of the alignment score function that produced the scores.
        direction: e.g. ``"t2i"`` (text queries attend over image regions) or ``"i2t"``.
        layer: layer index, or ``None``.
        site: module path the map was recorded from.
        meta: free-form extra information (chunk offsets, normalisation, temperature ...).

    >>> w = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    >>> amap = AttentionMap(w, ("word", "region"), query=Side("word", "text", ("red", "circle")),
    ...                     key=Side("region", "image"))
    >>> torch.equal(amap.sel(word="circle").weights, w[1])
    True
    >>> amap.sel(word="circle").dims
    ('region',)
    """

    weights: torch.Tensor
    dims: tuple[str, ...]
    scores: torch.Tensor | None = None
    query: Side | None = None
    key: Side | None = None
    alignment: str | None = None
    direction: str | None = None
    layer: int | None = None
    site: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        w = self.weights
        if not isinstance(w, torch.Tensor):
            w = torch.as_tensor(np.asarray(w))
            object.__setattr__(self, "weights", w)
        dims = tuple(self.dims)
        object.__setattr__(self, "dims", dims)
        if len(dims) != w.ndim:
            raise ShapeError(f"AttentionMap: dims {dims} name {len(dims)} axes but weights have shape {tuple(w.shape)}")
        if len(set(dims)) != len(dims):
            raise ShapeError(f"AttentionMap: dims {dims} repeat a name")
        if self.scores is not None and tuple(self.scores.shape) != tuple(w.shape):
            raise ShapeError(
                f"AttentionMap: scores shape {tuple(self.scores.shape)} differs from weights shape {tuple(w.shape)}"
            )
        if self.query is None:
            object.__setattr__(self, "query", Side(dims[-2] if w.ndim >= 2 else "query"))
        if self.key is None:
            object.__setattr__(self, "key", Side(dims[-1] if w.ndim >= 1 else "key", "image"))
        for side in (self.query, self.key):
            if side.dim in dims:
                n = w.shape[dims.index(side.dim)]
                for what, labels in (("tokens", side.tokens), ("regions", side.regions)):
                    if labels is not None and len(labels) != n:
                        raise ShapeError(
                            f"AttentionMap: axis {side.dim!r} has size {n} but its side has {len(labels)} {what}"
                        )

    # ----------------------------------------------------------------- introspection
    @property
    def shape(self) -> dict[str, int]:
        """Axis sizes by name."""
        return dict(zip(self.dims, self.weights.shape))

    def axis(self, name: str) -> int:
        """Position of the axis called ``name``."""
        try:
            return self.dims.index(name)
        except ValueError:
            raise ShapeError(f"AttentionMap has no axis {name!r}; its axes are {self.dims}") from None

    def _side(self, name: str) -> Side | None:
        for side in (self.query, self.key):
            if side is not None and side.dim == name:
                return side
        return None

    def _label_index(self, name: str, label) -> int:
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            size = self.weights.shape[self.axis(name)]
            if not -size <= int(label) < size:
                raise ShapeError(f"index {label} out of range for axis {name!r} of size {size}")
            return int(label) % size
        side = self._side(name)
        labels = None if side is None else side.labels
        if labels is None:
            raise ShapeError(f"axis {name!r} has no labels; select it by integer position")
        if label not in labels:
            raise ShapeError(f"{label!r} is not a label of axis {name!r}; labels are {list(labels)}")
        return labels.index(label)

    # ----------------------------------------------------------------- selection
    def isel(self, **indexers) -> "AttentionMap":
        """Select by integer position (int drops the axis; slice or list keeps it)."""
        out = self
        for name, index in indexers.items():
            out = out._index(name, index)
        return out

    def sel(self, **indexers) -> "AttentionMap":
        """Select by label (a token, a region label) or integer position.

        A single label drops the axis; a list of labels keeps it.
        """
        positional = {}
        for name, label in indexers.items():
            self.axis(name)
            if isinstance(label, (list, tuple)):
                positional[name] = [self._label_index(name, item) for item in label]
            else:
                positional[name] = self._label_index(name, label)
        return self.isel(**positional)

    def _index(self, name: str, index) -> "AttentionMap":
        ax = self.axis(name)
        size = self.weights.shape[ax]
        if isinstance(index, slice):
            idx = np.arange(size)[index]
        elif isinstance(index, (int, np.integer)):
            idx = int(index)
        else:
            idx = np.asarray(index, dtype=np.int64)
        take = torch.as_tensor(np.atleast_1d(idx), dtype=torch.long, device=self.weights.device)
        weights = self.weights.index_select(ax, take)
        scores = None if self.scores is None else self.scores.index_select(ax, take.to(self.scores.device))
        dims, query, key = self.dims, self.query, self.key
        if np.ndim(idx) == 0:
            weights, dims = weights.squeeze(ax), dims[:ax] + dims[ax + 1 :]
            scores = None if scores is None else scores.squeeze(ax)
            meta = {**self.meta, f"selected_{name}": self._label_of(name, idx)}
        else:
            meta = dict(self.meta)
            if query.dim == name:
                query = query._take(np.atleast_1d(idx))
            if key.dim == name:
                key = key._take(np.atleast_1d(idx))
        return replace(self, weights=weights, scores=scores, dims=dims, query=query, key=key, meta=meta)

    def _label_of(self, name: str, idx: int):
        side = self._side(name)
        labels = None if side is None else side.labels
        return idx if labels is None else labels[idx]

    # ----------------------------------------------------------------- metadata
    def with_sides(self, *, tokens=None, regions=None, query_tokens=None, key_tokens=None,
                   grid=None, transform=None) -> "AttentionMap":
        """A copy with tokens / regions / patch grid attached to its sides.

        ``tokens`` go to the text side, ``regions``, ``grid`` and ``transform`` to the image side
        (by modality); ``query_tokens`` / ``key_tokens`` name the side explicitly. A string is
        split on whitespace. Lengths are checked against the axes. Use it after selecting one
        example of a batch whose captions differ.

        >>> amap = AttentionMap(torch.full((2, 3), 1 / 3), ("word", "region"))
        >>> amap.with_sides(tokens=["red", "circle"]).sel(word="circle").shape
        {'region': 3}
        """
        def as_tokens(t):
            return tuple(t.split()) if isinstance(t, str) else tuple(t)

        sides = {"query": self.query, "key": self.key}
        for which in sides:
            side = sides[which]
            changes = {}
            explicit = query_tokens if which == "query" else key_tokens
            if explicit is not None:
                changes["tokens"] = as_tokens(explicit)
            elif tokens is not None and side.modality == "text":
                changes["tokens"] = as_tokens(tokens)
            if side.modality == "image":
                if regions is not None:
                    changes["regions"] = regions
                if grid is not None:
                    changes["grid"] = tuple(int(g) for g in grid)
                if transform is not None:
                    changes["transform"] = transform
            sides[which] = replace(side, **changes) if changes else side
        return replace(self, query=sides["query"], key=sides["key"])

    @classmethod
    def concat(cls, maps, dim: str) -> "AttentionMap":
        """Concatenate maps along the axis ``dim`` (other axes must match).

        Tokens of a side along ``dim`` are concatenated when every map has them; regions are
        dropped along ``dim``. Scores are kept when every map has them.

        >>> a = AttentionMap(torch.ones(1, 2, 3) / 3, ("batch", "word", "region"))
        >>> AttentionMap.concat([a, a], "batch").shape
        {'batch': 2, 'word': 2, 'region': 3}
        """
        maps = list(maps)
        if not maps:
            raise ShapeError("AttentionMap.concat needs at least one map")
        first = maps[0]
        ax = first.axis(dim)
        for m in maps[1:]:
            if m.dims != first.dims:
                raise ShapeError(f"AttentionMap.concat: dims {m.dims} differ from {first.dims}")
            other = [n for i, n in enumerate(m.weights.shape) if i != ax]
            if other != [n for i, n in enumerate(first.weights.shape) if i != ax]:
                raise ShapeError(f"AttentionMap.concat along {dim!r}: shapes {tuple(first.weights.shape)} and "
                                 f"{tuple(m.weights.shape)} differ on another axis ({first.dims})")
        weights = torch.cat([m.weights for m in maps], dim=ax)
        scores = None
        if all(m.scores is not None for m in maps):
            scores = torch.cat([m.scores for m in maps], dim=ax)
        sides = {}
        for which in ("query", "key"):
            side = getattr(first, which)
            if side.dim == dim:
                toks = [getattr(m, which).tokens for m in maps]
                side = replace(side, tokens=None if any(t is None for t in toks) else sum(toks, ()), regions=None)
            sides[which] = side
        return replace(first, weights=weights, scores=scores, query=sides["query"], key=sides["key"],
                       meta={**first.meta, f"concatenated_{dim}": len(maps)})

    # ----------------------------------------------------------------- reductions
    def reduce(self, dim: str, how: str = "mean") -> "AttentionMap":
        """Reduce one axis with ``mean``, ``max``, ``sum`` or ``min``; the axis is dropped."""
        ax = self.axis(dim)
        ops = {"mean": torch.mean, "sum": torch.sum, "max": torch.amax, "min": torch.amin}
        if how not in ops:
            raise ShapeError(f"unknown reduction {how!r}; valid: {sorted(ops)}")
        op = ops[how]
        weights = op(self.weights, dim=ax)
        scores = None if self.scores is None else op(self.scores, dim=ax)
        return replace(self, weights=weights, scores=scores, dims=self.dims[:ax] + self.dims[ax + 1 :],
                       meta={**self.meta, f"reduced_{dim}": how})

    def mean(self, dim: str) -> "AttentionMap":
        """Mean over the axis ``dim`` (e.g. ``amap.mean("head")``)."""
        return self.reduce(dim, "mean")

    # ----------------------------------------------------------------- conversion
    def to(self, device) -> "AttentionMap":
        return replace(self, weights=self.weights.to(device),
                       scores=None if self.scores is None else self.scores.to(device))

    def cpu(self) -> "AttentionMap":
        return self.to("cpu")

    def numpy(self, scores: bool = False) -> np.ndarray:
        """Weights (or scores) as a numpy array."""
        t = self.scores if scores else self.weights
        if t is None:
            raise ShapeError("this AttentionMap was captured without scores")
        return t.detach().cpu().numpy()

    def to_pandas(self):
        """A long DataFrame: one column per axis (labels where known) plus ``weight`` (and ``score``)."""
        import pandas as pd

        w = self.numpy()
        grids = np.meshgrid(*[np.arange(n) for n in w.shape], indexing="ij")
        data = {}
        for name, g in zip(self.dims, grids):
            flat = g.reshape(-1)
            side = self._side(name)
            labels = None if side is None else side.labels
            data[name] = flat
            if labels is not None:
                data[f"{name}_label"] = np.asarray(labels, dtype=object)[flat]
        data["weight"] = w.reshape(-1)
        if self.scores is not None:
            data["score"] = self.numpy(scores=True).reshape(-1)
        return pd.DataFrame(data)

    # ----------------------------------------------------------------- display
    def __repr__(self) -> str:
        shape = ", ".join(f"{d}={n}" for d, n in self.shape.items())
        extra = [f"alignment={self.alignment!r}"] if self.alignment else []
        if self.direction:
            extra.append(f"direction={self.direction!r}")
        if self.layer is not None:
            extra.append(f"layer={self.layer}")
        if self.site:
            extra.append(f"site={self.site!r}")
        return f"AttentionMap({shape}{', ' if extra else ''}{', '.join(extra)})"

    def view(self, image=None, **kwargs):
        """An interactive notebook view: click a word to see its map over ``image``, switch the
        other axes (layer, head ...) with selectors (:func:`attnlens.render.notebook.map_view`;
        ``kwargs`` go to it). A map of one query (after ``sel(word=...)``) shows that one word.

        >>> amap = AttentionMap(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), ("word", "region"),
        ...                     query=Side("word", "text", ("red", "dog")))
        >>> amap.view()
        MapView(words=2, keys=2)
        """
        from .render.notebook import map_view  # display only: the renderer is imported on use

        amap = self
        if self.weights.ndim == 1:
            label = str(self.meta.get(f"selected_{self.query.dim}", self.query.dim))
            amap = replace(self, weights=self.weights[None], scores=None, dims=("query",) + self.dims,
                           query=Side("query", "text", (label,)))
        return map_view(amap, image, **kwargs)

    def _repr_png_(self) -> bytes | None:
        """A static PNG (the first word's map) for front ends without scripts (nbconvert, GitHub)."""
        from .errors import AttnlensError

        try:
            return self.view().png
        except AttnlensError:
            return None

    def _repr_html_(self) -> str:
        """The interactive view (:meth:`view`); a text summary when the map cannot be shown."""
        from .errors import AttnlensError

        try:
            return f"<div><pre>{html.escape(repr(self))}</pre>{self.view()._repr_html_()}</div>"
        except AttnlensError:
            return self._table_html()

    def _table_html(self) -> str:
        title = html.escape(repr(self))
        w = self.numpy()
        if w.ndim != 2 or w.size == 0 or w.shape[0] > 40 or w.shape[1] > 60:
            return f"<pre>{title}</pre>"
        rows = self.query.labels if self.query.dim == self.dims[0] else None
        cols = self.key.labels if self.key.dim == self.dims[1] else None
        top = max(float(np.nanmax(w)), 1e-12)
        head = "".join(f"<th>{html.escape(str(c if cols else j))}</th>"
                       for j, c in enumerate(cols or range(w.shape[1])))
        body = []
        for i in range(w.shape[0]):
            label = html.escape(str(rows[i] if rows else i))
            cells = "".join(
                f'<td style="background:rgba(220,60,30,{v / top:.3f});padding:2px 4px">{v:.2f}</td>'
                for v in np.nan_to_num(w[i])
            )
            body.append(f"<tr><th>{label}</th>{cells}</tr>")
        return (f"<div><pre>{title}</pre><table style='font-size:11px;border-collapse:collapse'>"
                f"<tr><th></th>{head}</tr>{''.join(body)}</table></div>")
