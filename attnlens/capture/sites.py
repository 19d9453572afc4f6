"""Capture sites: where attention can be recorded, how to find them and how to pick some.

A **site** is a named place that produces attention weights. Its name is a module path:

* attnlens models: every :class:`~attnlens.models.attention.AttentionProbe`; the site is named
  after the probe's parent module (``"sim.attn"`` for ``sim.attn.probe``), or after the probe
  itself when it is not an attribute called ``probe``;
* third-party models: sites found by the adapters of :mod:`attnlens.capture.adapters`, e.g.
  ``"encoder.x_layers.0.visual_attention.att/t2i"`` for LXMERT's language-to-vision attention.

* torch primitives (:mod:`attnlens.capture.primitives`, :mod:`attnlens.capture.sdpa`): every
  ``nn.MultiheadAttention`` (also inside ``nn.TransformerEncoderLayer`` / ``DecoderLayer``,
  fast path included), and every module whose own code calls
  ``F.scaled_dot_product_attention``. A module path that names no other site is served by the
  SDPA tap: ``capture(model, sites="blocks.0.attn")`` records the SDPA calls that module's
  forward makes.

A :class:`Tap` installs the forward hooks that serve one or more sites and hands every
:class:`~attnlens.models.attention.ProbeRecord` to an ``emit(site, record)`` callback; it returns
the hook handles so the capture context can remove them. The capture passes an
:class:`Emitter`: callable like a function, it also says whether the capture runs in
``grad`` mode and which thread opened it. Hooks record only the calls made by that thread
(wrap them with :func:`this_thread`); calls from other threads pass through untouched.

Sites are chosen with a pattern (fnmatch glob, regular expression or exact name), a callable
``(name, module) -> bool``, a :class:`Tap`, or a list of these.
"""
from __future__ import annotations

import difflib
import fnmatch
import functools
import re
import threading
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..errors import CaptureError, DTypeError, ShapeError
from ..models.attention import AttentionProbe, ProbeRecord

Emit = Callable[[str, ProbeRecord], None]
_INT = re.compile(r"(?:^|\.)(\d+)(?=\.|/|$)")


class Emitter:
    """The ``emit(site, record)`` callback a capture hands to :meth:`Tap.attach`.

    Attributes:
        grad: the capture keeps maps in the autograd graph (taps that recompute weights must
            then use the weights the forward itself used).
        owner: ``threading.get_ident()`` of the thread that opened the capture.
    """

    def __init__(self, emit: Emit, *, grad: bool = False, owner: int | None = None):
        self._emit, self.grad = emit, bool(grad)
        self.owner = threading.get_ident() if owner is None else owner

    def __call__(self, site: str, record: ProbeRecord) -> None:
        self._emit(site, record)


def this_thread(hook: Callable) -> Callable:
    """``hook`` restricted to the calling thread: from any other thread it does nothing.

    Taps wrap their hooks with it inside :meth:`Tap.attach` (which runs in the thread that
    opens the capture), so a second thread running the same model is neither recorded nor
    changed (a forced flag, a stripped output) while the capture is open.

    >>> calls = []
    >>> hook = this_thread(calls.append)
    >>> t = threading.Thread(target=hook, args=("other",)); t.start(); t.join()
    >>> _ = hook("mine"); calls
    ['mine']
    """
    owner = threading.get_ident()

    @functools.wraps(hook)
    def scoped(*args, **kwargs):
        if threading.get_ident() != owner:
            return None
        return hook(*args, **kwargs)

    return scoped


