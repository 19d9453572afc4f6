"""SCAN (Lee et al., ECCV 2018) stacked cross attention: similarity of every image with every
caption, vectorised over all pairs in memory-bounded chunks.

Axes: ``images [Ni, R, D]`` (regions), ``captions [Nc, L, D]`` (words, padded to ``L``),
``lengths [Nc]`` (real words per caption, any order). The result ``S [Ni, Nc]`` holds
``S[i, c]`` = similarity of image ``i`` and caption ``c``.

Text-to-image (``t2i``): words are the queries, regions the keys. Raw scores
``s[i, c, w, r]`` come from the alignment function; they are normalised over the words
(``clipped_l2norm`` by default), softmaxed over the regions with ``lambda_softmax`` (9), each
word's attended vector ``c_w = sum_r a[w, r] v_r`` is compared with the word by cosine, and
the relevances are pooled over the caption's words (``mean``, ``lse`` with ``lambda_lse`` 6,
``max``, ``sum``). Image-to-text (``i2t``) swaps the roles (defaults 4 and 5) and pools over
the regions. The relevance always uses the raw vectors ``e_w`` and ``c_w``, whatever the
alignment function.

No ``c_w`` is materialised (the exact algebra of REFERENCE_MODELS.md): the cosine numerator is
``sum_r a[w, r] (e_w . v_r)`` from the raw dot scores, and ``|c_w|^2 = a_w^T G a_w`` with the
image's Gram matrix ``G = V V^T``.

Bit-for-bit reproducibility across chunk sizes: BLAS kernels (MKL) round differently
depending on the shapes of a product, so the score products are always computed on fixed
**GEMM tiles** (``GEMM_TILE`` images x captions, aligned to absolute indices) whatever the
chunking, and the ``a^T G a`` terms as batched products of fixed shape (t2i: one image's Gram
matrix against a whole caption tile, chunks that cut a tile being zero-padded to it; i2t: per
pair). Hence every chunk size gives the same float64 bits for the same call inputs (tested). (Calling the function again on a subset of the
images or captions changes the tiles, and may change the last bit, ~1e-16 relative.)

Every chunk's attention weights go through :meth:`CrossAttention.weigh` with
``dims=("image", "caption", "word", "region")`` (``t2i``) or ``("image", "caption", "region",
"word")`` (``i2t``) and ``meta={"image_offset": i0, "caption_offset": c0}``, so the capture
layer records them.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..align import Bilinear, check_features
from ..errors import DTypeError, NonFiniteError, ShapeError, UnknownNameError
from .attention import CrossAttention

DIRECTIONS = ("t2i", "i2t")
AGGS = ("mean", "lse", "max", "sum")
_AGG_ALIASES = {"mean": "mean", "lse": "lse", "logsumexp": "lse", "max": "max", "sum": "sum"}
LAMBDA_SOFTMAX = {"t2i": 9.0, "i2t": 4.0}
LAMBDA_LSE = {"t2i": 6.0, "i2t": 5.0}
GEMM_TILE = (16, 64)  # images x captions per score product (fixed: see module docstring)
EPS = 1e-8


def canonical_agg(agg: str) -> str:
    """``"LogSumExp"``/``"lse"`` -> ``"lse"`` etc. (the reference code's names are accepted)."""
    key = str(agg).lower()
    if key not in _AGG_ALIASES:
        raise UnknownNameError("pooling", agg, [*AGGS, "Mean", "LogSumExp", "Max", "Sum"])
    return _AGG_ALIASES[key]


def check_inputs(images, captions, lengths, image_mask=None, *, dim: int | None = None):
    """Validate SCAN inputs; returns ``(lengths [Nc] long, word_mask [Nc, L], image_mask or None)``.

    Raises:
        ShapeError: wrong ranks, mismatched feature dims, lengths outside ``[1, L]``.
        DTypeError: non-tensors, non-float features, mixed dtypes, non-integer lengths.
        NonFiniteError: NaN or inf in a real (non-padded) position.
    """
    check_features("images", images)
    check_features("captions", captions)
    if images.dtype != captions.dtype:
        raise DTypeError(f"images {tuple(images.shape)} are {images.dtype} but captions "
                         f"{tuple(captions.shape)} are {captions.dtype}; convert one of them")
    if images.device != captions.device:
        raise ShapeError(f"images on {images.device} but captions on {captions.device}")
    if images.shape[-1] != captions.shape[-1]:
        raise ShapeError(f"images {tuple(images.shape)} [Ni, R, D] and captions {tuple(captions.shape)} "
                         f"[Nc, L, D] differ in feature dim D")
    if dim is not None and images.shape[-1] != dim:
        raise ShapeError(f"features have dim {images.shape[-1]} (images {tuple(images.shape)}) but the "
                         f"module was built for dim {dim}")
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.is_floating_point() or lengths.dtype == torch.bool or lengths.is_complex():
        if lengths.is_floating_point() and bool((lengths == lengths.round()).all()):
            lengths = lengths.long()
        else:
            raise DTypeError(f"lengths must be integers, got {lengths.dtype}")
    lengths = lengths.to(device=captions.device, dtype=torch.long)
    nc, L = captions.shape[:2]
    if lengths.shape != (nc,):
        raise ShapeError(f"lengths {tuple(lengths.shape)} must be [Nc] = ({nc},) for captions "
                         f"{tuple(captions.shape)}")
    if nc and int(lengths.min()) < 1:
        bad = torch.nonzero(lengths < 1).flatten()[:5].tolist()
        raise ShapeError(f"zero-length captions at {bad} (lengths must be >= 1; captions {tuple(captions.shape)})")
    if nc and int(lengths.max()) > L:
        bad = torch.nonzero(lengths > L).flatten()[:5].tolist()
        raise ShapeError(f"lengths at {bad} exceed the padded length L = {L} of captions "
                         f"{tuple(captions.shape)} (max length {int(lengths.max())})")
    word_mask = torch.arange(L, device=captions.device)[None, :] < lengths[:, None]
    if image_mask is not None:
        image_mask = torch.as_tensor(image_mask, device=images.device)
        if image_mask.dtype != torch.bool:
            raise DTypeError(f"image_mask must be boolean, got {image_mask.dtype}")
        if image_mask.shape != images.shape[:2]:
            raise ShapeError(f"image_mask {tuple(image_mask.shape)} must be [Ni, R] = {tuple(images.shape[:2])}")
        if image_mask.numel() and not bool(image_mask.any(-1).all()):
            bad = torch.nonzero(~image_mask.any(-1)).flatten()[:5].tolist()
            raise ShapeError(f"images {bad} have no valid region in image_mask {tuple(image_mask.shape)}")
    if not bool(torch.isfinite(captions).all()) and not bool(torch.isfinite(captions[word_mask]).all()):
        raise NonFiniteError(f"captions {tuple(captions.shape)} contain NaN or inf in real (non-padded) words")
    if not bool(torch.isfinite(images).all()) and (
            image_mask is None or not bool(torch.isfinite(images[image_mask]).all())):
        raise NonFiniteError(f"images {tuple(images.shape)} contain NaN or inf")
    return lengths, word_mask, image_mask


def is_plain_dot(alignment: nn.Module) -> bool:
    """True when the alignment's scores are the raw dot products (no weight, scale or act)."""
    return (isinstance(alignment, Bilinear) and alignment.linear is None and alignment.scale == 1.0
            and alignment.activation is None)


def pool(relevance: torch.Tensor, mask: torch.Tensor | None, agg: str, lambda_lse: float) -> torch.Tensor:
    """Pool ``relevance [..., n]`` over the last axis, only where ``mask`` (broadcastable) is True."""
    if agg == "lse":
        x = relevance * lambda_lse
        if mask is not None:
            x = x.masked_fill(~mask, float("-inf"))
        return torch.logsumexp(x, dim=-1) / lambda_lse
    if agg == "max":
        x = relevance if mask is None else relevance.masked_fill(~mask, float("-inf"))
        return x.amax(dim=-1)
    x = relevance if mask is None else relevance.masked_fill(~mask, 0.0)
    total = x.sum(dim=-1)
    if agg == "sum":
        return total
    count = relevance.shape[-1] if mask is None else mask.expand_as(relevance).sum(-1)
    return total / count


def _spans(start: int, stop: int, step: int):
    for a in range(start, stop, step):
        yield a, min(a + step, stop)


class ScanSimilarity(nn.Module):
    """SCAN similarity of every image with every caption, ``[Ni, Nc]``.

    Args:
        direction: ``"t2i"`` (words attend over regions) or ``"i2t"``.
        agg: pooling of the relevances: ``"mean"``, ``"lse"``, ``"max"``, ``"sum"`` (or the
            reference names ``Mean``, ``LogSumExp``, ``Max``, ``Sum``).
        lambda_softmax: softmax temperature (default 9 for t2i, 4 for i2t).
        lambda_lse: LogSumExp temperature (default 6 for t2i, 5 for i2t; 20 on COCO i2t).
        norm: score normalisation over the query axis (see :mod:`attnlens.models.attention`).
        alignment: registered alignment name or a module (see :mod:`attnlens.align`).
        dim: feature dim (needed by named alignments with parameters or scaling).
        chunk_size: ``(images, captions)`` per chunk (an int for both), or ``None`` to derive it
            from ``max_chunk_bytes``. Results do not depend on it (bit for bit).
        max_chunk_bytes: memory bound of one chunk's intermediates when ``chunk_size`` is None.
        progress: show a tqdm bar over chunks.
        **alignment_options: passed to :func:`attnlens.align.create`.

    >>> sim = ScanSimilarity("t2i", "mean")
    >>> S = sim(torch.randn(3, 4, 8), torch.randn(5, 6, 8), torch.tensor([6, 2, 3, 1, 4]))
    >>> S.shape
    torch.Size([3, 5])
    """

    def __init__(self, direction: str = "t2i", agg: str = "mean", lambda_softmax: float | None = None,
                 lambda_lse: float | None = None, norm: str = "clipped_l2norm",
                 alignment: str | nn.Module = "dot", dim: int | None = None,
                 chunk_size: int | tuple[int, int] | None = None, *, max_chunk_bytes: int = 128 * 2**20,
                 progress: bool = False, **alignment_options):
        super().__init__()
        if direction not in DIRECTIONS:
            raise UnknownNameError("direction", direction, DIRECTIONS)
        self.direction, self.agg = direction, canonical_agg(agg)
        self.lambda_softmax = float(LAMBDA_SOFTMAX[direction] if lambda_softmax is None else lambda_softmax)
        self.lambda_lse = float(LAMBDA_LSE[direction] if lambda_lse is None else lambda_lse)
        if isinstance(alignment, str) and dim is None:
            if alignment not in ("dot", "cosine"):
                raise ShapeError(f"alignment {alignment!r} needs the feature dim: pass dim=")
        t2i = direction == "t2i"
        self.attn = CrossAttention(alignment, dim if dim is not None else 1, norm=norm,
                                   temperature=self.lambda_softmax, normalize_context=False,
                                   direction=direction, query_dim="word" if t2i else "region",
                                   key_dim="region" if t2i else "word",
                                   query_modality="text" if t2i else "image",
                                   key_modality="image" if t2i else "text", **alignment_options)
        self.dim = dim
        if isinstance(chunk_size, int):
            chunk_size = (chunk_size, chunk_size)
        if chunk_size is not None and (len(chunk_size) != 2 or min(chunk_size) < 1):
            raise ShapeError(f"chunk_size must be a positive int or (images, captions), got {chunk_size}")
        self.chunk_size = None if chunk_size is None else (int(chunk_size[0]), int(chunk_size[1]))
        self.max_chunk_bytes = int(max_chunk_bytes)
        self.progress = progress

    @property
    def dims(self) -> tuple[str, ...]:
        q, k = (("word", "region") if self.direction == "t2i" else ("region", "word"))
        return ("image", "caption", q, k)

    def chunks_for(self, n_images: int, n_captions: int, n_regions: int, n_words: int,
                   itemsize: int) -> tuple[int, int]:
        """``(images, captions)`` per chunk: ``chunk_size`` or the memory bound (~12 buffers of
        ``[ni, nc, L, R]`` per chunk), whole GEMM tiles where the bound allows."""
        if self.chunk_size is not None:
            return min(self.chunk_size[0], max(n_images, 1)), min(self.chunk_size[1], max(n_captions, 1))
        ti, tc = GEMM_TILE
        pairs = max(1, self.max_chunk_bytes // (12 * n_regions * n_words * itemsize))
        if pairs < ti * tc:                       # below one tile: stay inside a tile row
            ni = min(n_images, ti, max(1, pairs // tc)) if pairs >= tc else 1
            nc = min(n_captions, max(1, pairs // ni))
            return max(ni, 1), max(nc, 1)
        ni = ti * max(1, min(math.ceil(n_images / ti), int(math.sqrt(pairs / (ti * tc)))))
        nc = tc * max(1, (pairs // ni) // tc)
        return min(ni, max(n_images, 1)), min(nc, max(n_captions, 1))

    def forward(self, images: torch.Tensor, captions: torch.Tensor, lengths, image_mask=None) -> torch.Tensor:
        """``images [Ni, R, D]``, ``captions [Nc, L, D]``, ``lengths [Nc]`` -> ``S [Ni, Nc]``.

        ``image_mask [Ni, R]`` (optional, True = real region) excludes padded regions.
        """
        lengths, word_mask, image_mask = check_inputs(images, captions, lengths, image_mask, dim=self.dim)
        ni_all, R = images.shape[:2]
        nc_all, L = captions.shape[:2]
        # padding may hold anything: zero it so that it cannot leak into norms or Gram matrices
        if not bool(word_mask.all()):
            captions = captions.masked_fill(~word_mask[..., None], 0.0)
        if image_mask is not None and not bool(image_mask.all()):
            images = images.masked_fill(~image_mask[..., None], 0.0)
        out = images.new_zeros(ni_all, nc_all)
        if ni_all == 0 or nc_all == 0:
            return out
        t2i = self.direction == "t2i"
        # Gram matrices of the attended side (one bmm per call, independent of the chunking)
        grams = torch.bmm(images, images.transpose(1, 2)) if t2i else torch.bmm(captions, captions.transpose(1, 2))
        qnorm = captions.norm(dim=-1) if t2i else images.norm(dim=-1)
        # while captured: the norm deviation of the features entering the alignment function
        extra = self.attn.feature_meta(captions, images) or {}
        ci, cc = self.chunks_for(ni_all, nc_all, R, L, images.element_size())
        blocks = [(a, b) for a in _spans(0, ni_all, ci) for b in _spans(0, nc_all, cc)]
        from tqdm.auto import tqdm
        rows = []
        for (i0, i1), (c0, c1) in tqdm(blocks, disable=not self.progress, desc="SCAN pairs", unit="chunk"):
            scores, dot = self._chunk_scores(images, captions, i0, i1, c0, c1)
            rmask = None if image_mask is None else image_mask[i0:i1]
            wmask = word_mask[c0:c1]
            if t2i:
                s = self._relevance_t2i(scores, dot, grams[i0:i1], qnorm[c0:c1], wmask, rmask, i0, c0, extra)
            else:
                s = self._relevance_i2t(scores, dot, grams[c0:c1], qnorm[i0:i1], wmask, rmask, i0, c0, extra)
            rows.append(((i0, c0), s))
        if torch.is_grad_enabled() and (images.requires_grad or captions.requires_grad
                                        or any(p.requires_grad for p in self.parameters())):
            # assemble with cat so autograd sees a plain graph
            by_row: dict[int, list] = {}
            for (i0, c0), s in rows:
                by_row.setdefault(i0, []).append(s)
            return torch.cat([torch.cat(v, dim=1) for _, v in sorted(by_row.items())], dim=0)
        for (i0, c0), s in rows:
            out[i0:i0 + s.shape[0], c0:c0 + s.shape[1]] = s
        return out

    def _chunk_scores(self, images, captions, i0, i1, c0, c1):
        """Alignment scores and raw dot products of the chunk, ``[ni, nc, Lq, Lk]`` each, computed
        on the fixed GEMM tiles that cover it (contiguous buffers)."""
        t2i = self.direction == "t2i"
        R, L = images.shape[1], captions.shape[1]
        lq, lk = (L, R) if t2i else (R, L)
        shape = (i1 - i0, c1 - c0, lq, lk)
        plain = is_plain_dot(self.attn.alignment)
        scores = images.new_empty(shape)
        dot = scores if plain else images.new_empty(shape)
        ti, tc = GEMM_TILE
        for a0 in range((i0 // ti) * ti, i1, ti):
            a1 = min(a0 + ti, images.shape[0])
            for b0 in range((c0 // tc) * tc, c1, tc):
                b1 = min(b0 + tc, captions.shape[0])
                V, E = images[a0:a1], captions[b0:b1]
                if t2i:
                    s_t = self.attn.alignment.pairwise(E, V).permute(1, 0, 2, 3)
                    d_t = None if plain else _raw_dot(E, V).permute(1, 0, 2, 3)
                else:
                    s_t = self.attn.alignment.pairwise(V, E)
                    d_t = None if plain else _raw_dot(V, E)
                ia, ib = max(a0, i0), min(a1, i1)
                ca, cb = max(b0, c0), min(b1, c1)
                dst = (slice(ia - i0, ib - i0), slice(ca - c0, cb - c0))
                src = (slice(ia - a0, ib - a0), slice(ca - b0, cb - b0))
                scores[dst] = s_t[src]
                if not plain:
                    dot[dst] = d_t[src]
        return scores, dot

    def _relevance_t2i(self, scores, dot, grams, enorm, wmask, rmask, i0, c0, extra=None):
        ni, nc, L, R = scores.shape
        qm = None if bool(wmask.all()) else wmask[None, :, :, None]    # None = no padding here
        km = None if rmask is None or bool(rmask.all()) else rmask[:, None, None, :]
        a = self.attn.weigh(scores, query_mask=qm, key_mask=km, dims=self.dims,
                            meta={"image_offset": i0, "caption_offset": c0, **(extra or {})})
        num = (a * dot).sum(-1)                                         # [ni, nc, L]
        ag = _gram_product_t2i(a, grams, c0)
        cn = (ag * a).sum(-1).clamp_min(_tiny(a)).sqrt()                # |c_w| (no inf grad at 0)
        rel = num / (enorm[None] * cn).clamp(min=EPS)
        return pool(rel, wmask[None], self.agg, self.lambda_lse)

    def _relevance_i2t(self, scores, dot, grams, vnorm, wmask, rmask, i0, c0, extra=None):
        ni, nc, R, L = scores.shape
        qm = None if rmask is None or bool(rmask.all()) else rmask[:, None, :, None]
        km = None if bool(wmask.all()) else wmask[None, :, None, :]
        a = self.attn.weigh(scores, query_mask=qm, key_mask=km, dims=self.dims,
                            meta={"image_offset": i0, "caption_offset": c0, **(extra or {})})
        num = (a * dot).sum(-1)                                         # [ni, nc, R]
        g = grams[None].expand(ni, nc, L, L).reshape(ni * nc, L, L)
        ag = torch.bmm(a.reshape(ni * nc, R, L), g).reshape(ni, nc, R, L)
        cn = (ag * a).sum(-1).clamp_min(_tiny(a)).sqrt()                # |c_r|
        rel = num / (vnorm[:, None] * cn).clamp(min=EPS)
        return pool(rel, None if rmask is None else rmask[:, None], self.agg, self.lambda_lse)

    def extra_repr(self) -> str:
        return (f"direction={self.direction!r}, agg={self.agg!r}, lambda_softmax={self.lambda_softmax:g}, "
                f"lambda_lse={self.lambda_lse:g}, chunk_size={self.chunk_size}")


def _gram_product_t2i(a: torch.Tensor, grams: torch.Tensor, c0: int) -> torch.Tensor:
    """``a [ni, nc, L, R] @ G [ni, R, R]`` per pair, as products of fixed shape
    ``[tile_captions * L, R] x [R, R]`` over caption tiles aligned to absolute indices (chunks
    that cut a tile are zero-padded to it), so the bits do not depend on the chunking."""
    ni, nc, L, R = a.shape
    tc = GEMM_TILE[1]
    start = (c0 // tc) * tc
    stop = -(-(c0 + nc) // tc) * tc
    if start == c0 and stop == c0 + nc:
        padded = a
    else:
        padded = a.new_zeros(ni, stop - start, L, R)
        padded[:, c0 - start:c0 - start + nc] = a
    nt = (stop - start) // tc
    out = torch.matmul(padded.reshape(ni, nt, tc * L, R), grams[:, None])
    out = out.reshape(ni, stop - start, L, R)
    return out if out.shape[1] == nc else out[:, c0 - start:c0 - start + nc]


def _tiny(x: torch.Tensor) -> float:
    return torch.finfo(x.dtype).tiny


def _raw_dot(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """``[Nq, Lq, D] x [Nk, Lk, D] -> [Nq, Nk, Lq, Lk]`` raw dot products, one GEMM."""
    nq, lq, d = query.shape
    nk, lk, _ = key.shape
    return (query.reshape(nq * lq, d) @ key.reshape(nk * lk, d).T).reshape(nq, lq, nk, lk).permute(0, 2, 1, 3)


def similarity(images: torch.Tensor, captions: torch.Tensor, lengths, *, direction: str = "t2i",
               agg: str = "mean", lambda_softmax: float | None = None, lambda_lse: float | None = None,
               norm: str = "clipped_l2norm", alignment: str | nn.Module = "dot",
               chunk_size: int | tuple[int, int] | None = None, max_chunk_bytes: int = 128 * 2**20,
               image_mask: torch.Tensor | None = None, progress: bool = False,
               **alignment_options) -> torch.Tensor:
    """SCAN similarity ``S [Ni, Nc]`` of ``images [Ni, R, D]`` and ``captions [Nc, L, D]``.

    Builds a :class:`ScanSimilarity` (see it for the arguments) and calls it. Float32 in gives
    float32 out, float64 gives float64.

    >>> g = torch.Generator().manual_seed(0)
    >>> ims, caps = torch.randn(2, 5, 8, generator=g), torch.randn(3, 4, 8, generator=g)
    >>> S = similarity(ims, caps, [4, 1, 2], direction="i2t", agg="lse")
    >>> S.shape, S.dtype
    (torch.Size([2, 3]), torch.float32)
    """
    if not isinstance(images, torch.Tensor):
        raise DTypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    dim = images.shape[-1] if images.ndim >= 1 else None
    module = ScanSimilarity(direction, agg, lambda_softmax, lambda_lse, norm, alignment, dim, chunk_size,
                            max_chunk_bytes=max_chunk_bytes, progress=progress, **alignment_options)
    module = module.to(dtype=images.dtype) if images.is_floating_point() else module
    return module(images, captions, lengths, image_mask=image_mask)
