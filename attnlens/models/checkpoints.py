"""Safe loading of SCAN reference checkpoints (precomputed-feature variant).

A SCAN checkpoint (``torch.save``) is a dict with ``model`` = [image-encoder state dict
(``fc.weight``, ``fc.bias``), text-encoder state dict (``embed.weight``, ``rnn.*``)], ``opt``
(an ``argparse.Namespace``), ``epoch``, ``best_rsum`` and ``Eiters``. It is read with
``torch.load(path, weights_only=True)`` allow-listing ``argparse.Namespace`` only, so a file
cannot run code on load: any other pickled object is refused with a
:class:`~attnlens.errors.CheckpointError`.
"""
from __future__ import annotations

import argparse
import math
import pickle
import re
from pathlib import Path

import torch

from ..errors import CheckpointError
from .state import load_state_strict
from .encoders import GRUTextEncoder, PrecompImageEncoder


def safe_load(path, map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with only ``argparse.Namespace`` allow-listed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except IsADirectoryError as exc:  # pragma: no cover - is_file() above
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file") from exc
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError, TypeError, KeyError,
            IndexError, OSError, ImportError, MemoryError, OverflowError) as exc:  # untrusted bytes fail in many ways
        raise CheckpointError(f"{path}: refused or unreadable with weights_only=True (only tensors, plain "
                              f"containers and argparse.Namespace are allowed): "
                              f"{(str(exc).splitlines() or [type(exc).__name__])[0]}") from exc


def _opt(opt, path) -> dict:
    """The checkpoint's ``opt`` (an ``argparse.Namespace`` or a dict) as a dict."""
    if opt is None:
        return {}
    if isinstance(opt, argparse.Namespace):
        return vars(opt)
    if isinstance(opt, dict):
        return dict(opt)
    raise CheckpointError(f"{path}: 'opt' must be an argparse.Namespace or a dict, got {type(opt).__name__}")


def _load_into(module, state, what, path):
    load_state_strict(module, state, f"{path}: {what} state does not fit")


def load_scan_checkpoint(path, vocab_path=None, map_location="cpu"):
    """Load a SCAN checkpoint: ``(image_encoder, text_encoder, opt, vocab)``.

    Architecture sizes are read from the tensors (and checked against ``opt`` where it states
    them); ``vocab`` is a :class:`attnlens.data.vocab.Vocabulary` read from SCAN's vocabulary
    JSON when ``vocab_path`` is given, else None. Both encoders come back in eval mode.

    Raises:
        CheckpointError: non-allow-listed pickled objects, wrong layout, mismatched keys or
            shapes (named), vocabulary size different from the embedding's.
    """
    ckpt = safe_load(path, map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: expected a dict with 'model', 'opt', ...; got "
                              f"{type(ckpt).__name__} with keys {sorted(ckpt) if isinstance(ckpt, dict) else '-'}")
    model = ckpt["model"]
    if not isinstance(model, (list, tuple)) or len(model) < 2 or not all(isinstance(m, dict) for m in model[:2]):
        raise CheckpointError(f"{path}: 'model' must be [image state dict, text state dict], got "
                              f"{type(model).__name__} of length {len(model) if hasattr(model, '__len__') else '-'}")
    img_state, txt_state = model[0], model[1]
    for what, state in (("image", img_state), ("text", txt_state)):
        bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"{path}: the {what} state dict has entries that are not named tensors: {bad[:5]}")
    opt = _opt(ckpt.get("opt"), path)
    for key, state in (("fc.weight", img_state), ("embed.weight", txt_state), ("rnn.weight_ih_l0", txt_state)):
        if key not in state:
            raise CheckpointError(f"{path}: missing key {key!r} (keys: {sorted(state)[:8]})")
    embed_size, img_dim = img_state["fc.weight"].shape
    vocab_size, word_dim = txt_state["embed.weight"].shape
    hidden = txt_state["rnn.weight_ih_l0"].shape[0] // 3
    layers = len({m.group(1) for k in txt_state if (m := re.match(r"rnn\.weight_ih_l(\d+)$", k))})
    bidirectional = "rnn.weight_ih_l0_reverse" in txt_state
    stated = {"embed_size": embed_size, "img_dim": img_dim, "word_dim": word_dim, "vocab_size": vocab_size,
              "num_layers": layers, "bi_gru": bidirectional}
    bad = [f"opt.{k}={opt[k]!r} vs tensors {v!r}" for k, v in stated.items() if k in opt and opt[k] != v]
    if hidden != embed_size:
        bad.append(f"GRU hidden size {hidden} vs image embed size {embed_size}")
    if bad:
        raise CheckpointError(f"{path}: checkpoint is inconsistent: {'; '.join(bad)}")
    img = PrecompImageEncoder(img_dim, embed_size, no_imgnorm=bool(opt.get("no_imgnorm", False)))
    txt = GRUTextEncoder(vocab_size, word_dim, embed_size, layers, bidirectional,
                         no_txtnorm=bool(opt.get("no_txtnorm", False)))
    _load_into(img, img_state, "image encoder", path)
    _load_into(txt, txt_state, "text encoder", path)
    vocab = None
    if vocab_path is not None:
        from ..data.vocab import Vocabulary
        vocab = Vocabulary.from_scan_json(vocab_path)
        if len(vocab) != vocab_size:
            raise CheckpointError(f"{vocab_path}: vocabulary has {len(vocab)} words but the checkpoint {path} "
                                  f"embeds {vocab_size}")
    meta = {k: ckpt[k] for k in ("epoch", "best_rsum", "Eiters") if k in ckpt}
    opt = {**opt, **{f"_{k}": v for k, v in meta.items()}}
    return img.eval(), txt.eval(), opt, vocab


