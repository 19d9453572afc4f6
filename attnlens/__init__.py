"""attnlens: understand the region-word attention of vision-and-language models.

Layers (one direction of flow)::

    data -> models (alignment inside attention) -> capture -> explain -> metrics -> render / report

Subpackages are imported lazily, so ``import attnlens`` stays fast.
"""
from __future__ import annotations

import importlib

from . import align, errors, geometry
from .types import AttentionMap, GroundedCaption, Phrase, Regions, Side

__version__ = "0.1.0"

_LAZY = {"data", "models", "capture", "explain", "metrics", "render", "report", "study", "train", "tasks", "cli",
         "evaluate"}


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'attnlens' has no attribute {name!r}")


__all__ = ["AttentionMap", "GroundedCaption", "Phrase", "Regions", "Side", "align", "errors", "geometry",
           *sorted(_LAZY)]
