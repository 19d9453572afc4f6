"""Ready model specs and their registry (``get_spec("vilt")``; :func:`register` adds one).

* ``scan`` -- :class:`~.scan.ScanSpec`: SCAN on SCAN-layout precomputed features (public checkpoint
  layout through :func:`~.scan.load_scan`);
* ``matching`` -- :class:`~.matching.MatchingSpec`: attnlens' own SCAN / RCAR checkpoints on pixels + region boxes;
* ``lxmert``, ``visualbert`` -- :mod:`.regions`: transformers models on region features with boxes;
* ``vilt``, ``blip`` -- :mod:`.pixels`: ViLT / BLIP image-text matching on pixels;
* ``llava`` -- :class:`~.llava.LlavaSpec`: a LLaVA-style model answering a question / describing an image;
* ``clip`` -- :class:`~.clip.ClipSpec`: CLIP / SigLIP similarity (the image tower's [CLS] row, every explainer of its profile);
* ``module`` -- :class:`attnlens.evaluate.spec.ModuleSpec`: a user's own module.
"""
from __future__ import annotations

from typing import Callable

from ...errors import RegistryError, UnknownNameError

__all__ = ["get_spec", "register", "available"]

_SPECS: dict[str, Callable] = {}


def register(name: str, factory: Callable, *, overwrite: bool = False) -> None:
    """Register a spec factory (a class or a function returning a spec) under ``name``."""
    if name in _SPECS and not overwrite:
        raise RegistryError(f"spec {name!r} is already registered; pass overwrite=True to replace it")
    _SPECS[name] = factory


def available() -> list[str]:
    """Registered spec names.

    >>> "vilt" in available()
    True
    """
    return sorted(_SPECS)


def get_spec(name: str, **options):
    """A new spec of the registered ``name`` (``options`` go to its factory)."""
    if name not in _SPECS:
        raise UnknownNameError("model spec", name, _SPECS)
    return _SPECS[name](**options)


def _lazy(module: str, cls: str) -> Callable:
    def make(**options):
        import importlib

        return getattr(importlib.import_module(module, __name__), cls)(**options)

    make.__name__ = cls
    return make


register("scan", _lazy(".scan", "ScanSpec"))
register("lxmert", _lazy(".regions", "LxmertSpec"))
register("visualbert", _lazy(".regions", "VisualBertSpec"))
register("vilt", _lazy(".pixels", "ViltSpec"))
register("blip", _lazy(".pixels", "BlipSpec"))
register("llava", _lazy(".llava", "LlavaSpec"))
register("clip", _lazy(".clip", "ClipSpec"))
register("matching", _lazy(".matching", "MatchingSpec"))
register("module", _lazy("..spec", "ModuleSpec"))
