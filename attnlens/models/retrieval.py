"""Image-text retrieval: the VSE++ hinge loss and the recall metrics of SCAN's evaluation.

Similarity matrices are ``S [n_images, n_captions]`` (``S[i, c]``: image ``i``, caption ``c``).

* :func:`contrastive_loss` works on a **square** training batch whose positives are on the
  diagonal (pair ``k`` = image ``k`` with caption ``k``), as in the reference code. A batch in
  the 5-captions-per-image layout must be expanded to square form first (repeat each image
  for its captions), exactly as the reference data loader does.
* :func:`recall_metrics` follows the 5-captions-per-image protocol: caption ``k`` belongs to
  image ``k // captions_per_image``. Ranks are 0-based internally, reported medr/meanr are
  1-based. Ties are counted against the positive (a negative scoring exactly as high as the
  best positive ranks before it), so a constant matrix cannot look perfect.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ShapeError


def contrastive_loss(S: torch.Tensor, margin: float = 0.2, max_violation: bool = False) -> torch.Tensor:
    """VSE++ hinge loss of a square similarity matrix ``S [B, B]`` with positives on the diagonal.

    ``cost_caption[i, j] = max(0, margin + S[i, j] - S[i, i])`` (captions ranked for image i),
    ``cost_image[i, j] = max(0, margin + S[i, j] - S[j, j])`` (images ranked for caption j),
    diagonals zeroed; with ``max_violation`` only the hardest negative per row (captions) and
    per column (images) counts. Returns the sum (a scalar).

    >>> contrastive_loss(torch.tensor([[1.0, 0.9], [0.0, 1.0]]), margin=0.2)
    tensor(0.2000)
    """
    if not isinstance(S, torch.Tensor) or S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ShapeError(f"contrastive_loss needs a square [B, B] similarity matrix with positives on the "
                         f"diagonal, got shape {tuple(getattr(S, 'shape', ()))}")
    diag = S.diagonal()
    cost_caption = (margin + S - diag[:, None]).clamp(min=0)
    cost_image = (margin + S - diag[None, :]).clamp(min=0)
    eye = torch.eye(S.shape[0], dtype=torch.bool, device=S.device)
    cost_caption = cost_caption.masked_fill(eye, 0)
    cost_image = cost_image.masked_fill(eye, 0)
    if max_violation:
        if S.shape[0] == 0:
            return S.sum()
        cost_caption = cost_caption.max(dim=1).values
        cost_image = cost_image.max(dim=0).values
    return cost_caption.sum() + cost_image.sum()


def _as_numpy(S) -> np.ndarray:
    if isinstance(S, torch.Tensor):
        S = S.detach().cpu().double().numpy()
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2:
        raise ShapeError(f"similarity matrix must be 2-D [n_images, n_captions], got shape {S.shape}")
    return S


def ranks(S, captions_per_image: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks: ``(i2t [Ni], t2i [Nc])`` for ``S [Ni, Ni * captions_per_image]``.

    ``i2t[i]`` = rank of image i's best-scored own caption among all captions; ``t2i[c]`` =
    rank of caption c's image among all images. Ties count against the positive.

    >>> i2t, t2i = ranks(np.array([[0.9, 0.1], [0.2, 0.8]]), captions_per_image=1)
    >>> i2t.tolist(), t2i.tolist()
    ([0, 0], [0, 0])
    """
    S = _as_numpy(S)
    ni, nc = S.shape
    k = int(captions_per_image)
    if k < 1 or nc != ni * k:
        raise ShapeError(f"similarity {S.shape} must be [n_images, n_images * {k}] "
                         f"(caption c belongs to image c // {k})")
    owner = np.arange(nc) // k
    own = owner[None, :] == np.arange(ni)[:, None]                       # [Ni, Nc]
    best = np.where(own, S, -np.inf).max(axis=1)                          # best own caption
    i2t = ((S >= best[:, None]) & ~own).sum(axis=1)
    pos = S[owner, np.arange(nc)]                                         # S[image of c, c]
    t2i = ((S >= pos[None, :]).sum(axis=0) - 1)
    return i2t.astype(np.int64), t2i.astype(np.int64)


def recall_metrics(S, captions_per_image: int = 5) -> dict[str, float]:
    """R@1/5/10 (percent), median and mean rank (1-based) for both directions, and rsum.

    Keys: ``i2t_r1, i2t_r5, i2t_r10, i2t_medr, i2t_meanr`` (image query, caption retrieval;
    "sentence retrieval" in the papers), ``t2i_r1 ... t2i_meanr`` (caption query, image
    retrieval) and ``rsum`` (sum of the six recalls).

    >>> S = np.array([[0.9, 0.1], [0.2, 0.8]])
    >>> recall_metrics(S, captions_per_image=1)["rsum"]
    600.0
    """
    i2t, t2i = ranks(S, captions_per_image)
    out: dict[str, float] = {}
    for name, r in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = float(100.0 * np.mean(r < k))
        out[f"{name}_medr"] = float(np.floor(np.median(r)) + 1)
        out[f"{name}_meanr"] = float(r.mean() + 1)
    out["rsum"] = sum(out[f"{n}_r{k}"] for n in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def coco_1k(S, captions_per_image: int = 5, folds: int = 5) -> dict[str, float]:
    """COCO 1K protocol: mean of :func:`recall_metrics` over ``folds`` equal blocks of images
    (1000 images each for the 5000-image test set) and their captions.

    >>> S = np.eye(10).repeat(1, axis=1)
    >>> coco_1k(S, captions_per_image=1, folds=5)["i2t_r1"]
    100.0
    """
    S = _as_numpy(S)
    ni = S.shape[0]
    if folds < 1 or ni % folds:
        raise ShapeError(f"{ni} images cannot be split into {folds} equal folds")
    n = ni // folds
    k = int(captions_per_image)
    results = [recall_metrics(S[f * n:(f + 1) * n, f * n * k:(f + 1) * n * k], k) for f in range(folds)]
    return {key: float(np.mean([r[key] for r in results])) for key in results[0]}
