"""Adapters: capture sites for third-party models that have no attnlens probes.

``attnlens.capture(model)`` asks every registered finder for the taps of ``model``; the built-in
finders recognise transformers' LXMERT, VisualBERT and BLIP models by class (transformers is
never imported here). For any other model, record a module's output with
:func:`softmax_outputs` and pass it as ``sites=``.

* :mod:`.lxmert` -- cross-modality attention, both directions, per cross layer;
* :mod:`.visualbert` -- text-to-region and region-to-text blocks of each layer's self-attention;
* :mod:`.blip` -- text-to-patch cross attention of every text-encoder layer, with the patch grid;
* :mod:`.generic` -- :func:`softmax_outputs` (any module's output), :func:`attention_outputs`
  (a transformers attention module, switched to eager attention for the capture when it uses a
  fused kernel), and the hook helper the adapters share.

A new adapter is a function ``model -> list[Tap]`` passed to :func:`register`.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ...errors import RegistryError
from ..sites import Tap
from . import blip, generic, lxmert, visualbert
from .generic import (AttentionOutputTap, OutputTap, attention_outputs, eager_switch, hook_returned_weights,
                      module_at, softmax_outputs)

_FINDERS: dict[str, Callable[[nn.Module], list[Tap]]] = {
    "lxmert": lxmert.find_taps,
    "visualbert": visualbert.find_taps,
    "blip": blip.find_taps,
}


def register(name: str, finder: Callable[[nn.Module], list[Tap]], *, overwrite: bool = False) -> None:
    """Register ``finder(model) -> list[Tap]`` under ``name`` (twice is an error unless ``overwrite``)."""
    if name in _FINDERS and not overwrite:
        raise RegistryError(f"capture adapter {name!r} is already registered; pass overwrite=True to replace it")
    _FINDERS[name] = finder


def available() -> list[str]:
    """Names of the registered adapters.

    >>> available()
    ['blip', 'lxmert', 'visualbert']
    """
    return sorted(_FINDERS)


def find_taps(model: nn.Module) -> list[Tap]:
    """The taps every registered adapter finds in ``model``."""
    out: list[Tap] = []
    for finder in _FINDERS.values():
        out.extend(finder(model))
    return out


__all__ = ["AttentionOutputTap", "OutputTap", "attention_outputs", "available", "eager_switch", "blip", "find_taps", "generic", "hook_returned_weights", "lxmert",
           "module_at", "register", "softmax_outputs", "visualbert"]
