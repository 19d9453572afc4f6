"""CLIP / SigLIP similarity: a dual encoder's image-text score and its image tower's attention.

A dual encoder has no word -> patch attention. Its map here is one row over the patches, the
same for every word (as the captum methods' ``output`` row): ``raw`` is the image tower's
``[CLS]`` row over the patches at one layer (``layer``, default the last; heads fused by
``heads``), ``rollout`` the ``[CLS]`` row of Abnar & Zuidema's rollout over every layer of the
image tower (``A_hat = 0.5 A + 0.5 I``, heads averaged, rows renormalised, multiplied from the
first layer on). Both are read through :func:`attnlens.capture` (the dual-encoder adapter). The
gradient methods run through :func:`attnlens.explain.explain` (profile ``dual_encoder``: the same
row, relevance propagated within the image tower, target the pair's similarity).
SigLIP has no ``[CLS]``: its row is the mean over the image tokens' rows. Output: the pair's
similarity ``logits_per_image[0, 0]``. Inputs: the words as ids (a ``HashTokenizer`` for a
model built from a config, or its tokenizer), the image resized to the tower's ``image_size``
with CLIP's mean / std. Removal: patch pixels to 0 / the image mean.

A user with a checkpoint changes::

    model = CLIPModel.from_pretrained("openai/clip-vit-base-patch32")
    spec = ClipSpec(processor=CLIPProcessor.from_pretrained("openai/clip-vit-base-patch32"))
"""
from __future__ import annotations

import torch

from ...errors import ShapeError
from .pixels import TowersSpec, _fuse

__all__ = ["ClipSpec", "rollout_row"]


def rollout_row(layers: list[torch.Tensor], cls: int | None = 0) -> torch.Tensor:
    """``[K]`` rollout of per-layer head-averaged maps ``[N, N]`` (first layer first): the row of
    token ``cls`` (``None``: the mean row) of ``prod_l (0.5 A_l + 0.5 I)`` (rows renormalised).

    >>> rollout_row([torch.full((2, 2), 0.5)]).tolist()
    [0.75, 0.25]
    """
    n = layers[0].shape[-1]
    joint = torch.eye(n, dtype=torch.float64)
    for a in layers:
        a_hat = 0.5 * a.double() + 0.5 * torch.eye(n, dtype=torch.float64)
        a_hat = a_hat / a_hat.sum(-1, keepdim=True)
        joint = a_hat @ joint
    return joint[cls] if cls is not None else joint.mean(0)


class ClipSpec(TowersSpec):
    """CLIP / SigLIP image-text similarity (module docstring)."""

    name = "clip"
    explainers = ("raw", "rollout", "gradient_weighted", "attention_x_gradient", "input_x_gradient",
                  "integrated_gradients")

    def word_positions(self, model, item, inputs) -> list[list[int]]:
        return [[0] for _ in item.tokens]  # one row for every word (module docstring)

    def _vision_maps(self, model, inputs) -> list[torch.Tensor]:
        from ...capture import capture

        with torch.no_grad(), capture(model) as rec:
            model(**inputs)
        maps = [m.weights.detach().float()[0] for m in rec.maps if m.query.modality == "image"]
        if not maps:
            raise ShapeError(f"capture recorded no image-tower self-attention in {type(model).__name__}")
        return maps  # [head, N, N] per layer

    def attention(self, model, item, inputs: dict, method: str, **options) -> torch.Tensor:
        self.check_explainer(method)
        if method not in ("raw", "rollout"):  # attnlens.explain, profile "dual_encoder": the same one row
            return super().attention(model, item, inputs, method, **options)
        maps = self._vision_maps(model, inputs)
        n_patch = (self._size(model) // self._patch(model)) ** 2
        cls = 0 if maps[0].shape[-1] == n_patch + 1 else None
        if method == "raw":
            w = _fuse(maps[int(options.get("layer", -1))], options.get("heads", "mean"))
            row = w[cls] if cls is not None else w.mean(0)
        else:
            row = rollout_row([m.mean(0) for m in maps], cls).float()
        row = row[1:] if cls is not None else row
        if row.shape[-1] != n_patch:
            raise ShapeError(f"the image tower has {row.shape[-1]} patch tokens, the grid {n_patch}")
        return row[None]

    def target(self, output) -> torch.Tensor:
        return output.logits_per_image[:, 0].float()
