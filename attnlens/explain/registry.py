"""The registry of explanation methods and :func:`explain`, the one entry point.

A method is a plain function ``fn(ctx: Context, **options) -> Result``: ``ctx`` holds the
model, its inputs, the target and the model's profile, and runs the traced forward (and
backward) pass on demand (:meth:`Context.trace`, cached); ``Result`` holds the weights
``[B, Q, K]`` and the metadata. :func:`explain` wraps the result into an
:class:`~attnlens.attention_map.AttentionMap` of dims ``("batch", "word", "region")`` (or
``"patch"``; attribution methods give one ``"output"`` row) with ``meta["explainer"]``, the
options and the profile, and leaves the model as it was (:mod:`.guard`).

Default targets (``target=None``): the top logit of each example (the predicted class), except
for attnlens' matching models, whose target is the similarity ``S[b, b]`` of image ``b`` with
caption ``b``; for attnlens' VQA model the top logit is the predicted answer's logit. A model
without logits (e.g. ``LxmertModel``, attnlens' generator) needs ``target=``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..attention_map import AttentionMap, Side
from ..errors import ExplainError, RegistryError, UnknownNameError
from .guard import preserved
from .profiles import Profile, profile_for
from .run import run_trace
from .trace import Trace


@dataclass
class Result:
    """What a method returns: ``weights [B, Q, K]`` and how to read them."""

    weights: torch.Tensor
    meta: dict = field(default_factory=dict)
    query_dim: str = "word"
    key_dim: str = "region"
    site: str = ""
    layer: int | None = None
    grid: tuple[int, int] | None = None
    key_modality: str = "image"


class Context:
    """The model, inputs, target and profile of one :func:`explain` call."""

    def __init__(self, model: nn.Module, inputs: Mapping, target: Callable | None, profile: Profile):
        self.model, self.inputs, self.target, self.profile = model, dict(inputs), target, profile
        self._traces: dict[bool, Trace] = {}

    def trace(self, grad: bool = True) -> Trace:
        """The traced pass (with gradients when ``grad``), computed once per kind."""
        if grad not in self._traces:
            if not grad and True in self._traces:
                return self._traces[True]
            self._traces[grad] = run_trace(self.model, self.inputs, self.profile, self.target, grad=grad)
        return self._traces[grad]

    def result(self, weights: torch.Tensor, trace: Trace, **meta) -> Result:
        """A :class:`Result` named after the trace's layout."""
        lay = trace.layout
        return Result(weights, meta, lay.query_dim, lay.key_dim, grid=lay.grid, key_modality=lay.key_modality)


_METHODS: dict[str, Callable[..., Result]] = {}


def register(name: str, fn: Callable[..., Result], overwrite: bool = False) -> None:
    """Register ``fn(ctx, **options) -> Result`` as the method ``name``.

    Raises:
        RegistryError: ``name`` is taken and ``overwrite`` is False.
    """
    if not callable(fn):
        raise TypeError(f"an explanation method must be callable, got {type(fn).__name__}")
    if name in _METHODS and not overwrite:
        raise RegistryError(f"explanation method {name!r} is already registered; pass overwrite=True to replace it")
    _METHODS[name] = fn


def available() -> list[str]:
    """Names of the registered explanation methods.

    >>> {"raw", "rollout", "gradient_weighted"} <= set(available())
    True
    """
    return sorted(_METHODS)


def explain(model: nn.Module, inputs: Mapping[str, Any], method: str, *, target: Callable | None = None,
            profile: Profile | None = None, tokens=None, regions=None, eval_mode: bool = True,
            **options) -> AttentionMap:
    """Explain ``model(**inputs)`` with ``method`` as a word x region (or word x patch) map.

    Args:
        model: an attnlens model or a model family with a profile (:mod:`.profiles`).
        inputs: the keyword arguments of the model's forward (one batch).
        method: a name of :func:`available`.
        target: ``callable(output) -> [B]`` one scalar per example (default: module docstring).
        profile: override the model's profile (e.g. :func:`~attnlens.explain.profiles.single_stream`).
        tokens: words of the text side (one example), attached to the map's query side.
        regions: :class:`~attnlens.types.Regions` of the image side (one example).
        eval_mode: run the model in eval mode (restored afterwards either way).
        **options: the method's options (recorded in ``meta["options"]``).

    Returns:
        An :class:`AttentionMap` ``[batch, word, region]`` with ``meta["explainer"] = method``.

    >>> from attnlens.models.scan import ScanSimilarity
    >>> sim = ScanSimilarity("t2i", dim=8)
    >>> g = torch.Generator().manual_seed(0)
    >>> inputs = dict(images=torch.randn(2, 5, 8, generator=g), captions=torch.randn(2, 3, 8, generator=g),
    ...               lengths=torch.tensor([3, 3]))
    >>> amap = explain(sim, inputs, "gradient_weighted")
    >>> amap.shape, amap.meta["explainer"]
    ({'batch': 2, 'word': 3, 'region': 5}, 'gradient_weighted')
    """
    if method not in _METHODS:
        raise UnknownNameError("explanation method", method, _METHODS)
    if not isinstance(inputs, Mapping):
        raise ExplainError(f"inputs must be the keyword dict of the model's forward, got {type(inputs).__name__}")
    if target is not None and not callable(target):
        raise ExplainError(f"target must be a callable output -> [batch] scores, got {type(target).__name__}")
    prof = profile if profile is not None else profile_for(model)
    with preserved(model, eval_mode=eval_mode):
        res = _METHODS[method](Context(model, inputs, target, prof), **options)
    weights = res.weights.detach()
    if isinstance(tokens, str):
        tokens = tokens.split()
    query = Side(res.query_dim, "text", tokens=tokens if res.query_dim != "output" else ("<output>",))
    key = Side(res.key_dim, res.key_modality, regions=regions, grid=res.grid)
    meta = {"explainer": method, "options": dict(options), "profile": prof.name, **res.meta}
    return AttentionMap(weights, ("batch", res.query_dim, res.key_dim), None, query, key, None,
                        meta.get("direction"), res.layer, res.site, meta)
