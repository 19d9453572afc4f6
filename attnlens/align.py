"""Alignment score functions and their registry.

An alignment function scores every query fragment against every key fragment **before any
normalisation**. The module call ``fn(query, key)`` maps ``query [B, Lq, D]`` and
``key [B, Lk, Dk]`` to scores ``[B, Lq, Lk]``; ``fn.pairwise(query [Nq, Lq, D], key [Nk, Lk, Dk])``
scores every query item against every key item, ``[Nq, Nk, Lq, Lk]``, with one large GEMM
where the function allows it.

Names (Cao et al., COLING 2022):

============================  ==============================================
``dot``                       ``q . k``
``scaled_dot``                ``q . k / sqrt(D)``
``cosine``                    ``q . k / max(|q| |k|, 1e-8)``
``general``                   ``q . (W k)``; ``orientation="kWq"`` gives ``k . (W q)``
``biased_general``            ``q . (W k + b)`` (or ``k . (W q + b)``)
``activated_general``         ``act(q . (W k + b))``, act in tanh, relu, leaky_relu, sigmoid
``additive`` (``concat``)     ``v . tanh(W_q q + W_k k + b)``
============================  ==============================================

With ``W = I`` and ``b = 0`` every general variant equals ``dot`` exactly (``init="identity"``).

>>> fn = create("general", 4, init="identity")
>>> q, k = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
>>> torch.equal(fn(q, k), create("dot", 4)(q, k))
True
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .errors import DTypeError, RegistryError, ShapeError, UnknownNameError

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "leaky_relu": lambda x: torch.nn.functional.leaky_relu(x, 0.01),
    "sigmoid": torch.sigmoid,
}


def check_features(name: str, t) -> None:
    """``t`` must be a floating-point ``[items, length, dim]`` tensor (errors name ``name``)."""
    if not isinstance(t, torch.Tensor):
        raise DTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != 3:
        raise ShapeError(f"{name} must be [items, length, dim], got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise DTypeError(f"{name} must be floating point, got {t.dtype} (shape {tuple(t.shape)})")


def check_pair(query: torch.Tensor, key: torch.Tensor, *, batched: bool = True, key_dim: int | None = None):
    """Validate ``query [B, Lq, D]`` and ``key [B, Lk, D]`` (or unbatched pairwise inputs)."""
    check_features("query", query)
    check_features("key", key)
    if query.dtype != key.dtype:
        raise DTypeError(f"query is {query.dtype} but key is {key.dtype}; convert one of them")
    if batched and query.shape[0] != key.shape[0]:
        raise ShapeError(f"query {tuple(query.shape)} and key {tuple(key.shape)} differ in batch size")
    if key_dim is None and query.shape[-1] != key.shape[-1]:
        raise ShapeError(f"query {tuple(query.shape)} and key {tuple(key.shape)} differ in feature dim")
    if key_dim is not None and key.shape[-1] != key_dim:
        raise ShapeError(f"key {tuple(key.shape)} must have feature dim {key_dim}")


class Alignment(nn.Module):
    """Base of alignment functions: subclasses implement :meth:`score` (and may speed up
    :meth:`pairwise`)."""

    name: str = "alignment"

    def __init__(self, dim: int, key_dim: int | None = None):
        super().__init__()
        self.dim = int(dim)
        self.key_dim = int(key_dim) if key_dim is not None else None

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, Lq, Lk]`` for ``query [B, Lq, D]`` and ``key [B, Lk, D]``."""
        check_pair(query, key, key_dim=self.key_dim)
        return self.score(query, key)

    def score(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pairwise(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Scores of every query item with every key item: ``[Nq, Nk, Lq, Lk]``."""
        check_pair(query, key, batched=False, key_dim=self.key_dim)
        nq, nk = query.shape[0], key.shape[0]
        q = query[:, None].expand(nq, nk, *query.shape[1:]).reshape(nq * nk, *query.shape[1:])
        k = key[None].expand(nq, nk, *key.shape[1:]).reshape(nq * nk, *key.shape[1:])
        return self.score(q, k).reshape(nq, nk, query.shape[1], key.shape[1])

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}"


class Bilinear(Alignment):
    """``act(q . (W k + b))`` family: dot, scaled dot, general and its variants.

    Scores are a dot product between a transformed query and a transformed key, so
    :meth:`pairwise` is a single GEMM followed by the element-wise scale and activation.
    """

    def __init__(self, dim, key_dim=None, *, name="general", weight=True, bias=False, activation=None,
                 orientation="qWk", scale=1.0, init="default"):
        super().__init__(dim, key_dim)
        self.name = name
        if orientation not in ("qWk", "kWq"):
            raise UnknownNameError("orientation", orientation, ["qWk", "kWq"])
        if activation is not None and activation not in ACTIVATIONS:
            raise UnknownNameError("activation", activation, ACTIVATIONS)
        self.orientation, self.activation, self.scale = orientation, activation, float(scale)
        kd = self.key_dim or self.dim
        self.linear = None
        if weight:
            # qWk: W maps keys into the query space; kWq: W maps queries into the key space
            n_in, n_out = (kd, self.dim) if orientation == "qWk" else (self.dim, kd)
            self.linear = nn.Linear(n_in, n_out, bias=bias)
            if init == "identity":
                if n_in != n_out:
                    raise ShapeError(f"init='identity' needs equal query and key dims, got {self.dim} and {kd}")
                with torch.no_grad():
                    self.linear.weight.copy_(torch.eye(n_in))
                    if bias:
                        self.linear.bias.zero_()
            elif init != "default":
                raise UnknownNameError("init", init, ["default", "identity"])
        elif (self.key_dim or self.dim) != self.dim:
            raise ShapeError(f"{name} needs equal query and key dims, got {self.dim} and {self.key_dim}")

    def _transform(self, query, key):
        if self.linear is None:
            return query, key
        if self.orientation == "qWk":
            return query, self.linear(key)
        return self.linear(query), key

    def _finish(self, s):
        if self.scale != 1.0:
            s = s * self.scale
        return s if self.activation is None else ACTIVATIONS[self.activation](s)

    def score(self, query, key):
        q, k = self._transform(query, key)
        return self._finish(torch.matmul(q, k.transpose(-1, -2)))

    def pairwise(self, query, key):
        check_pair(query, key, batched=False, key_dim=self.key_dim)
        q, k = self._transform(query, key)
        nq, lq, d = q.shape
        nk, lk, _ = k.shape
        s = (q.reshape(nq * lq, d) @ k.reshape(nk * lk, d).T).reshape(nq, lq, nk, lk).permute(0, 2, 1, 3)
        return self._finish(s)

    def extra_repr(self):
        return (f"name={self.name!r}, dim={self.dim}, orientation={self.orientation!r}, "
                f"activation={self.activation!r}, scale={self.scale:g}")


class Cosine(Alignment):
    """``q . k / max(|q| |k|, eps)`` (the reference codes' cosine, eps = 1e-8)."""

    name = "cosine"

    def __init__(self, dim, key_dim=None, *, eps: float = 1e-8):
        super().__init__(dim, key_dim)
        self.eps = eps

    def score(self, query, key):
        dot = torch.matmul(query, key.transpose(-1, -2))
        norms = query.norm(dim=-1)[..., :, None] * key.norm(dim=-1)[..., None, :]
        return dot / norms.clamp(min=self.eps)

    def pairwise(self, query, key):
        check_pair(query, key, batched=False)
        dot = Bilinear.pairwise(_DOT, query, key)
        norms = query.norm(dim=-1)[:, None, :, None] * key.norm(dim=-1)[None, :, None, :]
        return dot / norms.clamp(min=self.eps)


class Additive(Alignment):
    """``v . tanh(W_q q + W_k k + b)`` (Bahdanau; "concat" in Cao et al.)."""

    name = "additive"

    def __init__(self, dim, key_dim=None, *, hidden: int | None = None):
        super().__init__(dim, key_dim)
        hidden = int(hidden or dim)
        self.w_query = nn.Linear(self.dim, hidden, bias=True)
        self.w_key = nn.Linear(self.key_dim or self.dim, hidden, bias=False)
        self.v = nn.Linear(hidden, 1, bias=False)

    def score(self, query, key):
        h = torch.tanh(self.w_query(query)[..., :, None, :] + self.w_key(key)[..., None, :, :])
        return self.v(h).squeeze(-1)

    def pairwise(self, query, key):
        check_pair(query, key, batched=False, key_dim=self.key_dim)
        hq = self.w_query(query)[:, None, :, None, :]
        hk = self.w_key(key)[None, :, None, :, :]
        return self.v(torch.tanh(hq + hk)).squeeze(-1)


_DOT = Bilinear(1, name="dot", weight=False)  # stateless helper for Cosine.pairwise

# --------------------------------------------------------------------------- registry
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, factory: Callable[..., nn.Module], *, overwrite: bool = False,
             aliases: tuple[str, ...] = ()) -> None:
    """Register ``factory(dim, **options) -> nn.Module`` under ``name``.

    The module must map ``query [B, Lq, D]``, ``key [B, Lk, D]`` to ``[B, Lq, Lk]``. Registering
    an existing name raises :class:`~attnlens.errors.RegistryError` unless ``overwrite=True``.
    """
    for n in (name, *aliases):
        if not overwrite and (n in _REGISTRY or n in _ALIASES):
            raise RegistryError(f"alignment {n!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = factory
    for a in aliases:
        _ALIASES[a] = name


def available() -> list[str]:
    """Registered alignment names (aliases included)."""
    return sorted([*_REGISTRY, *_ALIASES])


def canonical(name: str) -> str:
    """The registered name behind an alias (``concat`` -> ``additive``)."""
    name = _ALIASES.get(name, name)
    if name not in _REGISTRY:
        raise UnknownNameError("alignment", name, available())
    return name


def create(name: str, dim: int, **options) -> nn.Module:
    """Build the alignment function ``name`` for feature dim ``dim``.

    >>> create("scaled_dot", 16)
    Bilinear(name='scaled_dot', dim=16, orientation='qWk', activation=None, scale=0.25)
    """
    module = _REGISTRY[canonical(name)](dim, **options)
    if getattr(module, "name", None) in (None, "alignment"):
        module.name = canonical(name)
    return module


register("dot", lambda dim, **o: Bilinear(dim, name="dot", weight=False, **o))
register("scaled_dot", lambda dim, **o: Bilinear(dim, name="scaled_dot", weight=False,
                                                 scale=1 / math.sqrt(dim), **o))
register("cosine", lambda dim, **o: Cosine(dim, **o))
register("general", lambda dim, **o: Bilinear(dim, name="general", **o), aliases=("bilinear",))
register("biased_general", lambda dim, **o: Bilinear(dim, name="biased_general", bias=True, **o))
register("activated_general", lambda dim, activation="tanh", **o: Bilinear(
    dim, name="activated_general", bias=True, activation=activation, **o))
register("additive", lambda dim, **o: Additive(dim, **o), aliases=("concat",))

SCALE_INVARIANT_NORMS = ("clipped_l2norm", "l2norm", "clipped_l1norm", "l1norm")


def equivalent_groups(names, *, norm: str, unit_features: bool = True) -> list[list[str]]:
    """Groups of alignment names that give the same attention by construction.

    * On l2-normalised features, ``cosine`` equals ``dot`` (up to the 1e-8 clamp).
    * Under a score normalisation that divides by a norm over the query axis
      (``clipped_l2norm``, ``l2norm`` and their l1 forms; LeakyReLU is positively homogeneous),
      a positive constant factor cancels, so ``scaled_dot`` equals ``dot``.

    Names in no such relation come back as singleton groups.

    >>> equivalent_groups(["dot", "scaled_dot", "cosine", "general"], norm="clipped_l2norm")
    [['dot', 'scaled_dot', 'cosine'], ['general']]
    """
    names = list(names)
    same = {"dot"}
    if unit_features:
        same.add("cosine")
    if norm in SCALE_INVARIANT_NORMS:
        same.add("scaled_dot")
    groups, seen = [], set()
    base = [n for n in names if n in same]
    if len(base) > 1:
        groups.append(base)
        seen.update(base)
    for n in names:
        if n not in seen:
            groups.append([n])
            seen.add(n)
    return groups
