"""A compact VQA model with question-guided attention over image regions.

Architecture (one attention site, ``attend``)::

    question tokens [B, L] -> Embedding -> GRU -> question vector q [B, D] (last hidden state)
    image -> regions [B, R, D]  (``image="grid"``: a small CNN whose h x w output cells are the
                                 regions, with their cell boxes; ``image="regions"``: the
                                 proposals of the image through ``RegionEncoder``, then a
                                 BatchNorm1d per feature and a Linear map)
    attend: CrossAttention(alignment) with ONE query (q) over the R regions -> weights [B, 1, R]
    context c = sum_r a_r v_r;  logits = MLP([q, c, q * c]) -> [B, n_answers]

The image reaches the classifier **only** through the attended vector ``c``, so the attention
weights are the single path of visual evidence (what faithfulness metrics need).

Score normalisation: ``norm="no_norm"`` (the default). SCAN's normalisations act over the
*query* axis; with a single query an l2/l1 norm reduces every score to its sign and a softmax
over queries to 1, which would erase the difference between alignment functions. The softmax
over regions then uses ``temperature`` (default 1: the dot family learns its own scale;
``cosine`` scores are bounded in [-1, 1], so its attention is flatter at the same temperature).

Removal of regions (faithfulness): ``keep [B, R]`` with ``removal`` in ``"mask"`` (removed
regions get no attention), ``"zero"`` (their features zeroed, still attended) or ``"mean"``
(features replaced by the mean of the example's valid regions).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..errors import ShapeError, UnknownNameError
from .attention import CrossAttention, length_mask

REMOVALS = ("mask", "zero", "mean")


def grid_boxes(grid: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """``[gh * gw, 4]`` xyxy pixel boxes of the cells of a ``grid`` over an image, raster order.

    >>> grid_boxes((2, 2), (64, 64)).tolist()
    [[0.0, 0.0, 32.0, 32.0], [32.0, 0.0, 64.0, 32.0], [0.0, 32.0, 32.0, 64.0], [32.0, 32.0, 64.0, 64.0]]
    """
    gh, gw = (int(g) for g in grid)
    h, w = (float(s) for s in image_size)
    ys, xs = np.linspace(0, h, gh + 1), np.linspace(0, w, gw + 1)
    return np.array([[xs[j], ys[i], xs[j + 1], ys[i + 1]] for i in range(gh) for j in range(gw)], dtype=np.float64)


def prepare_images(images, size: int) -> torch.Tensor:
    """uint8 RGB images ``[N, H, W, 3]`` (array or list) -> float ``[N, 3, size, size]`` in [0, 1].

    Resized with area interpolation (cv2.INTER_AREA), the usual choice for downscaling.

    >>> prepare_images(np.zeros((2, 64, 64, 3), np.uint8), 32).shape
    torch.Size([2, 3, 32, 32])
    """
    import cv2

    out = []
    for im in images:
        im = np.asarray(im)
        if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
            raise ShapeError(f"images must be uint8 [H, W, 3] RGB, got {im.dtype} {tuple(im.shape)}")
        if im.shape[:2] != (size, size):
            im = cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA)
        out.append(im)
    arr = np.stack(out).astype(np.float32) / 255.0 if out else np.zeros((0, size, size, 3), np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class GridEncoder(nn.Module):
    """Small CNN: ``images [B, 3, S, S]`` in [0, 1] -> cell features ``[B, gh * gw, D]`` (raster order).

    Three stride-2 convolutions take an ``S`` px input to ``S / 8`` cells per side; an adaptive
    average pool brings them to ``grid``. A learned position embedding is added per cell.

    >>> GridEncoder(16, grid=(4, 4))(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 16, 16])
    """

    def __init__(self, dim: int, grid: tuple[int, int] = (4, 4), width: int = 32):
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        w = int(width)
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(self.grid)
        # one more 3x3 conv at the cell level widens each cell's view to its neighbours
        self.mix = nn.Sequential(nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU())
        self.proj = nn.Conv2d(2 * w, dim, 1)
        self.position = nn.Parameter(torch.zeros(self.grid[0] * self.grid[1], dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ShapeError(f"GridEncoder expects images [B, 3, H, W], got {tuple(images.shape)}")
        x = self.proj(self.mix(self.pool(self.net(images))))  # [B, D, gh, gw]
        return x.flatten(2).transpose(1, 2) + self.position


class QuestionEncoder(nn.Module):
    """Embedding + GRU: ``tokens [B, L]``, ``lengths [B]`` -> word states ``[B, L, D]`` and the
    question vector ``[B, D]`` (the GRU state after the last real token)."""

    def __init__(self, vocab_size: int, word_dim: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(int(vocab_size), int(word_dim), padding_idx=0)
        self.rnn = nn.GRU(int(word_dim), int(dim), batch_first=True)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor):
        if tokens.ndim != 2:
            raise ShapeError(f"tokens must be [B, L], got {tuple(tokens.shape)}")
        lengths = torch.as_tensor(lengths, device=tokens.device)
        length_mask(lengths, tokens.shape[1])  # validates the lengths
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(tokens), lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, last = self.rnn(packed)
        words, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        return words, last[-1]


class VQAOutput(NamedTuple):
    """``logits [B, A]``, attention ``weights [B, R]`` of the question over the regions and the
    raw alignment ``scores [B, R]``."""

    logits: torch.Tensor
    weights: torch.Tensor
    scores: torch.Tensor


class VQAModel(nn.Module):
    """Question-guided attention VQA (module docstring).

    Args:
        vocab_size: question vocabulary size (index 0 = padding).
        n_answers: number of answer classes.
        alignment: alignment function name (:func:`attnlens.align.available`).
        dim: feature dim of question vector and regions.
        word_dim: word embedding dim.
        image: ``"grid"`` (CNN cells) or ``"regions"`` (``RegionEncoder`` over given boxes).
        grid: cells per side for ``image="grid"``.
        width: CNN width.
        norm / temperature: of the attention (see module docstring).
        alignment_options: extra options for :func:`attnlens.align.create`.
        region_options: options of ``RegionEncoder`` (``channels``, ``pool`` ...) for ``image="regions"``.

    >>> m = VQAModel(20, 5, alignment="dot", dim=16, grid=(2, 2))
    >>> out = m(torch.randint(1, 20, (3, 4)), torch.tensor([4, 2, 3]), torch.rand(3, 3, 32, 32))
    >>> out.logits.shape, out.weights.shape
    (torch.Size([3, 5]), torch.Size([3, 4]))
    """

    def __init__(self, vocab_size: int, n_answers: int, *, alignment: str = "general", dim: int = 64,
                 word_dim: int = 32, image: str = "grid", grid=(4, 4), width: int = 32,
                 norm: str = "no_norm", temperature: float = 1.0, alignment_options: dict | None = None,
                 region_options: dict | None = None):
        super().__init__()
        if image not in ("grid", "regions"):
            raise UnknownNameError("VQA image encoder", image, ["grid", "regions"])
        self.image_kind = image
        self.question = QuestionEncoder(vocab_size, word_dim, dim)
        if image == "grid":
            self.image = GridEncoder(dim, grid=grid, width=width)
        else:
            from .regions import RegionEncoder

            self.image = RegionEncoder(dim, **(region_options or {}))
            # RegionEncoder's features are l2-normalised and, at init, dominated by one shared
            # direction, which stalls VQA training at the answer prior: a batch norm per feature
            # (over all regions of the batch) standardises them before a linear map
            self.region_norm = nn.BatchNorm1d(dim)
            self.region_proj = nn.Linear(dim, dim)
        self.attend = CrossAttention(alignment, dim, norm=norm, temperature=temperature, direction="q2i",
                                     query_dim="question", key_dim="region", query_modality="text",
                                     key_modality="image", **(alignment_options or {}))
        self.classifier = nn.Sequential(nn.Linear(3 * dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, int(n_answers)))

    def encode_image(self, images: torch.Tensor, boxes: torch.Tensor | None = None,
                     region_mask: torch.Tensor | None = None):
        """Region features ``[N, R, D]`` and validity ``[N, R]`` of ``images [N, 3, H, W]``."""
        if self.image_kind == "grid":
            feats = self.image(images)
            return feats, torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
        if boxes is None:
            raise ShapeError("VQAModel(image='regions') needs boxes [N, R, 4]")
        if region_mask is None:
            region_mask = torch.ones(boxes.shape[:2], dtype=torch.bool, device=boxes.device)
        feats = self.image(images, boxes, region_mask)
        n, r, d = feats.shape
        feats = self.region_proj(self.region_norm(feats.reshape(n * r, d)).reshape(n, r, d))
        return feats * region_mask[..., None].to(feats.dtype), region_mask.bool()

    def answer(self, q: torch.Tensor, feats: torch.Tensor, region_mask: torch.Tensor, *,
               keep: torch.Tensor | None = None, removal: str = "mask") -> VQAOutput:
        """Attend with question vectors ``q [B, D]`` over ``feats [B, R, D]`` and classify.

        ``keep [B, R]`` (bool) removes regions according to ``removal`` (module docstring).
        """
        if feats.ndim != 3 or q.ndim != 2 or q.shape[0] != feats.shape[0]:
            raise ShapeError(f"q must be [B, D] and feats [B, R, D]; got {tuple(q.shape)} and {tuple(feats.shape)}")
        mask = region_mask.bool()
        if keep is not None:
            if removal not in REMOVALS:
                raise UnknownNameError("removal", removal, REMOVALS)
            if keep.shape != mask.shape:
                raise ShapeError(f"keep {tuple(keep.shape)} must match regions {tuple(mask.shape)}")
            keep = keep.bool().to(mask.device)
            if removal == "mask":
                mask = mask & keep
            elif removal == "zero":
                feats = feats * keep[..., None].to(feats.dtype)
            else:
                m = mask[..., None].to(feats.dtype)
                mean = (feats * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
                feats = torch.where(keep[..., None], feats, mean.expand_as(feats))
        out = self.attend(q[:, None, :], feats, key_mask=mask)
        c = out.context[:, 0]
        logits = self.classifier(torch.cat([q, c, q * c], dim=-1))
        return VQAOutput(logits, out.weights[:, 0], out.scores[:, 0])

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, images: torch.Tensor,
                boxes: torch.Tensor | None = None, region_mask: torch.Tensor | None = None, *,
                image_index: torch.Tensor | None = None, keep: torch.Tensor | None = None,
                removal: str = "mask") -> VQAOutput:
        """Answer ``B`` questions ``tokens [B, L]`` about ``images [N, 3, H, W]``.

        ``image_index [B]`` says which image each question is about (default ``arange(B)``), so
        an image asked several questions is encoded once.
        """
        _, q = self.question(tokens, lengths)
        feats, mask = self.encode_image(images, boxes, region_mask)
        if image_index is not None:
            feats, mask = feats[image_index], mask[image_index]
        elif feats.shape[0] != q.shape[0]:
            raise ShapeError(f"{q.shape[0]} questions but {feats.shape[0]} images; pass image_index")
        return self.answer(q, feats, mask, keep=keep, removal=removal)
