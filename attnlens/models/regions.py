"""Region features from raw images and boxes: a small CNN, ROI pooling written in torch, box
geometry.

Coordinates: boxes are ``xyxy`` floats in pixels of the image given to the encoder; pixel
``(u, v)`` covers ``[u, u + 1) x [v, v + 1)`` and its centre is ``(u + 0.5, v + 0.5)``
(``shared/METRICS.md``). A feature map of stride ``s`` has cell ``(j, i)`` covering image pixels
``[j s, (j + 1) s) x [i s, (i + 1) s)``.

ROI pooling (:func:`roi_align`) is ROI-align: each box is split into ``ph x pw`` bins, each bin is
sampled at ``sampling_ratio x sampling_ratio`` evenly spaced points with bilinear interpolation
(``grid_sample``, border padding), and the samples of a bin are averaged. One difference from
the detection libraries: sample points are clamped to ``[x1 + s/2, x2 - s/2]`` (the hull of the
cell centres inside the box; the box centre when the box is narrower than a cell), so that for
a box aligned to the cell grid the pooled value depends only on cells inside the box. With the
image itself as the feature map (``s = 1``) and integer boxes, a box's pooled value depends only
on its own pixels.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import DTypeError, ShapeError
from .attention import l2norm

GEOMETRY_DIM = 5  # x1/W, y1/H, x2/W, y2/H, area/(H W)


def _check_boxes(features: torch.Tensor, boxes: torch.Tensor) -> None:
    if features.ndim != 4:
        raise ShapeError(f"features must be [B, C, h, w], got shape {tuple(features.shape)}")
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != features.shape[0]:
        raise ShapeError(f"boxes must be [B, R, 4] with B = {features.shape[0]} (features "
                         f"{tuple(features.shape)}), got shape {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise DTypeError(f"boxes must be floating point xyxy pixels, got {boxes.dtype}")


def sample_points(boxes: torch.Tensor, output_size: tuple[int, int], sampling_ratio: int,
                  stride: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-pixel sample coordinates of ROI-align for every box.

    Args:
        boxes: ``[..., 4]`` xyxy.
        output_size: ``(ph, pw)`` bins.
        sampling_ratio: samples per bin along each axis.
        stride: feature cell size in image pixels (clamping margin ``stride / 2``).

    Returns:
        ``ys [..., ph * n]`` and ``xs [..., pw * n]`` (``n = sampling_ratio``), bin-major.

    >>> ys, xs = sample_points(torch.tensor([[0., 0., 8., 4.]]), (2, 2), 1, 1.0)
    >>> xs.tolist(), ys.tolist()
    ([[2.0, 6.0]], [[1.0, 3.0]])
    """
    ph, pw = output_size
    n = int(sampling_ratio)

    def axis(lo, hi, bins):
        frac = (torch.arange(bins * n, dtype=boxes.dtype, device=boxes.device) + 0.5) / (bins * n)
        pts = lo[..., None] + frac * (hi - lo)[..., None]
        half = stride / 2.0
        low, high = lo + half, hi - half
        centre = (lo + hi) / 2
        low, high = torch.where(low > high, centre, low), torch.where(low > high, centre, high)
        return torch.maximum(torch.minimum(pts, high[..., None]), low[..., None])

    x1, y1, x2, y2 = boxes.unbind(-1)
    return axis(y1, y2, ph), axis(x1, x2, pw)


def roi_align(features: torch.Tensor, boxes: torch.Tensor, output_size: tuple[int, int] = (4, 4), *,
              stride: float = 1.0, sampling_ratio: int = 2) -> torch.Tensor:
    """Pool ``features [B, C, h, w]`` over ``boxes [B, R, 4]`` -> ``[B, R, C, ph, pw]``.

    ``stride`` is the size of a feature cell in image pixels (boxes are in image pixels); the map
    is taken to cover ``[0, w * stride) x [0, h * stride)``. All boxes are sampled in one
    ``grid_sample`` call (see the module docstring for the sampling rule).

    >>> img = torch.arange(16.).reshape(1, 1, 4, 4)
    >>> roi_align(img, torch.tensor([[[0., 0., 2., 2.]]]), (1, 1), sampling_ratio=1).flatten().tolist()
    [2.5]
    """
    _check_boxes(features, boxes)
    b, c, h, w = features.shape
    r = boxes.shape[1]
    ph, pw = output_size
    n = int(sampling_ratio)
    if r == 0:
        return features.new_zeros(b, 0, c, ph, pw)
    ys, xs = sample_points(boxes.to(features.dtype), output_size, n, stride)  # [B,R,ph*n], [B,R,pw*n]
    gy = 2.0 * ys / (h * stride) - 1.0
    gx = 2.0 * xs / (w * stride) - 1.0
    grid = torch.stack(torch.broadcast_tensors(gx[:, :, None, :], gy[:, :, :, None]), dim=-1)
    grid = grid.reshape(b, r * ph * n, pw * n, 2)
    out = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out.reshape(b, c, r, ph, n, pw, n).mean(dim=(4, 6))
    return out.permute(0, 2, 1, 3, 4)