def load_rcar_checkpoint(path, *, mode: str | None = None, steps: int | None = None,
                         direction: str | None = None, map_location="cpu"):
    """Load the similarity module of an RCAR checkpoint: ``(RCARSimilarity, opt)``.

    The file is a dict with ``model`` (a state dict whose similarity keys carry ``sim_enc.``),
    ``opt`` (``argparse.Namespace``), ``epoch``, ``best_rsum``, ``Eiters``. Mode, steps, direction
    and the initial temperature come from ``opt.regulator`` (``only_rcr``/``only_rar``/
    ``coop_rcar``), ``opt.rcr_step``/``rar_step``/``rcar_step``, ``opt.attn_type`` and
    ``opt.t2i_smooth``/``opt.i2t_smooth`` unless given. Encoder weights (``img_enc.``,
    ``txt_enc.``) are left in ``opt["_encoder_state"]`` for the caller.
    """
    from .rcar import MODES, from_reference

    ckpt = safe_load(path, map_location)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path}: expected a dict with a 'model' state dict (RCAR layout)")
    bad = [str(k) for k, v in ckpt["model"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: 'model' has entries that are not named tensors: {bad[:5]}")
    opt = _opt(ckpt.get("opt"), path)
    mode = mode or opt.get("regulator", "coop_rcar")
    if not isinstance(mode, str) or mode not in MODES:
        raise CheckpointError(f"{path}: unknown regulator {mode!r}; valid: {sorted(MODES)}")
    if steps is None:
        key = {"rcr": "rcr_step", "rar": "rar_step", "rcar": "rcar_step"}[MODES[mode]]
        steps = opt.get(key)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise CheckpointError(f"{path}: opt steps must be a positive integer, got {steps!r}")
    direction = direction or opt.get("attn_type", "t2i")
    if direction not in ("t2i", "i2t"):
        raise CheckpointError(f"{path}: opt.attn_type must be 't2i' or 'i2t', got {direction!r}")
    smooth = opt.get(f"{direction}_smooth")
    if smooth is not None:
        try:
            smooth = float(smooth)
        except (TypeError, ValueError):
            smooth = float("nan")
        if not math.isfinite(smooth) or smooth <= 0:
            raise CheckpointError(f"{path}: opt.{direction}_smooth must be a positive number, "
                                  f"got {opt.get(f'{direction}_smooth')!r}")
    sim = from_reference(ckpt["model"], mode=mode, steps=steps, direction=direction,
                         **({} if smooth is None else {"smooth": smooth}))
    rest = {k: v for k, v in ckpt["model"].items() if not k.startswith("sim_enc.")}
    meta = {k: ckpt[k] for k in ("epoch", "best_rsum", "Eiters") if k in ckpt}
    return sim, {**opt, **{f"_{k}": v for k, v in meta.items()}, "_encoder_state": rest}
