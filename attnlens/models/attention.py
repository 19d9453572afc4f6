"""Cross attention with a pluggable alignment function, SCAN-style score normalisation, a
softmax temperature and padding masks.

Axes: ``query [B, Lq, D]`` attends over ``key [B, Lk, D]``. Raw scores ``s [B, Lq, Lk]`` come
from the alignment function. SCAN normalises them **over the query axis** (for each key,
across the query fragments), then takes the softmax **over the key axis** of
``temperature * s_norm``. For text-to-image SCAN the queries are words and the keys regions;
for image-to-text the roles swap, and the same rule reproduces the reference code.

Normalisations (``norm``):

* ``clipped_l2norm`` (SCAN's default): LeakyReLU(0.1), then l2norm over the query axis;
* ``l2norm``, ``l1norm``: over the query axis, ``x / (||x|| + 1e-8)``;
* ``clipped_l1norm``: LeakyReLU(0.1), then l1norm (broken in the reference code, correct here);
* ``softmax``: softmax over the query axis;
* ``clipped``: LeakyReLU(0.1) only; ``no_norm``: nothing.

Every weight computation goes through :meth:`CrossAttention.weigh`, which passes a
:class:`ProbeRecord` through the submodule ``probe`` (an identity :class:`AttentionProbe`).
The capture layer hooks the probes: no model code needs editing to record attention.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from .. import align as _align
from ..errors import ShapeError, UnknownNameError

NORMS = ("clipped_l2norm", "l2norm", "clipped_l1norm", "l1norm", "softmax", "clipped", "no_norm")
EPS = 1e-8


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = EPS) -> torch.Tensor:
    """``x / (sqrt(sum x^2) + eps)`` along ``dim`` (the reference codes' l2norm)."""
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)


def l1norm(x: torch.Tensor, dim: int = -1, eps: float = EPS) -> torch.Tensor:
    """``x / (sum |x| + eps)`` along ``dim``."""
    return x / (x.abs().sum(dim=dim, keepdim=True) + eps)


