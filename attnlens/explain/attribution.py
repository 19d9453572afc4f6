"""Attributions of the target to the image features through captum: ``integrated_gradients``,
``input_x_gradient``, ``gradcam`` (and ``feature_ablation`` in :func:`attributions`).

The image features are the ``[B, R, D]`` tensor the profile names (``features``): a model input
(``("input", key)``: LXMERT's ``visual_feats``, VisualBERT's ``visual_embeds``), a module's
output (``("layer", path)``: a matching model's ``image_encoder``) or a module's positional
argument (``("argument", "path@i")``: the key argument of a VQA model's ``attend``, i.e. the region
features its attention reads) or a module's feature-map output ``[B, D, h, w]`` read as ``h * w``
tokens in row-major order (``("grid", path)``: ViLT's patch embedding, so the columns are the grid
cells); the module's output or argument is replaced by the attributed
tensor during each forward (the hook removed in ``finally``). Every other batch-first tensor input is passed
to captum as an additional forward argument, so it is repeated along with the features (an
input whose first axis has the batch size is taken to be batch-first).

* ``integrated_gradients``: zero baseline, ``n_steps`` (captum's Gauss-Legendre rule), the
  attributions summed over the feature dimension (signed);
* ``input_x_gradient``: features x gradient, summed over the feature dimension;
* ``gradcam`` (Selvaraju et al. 2017) on tokens: the feature dimension is the channel axis and
  the regions (or patches) the spatial axis, so ``cam_r = ReLU(sum_d mean_r'(dOut/dx_{r'd}) x_{rd})``
  (captum's ``LayerGradCam`` on the features transposed to ``[B, D, R]``).

**From per-region attributions to a map**: the target is one scalar per example, so these
methods give one importance per region, not one per word. The map has a single query row,
dims ``("batch", "output", "region")``: the relevance of each region for the output (the row
a word x region metric should compare with is ``[CLS]``'s, or the words' mean). No per-word
attribution is made up.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import DTypeError, ExplainError, NonFiniteError, ShapeError, UnknownNameError, require
from ..params import int_param
from .trace import default_target

METHODS = ("input_x_gradient", "integrated_gradients", "feature_ablation", "gradcam")


def _tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _real(x, what: str) -> torch.Tensor:
    """``x`` as a finite real tensor; DTypeError / NonFiniteError naming ``what`` otherwise."""
    if not isinstance(x, torch.Tensor):
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise DTypeError(f"{what} must be a tensor or array of real numbers, got {type(x).__name__} "
                             f"of dtype {arr.dtype}")
        x = torch.as_tensor(arr if arr.flags.writeable else arr.copy())
    if x.is_complex():
        raise DTypeError(f"{what} must be real numbers, got {x.dtype}")
    if x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"{what} {tuple(x.shape)} contain NaN or infinite values")
    return x


def attributions(forward: Callable[..., torch.Tensor], inputs, method: str, *, aggregate: str = "sum",
                 n_steps: int = 32, internal_batch_size: int | None = None,
                 additional_forward_args: tuple = ()) -> tuple[torch.Tensor, ...]:
    """Per-element attributions ``[N, E]`` for each input ``[N, E, D]`` (tuple, one per input).

    ``forward(*inputs, *additional_forward_args) -> [N]``. ``gradcam`` takes one input.

    >>> x = torch.tensor([[[1.0, 1.0], [2.0, 0.0]]])
    >>> attributions(lambda f: (f * torch.tensor([1.0, 3.0])).sum((1, 2)), x, "input_x_gradient")[0].tolist()
    [[4.0, 2.0]]
    """
    if method not in METHODS:
        raise UnknownNameError("attribution method", str(method), METHODS)
    n_steps = int_param(n_steps, "n_steps", "attributions", lo=1)
    if internal_batch_size is not None:
        internal_batch_size = int_param(internal_batch_size, "internal_batch_size", "attributions", lo=1)
    captum_attr = require("captum.attr", "captum")
    xs = []
    for i, x in enumerate(_tuple(inputs)):
        x = _real(x, f"attributions: inputs[{i}]").detach()
        xs.append(x.float() if x.dtype in (torch.float16, torch.bfloat16) or not x.is_floating_point() else x)
    xs = tuple(xs)
    for x in xs:
        if x.ndim != 3:
            raise ShapeError(f"attributions: every input must be [N, E, D], got shape {tuple(x.shape)}")
        if len(x) != len(xs[0]):
            raise ShapeError(f"attributions: inputs {[tuple(y.shape) for y in xs]} disagree on N")
    if aggregate not in ("sum", "abs_sum"):
        raise UnknownNameError("aggregate", aggregate, ("sum", "abs_sum"))
    extra = tuple(additional_forward_args) or None
    if method in ("input_x_gradient", "integrated_gradients"):
        xs = tuple(x.clone().requires_grad_(True) for x in xs)
    with torch.enable_grad():
        if method == "input_x_gradient":
            attr = captum_attr.InputXGradient(forward).attribute(xs, additional_forward_args=extra)
        elif method == "integrated_gradients":
            attr = captum_attr.IntegratedGradients(forward).attribute(
                xs, baselines=tuple(torch.zeros_like(x) for x in xs), n_steps=n_steps,
                internal_batch_size=internal_batch_size, additional_forward_args=extra)
        elif method == "gradcam":
            if len(xs) != 1:
                raise ShapeError(f"gradcam attributes one feature tensor, got {len(xs)}")
            probe = nn.Identity()

            def transposed(xt, *args):
                return forward(probe(xt).transpose(1, 2), *args)

            xt = xs[0].transpose(1, 2).contiguous().requires_grad_(True)
            cam = captum_attr.LayerGradCam(transposed, probe).attribute(xt, additional_forward_args=extra,
                                                                        relu_attributions=True)
            return (cam.detach()[:, 0].double(),)
        elif method == "feature_ablation":
            masks, offset = [], 0
            for x in xs:
                e = x.shape[1]
                masks.append((torch.arange(e) + offset)[None, :, None].expand(1, e, x.shape[2]))
                offset += e
            with torch.no_grad():
                attr = captum_attr.FeatureAblation(forward).attribute(
                    xs, baselines=tuple(0.0 for _ in xs), feature_mask=tuple(masks), perturbations_per_eval=8,
                    additional_forward_args=extra)
            return tuple(a.detach()[..., 0].double() for a in _tuple(attr))
        else:
            raise UnknownNameError("attribution method", method, METHODS)
    attr = _tuple(attr)
    return tuple((a.detach().abs() if aggregate == "abs_sum" else a.detach()).sum(-1).double() for a in attr)


@contextmanager
def _replaced_output(module: nn.Module, holder: dict, grid: bool = False):
    """While active, ``module``'s output is ``holder["value"]`` when set (else recorded there).
    ``grid``: the output is a feature map ``[B, D, h, w]`` and the value its tokens ``[B, h * w, D]``."""
    def hook(mod, args, output):
        if holder.get("value") is None:
            holder["seen"] = output
            return None
        value = holder["value"]
        if grid and isinstance(output, torch.Tensor) and output.ndim == 4 and \
                value.shape == (output.shape[0], output.shape[2] * output.shape[3], output.shape[1]):
            return value.transpose(1, 2).reshape(output.shape)
        if not isinstance(output, torch.Tensor) or value.shape != output.shape:
            raise ShapeError(f"features {tuple(value.shape)} cannot replace the output "
                             f"{tuple(getattr(output, 'shape', ()))} of the feature module")
        return value

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _replaced_argument(module: nn.Module, index: int, holder: dict):
    """While active, ``module``'s positional argument ``index`` is ``holder["value"]`` when set
    (else recorded there)."""
    def hook(mod, args):
        if len(args) <= index:
            raise ExplainError(f"the feature module was called with {len(args)} positional arguments; "
                               f"argument {index} is the feature tensor")
        if holder.get("value") is None:
            holder["seen"] = args[index]
            return None
        value = holder["value"]
        if value.shape != args[index].shape:
            raise ShapeError(f"features {tuple(value.shape)} cannot replace argument {index} "
                             f"{tuple(args[index].shape)} of the feature module")
        return (*args[:index], value, *args[index + 1:])

    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _replacing(model: nn.Module, kind: str, where: str, holder: dict):
    if kind in ("layer", "grid"):
        return _replaced_output(model.get_submodule(where), holder, grid=kind == "grid")
    path, _, index = where.rpartition("@")
    return _replaced_argument(model.get_submodule(path), int(index), holder)


def _feature_forward(ctx):
    """``(forward(features, *batch_inputs), features [B, R, D], batch_inputs, name, grid)`` for captum
    (``grid``: ``(rows, cols)`` of ``("grid", path)`` features, else None)."""
    if ctx.profile.features is None:
        raise ExplainError(f"the {ctx.profile.name!r} profile names no image-feature tensor for captum attributions")
    kind, where = ctx.profile.features(ctx.model, ctx.inputs)
    grid = None
    target = ctx.target or ctx.profile.target or default_target
    model, inputs = ctx.model, ctx.inputs
    if kind == "input":
        if where not in inputs or not isinstance(inputs[where], torch.Tensor):
            raise ExplainError(f"inputs have no feature tensor {where!r} (keys: {sorted(inputs)})")
        feats = inputs[where].detach()
    elif kind in ("layer", "argument", "grid"):
        holder: dict = {}
        with torch.no_grad(), _replacing(model, kind, where, holder):
            model(**inputs)
        feats = holder.get("seen")
        if not isinstance(feats, torch.Tensor):
            raise ExplainError(f"{kind} {where!r} did not give a feature tensor during model(**inputs)")
        feats = feats.detach()
        if kind == "grid":
            if feats.ndim != 4:
                raise ShapeError(f"grid features {where!r} must be a feature map [B, D, h, w], got {tuple(feats.shape)}")
            grid = (int(feats.shape[2]), int(feats.shape[3]))
            feats = feats.flatten(2).transpose(1, 2)  # [B, h * w, D]: one token per grid cell, row-major
    else:
        raise UnknownNameError("feature kind", kind, ("input", "layer", "argument", "grid"))
    if feats.ndim != 3:
        raise ShapeError(f"image features {where!r} must be [B, R, D], got {tuple(feats.shape)}")
    batch = feats.shape[0]
    keys = [k for k, v in inputs.items() if k != where and isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == batch]
    static = {k: v for k, v in inputs.items() if k != where and k not in keys}

    def forward(x, *args):
        kwargs = {**static, **dict(zip(keys, args))}
        if kind == "input":
            out = model(**kwargs, **{where: x})
        else:
            with _replacing(model, kind, where, {"value": x}):
                out = model(**kwargs)
        scores = target(out)
        return scores.reshape(-1)

    return forward, feats, tuple(inputs[k] for k in keys), f"{kind}:{where}", grid


def _attribute(ctx, name: str, **kw):
    from .registry import Result

    forward, feats, extra, where, grid = _feature_forward(ctx)
    (attr,) = attributions(forward, feats, name, additional_forward_args=extra, **kw)
    keep = ctx.profile.feature_keep
    meta = {"features": where, "rows": "one row: the output"}
    if keep is not None:
        attr = attr[:, keep]
        meta["feature_positions"] = f"[{keep.start}:{'' if keep.stop is None else keep.stop}]"
    return Result(attr.to(feats.dtype)[:, None, :], meta, query_dim="output", key_dim=ctx.profile.key_dim,
                  grid=grid)


def integrated_gradients(ctx, n_steps: int = 32, internal_batch_size: int | None = None):
    """captum's integrated gradients (zero baseline) of the target to the image features, one row."""
    return _attribute(ctx, "integrated_gradients", n_steps=n_steps, internal_batch_size=internal_batch_size)


def input_x_gradient(ctx):
    """captum's input x gradient of the target to the image features, one row."""
    return _attribute(ctx, "input_x_gradient")


def gradcam(ctx):
    """captum's Grad-CAM over the image tokens (feature dimension = channels), one row."""
    return _attribute(ctx, "gradcam")