def check_indices(name: str, value) -> list[int] | None:
    """Validate an index option (``heads=``, ``queries=``, ``layers=``): ``None``, an int, or a
    flat non-empty sequence / 1-D integer tensor of ints; returns a list of ints.

    Raises:
        DTypeError: a str, float, bool or other non-integer value or element (names ``name``).
        ShapeError: a nested sequence, a tensor of rank > 1, or an empty selection.

    >>> check_indices("heads", [0, -1]), check_indices("layers", 3), check_indices("queries", None)
    ([0, -1], [3], None)
    """
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        raise DTypeError(f"{name}= must be an int or a sequence of ints, got the bool {value!r}")
    if isinstance(value, (int, np.integer)):
        return [int(value)]
    if isinstance(value, (str, bytes)):
        raise DTypeError(f"{name}= must be an int or a sequence of ints, got the string {value!r}")
    if isinstance(value, (torch.Tensor, np.ndarray)):
        dtype = value.dtype
        is_int = (not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool
                  if isinstance(value, torch.Tensor) else np.issubdtype(dtype, np.integer))
        if not is_int:
            raise DTypeError(f"{name}= must hold integers, got a {type(value).__name__} of dtype {dtype}")
        if value.ndim > 1:
            raise ShapeError(f"{name}= must be flat (one index per entry), got shape {tuple(value.shape)}")
        value = value.reshape(-1).tolist()
    if isinstance(value, (float, complex)) or not isinstance(value, Iterable):
        raise DTypeError(f"{name}= must be an int or a sequence of ints, got {type(value).__name__} {value!r}")
    items = list(value)
    for i, x in enumerate(items):
        if isinstance(x, (torch.Tensor, np.ndarray)) and x.ndim == 0 and not isinstance(x, bool):
            x = x.item()
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
            if isinstance(x, (list, tuple, set, frozenset, range, torch.Tensor, np.ndarray)):
                raise ShapeError(f"{name}= must be a flat sequence of ints, element {i} is a nested "
                                 f"{type(x).__name__} {x!r}")
            raise DTypeError(f"{name}= must be a sequence of ints, element {i} is {type(x).__name__} {x!r}")
        items[i] = int(x)
    if not items:
        raise ShapeError(f"{name}= is empty: it would select nothing; pass None to keep everything")
    return items


def layer_from_path(path: str) -> int | None:
    """The last integer component of a module path (``"enc.layer.3.attn"`` -> 3), or ``None``.

    >>> layer_from_path("encoder.layer.3.attention"), layer_from_path("sim.attn")
    (3, None)
    """
    found = _INT.findall(path)
    return int(found[-1]) if found else None


