"""Profiles: where a model family's attention is, and what each attention call means.

A :class:`Profile` tells the explainers, for one family of models,

* which capture sites to record (``sites(model, inputs)``, passed to :func:`attnlens.capture`);
* what each recorded map is (``classify(amap) -> (query stream, key stream, stage key)``):
  self-attention of a stream, or cross-attention from one stream to another, and which maps
  read the same state (same stage key);
* where the text and image tokens are (``layout(model, inputs, streams, maps)``);
* the default target (``target``; None: the top logit, :func:`~attnlens.explain.trace.default_target`);
* where the image features are for the captum attributions (``features(model, inputs)``:
  ``("input", key)``, a tensor ``[B, R, D]`` of ``inputs``, ``("layer", module path)``,
  a module whose output ``[B, R, D]`` is the region features, or ``("argument", "path@i")``,
  a module's positional argument ``i``), ``feature_keep`` the positions of
  that tensor that are image tokens (e.g. ``slice(1, None)`` without BLIP's ``[CLS]``), and
  ``key_dim`` the name of the image axis of attribution maps;
* optionally ``links(model, inputs, maps) -> [(stream, positions, source stream)]``: the tokens at
  ``positions`` of ``stream`` are the first ``len(positions)`` tokens of ``source stream`` handed over (BLIP-2's Q-Former
  outputs at the language model's image-token positions; a link step, :class:`~.trace.Step`).

Built in (found by :func:`profile_for`):

* ``attnlens`` -- attnlens' own models (every :class:`~attnlens.models.attention.AttentionProbe`:
  SCAN t2i/i2t, RCAR, VQA, generation): each call of a ``CrossAttention`` is a cross-attention
  step from its query modality to its key modality, a stage of its own (chunked SCAN/RCAR calls
  are stitched back into one). Image x caption pair maps (``("image", "caption", ...)``) are
  read on their diagonal: example ``b`` is image ``b`` with caption ``b``, and the default
  target of a matching model is the pair's similarity ``S[b, b]``; VQA's is the predicted
  answer's logit. The image features for captum: a matching model's ``image_encoder`` output,
  ``images`` of a bare SCAN/RCAR similarity, the region features a VQA model's ``attend`` reads
  (its key argument), or what the model's ``explain_features`` attribute names.
* ``lxmert`` -- dual stream: language self-attention ``encoder.layer.*``, visual
  self-attention ``encoder.r_layers.*``, and in each cross-modality layer the co-attention both
  ways (one stage: both directions read the layer's input), then the two self-attentions.
* ``visualbert`` -- single stream: every layer's joint self-attention over ``[text; regions]``
  (text positions first, the length of ``input_ids``).
* ``blip`` -- BLIP image-text matching (``BlipForImageTextRetrieval``): the vision encoder's
  self-attention (image stream: ``[CLS]`` + patches), and in each text-encoder layer the text
  self-attention, then the text-to-image cross-attention (its own stage). The image tokens of
  the map are the patches (the ``[CLS]`` image token is dropped), with the patch grid; the default
  target is the ITM head's "match" logit ``itm_score[:, 1]``.
* ``vilt``, ``dual_encoder`` (CLIP / SigLIP), ``decoder`` (LLaVA-style), ``blip2`` -- in
  :mod:`attnlens.explain.families`.
* :func:`single_stream` -- any single-stream transformer: the user names the attention module
  paths and the text and image positions.

A new family is one :func:`register` call: a detector and a profile builder.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping, Sequence

import torch
from torch import nn

from ..attention_map import AttentionMap
from ..capture.adapters import lxmert as _lxmert
from ..capture.adapters.returned import returned_weights
from ..capture.sites import probe_taps
from ..errors import ExplainError, RegistryError
from .trace import Layout


@dataclass(frozen=True)
class Profile:
    """How the explainers read one model family (module docstring)."""

    name: str
    sites: Callable[[nn.Module, Mapping], list]
    classify: Callable[[AttentionMap], tuple[str, str, Hashable]]
    layout: Callable[[nn.Module, Mapping, dict, list], Layout]
    target: Callable[[Any], torch.Tensor] | None = None
    features: Callable[[nn.Module, Mapping], tuple[str, str]] | None = None
    group_calls: bool = False
    description: str = ""
    key_dim: str = "region"
    feature_keep: slice | None = None
    links: Callable[[nn.Module, Mapping, list], list] | None = None


_PROFILES: dict[str, tuple[Callable[[nn.Module], bool], Callable[[nn.Module], Profile]]] = {}


def register(name: str, detect: Callable[[nn.Module], bool], build: Callable[[nn.Module], Profile], *,
             overwrite: bool = False) -> None:
    """Register a model family: ``detect(model) -> bool`` and ``build(model) -> Profile``."""
    if name in _PROFILES and not overwrite:
        raise RegistryError(f"explain profile {name!r} is already registered; pass overwrite=True to replace it")
    _PROFILES[name] = (detect, build)


def available() -> list[str]:
    """Names of the registered profiles.

    >>> import attnlens.explain  # registers the families of :mod:`attnlens.explain.families` too
    >>> available()
    ['attnlens', 'blip', 'blip2', 'decoder', 'dual_encoder', 'lxmert', 'vilt', 'visualbert']
    """
    return sorted(_PROFILES)


def profile_for(model: nn.Module) -> Profile:
    """The profile of the first registered family that recognises ``model``."""
    for name, (detect, build) in _PROFILES.items():
        if detect(model):
            return build(model)
    raise ExplainError(f"no explain profile recognises {type(model).__name__} (profiles: {', '.join(available())}); "
                       "pass profile=attnlens.explain.profiles.single_stream(model, paths, text_positions=..., "
                       "image_positions=...) or register one")


# ----------------------------------------------------------------------------- helpers
def _is(module: nn.Module, cls: str, package: str) -> bool:
    t = type(module)
    return t.__name__ == cls and t.__module__.startswith(package)


def _find(model: nn.Module, cls: str, package: str) -> str | None:
    for path, m in model.named_modules():
        if _is(m, cls, package):
            return path
    return None


def _join(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if prefix else path


def _positions(spec, inputs: Mapping, n: int) -> torch.Tensor:
    """Positions from a slice, range, sequence or callable ``inputs -> any of these``."""
    if callable(spec):
        spec = spec(inputs)
    if isinstance(spec, slice):
        spec = range(n)[spec]
    pos = torch.as_tensor(list(spec) if not isinstance(spec, torch.Tensor) else spec, dtype=torch.long).reshape(-1)
    if len(pos) and (int(pos.min()) < 0 or int(pos.max()) >= n):
        raise ExplainError(f"token positions {pos.tolist()} fall outside the joint sequence of {n} tokens")
    return pos


def _text_length(inputs: Mapping) -> int:
    for key in ("input_ids", "inputs_embeds"):
        if inputs.get(key) is not None:
            return int(inputs[key].shape[1])
    raise ExplainError(f"cannot tell the text length: inputs have no input_ids or inputs_embeds (keys: {sorted(inputs)})")


# ----------------------------------------------------------------------------- attnlens' own models
_PAIR_MODELS = ("MatchingModel", "ScanSimilarity", "RCARSimilarity")


def pair_similarity(output) -> torch.Tensor:
    """Target of a matching model: the similarity ``S[b, b]`` of image ``b`` with caption ``b``.

    >>> pair_similarity(torch.tensor([[0.9, 0.1], [0.2, 0.7]])).tolist()
    [0.8999999761581421, 0.699999988079071]
    """
    if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[0] != output.shape[1]:
        raise ExplainError("a matching model's default target is the diagonal of a square similarity matrix "
                           f"[B, B] (image b with caption b); got {getattr(output, 'shape', type(output).__name__)}")
    return torch.diagonal(output)


def _own_classify(amap: AttentionMap):
    return amap.query.modality, amap.key.modality, ("call", amap.meta.get("group", amap.meta.get("call_index")))


def _own_layout(model, inputs, streams, maps) -> Layout:
    dims = {}
    for m in maps:
        dims.setdefault(m.query.modality, m.query.dim)
        dims.setdefault(m.key.modality, m.key.dim)
    return Layout(("text", None), ("image", None), query_dim=dims.get("text", "word"),
                  key_dim=dims.get("image", "region"))


def _own_features(model, inputs):
    named = getattr(model, "explain_features", None)  # ("input", key) or ("layer", path) set on the model
    if named is not None:
        return tuple(named)
    name = type(model).__name__
    if name == "MatchingModel":
        return "layer", "image_encoder"
    if name in ("ScanSimilarity", "RCARSimilarity"):
        return "input", "images"
    if name == "VQAModel":
        return "argument", "attend@1"   # the region features the question attends over (after image_index)
    raise ExplainError(f"no region-feature input known for {name}: the captum attributions need a "
                       "[B, R, D] feature tensor (MatchingModel, ScanSimilarity, RCARSimilarity, VQAModel, or "
                       "a model attribute explain_features = ('input', key), ('layer', module path) or "
                       "('argument', 'module path@position'))")


def attnlens_profile(model: nn.Module) -> Profile:
    """Profile of attnlens' own models (module docstring)."""
    pair = type(model).__name__ in _PAIR_MODELS
    return Profile("attnlens", lambda m, inputs: probe_taps(m), _own_classify, _own_layout,
                   target=pair_similarity if pair else None, features=_own_features, group_calls=True,
                   description="each CrossAttention call is a cross-attention step (query modality -> key modality)")


