"""Capture sites: where attention can be recorded, how to find them and how to pick some.

A **site** is a named place that produces attention weights. Its name is a module path:

* attnlens models: every :class:`~attnlens.models.attention.AttentionProbe`; the site is named
  after the probe's parent module (``"sim.attn"`` for ``sim.attn.probe``), or after the probe
  itself when it is not an attribute called ``probe``;
* third-party models: sites found by the adapters of :mod:`attnlens.capture.adapters`, e.g.
  ``"encoder.x_layers.0.visual_attention.att/t2i"`` for LXMERT's language-to-vision attention.

A :class:`Tap` installs the forward hooks that serve one or more sites and hands every
:class:`~attnlens.models.attention.ProbeRecord` to an ``emit(site, record)`` callback; it returns
the hook handles so the capture context can remove them.

Sites are chosen with a pattern (fnmatch glob, regular expression or exact name), a callable
``(name, module) -> bool``, a :class:`Tap`, or a list of these.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from typing import Callable, Iterable

from torch import nn

from ..errors import CaptureError
from ..models.attention import AttentionProbe, ProbeRecord

Emit = Callable[[str, ProbeRecord], None]
_INT = re.compile(r"(?:^|\.)(\d+)(?=\.|/|$)")


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
    """Every tap of ``model``: its attention probes plus what the registered adapters find."""
    from .adapters import find_taps

    return probe_taps(model) + find_taps(model)


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
    if sites is None:
        chosen = names
        if not chosen:
            raise CaptureError(
                f"{type(model).__name__} has no capture site: no AttentionProbe module and no adapter of "
                "attnlens.capture.adapters recognises it; pick a module with "
                "attnlens.capture.adapters.softmax_outputs(model, module_path)")
    else:
        chosen = []
        for item in items:
            if isinstance(item, Tap):
                hits = list(item.names)
            elif callable(item):
                hits = [n for n in names if item(n, by_name[n].modules[n])]
            elif isinstance(item, str):
                hits = [n for n in names if _matches(item, n)]
                if not hits and item.endswith(".probe"):
                    hits = [n for n in names if n == item[: -len(".probe")]]
                if not hits:
                    raise _no_match(item, names)
            else:
                raise CaptureError(f"a site must be a pattern, a callable (name, module) -> bool or a Tap, "
                                   f"got {type(item).__name__}")
            chosen.extend(h for h in hits if h not in chosen)
    if layers is not None:
        keep = set(int(x) for x in layers)
        chosen = [n for n in chosen if by_name[n].layers.get(n) is None or by_name[n].layers[n] in keep]
    return {n: by_name[n] for n in chosen}