def normalize_scores(scores: torch.Tensor, norm: str, *, dim: int = -2,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Apply a SCAN score normalisation along ``dim`` (the query axis by default).

    ``mask`` (broadcastable to ``scores``, True = valid) excludes padded fragments from the
    norms; masked entries come back as 0.
    """
    if norm not in NORMS:
        raise UnknownNameError("score normalisation", norm, NORMS)
    s = scores
    if norm.startswith("clipped"):
        s = F.leaky_relu(s, 0.1)
    if mask is not None and norm != "softmax":
        s = s.masked_fill(~mask, 0.0)
    if norm.endswith("l2norm"):
        s = l2norm(s, dim)
    elif norm.endswith("l1norm"):
        s = l1norm(s, dim)
    elif norm == "softmax":
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        s = torch.softmax(s, dim=dim)
        if mask is not None:
            s = s.masked_fill(~mask, 0.0)
    return s


def masked_softmax(x: torch.Tensor, mask: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` with masked (False) entries at exactly 0; all-masked rows give 0."""
    if mask is None:
        return torch.softmax(x, dim=dim)
    x = x.masked_fill(~mask, float("-inf"))
    out = torch.softmax(x, dim=dim)
    return torch.nan_to_num(out, nan=0.0)


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``[B, max_len]`` boolean mask, True for positions ``< lengths[b]``."""
    lengths = torch.as_tensor(lengths)
    if lengths.ndim != 1:
        raise ShapeError(f"lengths must be 1-D, got shape {tuple(lengths.shape)}")
    if len(lengths) and (int(lengths.max()) > max_len or int(lengths.min()) < 1):
        raise ShapeError(f"lengths must lie in [1, {max_len}] (the padded length), got min "
                         f"{int(lengths.min())}, max {int(lengths.max())}")
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


@dataclass
class ProbeRecord:
    """What an attention site exposes to hooks, for one call.

    Attributes:
        weights: attention weights, last axis = key (sums to 1 over valid keys).
        scores: raw alignment scores (before normalisation), same shape.
        dims: axis names, e.g. ``("batch", "word", "region")``.
        query_mask / key_mask: boolean validity masks broadcastable to ``weights`` (or None).
        meta: alignment name, direction, norm, temperature, modalities, chunk offsets ...
    """

    weights: torch.Tensor
    scores: torch.Tensor | None
    dims: tuple[str, ...]
    query_mask: torch.Tensor | None = None
    key_mask: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)


#: ``ProbeRecord.meta`` key of :func:`feature_norm_deviation` of the features that entered the
#: site's alignment function (set only while a hook listens to the site's probe, e.g. a capture).
FEATURE_NORM_DEVIATION = "feature_norm_deviation"


def feature_norm_deviation(*features) -> float | None:
    """``max | ||x|| - 1 |`` over the rows (last axis = features) of the floating tensors among
    ``features`` whose norm exceeds 1e-6 (all-zero padded rows are ignored); ``None`` without one.
    It measures the unit-feature condition of :func:`attnlens.align.equivalent_groups`.

    >>> feature_norm_deviation(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), torch.tensor([[0.6, 0.8]]))
    4.0
    """
    out = None
    for x in features:
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.ndim >= 1:
            n = x.detach().float().norm(dim=-1).flatten()
            n = n[n > 1e-6]
            if n.numel():
                d = float((n - 1).abs().max())
                out = d if out is None else max(out, d)
    return out


class AttentionProbe(nn.Module):
    """Identity module through which attention sites pass their :class:`ProbeRecord`.

    ``attnlens.capture`` registers forward hooks on probes; with no hook the cost is one
    module call.
    """

    def forward(self, record: ProbeRecord) -> ProbeRecord:
        return record


class AttentionOutput(NamedTuple):
    """Result of :class:`CrossAttention`: ``context [B, Lq, Dv]``, ``weights`` and ``scores``
    ``[B, Lq, Lk]``."""

    context: torch.Tensor
    weights: torch.Tensor
    scores: torch.Tensor


class CrossAttention(nn.Module):
    """Alignment function + score normalisation + temperature softmax + padding masks.

    Args:
        alignment: a registered name (see :func:`attnlens.align.available`) or a module
            mapping ``[B, Lq, D], [B, Lk, D] -> [B, Lq, Lk]``.
        dim: feature dim (for building a named alignment).
        norm: score normalisation over the query axis (module docstring).
        temperature: softmax temperature (SCAN's ``lambda_softmax``).
        normalize_context: l2-normalise the attended vectors (RCAR does; SCAN does not).
        direction: ``"t2i"``, ``"i2t"`` or free text; recorded with captured maps.
        query_dim / key_dim: axis names for captured maps (e.g. ``"word"``, ``"region"``).
        query_modality / key_modality: ``"text"`` or ``"image"``.
        alignment_options: passed to :func:`attnlens.align.create`.

    >>> attn = CrossAttention("dot", 8, norm="clipped_l2norm", temperature=9.0)
    >>> out = attn(torch.randn(2, 5, 8), torch.randn(2, 7, 8))
    >>> out.weights.shape, bool(torch.allclose(out.weights.sum(-1), torch.ones(2, 5)))
    (torch.Size([2, 5, 7]), True)
    """

    def __init__(self, alignment: str | nn.Module = "dot", dim: int | None = None, *,
                 norm: str = "clipped_l2norm", temperature: float = 9.0, normalize_context: bool = False,
                 direction: str | None = None, query_dim: str = "query", key_dim: str = "key",
                 query_modality: str = "text", key_modality: str = "image", **alignment_options):
        super().__init__()
        if norm not in NORMS:
            raise UnknownNameError("score normalisation", norm, NORMS)
        if isinstance(alignment, str):
            if dim is None:
                raise ShapeError("CrossAttention needs `dim` to build a named alignment function")
            alignment = _align.create(alignment, dim, **alignment_options)
        self.alignment = alignment
        self.norm, self.temperature, self.normalize_context = norm, float(temperature), normalize_context
        self.direction = direction
        self.query_dim, self.key_dim = query_dim, key_dim
        self.query_modality, self.key_modality = query_modality, key_modality
        self.probe = AttentionProbe()

    def observed(self) -> bool:
        """True while a hook listens to this site's probe (a capture is active): the site then adds
        what only it can see to the record's meta (:data:`FEATURE_NORM_DEVIATION`); without a
        listener nothing is computed."""
        return bool(self.probe._forward_hooks)

    def feature_meta(self, *features) -> dict | None:
        """``{FEATURE_NORM_DEVIATION: value}`` of the features entering the alignment function
        while :meth:`observed`, else ``None`` (no cost without a capture)."""
        if not self.observed():
            return None
        dev = feature_norm_deviation(*features)
        return None if dev is None else {FEATURE_NORM_DEVIATION: dev}

    @property
    def alignment_name(self) -> str:
        return getattr(self.alignment, "name", type(self.alignment).__name__)

    def meta(self, **extra) -> dict[str, Any]:
        """Metadata recorded with every map of this site."""
        return {"alignment": self.alignment_name, "direction": self.direction, "norm": self.norm,
                "temperature": self.temperature, "query_modality": self.query_modality,
                "key_modality": self.key_modality, **extra}

    def weigh(self, scores: torch.Tensor, *, query_mask: torch.Tensor | None = None,
              key_mask: torch.Tensor | None = None, temperature: torch.Tensor | float | None = None,
              dims: tuple[str, ...] | None = None, meta: dict | None = None) -> torch.Tensor:
        """Attention weights ``[..., Lq, Lk]`` from raw scores ``[..., Lq, Lk]``.

        Args:
            scores: raw alignment scores, query axis -2, key axis -1.
            query_mask: ``[..., Lq, 1]``-broadcastable validity of queries (padded rows get 0).
            key_mask: ``[..., 1, Lk]``-broadcastable validity of keys (padded keys get 0).
            temperature: scalar or per-query ``[..., Lq, 1]`` (RCAR's lambda); default the module's.
            dims: axis names for the capture (default ``("batch", query_dim, key_dim)``).
            meta: extra metadata for the capture (e.g. chunk offsets).
        """
        mask = None
        if query_mask is not None or key_mask is not None:
            qm = query_mask if query_mask is not None else torch.ones((), dtype=torch.bool, device=scores.device)
            km = key_mask if key_mask is not None else torch.ones((), dtype=torch.bool, device=scores.device)
            mask = qm & km
        s = normalize_scores(scores, self.norm, dim=-2, mask=mask)
        t = self.temperature if temperature is None else temperature
        weights = masked_softmax(s * t, key_mask, dim=-1)
        if query_mask is not None:
            weights = weights.masked_fill(~query_mask, 0.0)
        if dims is None:
            dims = (*[f"batch{i}" if i else "batch" for i in range(scores.ndim - 2)], self.query_dim, self.key_dim)
        self.probe(ProbeRecord(weights, scores, tuple(dims), query_mask, key_mask, self.meta(**(meta or {}))))
        return weights

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor | None = None, *,
                query_mask: torch.Tensor | None = None, key_mask: torch.Tensor | None = None,
                query_scale: torch.Tensor | None = None,
                temperature: torch.Tensor | float | None = None) -> AttentionOutput:
        """Attend from ``query [B, Lq, D]`` over ``key [B, Lk, D]``.

        Args:
            value: ``[B, Lk, Dv]`` vectors to average (default: ``key``).
            query_mask: ``[B, Lq]`` True for real (non-padded) queries.
            key_mask: ``[B, Lk]`` True for real keys.
            query_scale: ``[B, Lq, D]`` channel weights multiplied into the query before scoring
                (RCAR's ``e``).
            temperature: scalar or ``[B, Lq]`` per-query temperatures (RCAR's ``lambda``).
        """
        value = key if value is None else value
        q = query if query_scale is None else query * query_scale
        scores = self.alignment(q, key)
        qm = None if query_mask is None else query_mask[..., :, None]
        km = None if key_mask is None else key_mask[..., None, :]
        if isinstance(temperature, torch.Tensor) and temperature.ndim == scores.ndim - 1:
            temperature = temperature[..., None]
        weights = self.weigh(scores, query_mask=qm, key_mask=km, temperature=temperature,
                             meta=self.feature_meta(q, key))
        context = torch.matmul(weights, value)
        if self.normalize_context:
            context = l2norm(context, dim=-1)
        return AttentionOutput(context, weights, scores)

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}, temperature={self.temperature:g}, direction={self.direction!r}"