def box_geometry(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """``[B, R, 5]`` geometry features: normalised xyxy and the box's area fraction.

    >>> box_geometry(torch.tensor([[[0., 0., 2., 4.]]]), (4, 4)).tolist()
    [[[0.0, 0.0, 0.5, 1.0, 0.5]]]
    """
    h, w = image_size
    scale = boxes.new_tensor([w, h, w, h])
    nb = boxes / scale
    area = ((nb[..., 2] - nb[..., 0]).clamp(min=0) * (nb[..., 3] - nb[..., 1]).clamp(min=0))
    return torch.cat([nb, area[..., None]], dim=-1)


class RegionEncoder(nn.Module):
    """A small CNN over the whole image, ROI-align per box, box geometry -> Linear -> l2norm.

    Args:
        embed_dim: output feature size ``D``.
        channels: output channels of the conv layers (3x3 kernels, padding 1).
        strides: stride of each conv layer (default: 1 for the first, 2 for the others); the
            feature stride is their product.
        pool: ROI-align output bins ``(ph, pw)``.
        sampling_ratio: ROI-align samples per bin and axis.
        geometry: append the 5 box-geometry features before the projection.
        pixels: also ROI-align the raw image (``3 x ph x pw`` mean colours per bin) and append it,
            a shortcut that makes colour and coarse shape available from the first step.

    Input ``images [B, 3, H, W]`` float in ``[0, 1]`` (H and W multiples of the stride),
    ``boxes [B, R, 4]`` xyxy pixels, ``region_mask [B, R]`` (True = real region) ->
    ``[B, R, D]`` l2-normalised region features (exact zeros for padded regions).

    >>> enc = RegionEncoder(8, channels=(4, 8), pool=(2, 2))
    >>> feats = enc(torch.rand(2, 3, 16, 16), torch.tensor([[[0., 0., 8., 8.]] * 3] * 2))
    >>> feats.shape, bool(torch.allclose(feats.norm(dim=-1), torch.ones(2, 3)))
    (torch.Size([2, 3, 8]), True)
    """

    def __init__(self, embed_dim: int, channels: tuple[int, ...] = (16, 32, 64), pool: tuple[int, int] = (4, 4),
                 sampling_ratio: int = 2, geometry: bool = True, strides: tuple[int, ...] | None = None,
                 pixels: bool = False):
        super().__init__()
        if not channels:
            raise ShapeError("RegionEncoder needs at least one conv layer (channels is empty)")
        strides = tuple(int(s) for s in (strides if strides is not None else [1] + [2] * (len(channels) - 1)))
        if len(strides) != len(channels) or min(strides) < 1:
            raise ShapeError(f"strides {strides} must give one positive stride per conv layer ({len(channels)})")
        layers, prev = [], 3
        for ch, st in zip(channels, strides):
            layers += [nn.Conv2d(prev, int(ch), 3, stride=st, padding=1), nn.ReLU()]
            prev = int(ch)
        self.backbone = nn.Sequential(*layers)
        self.channels = tuple(int(c) for c in channels)
        self.strides = strides
        self.stride = int(np.prod(strides))
        self.pool = (int(pool[0]), int(pool[1]))
        self.sampling_ratio = int(sampling_ratio)
        self.geometry = bool(geometry)
        self.pixels = bool(pixels)
        self.embed_dim = int(embed_dim)
        n_in = (prev + (3 if pixels else 0)) * self.pool[0] * self.pool[1] + (GEOMETRY_DIM if geometry else 0)
        self.fc = nn.Linear(n_in, self.embed_dim)

    @property
    def receptive_field(self) -> int:
        """Receptive field (pixels, one side) of a feature cell of the backbone."""
        rf, jump = 1, 1
        for st in self.strides:
            rf += 2 * jump
            jump *= st
        return rf

    @property
    def context_margin(self) -> int:
        """Pixels farther than this outside a box cannot change the box's feature."""
        return self.receptive_field + 2 * self.stride

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, C, H / stride, W / stride]``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ShapeError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise DTypeError(f"images must be float in [0, 1], got {images.dtype}")
        h, w = images.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ShapeError(f"image size {(h, w)} must be a multiple of the encoder stride {self.stride}")
        return self.backbone(images)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor,
                region_mask: torch.Tensor | None = None) -> torch.Tensor:
        fmap = self.feature_map(images)
        _check_boxes(fmap, boxes)
        if region_mask is not None and tuple(region_mask.shape) != tuple(boxes.shape[:2]):
            raise ShapeError(f"region_mask must be [B, R] = {tuple(boxes.shape[:2])}, got {tuple(region_mask.shape)}")
        boxes = boxes.to(fmap.dtype)
        pooled = roi_align(fmap, boxes, self.pool, stride=float(self.stride), sampling_ratio=self.sampling_ratio)
        x = pooled.flatten(2)
        if self.pixels:
            raw = roi_align(images, boxes, self.pool, stride=1.0, sampling_ratio=self.sampling_ratio)
            x = torch.cat([x, raw.flatten(2)], dim=-1)
        if self.geometry:
            x = torch.cat([x, box_geometry(boxes, tuple(images.shape[-2:]))], dim=-1)
        feats = l2norm(self.fc(x), dim=-1)
        if region_mask is not None:
            feats = feats * region_mask[..., None].to(feats.dtype)
        return feats

    def extra_repr(self) -> str:
        return (f"strides={self.strides}, pool={self.pool}, sampling_ratio={self.sampling_ratio}, "
                f"geometry={self.geometry}, pixels={self.pixels}")
