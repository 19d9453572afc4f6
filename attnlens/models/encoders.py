"""Encoders of SCAN's precomputed-feature variant.

* :class:`PrecompImageEncoder`: region features ``[B, R, img_dim]`` -> ``fc`` -> l2norm ->
  ``[B, R, embed_size]`` (state keys ``fc.weight``, ``fc.bias``).
* :class:`GRUTextEncoder`: word ids ``[B, L]`` + lengths ``[B]`` -> ``embed`` -> (bi)GRU, the two
  directions averaged -> l2norm -> ``[B, L, embed_size]`` (state keys ``embed.weight``,
  ``rnn.*``). Padded positions come back as zeros, with finite gradients (their norm is never
  differentiated at 0). Lengths may be in any order.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..errors import DTypeError, ShapeError
from .attention import EPS, l2norm


class PrecompImageEncoder(nn.Module):
    """``Linear(img_dim -> embed_size)`` then l2norm over the feature axis.

    >>> enc = PrecompImageEncoder(img_dim=6, embed_size=4)
    >>> enc(torch.randn(2, 3, 6)).shape
    torch.Size([2, 3, 4])
    """

    def __init__(self, img_dim: int = 2048, embed_size: int = 1024, no_imgnorm: bool = False):
        super().__init__()
        self.img_dim, self.embed_size, self.no_imgnorm = int(img_dim), int(embed_size), no_imgnorm
        self.fc = nn.Linear(img_dim, embed_size)
        r = np.sqrt(6.0) / np.sqrt(img_dim + embed_size)  # Xavier init of the reference code
        with torch.no_grad():
            self.fc.weight.uniform_(-r, r)
            self.fc.bias.zero_()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, R, img_dim]`` -> ``[B, R, embed_size]``."""
        if not isinstance(images, torch.Tensor) or images.ndim != 3 or images.shape[-1] != self.img_dim:
            raise ShapeError(f"images must be [B, R, {self.img_dim}], got {tuple(getattr(images, 'shape', ()))}")
        features = self.fc(images.to(self.fc.weight.dtype))
        return features if self.no_imgnorm else l2norm(features, dim=-1)


class GRUTextEncoder(nn.Module):
    """``Embedding(vocab_size, word_dim)`` -> GRU(word_dim -> embed_size) -> l2norm.

    With ``bidirectional=True`` the forward and backward outputs are averaged (SCAN).

    >>> enc = GRUTextEncoder(vocab_size=10, word_dim=4, embed_size=6)
    >>> feats, lengths = enc(torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([3, 2]))
    >>> feats.shape, feats[1, 2].abs().sum().item()
    (torch.Size([2, 3, 6]), 0.0)
    """

    def __init__(self, vocab_size: int, word_dim: int = 300, embed_size: int = 1024, num_layers: int = 1,
                 bidirectional: bool = True, no_txtnorm: bool = False):
        super().__init__()
        self.vocab_size, self.embed_size = int(vocab_size), int(embed_size)
        self.bidirectional, self.no_txtnorm = bidirectional, no_txtnorm
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.rnn = nn.GRU(word_dim, embed_size, num_layers, batch_first=True, bidirectional=bidirectional)
        with torch.no_grad():
            self.embed.weight.uniform_(-0.1, 0.1)

    def forward(self, tokens: torch.Tensor, lengths) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens [B, L]`` (long), ``lengths [B]`` -> ``(features [B, L, embed_size], lengths)``."""
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
            raise ShapeError(f"tokens must be [B, L], got {tuple(getattr(tokens, 'shape', ()))}")
        if tokens.dtype not in (torch.long, torch.int, torch.int16, torch.uint8, torch.int8):
            raise DTypeError(f"tokens must be integer ids, got {tokens.dtype}")
        lengths = torch.as_tensor(lengths).long().cpu()
        B, L = tokens.shape
        if lengths.shape != (B,):
            raise ShapeError(f"lengths {tuple(lengths.shape)} must be [B] = ({B},) for tokens {tuple(tokens.shape)}")
        if B and (int(lengths.min()) < 1 or int(lengths.max()) > L):
            raise ShapeError(f"lengths must lie in [1, {L}] for tokens {tuple(tokens.shape)}, got "
                             f"min {int(lengths.min())}, max {int(lengths.max())}")
        if B and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ShapeError(f"token ids must lie in [0, {self.vocab_size}), got [{int(tokens.min())}, "
                             f"{int(tokens.max())}]")
        x = self.embed(tokens.long())
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=L)
        if self.bidirectional:
            h = out.shape[-1] // 2
            out = (out[..., :h] + out[..., h:]) / 2
        valid = (torch.arange(L)[None, :] < lengths[:, None]).to(out.device)[..., None]  # [B, L, 1]
        if not self.no_txtnorm:
            # l2norm (same operations as attention.l2norm at real positions, so bit-identical values);
            # at padded positions the squared norm (0 there) is replaced by 1 before the sqrt, so
            # sqrt is never differentiated at 0 and the gradient stays finite
            sq = torch.where(valid, out.pow(2).sum(dim=-1, keepdim=True), torch.ones((), dtype=out.dtype,
                                                                                     device=out.device))
            out = out / (sq.sqrt() + EPS)
        return out.masked_fill(~valid, 0.0), lengths
