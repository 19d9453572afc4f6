"""Checkpoints of training runs: safetensors weights, JSON config and state, safe-to-load
optimizer state.

A run directory holds, after every epoch:

* ``model.safetensors``: the model's state dict (metadata ``epoch``);
* ``config.json``: the run's config (task, alignment, seed and hyper-parameters);
* ``trainer.pt``: optimizer state dict and torch RNG states, written with ``torch.save`` and read
  with ``torch.load(weights_only=True)`` (tensors, numbers, strings, lists and dicts only);
* ``state.json``: the number of completed epochs, Python and numpy RNG states, metrics history.

Every file is written to a temporary file in the same directory and moved into place with
``os.replace``; ``state.json`` goes last, so it only ever names an epoch whose weights are there
(the weights' ``epoch`` metadata is checked on resume).
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError, FormatError
from ..models.state import load_state_strict

MODEL_FILE, CONFIG_FILE, STATE_FILE, TRAINER_FILE = "model.safetensors", "config.json", "state.json", "trainer.pt"
CHECKPOINT_FILES = (MODEL_FILE, CONFIG_FILE, STATE_FILE, TRAINER_FILE)


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temp file next to ``path``, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=True)

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")

    _atomic_write(Path(path), write)


def read_json(path: str | Path, *, kind: type | None = None) -> Any:
    """Parse a JSON file of a run; ``kind`` (e.g. ``dict``) is the top-level type it must have.

    Raises:
        CheckpointError: the file does not exist (or is a directory).
        FormatError: not UTF-8, invalid JSON, or a top level of another type (file and line).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise FormatError(f"invalid JSON: {exc.msg}", path=path, line=exc.lineno) from None
    except UnicodeDecodeError as exc:
        raise FormatError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", path=path) from None
    if kind is not None and not isinstance(data, kind):
        raise FormatError(f"expected a JSON {'object' if kind is dict else kind.__name__} at the top level, got "
                          f"{type(data).__name__}", path=path)
    return data


def rng_state() -> dict:
    """Python, numpy and torch (CPU and CUDA) global RNG states."""
    py = random.getstate()
    state = {"python": [py[0], list(py[1]), py[2]], "numpy": _numpy_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached": float(cached)}


def set_rng_state(state: dict) -> None:
    """Restore states saved by :func:`rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | Path, model: nn.Module, *, config: dict, epoch: int,
                    history: list[dict] | None = None, optimizer: torch.optim.Optimizer | None = None,
                    extra: dict | None = None) -> Path:
    """Write the checkpoint of ``epoch`` (completed epochs) into ``run_dir``; returns ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    _atomic_write(run_dir / MODEL_FILE, lambda tmp: save_file(tensors, tmp, metadata={"epoch": str(epoch)}))
    rng = rng_state()
    trainer = {"optimizer": optimizer.state_dict() if optimizer is not None else {},
               "torch_rng": rng.pop("torch"), "cuda_rng": rng.pop("cuda", [])}
    _atomic_write(run_dir / TRAINER_FILE, lambda tmp: torch.save(trainer, tmp))
    write_json(run_dir / CONFIG_FILE, config)
    write_json(run_dir / STATE_FILE, {"epoch": int(epoch), "history": list(history or []), "rng": rng,
                                      **(extra or {})})
    return run_dir


def has_checkpoint(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a complete checkpoint."""
    run_dir = Path(run_dir)
    return all((run_dir / f).exists() for f in (MODEL_FILE, CONFIG_FILE, STATE_FILE))


def clear_checkpoint(run_dir: str | Path) -> None:
    """Remove the checkpoint files of ``run_dir`` (not the directory or other files)."""
    for f in CHECKPOINT_FILES:
        p = Path(run_dir) / f
        if p.exists():
            p.unlink()


def read_config(run_dir: str | Path) -> dict:
    """The ``config.json`` of a run (a JSON object)."""
    return read_json(Path(run_dir) / CONFIG_FILE, kind=dict)


def read_state(run_dir: str | Path) -> dict:
    """The ``state.json`` of a run (``epoch``, ``history``, RNG states).

    Raises:
        FormatError: naming the file and the field, when ``epoch`` is not a non-negative integer
            or ``history`` is not a list of objects.
    """
    path = Path(run_dir) / STATE_FILE
    state = read_json(path, kind=dict)
    epoch = state.get("epoch", 0)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise FormatError(f"field 'epoch' must be a non-negative integer, got {epoch!r}", path=path)
    history = state.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise FormatError("field 'history' must be a list of objects (one per epoch)", path=path)
    return state


def _load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    if not path.exists():
        raise CheckpointError(f"{path} does not exist (not a training run directory?)")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def load_checkpoint(run_dir: str | Path, model: nn.Module, *, device: str | torch.device = "cpu") -> dict:
    """Load the weights of ``run_dir`` into ``model`` (strict) and return its ``state.json``
    (or ``{}`` when there is none).

    Raises:
        CheckpointError: the checkpoint's keys or shapes differ from the model's; the message
            names the missing, unexpected and mismatched keys.
    """
    run_dir = Path(run_dir)
    path = run_dir / MODEL_FILE if run_dir.is_dir() else run_dir
    tensors, meta = _load_tensors(path)
    load_state_strict(model, {k: v.to(device) for k, v in tensors.items()},
                      f"{path} does not fit {type(model).__name__} (another architecture or config?)")
    state = read_state(run_dir) if (run_dir.is_dir() and (run_dir / STATE_FILE).exists()) else {}
    if "epoch" in meta and not str(meta["epoch"]).isdigit():
        raise CheckpointError(f"{path}: metadata field 'epoch' is {meta['epoch']!r}, not an epoch number")
    if state and "epoch" in meta and int(meta["epoch"]) != int(state.get("epoch", -1)):
        raise CheckpointError(f"{run_dir}: weights are from epoch {meta['epoch']} but state.json says epoch "
                              f"{state.get('epoch')} (interrupted while writing?); rerun with resume=False")
    return state


def load_trainer_state(run_dir: str | Path, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Restore optimizer state and all RNG states of a run (``torch.load(weights_only=True)``)."""
    run_dir = Path(run_dir)
    path = run_dir / TRAINER_FILE
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: cannot resume the optimizer and RNG state")
    try:
        trainer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise CheckpointError(f"{path}: cannot be loaded with weights_only=True ({exc})") from None
    if not isinstance(trainer, dict) or not {"optimizer", "torch_rng"} <= set(trainer):
        raise CheckpointError(f"{path}: expected a dict with 'optimizer' and 'torch_rng', got "
                              f"{sorted(trainer) if isinstance(trainer, dict) else type(trainer).__name__}")
    state = read_state(run_dir)
    if not isinstance(state.get("rng"), dict):
        raise FormatError("field 'rng' is missing or not an object: cannot resume the RNG state",
                          path=Path(run_dir) / STATE_FILE)
    try:
        if optimizer is not None:
            optimizer.load_state_dict(trainer["optimizer"])
        rng = dict(state["rng"])
        rng["torch"] = trainer["torch_rng"]
        if trainer.get("cuda_rng"):
            rng["cuda"] = trainer["cuda_rng"]
        set_rng_state(rng)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"{run_dir}: the optimizer or RNG state does not fit ({type(exc).__name__}: "
                              f"{(str(exc).splitlines() or [repr(exc)])[0]}); rerun with resume=False") from None