# ----------------------------------------------------------------------------- LXMERT
_LX = "transformers.models.lxmert"
_LX_RULES = (
    (re.compile(r"encoder\.layer\.(\d+)\.attention\.self$"), ("text", "text", "l")),
    (re.compile(r"encoder\.r_layers\.(\d+)\.attention\.self$"), ("image", "image", "r")),
    (re.compile(r"encoder\.x_layers\.(\d+)\.visual_attention\.att/t2i$"), ("text", "image", "x-co")),
    (re.compile(r"encoder\.x_layers\.(\d+)\.visual_attention\.att/i2t$"), ("image", "text", "x-co")),
    (re.compile(r"encoder\.x_layers\.(\d+)\.lang_self_att\.self$"), ("text", "text", "x-self")),
    (re.compile(r"encoder\.x_layers\.(\d+)\.visn_self_att\.self$"), ("image", "image", "x-self")),
)


def _lxmert_sites(model: nn.Module, inputs) -> list:
    base = _find(model, "LxmertModel", _LX)
    enc = model.get_submodule(_join(base, "encoder"))
    sites = []
    for i in range(len(enc.layer)):
        sites.append(returned_weights(model, _join(base, f"encoder.layer.{i}.attention.self")))
    for i in range(len(enc.r_layers)):
        sites.append(returned_weights(model, _join(base, f"encoder.r_layers.{i}.attention.self")))
    sites += _lxmert.find_taps(model)
    for i in range(len(enc.x_layers)):
        for part in ("lang_self_att", "visn_self_att"):
            sites.append(returned_weights(model, _join(base, f"encoder.x_layers.{i}.{part}.self")))
    return sites


