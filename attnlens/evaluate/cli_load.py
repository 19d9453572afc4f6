"""What ``attnlens evaluate --model X`` loads: a saved transformers model, a SCAN checkpoint, or Python code.

* an attnlens matching run folder (``config.json`` with ``"task": "matching"``): spec ``matching``;
* a folder with ``config.json`` (``save_pretrained``): the class named in ``architectures`` is
  loaded with ``from_pretrained`` (safetensors weights preferred); the spec follows the
  ``model_type`` (``vilt``, ``lxmert``, ``visual_bert``), with the folder's tokenizer / processor
  when it holds one (else a :class:`~attnlens.evaluate.spec.HashTokenizer`);
* a SCAN checkpoint file (``*.pth``, ``*.pth.tar``, ``*.pt``): :func:`~attnlens.evaluate.specs.scan.load_scan`
  (``weights_only=True``), spec ``scan``;
* ``module:function`` or ``path/to/file.py:function``: ``function()`` returns a model or a
  ``(model, spec)`` pair.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

from ..errors import CheckpointError, UnknownNameError

__all__ = ["load_model", "SPEC_OF_MODEL_TYPE"]

SPEC_OF_MODEL_TYPE = {"vilt": "vilt", "lxmert": "lxmert", "visual_bert": "visualbert", "blip": "blip", "llava": "llava",
                      "clip": "clip", "siglip": "clip"}


def _call(ref: str):
    target, _, attr = ref.rpartition(":")
    if target.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(target).stem, target)
        if spec is None or spec.loader is None:
            raise CheckpointError(f"--model {ref!r}: cannot import {target}")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    else:
        mod = importlib.import_module(target)
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise CheckpointError(f"--model {ref!r}: {target} has no callable {attr!r}")
    got = fn()
    return got if isinstance(got, tuple) else (got, None)


def _tokenizer(folder: Path):
    if not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        return None  # a model saved without its tokenizer (e.g. built from a config)
    for loader in ("AutoProcessor", "AutoTokenizer"):
        try:
            import transformers

            return getattr(transformers, loader).from_pretrained(str(folder))
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return None


def load_model(ref: str, spec: str | None = None, vocab: str | None = None):
    """``(model, spec)`` of a ``--model`` reference (module docstring)."""
    from .specs import get_spec

    p = Path(ref)
    if p.is_dir() and (p / "config.json").is_file():
        cfg = json.loads((p / "config.json").read_text())
        if cfg.get("task") == "matching":  # an attnlens run folder (attnlens train, assets/checkpoints)
            from ..tasks import get_task

            return get_task("matching").load(p), get_spec(spec or "matching")
        import transformers

        arch = (cfg.get("architectures") or [None])[0]
        cls = getattr(transformers, str(arch), None) if arch else None
        if cls is None:
            raise CheckpointError(f"{p}/config.json names no transformers class in 'architectures' ({arch!r})")
        model = cls.from_pretrained(str(p)).eval()
        name = spec or SPEC_OF_MODEL_TYPE.get(cfg.get("model_type", ""))
        if name is None:
            raise UnknownNameError(f"spec for model_type {cfg.get('model_type')!r} (pass --spec)",
                                   str(cfg.get("model_type")),
                                   SPEC_OF_MODEL_TYPE)
        tok = _tokenizer(p)
        if tok is None:
            return model, get_spec(name)
        if name in ("vilt", "blip", "llava", "clip"):
            return model, get_spec(name, processor=tok) if hasattr(tok, "image_processor") else \
                get_spec(name, tokenizer=tok)
        return model, get_spec(name, tokenizer=getattr(tok, "tokenizer", tok))
    if p.is_file() and p.name.endswith((".pth", ".pth.tar", ".pt", ".tar")):
        from .specs.scan import load_scan

        return load_scan(p, vocab), get_spec(spec or "scan")
    if ":" in ref:
        model, own = _call(ref)
        return model, own if own is not None else (get_spec(spec) if spec else None)
    raise CheckpointError(f"--model {ref!r}: not a saved transformers folder (config.json), a SCAN checkpoint file "
                          "or module:function")
