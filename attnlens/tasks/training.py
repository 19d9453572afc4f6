"""Training runs of the tasks' models, and the ``python -m attnlens.train`` command.

``run(task, alignment=..., out_dir=...)`` trains one model and returns its run directory
``out_dir / "<task>-<alignment>-seed<seed>"`` (a finished run is not retrained; an interrupted
one resumes from its last epoch); ``attnlens.tasks.get_task(task).load(run_dir)`` gives the trained
model back. The generic machinery (``fit``, checkpoints, configs) lives below, in
:mod:`attnlens.train`, which knows nothing of the tasks.

``main`` is ``python -m attnlens.train``: train task models and print their test numbers per alignment.

Example::

    python -m attnlens.train --task matching --alignment dot --alignment general --preset demo \\
        --out runs/train

``--alignment all`` trains every registered alignment function (aliases skipped). Finished runs
are loaded, not retrained (``--no-resume`` starts over). One line per run: the task's test
metrics, the training time recorded in the run (``train_seconds``: the epochs only, data
generation excluded) and the wall time of this call.

Under ``torchrun`` (e.g. ``torchrun --standalone --nproc_per_node=2 -m attnlens.train ...``) the
ranks train one model together (see :mod:`attnlens.distributed.ddp`); only rank 0 prints and
writes ``--json``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from .. import align as _align
from ..train.checkpoint import clear_checkpoint, read_state
from ..train.config import check_preset
from ..train.loop import resolve_device
from .base import get_task


def run_name(task: str, alignment: str, seed: int) -> str:
    """Directory name of a run: ``"<task>-<alignment>-seed<seed>"``."""
    return f"{task}-{alignment}-seed{int(seed)}"


def run(task: str, *, alignment: str, seed: int = 0, out_dir: str | Path, config: dict | None = None,
        preset: str = "demo", device: str = "cpu", progress: bool = True, resume: bool = True) -> Path:
    """Train the model of ``task`` with the alignment function ``alignment``.

    Args:
        task: a registered task (``attnlens.tasks.available_tasks()``).
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


def _alignments(names: list[str]) -> list[str]:
    if not names or names == ["all"]:
        return sorted({_align.canonical(n) for n in _align.available()})
    return [_align.canonical(n) for n in names]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m attnlens.train",
                                description="train task models and print their test numbers per alignment")
    p.add_argument("--task", default="matching")
    p.add_argument("--alignment", action="append", default=[], help="repeatable; 'all' for every function")
    p.add_argument("--preset", default="demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/train")
    p.add_argument("--device", default="cpu")
    p.add_argument("--config", default=None, help="JSON object of config overrides")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    overrides = json.loads(args.config) if args.config else None
    from ..distributed.ddp import init_from_env

    rank, _ = init_from_env(args.device)  # before any model is built (sets the rank's CUDA device)
    task = get_task(args.task)
    rows = []
    for alignment in _alignments(args.alignment):
        t0 = time.perf_counter()
        run_dir = run(args.task, alignment=alignment, seed=args.seed, out_dir=Path(args.out), config=overrides,
                      preset=args.preset, device=args.device, progress=not args.no_progress,
                      resume=not args.no_resume)
        wall = time.perf_counter() - t0
        state = read_state(run_dir)
        metrics = {k: v for k, v in state["history"][-1].items() if k not in ("epoch", "loss", "seconds")}
        row = {"task": args.task, "alignment": alignment, "seed": args.seed, "preset": args.preset,
               "device": args.device, "train_seconds": round(float(state.get("train_seconds", 0.0)), 1),
               "wall_seconds": round(wall, 1), "threads": torch.get_num_threads(), **metrics,
               "run_dir": str(run_dir)}
        rows.append(row)
        shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()
                 if k not in ("task", "seed", "preset", "device", "run_dir", "threads")}
        if rank == 0:
            print(json.dumps(shown), flush=True)
    del task
    if args.json and rank == 0:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0