class Tap:
    """Hooks serving one or more named sites.

    Subclasses implement :meth:`attach`. ``names`` are the sites this tap can produce,
    ``module`` the module it hooks (one, or ``{name: module}``; passed to callable site
    filters), ``layers`` the layer of each site when known from the model's structure.
    """

    def __init__(self, names: Iterable[str], module, layers: dict[str, int | None] | None = None):
        self.names = tuple(names)
        self.modules = dict(module) if isinstance(module, dict) else {n: module for n in self.names}
        self.module = next(iter(self.modules.values())) if self.modules else None
        self.layers = {n: layer_from_path(n) for n in self.names}
        self.layers.update(layers or {})

    #: whether ``capture(model)`` with no site named records this tap (see :func:`discover`)
    by_default = True

    def attach(self, emit: Emit, wanted: frozenset[str]) -> list:
        """Install hooks; call ``emit(name, record)`` for each call of a site in ``wanted``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self.names)})"


class ProbeTap(Tap):
    """A forward hook on an :class:`AttentionProbe` (attnlens models).

    ``module`` (what callable filters see) is the site's module, e.g. the
    :class:`~attnlens.models.attention.CrossAttention` owning the probe.
    """

    def __init__(self, name: str, probe: AttentionProbe, owner: nn.Module | None = None):
        super().__init__([name], owner if owner is not None else probe)
        self.probe = probe

    def attach(self, emit: Emit, wanted: frozenset[str]) -> list:
        (name,) = self.names

        @this_thread
        def hook(module, args, output):
            emit(name, output)

        return [self.probe.register_forward_hook(hook)]


def probe_taps(model: nn.Module) -> list[Tap]:
    """One :class:`ProbeTap` per :class:`AttentionProbe` in ``model``."""
    taps = []
    for path, module in model.named_modules():
        if isinstance(module, AttentionProbe):
            parent, _, attr = path.rpartition(".")
            if attr == "probe" and parent:
                taps.append(ProbeTap(parent, module, model.get_submodule(parent)))
            else:
                taps.append(ProbeTap(path or "probe", module))
    return taps


def discover(model: nn.Module) -> list[Tap]:
    """Every tap of ``model``: its attention probes, what the registered adapters find, then the
    torch primitives (``nn.MultiheadAttention``, modules calling ``F.scaled_dot_product_attention``)
    that no earlier tap already serves. When probes or an adapter serve the model, its primitives
    (e.g. SigLIP's attention-pooling head) are recorded only when named in ``sites=``."""
    from .adapters import find_taps
    from .primitives import primitive_taps

    taps = probe_taps(model) + find_taps(model)
    extra = primitive_taps(model, exclude=frozenset(id(m) for t in taps for m in t.modules.values()))
    if taps:  # a model its probes or an adapter already serve: the primitives are there to be named
        for tap in extra:
            tap.by_default = False
    return taps + extra


def _matches(pattern: str, name: str) -> bool:
    if name == pattern or fnmatch.fnmatchcase(name, pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def _no_match(pattern: str, names: list[str]) -> CaptureError:
    close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.3)
    if not close:  # also try the last path component, e.g. "attn" against "sim.attn"
        tails = {n.rsplit(".", 1)[-1]: n for n in names}
        close = [tails[t] for t in difflib.get_close_matches(pattern.rsplit(".", 1)[-1], list(tails), n=5)]
    hint = f" Close matches: {', '.join(map(repr, close))}." if close else ""
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    return CaptureError(f"site pattern {pattern!r} matches no capture site.{hint} Available sites: "
                        f"{shown or '(none)'}")


def select(model: nn.Module, sites=None, layers: Iterable[int] | None = None) -> dict[str, Tap]:
    """The sites of ``model`` chosen by ``sites`` (and ``layers``), as ``{name: tap}``.

    Args:
        model: the model to capture from.
        sites: ``None`` (every site found), a pattern, a callable ``(name, module) -> bool``,
            a :class:`Tap`, or a list of these. Every pattern must match at least one site.
        layers: keep only sites whose layer (known from the module path) is in this set;
            sites of unknown layer are kept (their records are filtered when they arrive).

    Raises:
        CaptureError: a pattern matches nothing (the message lists close matches), or the
            model has no capture site at all.

    >>> from attnlens.models import CrossAttention
    >>> m = nn.ModuleDict({"t2i": CrossAttention("dot", 4), "i2t": CrossAttention("dot", 4)})
    >>> sorted(select(m, "t2*"))
    ['t2i']
    """
    items = sites if isinstance(sites, (list, tuple)) else [sites]
    extra = [s for s in items if isinstance(s, Tap)]
    need_model = sites is None or any(not isinstance(s, Tap) for s in items)
    taps = extra + (discover(model) if need_model else [])  # taps given by the caller take precedence
    by_name: dict[str, Tap] = {}
    for tap in taps:
        for name in tap.names:
            by_name.setdefault(name, tap)
    names = list(by_name)
    paths = {p for p, _ in model.named_modules() if p} if need_model else set()
    if sites is None:
        chosen = [n for n in names if by_name[n].by_default]
        if not chosen:
            raise CaptureError(
                f"{type(model).__name__} has no capture site: no AttentionProbe module, no "
                "nn.MultiheadAttention, no module whose code calls F.scaled_dot_product_attention, and no "
                "adapter of attnlens.capture.adapters recognises it; name the module that computes the "
                "attention (sites='<module path>': its SDPA calls are recorded), or record a module's output "
                "with attnlens.capture.adapters.softmax_outputs(model, module_path)")
    else:
        chosen, late = [], []
        for item in items:
            if isinstance(item, Tap):
                hits = list(item.names)
            elif callable(item):
                hits = [n for n in names if item(n, by_name[n].modules[n])]
            elif isinstance(item, str):
                hits = [n for n in names if _matches(item, n)]
                if not hits and item.endswith(".probe"):
                    hits = [n for n in names if n == item[: -len(".probe")]]
                if not hits and item in paths:  # any module path: record the SDPA calls it makes
                    late.append(item)
                    hits = [item]
                if not hits:
                    raise _no_match(item, names)
            else:
                raise CaptureError(f"a site must be a pattern, a callable (name, module) -> bool or a Tap, "
                                   f"got {type(item).__name__}")
            chosen.extend(h for h in hits if h not in chosen)
        if late:
            from .sdpa import SdpaTap

            tap = SdpaTap(model, late)
            by_name.update({n: tap for n in late})
    if layers is not None:
        keep = set(check_indices("layers", layers))
        chosen = [n for n in chosen if by_name[n].layers.get(n) is None or by_name[n].layers[n] in keep]
    return {n: by_name[n] for n in chosen}
