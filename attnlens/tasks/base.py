"""The contract between task models (matching, VQA, generation) and the study.

A *task* trains or loads a model on the built-in scenes, measures its task performance, and
turns test examples into :class:`AnalysisExample` objects: everything the metrics need for one
(image, text) pair, with no model-specific code left for the study to write.

Axes of ``AnalysisExample.attention``: ``("word", "region")`` — each text token's weights over
the image regions (rows sum to 1 over the regions), whatever the model's own direction. For an
image-to-text model the study still scores *word -> region* grounding; the task says how it
derived that map in ``attention.meta["derived"]``.

Faithfulness: ``Task.scorer(model, examples, removal=...)`` returns ``score(keep, index)`` where
``keep`` is a bool tensor ``[M, R]`` (regions kept) and ``index`` a long tensor ``[M]`` (which
example each row belongs to); it returns the model's scored output ``[M]`` (the image-text
similarity for matching, the probability of the model's own predicted answer for VQA, ...),
computed in batched forwards. Removal modes: ``"mask"`` (removed regions are dropped from the
attention), ``"zero"`` (their features zeroed), ``"mean"`` (replaced by the mean feature).

Gradient attributions (optional): ``Task.region_forward(model, example)`` returns a
:class:`RegionForward`: the example's region features ``inputs [1, R, D]`` (the features the
model attends over) and ``forward(features [N, R, D]) -> [N]``, a differentiable scalar output of
that example (the scorer's output on the full input: ``forward(inputs)`` equals
``example.output``), which accepts a batch of perturbed copies of the features (integrated
gradients scores its whole path in one batch). The study compares the attention with captum's
attributions of that output (:mod:`attnlens.metrics.functional.agreement`). A task without the
method gets NaN rows; it may say why in a ``region_forward_undefined`` string attribute.

Shards: ``analysis_examples(model, n=n, start=k)`` gives examples ``k .. k + n - 1`` of the split,
identical to the same items of one call from 0, so a split can be captured in index ranges on
several workers (:mod:`attnlens.study.dataset`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Protocol, Sequence

import numpy as np
import torch

from ..errors import RegistryError, UnknownNameError
from ..types import AttentionMap, Regions

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
REMOVALS = ("mask", "zero", "mean")


class RegionForward(NamedTuple):
    """One example's output as a differentiable function of its region features.

    Attributes:
        forward: ``forward(features [N, R, D]) -> [N]``: the example's scored output for each of
            ``N`` (perturbed) copies of its region features; ``forward(inputs)`` is the scorer's
            output on the full input (``AnalysisExample.output``).
        inputs: ``[1, R, D]`` the example's region features (detached).
        valid: ``[R]`` bool, False for padded regions.
    """

    forward: Callable[[torch.Tensor], torch.Tensor]
    inputs: torch.Tensor
    valid: torch.Tensor


@dataclass(frozen=True, eq=False)
class GroundingTarget:
    """A token span of the text whose ground-truth boxes are known.

    Attributes:
        tokens: indices of the span's tokens in ``AnalysisExample.tokens``.
        boxes: ``[n, 4]`` xyxy ground-truth boxes (original-image pixels).
        label: the phrase text (for tables and figure titles).
        head: index of the span's head token (the noun), used for word-level maps.
    """

    tokens: tuple[int, ...]
    boxes: np.ndarray
    label: str
    head: int


@dataclass(frozen=True, eq=False)
class AnalysisExample:
    """One (image, text) pair ready for grounding and faithfulness analysis.

    Attributes:
        example_id: stable id (``"<image_id>/<caption index>"``).
        image: ``[H, W, 3]`` uint8 RGB.
        regions: the image's region boxes (``Regions``, R of them).
        tokens: the caption or question tokens (L of them).
        attention: ``AttentionMap`` with dims ``("word", "region")``, shape ``[L, R]``.
        targets: grounded spans with their boxes.
        region_valid: ``[R]`` bool, False for padded regions.
        output: the model's scored output on the full input (float).
        meta: task-specific extras (answer, prediction, alignment, ...).
    """

    example_id: str
    image: np.ndarray
    regions: Regions
    tokens: tuple[str, ...]
    attention: AttentionMap
    targets: tuple[GroundingTarget, ...]
    region_valid: np.ndarray
    output: float
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def region_importance(self) -> torch.Tensor:
        """``[R]`` attention summarised over the words (mean), the order used by deletion curves."""
        return self.attention.weights.float().mean(0)


class Task(Protocol):
    """What the study needs from a task (see the module docstring)."""

    name: str

    def default_config(self, preset: str) -> dict: ...

    def train(self, *, alignment: str, seed: int, out_dir: Path, config: dict | None = None,
              device: str = "cpu", progress: bool = True) -> Path: ...

    def load(self, checkpoint_dir: Path, device: str = "cpu") -> torch.nn.Module: ...

    def evaluate(self, model: torch.nn.Module, split: str = "test", config: dict | None = None) -> dict[str, float]: ...

    def analysis_examples(self, model: torch.nn.Module, *, n: int, split: str = "test",
                          config: dict | None = None, start: int = 0) -> Sequence[AnalysisExample]:
        """Examples ``start .. start + n - 1`` of ``split`` (fewer where the split ends): the same
        examples (ids, maps, targets, outputs) as items ``start:start + n`` of one call from 0."""
        ...

    def split_size(self, split: str = "test", config: dict | None = None) -> int:
        """How many analysis examples ``split`` holds under ``config`` (a dataset-wide capture's
        default; optional: a task without it needs an explicit number of examples)."""
        ...

    def scorer(self, model: torch.nn.Module, examples: Sequence[AnalysisExample], *,
               removal: str = "mask") -> ScoreFn: ...

    def region_forward(self, model: torch.nn.Module, example: AnalysisExample) -> RegionForward:
        """The example's scored output as a function of its region features (module docstring;
        optional: without it the gradient-agreement metrics are NaN)."""
        ...


class PresetConfigs:
    """``default_config`` / ``resolve_config`` of a built-in task from its ``config_class`` (a
    :class:`~attnlens.train.config.TrainConfig` with presets). ``run_keys``: keys a saved run's
    ``config.json`` adds to the config (dropped when resolving)."""

    config_class: Any
    run_keys: tuple[str, ...] = ("alignment", "seed", "vocabulary")

    def default_config(self, preset: str = "demo") -> dict:
        """The preset's config as a plain dict (``quick``, ``demo``, ``full``)."""
        return self.config_class.preset(preset).to_dict()

    def resolve_config(self, config: Mapping | None):
        """A full config: the demo preset overridden by ``config`` (which may be complete)."""
        return self.config_class.resolve("demo", {k: v for k, v in dict(config or {}).items()
                                                  if k not in self.run_keys})


_TASKS: dict[str, Callable[[], Task]] = {}


def register_task(name: str, factory: Callable[[], Task], *, overwrite: bool = False) -> None:
    """Register a task factory under ``name``."""
    if name in _TASKS and not overwrite:
        raise RegistryError(f"task {name!r} is already registered; pass overwrite=True to replace it")
    _TASKS[name] = factory


def get_task(name: str) -> Task:
    """The task registered as ``name`` (``matching``, ``vqa``, ``generation``)."""
    if name not in _TASKS:
        raise UnknownNameError("task", name, _TASKS)
    return _TASKS[name]()


def available_tasks() -> list[str]:
    return sorted(_TASKS)
