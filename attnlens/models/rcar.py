"""RCAR regulators (Diao et al., IEEE TIP 2023): RCR, RAR and their cooperation, vectorised over
all image-caption pairs in chunks.

Axes: ``images [Ni, R, d]``, ``captions [Nc, L, d]``, ``lengths [Nc]``; pair tensors are
``[ni, nc, Lq, ...]`` (``Lq`` = words for ``t2i``, regions for ``i2t``). The result is
``S [Ni, Nc]``.

Per pair and query fragment, the cross attention uses channel weights ``e`` (``query_scale``)
and a temperature ``lambda`` (per query fragment): ``s = LeakyReLU(0.1)(align(q * e, context))``
(``align`` is the dot product in the paper and the default here; any alignment function of
:mod:`attnlens.align` can take its place, scoring the channel-weighted query against the
context), l2norm over the query fragments, softmax over the context fragments of ``lambda * s``,
``c = l2norm(sum alpha * context)``. It runs through :meth:`CrossAttention.weigh` (so the
capture layer records it, dims ``("image", "caption", query, key)``; the module's
``CrossAttention`` is configured with the same semantics -- ``query_scale`` = e, per-query
temperature = lambda, ``normalize_context=True`` -- but the scores and contexts of all pairs are
formed here with batched products over ``[ni, nc, ...]`` pair tensors, which
``CrossAttention.forward`` (one batch axis) cannot express without copying the images per
caption). Then
``x = l2norm(W_a (q - c)^2 + b_a)`` (alignment vector), and the regulators:

* RCR: ``e <- clamp(tanh(W2 tanh(W1 x + b1) + b2) + e, -1, 1)``,
  ``lambda <- ReLU(w2 tanh(W1' x + b1') + b2' + lambda)``;
* RAR: ``g <- l2norm(sum_n softmax_n(w_v . (tanh(W_k x_n) * tanh(W_q g)) + b_v) x_n)``;
  final ``sigmoid(w_s . g + b_s)``.

Modes: ``rcr`` (``only_rcr``), ``rar`` (``only_rar``), ``rcar`` (``coop_rcar``), ``steps`` = K.
Module names follow the public implementation's state dict (``alv_modules.{m}.sim_transform_w``,
``rcr_modules.{j}.rcr_smooth_w.0`` ..., ``rar_modules.{i}.rar_q_w.0`` ..., ``sim_eval_w``).
"""
from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import CheckpointError, ShapeError, UnknownNameError
from .state import load_state_strict
from .attention import CrossAttention, l2norm, masked_softmax
from .scan import DIRECTIONS, check_inputs, is_plain_dot

MODES = {"rcr": "rcr", "only_rcr": "rcr", "rar": "rar", "only_rar": "rar", "rcar": "rcar", "coop_rcar": "rcar"}
SMOOTH = {"t2i": 10.0, "i2t": 3.0}
EPS = 1e-8


