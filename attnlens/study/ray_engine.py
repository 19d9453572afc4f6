"""The study's units as Ray tasks (``run_study(..., engine="ray")``, ``attnlens study --engine ray``).

Imported only for ``engine="ray"``; needs the optional extra ``attnlens[ray]``. With no
``address`` a local Ray instance with ``num_cpus`` CPUs is started (it stays up until
``ray.shutdown()`` or the end of the process); with one, the driver joins that cluster.

Each unit (train or load, capture, metrics of one task x alignment x seed) is one task asking for
one CPU (and one GPU with ``device="cuda"``); it runs :func:`attnlens.study.units.run_unit`, which
writes the unit's directory under ``OUT/units`` through a staging directory moved into place
only when the unit is complete, so a partial result never lands in the report. A worker that
dies mid-unit is retried by Ray (``max_retries``); the staging directory it leaves is removed once
the study's units are finished (and by the next study run). Finished units are skipped by the
caller before submitting, so a rerun does not recompute them. The output directory (and
``checkpoints``) must be on a file system that the workers share with the driver (a local instance
always does); tasks registered at run time in the driver are not known to the workers (register
them in an imported module).

Per-unit cost and data movement (for planning on a cluster): a unit's inputs are a few hundred
bytes (unit, study config); its outputs are its unit directory (long.csv, curves.csv,
examples.npz: on the order of a megabyte for the demo) written straight to the shared file
system, and a small record returned to the driver. Units are independent, so wall time scales
with ``ceil(units / workers)`` times the slowest unit, plus Ray's start-up (seconds locally).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..distributed.ray_backend import ensure_ray


def _unit_task(unit, out: str, config, device: str, checkpoints, threads: int, cwd: str) -> dict:
    import torch

    from .units import run_unit

    os.chdir(cwd)  # relative paths ("assets") mean what they mean to the driver
    if threads:
        torch.set_num_threads(int(threads))
    return run_unit(unit, Path(out), config, device=device, checkpoints=checkpoints, progress=False)


def run_units_ray(units: Sequence, out: str | Path, config, *, device: str = "cpu", checkpoints="assets",
                  address: str | None = None, num_cpus: int = 2, threads: int | None = None,
                  max_retries: int = 3, progress: bool = True) -> list[dict]:
    """Run ``units`` as Ray tasks; returns their records in the order of ``units``.

    ``threads``: torch threads per task (None: the driver's count, so that the numbers match
    a single-machine run bit for bit).
    """
    import torch
    from tqdm.auto import tqdm

    if not units:
        return []
    ray = ensure_ray(address, num_cpus)
    gpus = 1 if str(device).startswith("cuda") else 0
    remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=int(max_retries))(_unit_task)
    threads = torch.get_num_threads() if threads is None else int(threads)
    out = str(Path(out).resolve())
    refs = [remote.remote(u, out, config, device, checkpoints, threads, os.getcwd()) for u in units]
    index = {ref: k for k, ref in enumerate(refs)}
    records: list = [None] * len(refs)
    pending = list(refs)
    with tqdm(total=len(refs), desc="study (ray)", unit="unit", disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                records[index[ref]] = ray.get(ref)  # re-raises the unit's error after Ray's retries
                bar.update()
    return records
