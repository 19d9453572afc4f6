"""``python -m attnlens.train``: train task models and print their test numbers per alignment.

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
import sys
import time
from pathlib import Path

import torch

from .. import align as _align


def _alignments(names: list[str]) -> list[str]:
    if not names or names == ["all"]:
        return sorted({_align.canonical(n) for n in _align.available()})
    return [_align.canonical(n) for n in names]


def main(argv: list[str] | None = None) -> int:
    from ..tasks import get_task
    from . import read_state, run

    p = argparse.ArgumentParser(prog="python -m attnlens.train", description=__doc__.split("\n")[0])
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


if __name__ == "__main__":
    sys.exit(main())
