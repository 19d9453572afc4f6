"""A small text-to-image generator whose image sub-regions attend over the caption's words.

In the spirit of AttnGAN's attention stage (and of Obj-GAN, which also conditions on a box
layout), trained without an adversary: a deterministic conditional decoder with a pixel
regression loss, small enough to train on 2 CPU cores in minutes.

Architecture::

    caption tokens [B, L] -> Embedding -> bidirectional GRU -> word features [B, L, D]
    layout [B, 1, S, S] (1 inside the boxes of the objects to draw, 0 elsewhere; no colours or
        shapes) -> strided convs -> cell features h [B, g*g, D] (+ a learned position embedding)
    attend: CrossAttention(alignment), query = the g x g cells, key = the words -> context [B, g*g, D]
    decoder: [h, context] at g x g -> conv, x2 upsample (+ layout skip) ... -> RGB [B, 3, S, S] in [0, 1]

The caption reaches the image **only** through the word attention (no sentence vector), so
removing words from the attention removes their information (up to the GRU's context). Weights
of the site are ``[B, cells, words]`` (cell -> word, rows sum to 1 over the words).

``norm="no_norm"`` by default: AttnGAN applies a plain softmax over the words to the raw
scores. (SCAN's normalisations over the query axis — here the cells — are available.)

Removal (faithfulness):
* words: ``word_keep [B, L]``: ``"mask"`` drops them from the attention, ``"zero"`` zeroes
  their features, ``"mean"`` replaces them by the caption's mean word feature.
* cells: ``cell_keep [B, g*g]``: a removed cell gets no text, i.e. its attended context is
  zero (``"mask"``, ``"zero"``) or the mean context over the cells (``"mean"``).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ShapeError, UnknownNameError
from .attention import CrossAttention, length_mask

REMOVALS = ("mask", "zero", "mean")


class GenerationOutput(NamedTuple):
    """``image [B, 3, S, S]`` in [0, 1], cell -> word ``weights`` and ``scores [B, g*g, L]``."""

    image: torch.Tensor
    weights: torch.Tensor
    scores: torch.Tensor


def layout_map(boxes, image_size: int, source_size: int) -> np.ndarray:
    """``float32 [S, S]`` map, 1 on pixels inside any of the xyxy ``boxes`` (given in pixels of a
    ``source_size`` image) scaled to ``image_size``; pixel-centre rule of ``METRICS.md``.

    >>> layout_map([[0, 0, 32, 32]], 4, 64).tolist()
    [[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    """
    scale = image_size / float(source_size)
    out = np.zeros((image_size, image_size), np.float32)
    centres = np.arange(image_size) + 0.5
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale:
        rows = (centres >= y1) & (centres < y2)
        cols = (centres >= x1) & (centres < x2)
        out[np.ix_(rows, cols)] = 1.0
    return out


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU())


class TextToImage(nn.Module):
    """Layout + caption -> image, with word attention per image cell (module docstring).

    Args:
        vocab_size: caption vocabulary size (0 = padding).
        alignment: alignment function name.
        dim: word / cell feature dim.
        word_dim: word embedding dim.
        image_size: output side ``S`` (a power-of-two multiple of ``grid``).
        grid: cells per side ``g``.
        width: decoder channels.
        norm / temperature: of the attention.

    >>> g = TextToImage(30, alignment="dot", dim=16, image_size=16, grid=4, width=8)
    >>> out = g(torch.randint(1, 30, (2, 5)), torch.tensor([5, 3]), torch.zeros(2, 1, 16, 16))
    >>> out.image.shape, out.weights.shape
    (torch.Size([2, 3, 16, 16]), torch.Size([2, 16, 5]))
    """

    def __init__(self, vocab_size: int, *, alignment: str = "general", dim: int = 64, word_dim: int = 32,
                 image_size: int = 32, grid: int = 8, width: int = 32, norm: str = "no_norm",
                 temperature: float = 1.0, alignment_options: dict | None = None):
        super().__init__()
        ratio = int(image_size) // int(grid)
        if ratio < 1 or ratio * int(grid) != int(image_size) or ratio & (ratio - 1):
            raise ShapeError(f"image_size ({image_size}) must be grid ({grid}) times a power of two")
        self.image_size, self.grid, self.n_up = int(image_size), int(grid), int(math.log2(ratio))
        self.embed = nn.Embedding(int(vocab_size), int(word_dim), padding_idx=0)
        self.rnn = nn.GRU(int(word_dim), int(dim) // 2, batch_first=True, bidirectional=True)
        self.word_proj = nn.Linear(2 * (int(dim) // 2), int(dim))
        down = [_block(1, width)]
        for _ in range(self.n_up):
            down += [nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU()]
        self.layout_enc = nn.Sequential(*down, nn.Conv2d(width, dim, 1))
        self.position = nn.Parameter(torch.zeros(dim, self.grid, self.grid))
        self.attend = CrossAttention(alignment, dim, norm=norm, temperature=temperature, direction="i2t",
                                     query_dim="cell", key_dim="word", query_modality="image",
                                     key_modality="text", **(alignment_options or {}))
        self.fuse = _block(2 * dim, width)
        self.up = nn.ModuleList(_block(width + 1, width) for _ in range(self.n_up))
        self.to_rgb = nn.Conv2d(width + 1, 3, 1)

    def encode_text(self, tokens: torch.Tensor, lengths: torch.Tensor):
        """Word features ``[B, L, D]`` and their mask ``[B, L]``."""
        if tokens.ndim != 2:
            raise ShapeError(f"tokens must be [B, L], got {tuple(tokens.shape)}")
        lengths = torch.as_tensor(lengths, device=tokens.device)
        mask = length_mask(lengths, tokens.shape[1])
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(tokens), lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        return self.word_proj(out), mask

    def encode_layout(self, layout: torch.Tensor) -> torch.Tensor:
        """Cell features ``[B, g*g, D]`` of ``layout [B, 1, S, S]``."""
        s = self.image_size
        if layout.ndim != 4 or tuple(layout.shape[1:]) != (1, s, s):
            raise ShapeError(f"layout must be [B, 1, {s}, {s}], got {tuple(layout.shape)}")
        h = self.layout_enc(layout) + self.position
        return h.flatten(2).transpose(1, 2)

    def decode(self, cells: torch.Tensor, context: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
        """Image ``[B, 3, S, S]`` from cell features and contexts ``[B, g*g, D]``."""
        b, g = cells.shape[0], self.grid
        x = torch.cat([cells, context], -1).transpose(1, 2).reshape(b, -1, g, g)
        x = self.fuse(x)
        for k, block in enumerate(self.up):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            size = g * 2 ** (k + 1)
            x = block(torch.cat([x, F.adaptive_avg_pool2d(layout, size)], 1))
        return torch.sigmoid(self.to_rgb(torch.cat([x, layout], 1)))

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, layout: torch.Tensor, *,
                word_keep: torch.Tensor | None = None, cell_keep: torch.Tensor | None = None,
                removal: str = "mask") -> GenerationOutput:
        """Generate ``[B, 3, S, S]`` from captions ``tokens [B, L]`` and ``layout [B, 1, S, S]``."""
        if removal not in REMOVALS:
            raise UnknownNameError("removal", removal, REMOVALS)
        words, mask = self.encode_text(tokens, lengths)
        if word_keep is not None:
            if word_keep.shape != mask.shape:
                raise ShapeError(f"word_keep {tuple(word_keep.shape)} must match tokens {tuple(mask.shape)}")
            keep = word_keep.bool().to(mask.device)
            if removal == "mask":
                mask = mask & keep
            elif removal == "zero":
                words = words * keep[..., None].to(words.dtype)
            else:
                m = mask[..., None].to(words.dtype)
                mean = (words * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
                words = torch.where(keep[..., None], words, mean.expand_as(words))
        cells = self.encode_layout(layout)
        out = self.attend(cells, words, key_mask=mask)
        context = out.context
        if cell_keep is not None:
            if cell_keep.shape != cells.shape[:2]:
                raise ShapeError(f"cell_keep {tuple(cell_keep.shape)} must be [B, {cells.shape[1]}]")
            keep = cell_keep.bool().to(context.device)[..., None]
            fill = context.mean(1, keepdim=True).expand_as(context) if removal == "mean" else torch.zeros_like(context)
            context = torch.where(keep, context, fill)
        return GenerationOutput(self.decode(cells, context, layout), out.weights, out.scores)


def word_to_cell(weights: torch.Tensor, word_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Word -> cell map ``[..., L, C]`` from cell -> word weights ``[..., C, L]``.

    The transpose, renormalised so that each word's row sums to 1 over the cells (rows of
    padded words are 0).

    >>> w = torch.tensor([[0.5, 0.5], [1.0, 0.0]])   # 2 cells x 2 words
    >>> (word_to_cell(w) * 3).tolist()
    [[1.0, 2.0], [3.0, 0.0]]
    """
    t = weights.transpose(-1, -2)
    t = t / t.sum(-1, keepdim=True).clamp(min=1e-12)
    if word_mask is not None:
        t = t * word_mask[..., None].to(t.dtype)
    return t