def _lxmert_classify(amap: AttentionMap):
    for rule, (q, k, stage) in _LX_RULES:
        hit = rule.search(amap.site)
        if hit:
            return q, k, (stage, int(hit.group(1)))
    raise ExplainError(f"LXMERT profile: unexpected site {amap.site!r}")


def lxmert_profile(model: nn.Module) -> Profile:
    """Profile of transformers' LXMERT models (module docstring)."""
    return Profile("lxmert", _lxmert_sites, _lxmert_classify,
                   lambda m, inputs, streams, maps: Layout(("text", None), ("image", None)),
                   features=lambda m, inputs: ("input", "visual_feats"),
                   description="dual stream: language and visual self-attention, co-attention both ways")


# ----------------------------------------------------------------------------- single stream
def _joint_classify(amap: AttentionMap):
    return "joint", "joint", ("layer", amap.site)


def single_stream(model: nn.Module, paths: Sequence[str] | str, *, text_positions, image_positions,
                  key_dim: str = "patch", grid: tuple[int, int] | None = None,
                  features: tuple[str, str] | None = None, target: Callable | None = None) -> Profile:
    """A profile for any single-stream transformer: joint self-attention modules named by path.

    Args:
        model: the model.
        paths: the attention modules in forward order (module paths; ``fnmatch`` patterns such
            as ``"vilt.encoder.layer.*.attention.attention"`` are expanded in module order). Each
            must return ``(context, weights [B, H, N, N])`` (with ``output_attentions`` set for the
            capture when it takes that argument).
        text_positions / image_positions: positions of the text and image tokens in the joint
            sequence: a slice, range, sequence or ``callable(inputs)`` returning one.
        key_dim: name of the image axis (``"patch"`` or ``"region"``).
        grid: ``(rows, cols)`` of the patches, recorded on the image side.
        features: ``("input", key)`` or ``("layer", path)`` of the image features for captum.
        target: the default target (None: the top logit).

    >>> class Block(nn.Module):
    ...     def forward(self, x, output_attentions=False):
    ...         w = torch.softmax(x @ x.transpose(-1, -2), -1)[:, None]
    ...         return (x + (w[:, 0] @ x), w) if output_attentions else (x + (w[:, 0] @ x),)
    >>> net = nn.ModuleList([Block(), Block()])
    >>> p = single_stream(net, "*", text_positions=slice(0, 2), image_positions=slice(2, None))
    >>> p.name
    'single_stream'
    """
    import fnmatch

    names = [n for n, _ in model.named_modules() if n]
    chosen = []
    for pattern in ([paths] if isinstance(paths, str) else list(paths)):
        hits = [n for n in names if n == pattern] or [n for n in names if fnmatch.fnmatchcase(n, pattern)
                                                     and "." not in n[len(pattern.rstrip("*")):]]
        if not hits:
            raise ExplainError(f"single_stream: no module of {type(model).__name__} matches {pattern!r}")
        chosen += [h for h in hits if h not in chosen]

    def layout(m, inputs, streams, maps):
        n = streams["joint"]
        return Layout(("joint", _positions(text_positions, inputs, n)), ("joint", _positions(image_positions, inputs, n)),
                      key_dim=key_dim, grid=grid)

    return Profile("single_stream", lambda m, inputs: [returned_weights(m, p) for p in chosen], _joint_classify,
                   layout, target=target, features=None if features is None else (lambda m, inputs: features),
                   description=f"joint self-attention at {len(chosen)} modules")


