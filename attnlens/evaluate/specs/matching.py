"""attnlens' own matching checkpoints (SCAN / SCAN+RCAR over region features pooled from the
pixels, ``attnlens train --task matching``; the shipped ``assets/checkpoints/matching-*``).

Inputs: the item's image (``[1, 3, H, W]`` in ``[0, 1]``) and its region boxes (COCO / RefCOCO
object boxes, the built-in scenes' proposals), the caption's word ids from the model's
vocabulary (unknown words -> ``<unk>``). Output: the pair's similarity. The map: the
similarity's own word x region attention through :func:`attnlens.capture` (``raw``) or any
explainer (the ``attnlens`` profile). Removal, as the built-in matching task: ``"mask"`` drops
regions from the attention (a row that keeps none is scored on all-zero features), ``"zero"`` /
``"mean"`` change the encoded region features. ``feature_forward``: the similarity as a function of
the encoded region features (gradient agreement).

Load a checkpoint with ``attnlens.tasks.get_task("matching").load(path)``; ``attnlens evaluate
--model path`` does so for a run folder whose ``config.json`` says ``"task": "matching"``.
"""
from __future__ import annotations

import numpy as np
import torch

from ...errors import ShapeError
from ...tasks.common import remove_regions
from .scan import SimilaritySpec

__all__ = ["MatchingSpec"]


class MatchingSpec(SimilaritySpec):
    """An attnlens ``MatchingModel`` on an image with region boxes (module docstring)."""

    name = "matching"

    def _ids(self, model, item) -> list[int]:
        from ...tasks.matching import _vocab

        return list(_vocab(model).encode(list(item.tokens)))

    def inputs(self, model, item) -> dict:
        if item.image is None or item.boxes is None:
            raise ShapeError(f"spec {self.name!r} needs the image and its region boxes; item {item.item_id} has "
                             f"{'no image' if item.image is None else 'no boxes'}")
        dev = next(model.parameters()).device
        ids = self._ids(model, item)
        image = torch.from_numpy(np.array(item.image)).permute(2, 0, 1)[None].float().div(255.0)
        boxes = torch.from_numpy(np.asarray(item.boxes, dtype=np.float32))[None]
        return {"images": image.to(dev), "boxes": boxes.to(dev),
                "region_mask": torch.ones(1, len(item.boxes), dtype=torch.bool, device=dev),
                "tokens": torch.tensor([ids], device=dev), "lengths": torch.tensor([len(ids)], device=dev)}


    def _features(self, model, inputs) -> torch.Tensor:
        return model.encode_images(inputs["images"], inputs["boxes"], inputs["region_mask"])

    def remove(self, model, item, inputs: dict, keep: torch.Tensor, removal: str) -> dict:
        with torch.no_grad():
            feats = self._features(model, inputs)
        M = len(keep)
        f = feats.expand(M, -1, -1)
        valid = inputs["region_mask"].expand(M, -1)
        keep = keep.to(f.device)
        f, mask = remove_regions(f, keep, valid, removal)
        empty = ~(keep & valid).any(-1)
        if bool(empty.any()):  # nothing kept: all-zero features (the built-in matching task's rule)
            f = torch.where(empty[:, None, None], torch.zeros_like(f), f)
            mask = torch.where(empty[:, None], valid, mask)
        return {"features": f, "mask": mask, "tokens": inputs["tokens"], "lengths": inputs["lengths"]}

    def score(self, model, inputs: dict, item=None) -> torch.Tensor:
        with torch.no_grad():
            if "features" not in inputs:
                return self.target(model(**inputs)).detach().float().cpu()
            cap = model.encode_captions(inputs["tokens"], inputs["lengths"])
            s = model.similarity_from_features(inputs["features"], cap, inputs["lengths"], inputs["mask"])
            return self.target(s).detach().float().cpu()

    def feature_forward(self, model, item, inputs):
        with torch.no_grad():
            feats = self._features(model, inputs)
            cap = model.encode_captions(inputs["tokens"], inputs["lengths"])

        def forward(features: torch.Tensor) -> torch.Tensor:
            mask = inputs["region_mask"].expand(len(features), -1)
            return self.target(model.similarity_from_features(features, cap, inputs["lengths"], mask))

        return forward, feats
