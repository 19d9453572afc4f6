"""Tasks: train or load a model on the built-in scenes, measure it, and turn test examples into
:class:`AnalysisExample` s for the study (the contract is in :mod:`attnlens.tasks.base`).

Registered: ``matching`` (always), ``vqa`` and ``generation`` (when their modules import).

>>> "matching" in available_tasks()
True
"""
from __future__ import annotations

import importlib
import warnings

from .base import (REMOVALS, AnalysisExample, GroundingTarget, ScoreFn, Task, available_tasks, get_task,
                   register_task)
from .matching import MatchingTask

register_task("matching", MatchingTask, overwrite=True)

_OPTIONAL = {"vqa": ("vqa", ("VQATask", "VqaTask", "vqa_task")),
             "generation": ("generation", ("GenerationTask", "generation_task"))}


def _register_optional(name: str, module: str, factories: tuple[str, ...]) -> None:
    try:
        mod = importlib.import_module(f".{module}", __name__)
    except ImportError as exc:  # the module is optional (or not written yet)
        if getattr(exc, "name", None) not in (f"{__name__}.{module}",):
            warnings.warn(f"task {name!r} is unavailable: {exc}", RuntimeWarning, stacklevel=2)
        return
    if name in available_tasks():  # the module registered itself
        return
    for attr in factories:
        factory = getattr(mod, attr, None)
        if callable(factory):
            register_task(name, factory)
            return


for _name, (_module, _factories) in _OPTIONAL.items():
    _register_optional(_name, _module, _factories)

__all__ = ["AnalysisExample", "GroundingTarget", "MatchingTask", "REMOVALS", "ScoreFn", "Task", "available_tasks",
           "get_task", "register_task"]
