"""Evaluate any model on any grounded dataset, to the study's report (:func:`evaluate`).

* :func:`evaluate` / ``attnlens evaluate --model ... --data ... --out DIR``;
* :class:`ModelSpec`: how a model reads an item, which scalar it outputs, where its image
  tokens are and how a region / patch is removed (:mod:`attnlens.evaluate.spec`); ready specs in
  :mod:`attnlens.evaluate.specs` (:func:`get_spec`, :func:`available_specs`);
* :class:`EvalItem`, :func:`as_items`, :func:`load_data`: grounded datasets as items.
"""
from __future__ import annotations

import sys
import types

from .items import EvalItem, as_items, load_data
from .run import DEFAULT_SETTINGS, EvaluateResult, evaluate
from .spec import HashTokenizer, ModelSpec, ModuleSpec
from .specs import available as available_specs
from .specs import get_spec, register as register_spec


class _CallableModule(types.ModuleType):
    """Makes ``attnlens.evaluate(model, data, ...)`` call :func:`attnlens.evaluate.run.evaluate`."""

    def __call__(self, model, data, **options) -> EvaluateResult:
        return evaluate(model, data, **options)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["DEFAULT_SETTINGS", "EvalItem", "EvaluateResult", "HashTokenizer", "ModelSpec", "ModuleSpec", "as_items",
           "available_specs", "evaluate", "get_spec", "load_data", "register_spec"]