# ----------------------------------------------------------------------------- VisualBERT
_VB = "transformers.models.visual_bert"


def _visualbert_sites(model, inputs):
    base = _find(model, "VisualBertModel", _VB)
    enc = model.get_submodule(_join(base, "encoder"))
    return [returned_weights(model, _join(base, f"encoder.layer.{i}.attention.self")) for i in range(len(enc.layer))]


def _visualbert_layout(model, inputs, streams, maps) -> Layout:
    t, n = _text_length(inputs), streams["joint"]
    return Layout(("joint", torch.arange(t)), ("joint", torch.arange(t, n)))


def visualbert_profile(model: nn.Module) -> Profile:
    """Profile of transformers' VisualBERT models (module docstring)."""
    return Profile("visualbert", _visualbert_sites, _joint_classify, _visualbert_layout,
                   features=lambda m, inputs: ("input", "visual_embeds"),
                   description="single stream: joint self-attention over [text; regions]")


# ----------------------------------------------------------------------------- BLIP
_BLIP = "transformers.models.blip"
_BLIP_RULES = (
    (re.compile(r"vision_model\.encoder\.layers\.(\d+)\.self_attn$"), ("image", "image", "v")),
    (re.compile(r"encoder\.layer\.(\d+)\.attention\.self$"), ("text", "text", "t-self")),
    (re.compile(r"encoder\.layer\.(\d+)\.crossattention\.self$"), ("text", "image", "t-cross")),
)


def itm_match(output) -> torch.Tensor:
    """BLIP's image-text matching target: the "match" logit ``itm_score[:, 1]``.

    >>> from types import SimpleNamespace
    >>> itm_match(SimpleNamespace(itm_score=torch.tensor([[0.1, 2.0]]))).tolist()
    [2.0]
    """
    score = getattr(output, "itm_score", None)
    if not isinstance(score, torch.Tensor) or score.ndim != 2 or score.shape[1] != 2:
        raise ExplainError("BLIP's default target is the ITM match logit itm_score[:, 1] (use_itm_head=True); "
                           "pass target= for other outputs")
    return score[:, 1]


def _blip_sites(model, inputs):
    from ..capture.adapters import blip as _blip

    sites = []
    for path, m in model.named_modules():
        if _is(m, "BlipAttention", _BLIP) and ".vision_model." in f".{path}":
            sites.append(returned_weights(model, path))
    for path, m in model.named_modules():
        if _is(m, "BlipTextSelfAttention", _BLIP) and path.endswith("attention.self") \
                and not path.endswith("crossattention.self"):
            sites.append(returned_weights(model, path))
    return sites + _blip.taps(model)


def _blip_classify(amap: AttentionMap):
    for rule, (q, k, stage) in _BLIP_RULES:
        hit = rule.search(amap.site)
        if hit:
            return q, k, (stage, int(hit.group(1)))
    raise ExplainError(f"BLIP profile: unexpected site {amap.site!r}")


def _blip_layout(model, inputs, streams, maps) -> Layout:
    from ..capture.adapters.blip import config_grid

    n = streams["image"]
    grid = config_grid(model)
    return Layout(("text", None), ("image", torch.arange(1, n)), key_dim="patch",
                  grid=grid if grid is not None and grid[0] * grid[1] == n - 1 else None)


def blip_profile(model: nn.Module) -> Profile:
    """Profile of transformers' BLIP image-text matching models (module docstring)."""
    return Profile("blip", _blip_sites, _blip_classify, _blip_layout, target=itm_match,
                   features=lambda m, inputs: ("layer", _join(_find(m, "BlipVisionModel", _BLIP), "embeddings")),
                   description="vision self-attention, text self-attention and text-to-patch cross-attention",
                   key_dim="patch", feature_keep=slice(1, None))


register("attnlens", lambda m: bool(probe_taps(m)), attnlens_profile)
register("lxmert", lambda m: _find(m, "LxmertModel", _LX) is not None, lxmert_profile)
register("visualbert", lambda m: _find(m, "VisualBertModel", _VB) is not None, visualbert_profile)
register("blip", lambda m: _find(m, "BlipTextModel", _BLIP) is not None and _find(m, "BlipVisionModel", _BLIP)
         is not None, blip_profile)
