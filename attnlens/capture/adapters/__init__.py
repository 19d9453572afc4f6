"""Adapters: capture sites for third-party models that have no attnlens probes.

``attnlens.capture(model)`` asks every registered finder for the taps of ``model``; the built-in
finders recognise transformers' vision-language families by class name (transformers is never
imported here) and emit their *cross-modal* blocks, sliced inside the hook:

* :mod:`.lxmert` -- cross-modality attention, both directions, per cross layer;
* :mod:`.visualbert` -- text-to-region and region-to-text blocks of each layer's self-attention;
* :mod:`.blip` -- text-to-patch cross attention of every text-encoder layer, with the patch grid;
* :mod:`.vilt` -- ViLT: text rows x image-grid cells of each layer (image ``[CLS]`` kept apart);
* :mod:`.qformer` -- BLIP-2 / InstructBLIP: Q-Former query -> patch cross attention;
* :mod:`.llava` -- decoder-only models (LLaVA, LLaVA-NeXT, PaliGemma, Qwen2-VL / 2.5-VL, and the
  language model of BLIP-2 / InstructBLIP): text rows x image-token columns of every
  language-model layer, one row per generated token during ``generate()``;
* :mod:`.dual` -- CLIP / SigLIP: each tower's self-attention, labelled image/image, text/text;
* :mod:`.hf` -- the shared pieces, and the **fallback**: when no adapter knows a model, every
  transformers attention module that returns weights (under eager attention) is a site, with
  modality ``"unknown"`` and dims ``("batch", "head", "query", "key")``.

Fused attention (SDPA, flash) is switched to eager on the model's configs for the capture and
restored on exit, also after an exception (``meta["method"] = "eager-switch"``; ``"returned"``
when the model already ran eagerly). The text -> image block of a decoder-only model on SDPA
uses :mod:`.rows` instead (``meta["method"] = "rows"``): the output comes from the fused kernel
(the plain forward's, exactly) and only the text rows' weights are recomputed, so no
``T x T`` matrix is formed. For any other model, record a module's output with
:func:`softmax_outputs` and pass it as ``sites=``.

**Gradients.** With ``attnlens.capture(..., grad=True)`` the maps are not detached; a sliced
block (or the rows method's recomputed rows) is a function of the model's states but not the
tensor the model used, so gradients of the output with respect to the attention need the
``block="full"`` taps (eager weights, the very tensor multiplied with the values).

**Positions.** Every map emitted by :mod:`.vilt`, :mod:`.qformer`, :mod:`.llava` and
:mod:`.dual` records where its rows and columns sit in the layer's full sequence:
``meta["query_positions"]`` and ``meta["key_positions"]`` are **lists of ints**, one per row /
column (one list per batch element, i.e. a list of lists, only when the examples differ; ViLT
marks grid cells it did not keep with -1). The ``block="full"`` option of ``vilt.taps``,
``llava.taps`` and ``qformer.taps`` emits each layer's whole attention instead of the
cross-modal block, with ``meta["text_positions"]`` and ``meta["image_positions"]`` (key
positions of each kind, same list form). Image-side maps carry ``meta["grid"] = (rows, cols)``
(also ``Side.grid``) and ``meta["transform"]`` (see :func:`attnlens.capture.patches.patch_boxes`;
``region_meta=`` of ``attnlens.capture`` overrides it with the processor's real chain).
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
from . import blip, dual, generic, hf, llava, lxmert, qformer, rows, vilt, visualbert
from .generic import (AttentionOutputTap, OutputTap, attention_outputs, eager_switch, hook_returned_weights,
                      module_at, softmax_outputs)

_FINDERS: dict[str, Callable[[nn.Module], list[Tap]]] = {
    "lxmert": lxmert.find_taps,
    "visualbert": visualbert.find_taps,
    "blip": blip.find_taps,
    "vilt": vilt.find_taps,
    "qformer": qformer.find_taps,
    "llava": llava.find_taps,
    "dual": dual.find_taps,
}


def register(name: str, finder: Callable[[nn.Module], list[Tap]], *, overwrite: bool = False) -> None:
    """Register ``finder(model) -> list[Tap]`` under ``name`` (twice is an error unless ``overwrite``)."""
    if name in _FINDERS and not overwrite:
        raise RegistryError(f"capture adapter {name!r} is already registered; pass overwrite=True to replace it")
    _FINDERS[name] = finder


def available() -> list[str]:
    """Names of the registered adapters.

    >>> available()
    ['blip', 'dual', 'llava', 'lxmert', 'qformer', 'vilt', 'visualbert']
    """
    return sorted(_FINDERS)


def find_taps(model: nn.Module) -> list[Tap]:
    """The taps every registered adapter finds in ``model``; the fallback's when none finds any."""
    out: list[Tap] = []
    for finder in _FINDERS.values():
        out.extend(finder(model))
    return out or hf.find_fallback(model)


__all__ = ["AttentionOutputTap", "OutputTap", "attention_outputs", "available", "eager_switch", "blip", "dual",
           "find_taps", "generic", "hf", "hook_returned_weights", "llava", "lxmert", "module_at", "qformer", "register",
           "rows", "softmax_outputs", "vilt", "visualbert"]
