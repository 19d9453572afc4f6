"""Training runs for the task models: seeded, resumable, checkpointed every epoch.

``run(task, alignment=..., out_dir=...)`` trains one model and returns its run directory
``out_dir / "<task>-<alignment>-seed<seed>"`` (a finished run is not retrained; an interrupted
one resumes from its last epoch). The run directory holds ``model.safetensors``,
``config.json``, ``state.json`` and ``trainer.pt`` (see :mod:`attnlens.train.checkpoint`);
``attnlens.tasks.get_task(task).load(run_dir)`` gives the trained model back.

Command line: ``python -m attnlens.train --task matching --alignment dot --preset demo``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import align as _align
from .checkpoint import (CheckpointError, clear_checkpoint, has_checkpoint, load_checkpoint, read_config,
                         read_state, save_checkpoint)
from .config import PRESETS, MatchingConfig, TrainConfig, check_preset
from .loop import DeviceError, cpu_threads, epoch_generator, fit, resolve_device, set_seed


def run_name(task: str, alignment: str, seed: int) -> str:
    """Directory name of a run: ``"<task>-<alignment>-seed<seed>"``."""
    return f"{task}-{alignment}-seed{int(seed)}"


def run(task: str, *, alignment: str, seed: int = 0, out_dir: str | Path, config: dict | None = None,
        preset: str = "demo", device: str = "cpu", progress: bool = True, resume: bool = True) -> Path:
    """Train the model of ``task`` with the alignment function ``alignment``.

    Args:
        task: a registered task (``attnlens.train.TASKS``).
        alignment: a registered alignment function (``attnlens.align.available()``).
        seed: the run's seed (model initialisation, data order).
        out_dir: parent directory; the run goes to ``out_dir / run_name(task, alignment, seed)``.
        config: overrides on top of the preset (unknown keys raise ``UnknownNameError``).
        preset: ``quick``, ``demo`` or ``full``.
        device: ``cpu``, ``cuda`` or ``auto``.
        progress: show tqdm progress bars.
        resume: continue a run found in the run directory (else start over).

    Returns:
        The run directory.

    Raises:
        UnknownNameError: unknown task, alignment, preset or config key (lists the valid ones).
    """
    from ..tasks import get_task

    the_task = get_task(task)
    alignment = _align.canonical(alignment)
    check_preset(preset)
    resolve_device(device)
    cfg = {**the_task.default_config(preset), **dict(config or {})}
    run_dir = Path(out_dir) / run_name(task, alignment, seed)
    if not resume:
        clear_checkpoint(run_dir)
    kwargs: dict[str, Any] = dict(alignment=alignment, seed=seed, out_dir=run_dir, config=cfg, device=device,
                                  progress=progress)
    return Path(the_task.train(**kwargs))


def __getattr__(name):
    if name == "TASKS":
        from ..tasks import available_tasks

        return tuple(available_tasks())
    raise AttributeError(f"module 'attnlens.train' has no attribute {name!r}")


__all__ = ["CheckpointError", "DeviceError", "MatchingConfig", "PRESETS", "TrainConfig", "check_preset",
           "clear_checkpoint", "cpu_threads", "epoch_generator", "fit", "has_checkpoint", "load_checkpoint", "read_config",
           "read_state", "resolve_device", "run", "run_name", "save_checkpoint", "set_seed", "TASKS"]