def masked_l2norm(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """l2norm over the last axis of ``x [..., n, k]`` for the valid rows of ``mask [..., n]``
    (broadcastable; None = all valid); padded rows come back as exactly 0.

    Valid rows get the same operations as :func:`~attnlens.models.attention.l2norm` (bit-identical
    values); padded rows never differentiate ``sqrt`` at 0 (their squared norm is replaced by 1
    before the root), so the gradient stays finite when a padded row is all zeros.

    >>> x = torch.tensor([[3., 4., 0.], [0., 0., 0.]], requires_grad=True)   # row 1 is padding
    >>> y = masked_l2norm(x, torch.tensor([True, False])); y.sum().backward()
    >>> bool(torch.isfinite(x.grad).all()), [round(v, 4) for v in y[0].tolist()], y[1].abs().sum().item()
    (True, [0.6, 0.8, 0.0], 0.0)
    """
    if mask is None:
        return l2norm(x, dim=-1)
    valid = mask[..., None]
    sq = torch.where(valid, x.pow(2).sum(dim=-1, keepdim=True), torch.ones((), dtype=x.dtype, device=x.device))
    return (x / (sq.sqrt() + EPS)).masked_fill(~valid, 0.0)


class AlignmentVector(nn.Module):
    """``x = l2norm(W_a (q - c)^2 + b_a)``, ``W_a: d -> m``; ``mask [..., n]`` (True = real
    fragment) gives 0 at padded fragments (see :func:`masked_l2norm`)."""

    def __init__(self, sim_dim: int, embed_dim: int):
        super().__init__()
        self.sim_transform_w = nn.Linear(embed_dim, sim_dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_l2norm(self.sim_transform_w((query - context).pow(2)), mask)


class CorrespondenceRegulator(nn.Module):
    """RCR: updates the channel weights ``e`` and the temperatures ``lambda`` from ``x``."""

    def __init__(self, sim_dim: int, embed_dim: int):
        super().__init__()
        self.rcr_smooth_w = nn.Sequential(nn.Linear(sim_dim, sim_dim // 2), nn.Tanh(), nn.Linear(sim_dim // 2, 1))
        self.rcr_matrix_w = nn.Sequential(nn.Linear(sim_dim, sim_dim * 2), nn.Tanh(),
                                          nn.Linear(sim_dim * 2, embed_dim))

    def forward(self, x, e, lam):
        e = (torch.tanh(self.rcr_matrix_w(x)) + e).clamp(min=-1, max=1)
        lam = torch.relu(self.rcr_smooth_w(x) + lam)
        return e, lam


class AggregationRegulator(nn.Module):
    """RAR: re-weights the alignment vectors ``x [..., n, m]`` under the guide ``g [..., m]``."""

    def __init__(self, sim_dim: int, embed_dim: int | None = None):
        super().__init__()
        self.rar_q_w = nn.Sequential(nn.Linear(sim_dim, sim_dim), nn.Tanh(), nn.Dropout(0.4))
        self.rar_k_w = nn.Sequential(nn.Linear(sim_dim, sim_dim), nn.Tanh(), nn.Dropout(0.4))
        self.rar_v_w = nn.Sequential(nn.Linear(sim_dim, 1))

    def forward(self, x, g, mask=None):
        k = self.rar_k_w(x)
        q = self.rar_q_w(g)[..., None, :]
        beta = masked_softmax(self.rar_v_w(k * q).squeeze(-1), mask, dim=-1)
        return l2norm((beta[..., None] * x).sum(dim=-2), dim=-1)


def _masked_mean(x, mask):
    """Mean over axis -2 of ``x [..., n, k]`` where ``mask [..., n]`` (None = all)."""
    if mask is None:
        return x.mean(dim=-2)
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(dim=-2) / m.sum(dim=-2)


class RCARSimilarity(nn.Module):
    """RCAR similarity module (``mode`` in rcr/rar/rcar, ``steps`` = K).

    Args:
        embed_dim: d (1024 in the paper). sim_dim: m (256).
        smooth: initial temperature lambda_0 (default 10 for t2i, 3 for i2t).
        alignment: the cross attention's alignment function (a name of :mod:`attnlens.align` or a
            module; ``"dot"``: the paper's), with ``alignment_options`` for a name.
        chunk_size: ``(images, captions)`` per chunk, or None for ``max_chunk_bytes``.

    >>> model = RCARSimilarity(16, 8, mode="rcar", steps=2).eval()
    >>> model(torch.randn(3, 4, 16), torch.randn(2, 5, 16), [5, 2]).shape
    torch.Size([3, 2])
    """

    def __init__(self, embed_dim: int = 1024, sim_dim: int = 256, *, mode: str = "rcar", steps: int = 2,
                 direction: str = "t2i", smooth: float | None = None, alignment: str | nn.Module = "dot",
                 alignment_options: dict | None = None, chunk_size: int | tuple[int, int] | None = None, max_chunk_bytes: int = 128 * 2**20):
        super().__init__()
        if mode not in MODES:
            raise UnknownNameError("RCAR mode", mode, MODES)
        if direction not in DIRECTIONS:
            raise UnknownNameError("direction", direction, DIRECTIONS)
        if int(steps) < 1:
            raise ShapeError(f"steps must be >= 1, got {steps}")
        self.mode, self.steps, self.direction = MODES[mode], int(steps), direction
        self.embed_dim, self.sim_dim = int(embed_dim), int(sim_dim)
        n_rar, n_rcr, n_alv = {"rar": (steps, 0, 1), "rcr": (0, steps, steps),
                               "rcar": (steps, steps - 1, steps)}[self.mode]
        self.rar_modules = nn.ModuleList([AggregationRegulator(sim_dim, embed_dim) for _ in range(n_rar)])
        self.rcr_modules = nn.ModuleList([CorrespondenceRegulator(sim_dim, embed_dim) for _ in range(n_rcr)])
        self.alv_modules = nn.ModuleList([AlignmentVector(sim_dim, embed_dim) for _ in range(n_alv)])
        self.sim_eval_w = nn.Linear(sim_dim, 1)
        with torch.no_grad():  # the reference's init: U(-r, r), r = sqrt(6 / (in + out)), zero bias
            for lin in self.modules():
                if isinstance(lin, nn.Linear):
                    r = (6.0 / (lin.in_features + lin.out_features)) ** 0.5
                    lin.weight.uniform_(-r, r)
                    lin.bias.zero_()
        t2i = direction == "t2i"
        self.smooth = float(SMOOTH[direction] if smooth is None else smooth)
        self.attn = CrossAttention(alignment, embed_dim, norm="clipped_l2norm", temperature=self.smooth,
                                   normalize_context=True, direction=direction, **dict(alignment_options or {}),
                                   query_dim="word" if t2i else "region", key_dim="region" if t2i else "word",
                                   query_modality="text" if t2i else "image",
                                   key_modality="image" if t2i else "text")
        if isinstance(chunk_size, int):
            chunk_size = (chunk_size, chunk_size)
        self.chunk_size = chunk_size
        self.max_chunk_bytes = int(max_chunk_bytes)

    @property
    def dims(self):
        return ("image", "caption", self.attn.query_dim, self.attn.key_dim)

    def forward(self, images: torch.Tensor, captions: torch.Tensor, lengths, image_mask=None) -> torch.Tensor:
        """``images [Ni, R, d]``, ``captions [Nc, L, d]``, ``lengths [Nc]`` -> ``S [Ni, Nc]``."""
        lengths, word_mask, image_mask = check_inputs(images, captions, lengths, image_mask, dim=self.embed_dim)
        captions = captions.masked_fill(~word_mask[..., None], 0.0)
        if image_mask is not None:
            images = images.masked_fill(~image_mask[..., None], 0.0)
        ni_all, R = images.shape[:2]
        nc_all, L = captions.shape[:2]
        if ni_all == 0 or nc_all == 0:
            return images.new_zeros(ni_all, nc_all)
        if self.chunk_size is not None:
            ci, cc = self.chunk_size
        else:
            lq = L if self.direction == "t2i" else R
            pairs = max(1, self.max_chunk_bytes // (8 * lq * self.embed_dim * images.element_size()))
            ci = max(1, min(ni_all, int(pairs ** 0.5)))
            cc = max(1, pairs // ci)
        rows = []
        for i0 in range(0, ni_all, ci):
            row = []
            for c0 in range(0, nc_all, cc):
                i1, c1 = min(i0 + ci, ni_all), min(c0 + cc, nc_all)
                rm = None if image_mask is None else image_mask[i0:i1]
                row.append(self._chunk(images[i0:i1], captions[c0:c1], word_mask[c0:c1], rm, i0, c0))
            rows.append(torch.cat(row, dim=1))
        return torch.cat(rows, dim=0)

    def _chunk(self, V, E, wmask, rmask, i0, c0):
        t2i = self.direction == "t2i"
        if t2i:
            query, qmask = E[None], wmask[None]                           # [1, nc, L, d], [1, nc, L]
            kmask = None if rmask is None else rmask[:, None, None, :]
        else:
            query, qmask = V[:, None], (None if rmask is None else rmask[:, None])
            kmask = wmask[None, :, None, :]
        qm4 = None if qmask is None else qmask[..., None]
        meta = {"image_offset": i0, "caption_offset": c0, **(self.attn.feature_meta(E, V) or {})}

        align = self.attn.alignment
        plain_dot = is_plain_dot(align)

        def attend(e, lam):
            if e is None and plain_dot:
                s = align.pairwise(E, V).permute(1, 0, 2, 3) if t2i else align.pairwise(V, E)
            elif plain_dot:
                q = query * e
                s = torch.einsum("icld,ird->iclr", q, V) if t2i else torch.einsum("icrd,cld->icrl", q, E)
            else:  # broadcast over the pair axes: [1 | ni, nc, Lq, d] against [ni, 1, Lk, d] or [1, nc, Lk, d]
                q = query if e is None else query * e
                s = align.score(q, V[:, None]) if t2i else align.score(q, E[None])
            a = self.attn.weigh(s, query_mask=qm4, key_mask=kmask, temperature=lam, dims=self.dims, meta=meta)
            c = torch.einsum("iclr,ird->icld", a, V) if t2i else torch.einsum("icrl,cld->icrd", a, E)
            return masked_l2norm(c, qmask)  # padded queries: 0, finite gradient

        e, lam = None, self.smooth
        if self.mode == "rar":
            x = self.alv_modules[0](query, attend(e, lam), qmask)
            g = _masked_mean(x, qmask)
            for rar in self.rar_modules:
                g = rar(x, g, qmask)
            return torch.sigmoid(self.sim_eval_w(g)).squeeze(-1)
        if self.mode == "rcr":
            for alv, rcr in zip(self.alv_modules, self.rcr_modules):
                x = alv(query, attend(e, lam), qmask)
                e, lam = rcr(x, 1.0 if e is None else e, lam)
            c = attend(e, lam)
            cos = (query * c).sum(-1) / (query.norm(dim=-1) * c.norm(dim=-1)).clamp(min=EPS)
            if qmask is None:
                return cos.mean(dim=-1)
            return (cos * qmask).sum(-1) / qmask.sum(-1)
        g = None
        for m in range(self.steps):
            x = self.alv_modules[m](query, attend(e, lam), qmask)
            if m == 0:
                g = _masked_mean(x, qmask)
            if m < self.steps - 1:
                e, lam = self.rcr_modules[m](x, 1.0 if e is None else e, lam)
            g = self.rar_modules[m](x, g, qmask)
        return torch.sigmoid(self.sim_eval_w(g)).squeeze(-1)

    def extra_repr(self):
        return f"mode={self.mode!r}, steps={self.steps}, direction={self.direction!r}, smooth={self.smooth:g}"


def _strip(state_dict: dict) -> dict:
    if "model" in state_dict and not isinstance(state_dict["model"], torch.Tensor):
        raise CheckpointError("pass the similarity state dict (or the full model state dict), not the "
                              "checkpoint file's dict; use checkpoint['model']")
    keys = list(state_dict)
    if any(k.startswith("sim_enc.") for k in keys):
        state_dict = {k[len("sim_enc."):]: v for k, v in state_dict.items() if k.startswith("sim_enc.")}
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def from_reference(state_dict: dict, mode: str = "rcar", steps: int | None = None, direction: str = "t2i",
                   **options) -> RCARSimilarity:
    """Build an :class:`RCARSimilarity` from a state dict of the public implementation.

    Keys may carry the ``sim_enc.`` prefix of a full model (``img_enc.``/``txt_enc.`` keys are
    ignored then). ``d`` and ``m`` are inferred from ``alv_modules.0.sim_transform_w.weight``
    ``[m, d]``; ``steps`` from the module indices when None. Returns the module in eval mode.

    Raises:
        CheckpointError: missing or unexpected keys, or shapes that do not fit (named).

    >>> sd = RCARSimilarity(8, 4, mode="rar", steps=2).state_dict()
    >>> from_reference({"sim_enc." + k: v for k, v in sd.items()}, mode="rar").steps
    2
    """
    if mode not in MODES:
        raise UnknownNameError("RCAR mode", mode, MODES)
    sd = _strip(dict(state_dict))
    w = sd.get("alv_modules.0.sim_transform_w.weight")
    if w is None or w.ndim != 2:
        raise CheckpointError(f"state dict has no 'alv_modules.0.sim_transform_w.weight' [m, d]; keys start "
                              f"with {sorted(sd)[:5]}")
    sim_dim, embed_dim = w.shape
    if steps is None:
        idx = lambda name: {int(m.group(1)) for k in sd if (m := re.match(rf"{name}\.(\d+)\.", k))}
        counts = {"rar": idx("rar_modules"), "rcr": idx("rcr_modules"), "alv": idx("alv_modules")}
        steps = len(counts["rar"]) if MODES[mode] == "rar" else len(counts["alv"])
    model = RCARSimilarity(embed_dim, sim_dim, mode=mode, steps=steps, direction=direction, **options)
    load_state_strict(model, sd, f"RCAR state dict does not fit mode={mode!r}, steps={steps} "
                                 f"(d={embed_dim}, m={sim_dim})")
    return model.eval()
