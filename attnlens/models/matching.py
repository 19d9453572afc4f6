"""The image-text matching model trained on raw images with boxes: region encoder + GRU text
encoder + SCAN (or SCAN+RCAR) similarity with a pluggable alignment function.

Axes: ``images [B, 3, H, W]`` float in ``[0, 1]``, ``boxes [B, R, 4]`` xyxy pixels,
``region_mask [B, R]`` (True = real region), ``tokens [Nc, L]`` word ids (0 = padding),
``lengths [Nc]``. Similarities ``S [Ni, Nc]``: ``S[i, c]`` = image ``i`` with caption ``c``.

The similarity module's attention goes through :class:`~attnlens.models.attention.CrossAttention`
(``self.sim.attn`` for SCAN), so the capture layer records it like any other site.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ShapeError, UnknownNameError
from .encoders import GRUTextEncoder
from .regions import RegionEncoder
from .scan import ScanSimilarity

RCAR_MODES = ("coop_rcar", "only_rcr", "only_rar", "rcar", "rcr", "rar")


def _build_rcar(rcar: dict, *, embed_dim: int, direction: str, alignment: str,
                alignment_options: dict) -> nn.Module:
    from .rcar import RCARSimilarity  # imported lazily: only SCAN+RCAR models need it

    opts = dict(rcar)
    mode = opts.pop("mode", "coop_rcar")
    if mode not in RCAR_MODES:
        raise UnknownNameError("RCAR mode", mode, RCAR_MODES)
    opts["alignment"], opts["alignment_options"] = alignment, dict(alignment_options)
    opts.setdefault("sim_dim", max(8, embed_dim // 4))
    return RCARSimilarity(embed_dim, mode=mode, direction=direction, **opts)


class MatchingModel(nn.Module):
    """SCAN / SCAN+RCAR over region features computed from pixels.

    Args:
        vocab_size: number of word ids (id 0 is padding).
        embed_dim: joint embedding size ``D``.
        word_dim: word-embedding size of the GRU.
        alignment: alignment function name (:func:`attnlens.align.available`).
        direction: ``"t2i"`` or ``"i2t"``.
        agg: SCAN pooling (``mean``, ``lse``, ``max``, ``sum``).
        lambda_softmax / lambda_lse: SCAN temperatures (None: SCAN's defaults).
        norm: SCAN score normalisation.
        rcar: None for plain SCAN, or ``{"mode": ..., "steps": K, ...}`` (RCAR options).
        channels / pool / sampling_ratio / geometry / strides / pixels: the :class:`RegionEncoder`.
        alignment_options: extra options of the alignment function.

    >>> m = MatchingModel(20, embed_dim=8, word_dim=4, channels=(4, 8), pool=(2, 2))
    >>> S = m(torch.rand(2, 3, 16, 16), torch.tensor([[[0., 0., 8., 8.], [4., 4., 16., 16.]]] * 2),
    ...       None, torch.tensor([[3, 4, 5], [6, 7, 0]]), torch.tensor([3, 2]))
    >>> S.shape
    torch.Size([2, 2])
    """

    def __init__(self, vocab_size: int, embed_dim: int = 128, word_dim: int = 64, alignment: str = "dot",
                 direction: str = "t2i", agg: str = "mean", lambda_softmax: float | None = None,
                 lambda_lse: float | None = None, norm: str = "clipped_l2norm", rcar: dict | None = None,
                 channels: tuple[int, ...] = (16, 32, 32), pool: tuple[int, int] = (3, 3), sampling_ratio: int = 2,
                 geometry: bool = True, strides: tuple[int, ...] | None = None, pixels: bool = False,
                 alignment_options: dict | None = None):
        super().__init__()
        self.hparams: dict[str, Any] = dict(
            vocab_size=int(vocab_size), embed_dim=int(embed_dim), word_dim=int(word_dim), alignment=alignment,
            direction=direction, agg=agg, lambda_softmax=lambda_softmax, lambda_lse=lambda_lse, norm=norm,
            rcar=None if rcar is None else dict(rcar), channels=list(channels), pool=list(pool),
            sampling_ratio=int(sampling_ratio), geometry=bool(geometry),
            strides=None if strides is None else list(strides), pixels=bool(pixels),
            alignment_options=dict(alignment_options or {}))
        self.image_encoder = RegionEncoder(embed_dim, tuple(channels), tuple(pool), sampling_ratio, geometry,
                                           strides=None if strides is None else tuple(strides), pixels=pixels)
        self.text_encoder = GRUTextEncoder(vocab_size, word_dim=word_dim, embed_size=embed_dim)
        if rcar is None:
            self.sim = ScanSimilarity(direction, agg, lambda_softmax, lambda_lse, norm, alignment, dim=embed_dim,
                                      **dict(alignment_options or {}))
        else:
            self.sim = _build_rcar(rcar, embed_dim=embed_dim, direction=direction, alignment=alignment,
                                   alignment_options=dict(alignment_options or {}))
        self.direction = direction

    @property
    def alignment_name(self) -> str:
        return str(self.hparams["alignment"])

    @property
    def uses_rcar(self) -> bool:
        return self.hparams["rcar"] is not None

    def encode_images(self, images: torch.Tensor, boxes: torch.Tensor,
                      region_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, 3, H, W]``, ``[B, R, 4]`` -> region features ``[B, R, D]`` (l2-normalised)."""
        return self.image_encoder(images, boxes, region_mask)

    def encode_captions(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``tokens [Nc, L]``, ``lengths [Nc]`` -> word features ``[Nc, L, D]`` (l2-normalised)."""
        if tokens.ndim != 2:
            raise ShapeError(f"tokens must be [Nc, L], got shape {tuple(tokens.shape)}")
        lengths = torch.as_tensor(lengths)
        if lengths.shape != tokens.shape[:1]:
            raise ShapeError(f"lengths {tuple(lengths.shape)} must be [Nc] for tokens {tuple(tokens.shape)}")
        out = self.text_encoder(tokens, lengths)
        out = out[0] if isinstance(out, tuple) else out
        return out  # l2-normalised by the encoder; padded positions 0 (with finite gradients)

    def similarity_from_features(self, image_feats: torch.Tensor, caption_feats: torch.Tensor,
                                 lengths: torch.Tensor, image_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[Ni, R, D]``, ``[Nc, L, D]``, ``[Nc]`` -> ``S [Ni, Nc]``; ``image_mask [Ni, R]`` drops
        regions from the attention."""
        lengths = torch.as_tensor(lengths, device=caption_feats.device)
        return self.sim(image_feats, caption_feats, lengths, image_mask=image_mask)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor, region_mask: torch.Tensor | None,
                tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Similarity ``S [Ni, Nc]`` of every image with every caption."""
        img = self.encode_images(images, boxes, region_mask)
        cap = self.encode_captions(tokens, lengths)
        return self.similarity_from_features(img, cap, lengths, region_mask)
