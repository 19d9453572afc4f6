"""Training machinery: a seeded, resumable training loop (``fit``) checkpointed every epoch.

A run directory holds ``model.safetensors``, ``config.json``, ``state.json`` and ``trainer.pt``
(see :mod:`attnlens.train.checkpoint`). This package sits below the tasks and never imports
them: training a task's model is :func:`attnlens.tasks.training.run`, and the command
``python -m attnlens.train --task matching --alignment dot --preset demo`` is
:func:`attnlens.tasks.training.main`.
"""
from __future__ import annotations

from .checkpoint import (CheckpointError, clear_checkpoint, has_checkpoint, load_checkpoint, read_config,
                         read_state, save_checkpoint)
from .config import PRESETS, MatchingConfig, TrainConfig, check_preset
from .loop import DeviceError, cpu_threads, epoch_generator, fit, resolve_device, set_seed


__all__ = ["CheckpointError", "DeviceError", "MatchingConfig", "PRESETS", "TrainConfig", "check_preset",
           "clear_checkpoint", "cpu_threads", "epoch_generator", "fit", "has_checkpoint", "load_checkpoint", "read_config",
           "read_state", "resolve_device", "save_checkpoint", "set_seed"]
