"""(model, spec, items, explainer) as a study task, so evaluation runs the study's own machinery.

:class:`SpecTask` implements what :mod:`attnlens.study.dataset` and
:mod:`attnlens.study.example_metrics` need from a task (``analysis_examples``, ``split_size``,
``scorer``, ``load`` and, for region-feature specs, ``region_forward``): example ``i`` is item
``i`` of the dataset, its ``attention`` the spec's map of the task's explainer turned into word x
region rows (:func:`attnlens.evaluate.spec.word_rows`), its ``output`` the spec's scored output.
The scorer removes regions / patches with the spec's ``remove`` and scores the model's output on
the perturbed copies, one example per call. One task per explainer: the explainer is the study's
``alignment`` axis, so the summary ranks explainers with paired tests on the same examples.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import ShapeError
from ..tasks.base import AnalysisExample, RegionForward
from ..tasks.common import check_keep, word_region_map
from .spec import REMOVALS, word_rows

__all__ = ["SpecTask", "parse_explainer"]


def parse_explainer(label: str) -> tuple[str, dict]:
    """``"raw:layer=2,heads=max"`` -> ``("raw", {"layer": 2, "heads": "max"})``.

    >>> parse_explainer("raw:layer=-1,heads=max")
    ('raw', {'layer': -1, 'heads': 'max'})
    """
    name, _, rest = str(label).partition(":")
    opts = {}
    for part in filter(None, rest.split(",")):
        k, eq, v = part.partition("=")
        if not eq:
            raise ShapeError(f"explainer option {part!r} of {label!r} must be key=value")
        try:
            opts[k.strip()] = int(v)
        except ValueError:
            opts[k.strip()] = v.strip()
    return name.strip(), opts


def _blank(size) -> np.ndarray:
    return np.full((int(size[0]), int(size[1]), 3), 127, dtype=np.uint8)


class SpecTask:
    """A task over ``items`` whose map is ``spec``'s ``explainer`` map (module docstring)."""

    def __init__(self, spec, items: Sequence, explainer: str = "raw", name: str | None = None, model=None):
        self.spec, self.items, self.explainer = spec, list(items), explainer
        self.method, self.options = parse_explainer(explainer)
        spec.check_explainer(self.method)
        self.name = name or spec.name
        self._model = model
        if not hasattr(spec, "feature_forward"):
            self.region_forward_undefined = f"undefined: spec {spec.name!r} has no feature_forward"

    def __repr__(self) -> str:
        return (f"SpecTask({self.name!r}, spec={self.spec.name!r}, explainer={self.explainer!r}, "
                f"items={len(self.items)})")

    # -- what the study's machinery calls
    def load(self, checkpoint_dir: Path, device: str = "cpu"):
        if self._model is None:
            raise ShapeError("SpecTask holds no model")
        return self._model.to(device).eval()

    def split_size(self, split: str = "test", config: dict | None = None) -> int:
        return len(self.items)

    def evaluate(self, model, split: str = "test", config: dict | None = None) -> dict[str, float]:
        return {}

    def analysis_examples(self, model, *, n: int, split: str = "test", config: dict | None = None,
                          start: int = 0) -> list[AnalysisExample]:
        """Examples ``start .. start + n - 1``: item ``i`` with the explainer's map."""
        out = []
        for i in range(int(start), min(int(start) + int(n), len(self.items))):
            out.append(self.example(model, i))
        return out

    def example(self, model, i: int) -> AnalysisExample:
        item = self.items[i]
        spec = self.spec
        inputs = spec.inputs(model, item)
        regions = spec.regions(model, item, inputs)
        with torch.enable_grad():
            raw = spec.attention(model, item, inputs, self.method, **self.options)
        if raw.ndim != 2 or raw.shape[-1] != len(regions):
            raise ShapeError(f"spec {spec.name!r}, explainer {self.explainer!r}, item {item.item_id}: the map "
                             f"has shape {tuple(raw.shape)} but the image side has {len(regions)} regions/patches")
        weights = word_rows(raw, spec.word_positions(model, item, inputs))
        output = float(spec.score(model, inputs, item)[0])
        amap = word_region_map(weights, tokens=item.tokens, regions=regions, site=f"{spec.name}:{self.explainer}",
                               meta={"explainer": self.explainer, "spec": spec.name})
        image = item.image if item.image is not None else _blank(item.image_size)
        return AnalysisExample(example_id=item.item_id, image=image,
                               regions=regions, tokens=tuple(item.tokens), attention=amap, targets=tuple(item.targets),
                               region_valid=np.asarray(spec.region_valid(model, item, inputs), dtype=bool),
                               output=output, meta={"item": i, "explainer": self.explainer, "spec": spec.name,
                                                    "image": "file" if item.image is not None else "placeholder",
                                                    **{k: v for k, v in dict(item.meta).items()
                                                       if isinstance(v, (str, int, float, bool))}})

    def _item(self, example: AnalysisExample):
        return self.items[int(example.meta["item"])]

    def scorer(self, model, examples: Sequence[AnalysisExample], *, removal: str = "mask"):
        """``score(keep [M, R], index [M]) -> [M]``: the spec's scored output with the regions /
        patches where ``keep`` is False removed (``removal``: the spec's ``remove``)."""
        if removal not in REMOVALS:
            from ..errors import UnknownNameError

            raise UnknownNameError("removal", removal, REMOVALS)
        R = len(examples[0].regions)
        prepared = []
        for e in examples:
            item = self._item(e)
            prepared.append((item, self.spec.inputs(model, item)))

        def score(keep: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            keep, index = check_keep(keep, index, len(examples), R)
            out = torch.empty(len(index), dtype=torch.float32)
            for e in torch.unique(index).tolist():
                rows = torch.nonzero(index == e).flatten()
                item, inputs = prepared[e]
                batch = self.spec.remove(model, item, inputs, keep[rows], removal)
                out[rows] = self.spec.score(model, batch, item).float()
            return out

        return score

    def __getattr__(self, name):
        if name == "region_forward" and hasattr(self.spec, "feature_forward"):
            return self._region_forward
        raise AttributeError(name)

    def _region_forward(self, model, example: AnalysisExample) -> RegionForward:
        item = self._item(example)
        inputs = self.spec.inputs(model, item)
        forward, feats = self.spec.feature_forward(model, item, inputs)
        return RegionForward(forward, feats.detach(), torch.as_tensor(np.asarray(example.region_valid, dtype=bool)))
