"""Resumable jobs in shards of example indices, run here, in a process pool or as Ray tasks.

Generic machinery, with no knowledge of what a shard computes (the study's dataset-wide capture
and metrics, :mod:`attnlens.study.dataset`, is one user):

* :func:`shard_plan` cuts ``n`` examples into ``[start, stop)`` ranges;
* a shard is computed by ``compute(job, start, stop)`` (a module-level function and a picklable
  job, so that process-pool and Ray workers can run it), which publishes its folder
  ``<shards>/<start>-<stop>/`` holding a ``SHARD.json`` record with the job's ``key``: a shard
  folder whose record has the key is finished and is never recomputed (:func:`shard_record`);
* :func:`run_shards` computes the missing shards with one of :data:`ENGINES` and returns every
  shard's record;
* :func:`job_done` / :func:`publish_outputs`: a job's merged outputs are renamed into place and
  ``DONE.json`` (the job record, with its fingerprint and the output names) is written last, so a
  folder holding ``DONE.json`` is complete.

Engines: ``"local"`` (in this process, one shard after another, with a model already loaded),
``"process"`` (a pool of ``workers`` spawned processes), ``"ray"`` (one Ray task per shard, joining
``address`` or starting a local instance; a worker that dies mid-shard is retried
``max_retries`` times). Ray is imported only on that path.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..errors import ShapeError, UnknownNameError
from ..io import UnsafePathError, atomic_path, confine, write_json

__all__ = ["DONE", "ENGINES", "PARTIAL", "SHARD", "clear_partials", "fingerprint", "job_done", "publish_outputs",
           "run_shards", "shard_name", "shard_plan", "shard_record", "write_npz_stream"]

ENGINES = ("local", "process", "ray")
DONE = "DONE.json"
SHARD = "SHARD.json"
PARTIAL = ".partial-"


def shard_plan(n: int, shard_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each shard of ``n`` examples.

    >>> shard_plan(10, 4)
    [(0, 4), (4, 8), (8, 10)]
    """
    if int(shard_size) < 1:
        raise ShapeError(f"shard_size must be >= 1, got {shard_size}")
    return [(a, min(a + int(shard_size), int(n))) for a in range(0, int(n), int(shard_size))]


def shard_name(start: int, stop: int) -> str:
    """Folder name of shard ``[start, stop)``.

    >>> shard_name(0, 64)
    '00000000-00000064'
    """
    return f"{start:08d}-{stop:08d}"


def fingerprint(data: dict) -> str:
    """A short digest of a JSON-able description (what a result depends on)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def shard_record(directory: Path, key: str) -> dict | None:
    """The ``SHARD.json`` record of a finished shard made for ``key``, else ``None``."""
    try:
        rec = json.loads((Path(directory) / SHARD).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) and rec.get("key") == key else None


def job_done(out: str | Path, fingerprint: str | None = None, outputs: Sequence[str] = ()) -> dict | None:
    """The record of a finished job in ``out`` (with that fingerprint, when given), else ``None``.

    The job is finished when ``DONE.json`` is there and every output it names (default
    ``outputs``) exists.
    """
    out = Path(out)
    try:
        record = json.loads((out / DONE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or (fingerprint is not None and record.get("fingerprint") != fingerprint):
        return None
    try:  # output names come from the run file: only files inside ``out`` count
        if not all(confine(name, out, source=out / DONE, what="outputs entry").is_file()
                   for name in record.get("outputs", outputs)):
            return None
    except (UnsafePathError, TypeError):
        return None
    return record


def clear_partials(*folders: Path) -> None:
    """Delete the ``.partial-*`` folders a killed run left in ``folders``."""
    for folder in folders:
        for p in Path(folder).glob(f"{PARTIAL}*"):
            shutil.rmtree(p, ignore_errors=True)


def publish_outputs(staging: Path, out: Path, names: Sequence[str], record: dict, every: Sequence[str] = ()) -> None:
    """Rename the staged outputs ``names`` into ``out`` (after removing an older ``DONE.json`` and
    the outputs among ``every`` that this job does not write), then write ``DONE.json``."""
    for name in (DONE,) + tuple(n for n in every if n not in names):
        try:
            (out / name).unlink()
        except FileNotFoundError:
            pass
    for name in names:
        os.replace(staging / name, out / name)
    write_json(out / DONE, record)


def write_npz_stream(path: Path, arrays: Iterator[tuple[str, np.ndarray]]) -> None:
    """``np.savez_compressed`` written one array at a time (the same bytes: the same zip entries
    in the same order, as numpy writes them), so a merge never holds every array in memory."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for key, val in arrays:
                with zf.open(key + ".npy", "w", force_zip64=True) as fid:
                    np.lib.format.write_array(fid, np.asanyarray(val), allow_pickle=False)


# ----------------------------------------------------------------------------- engines
def _run_local(compute, job, plan, local: dict) -> Iterator[dict]:
    for start, stop in plan:
        yield compute(job, start, stop, **local)


def _run_process(compute, job, plan, workers: int) -> Iterator[dict]:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, min(int(workers), len(plan))), mp_context=ctx) as pool:
        pending = {pool.submit(compute, job, a, b) for a, b in plan}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
        finally:
            for fut in pending:
                fut.cancel()


def _run_ray(compute, job, plan, workers: int, address: str | None, max_retries: int, gpus: int) -> Iterator[dict]:
    from .ray_backend import ensure_ray

    ray = ensure_ray(address, workers)
    remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=int(max_retries))(compute)
    job_ref = ray.put(job)
    pending = [remote.remote(job_ref, a, b) for a, b in plan]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield ray.get(ref)  # re-raises the shard's error after Ray's retries
    finally:
        for ref in pending:
            ray.cancel(ref)


def run_shards(compute: Callable[..., dict], job: Any, plan: Sequence[tuple[int, int]], shards: Path, key: str, *,
               engine: str = "local", workers: int = 2, address: str | None = None, max_retries: int = 3,
               gpus: int = 0, local: Callable[[], dict] | None = None, progress: bool = True,
               desc: str = "shards") -> tuple[dict, int]:
    """Compute the shards of ``plan`` that ``shards`` does not hold finished for ``key``.

    Args:
        compute: ``compute(job, start, stop, **local_kwargs) -> record`` (the record has ``start``
            and ``stop``); module-level, so that other processes can import it.
        job: what ``compute`` needs (picklable for the process and Ray engines).
        plan: the ``[start, stop)`` ranges (:func:`shard_plan`).
        shards: the folder of the shard folders.
        key: what a finished shard's record must carry to be reused.
        engine: one of :data:`ENGINES`. workers, address, max_retries, gpus: engine settings.
        local: called once, only when the local engine has work, for extra keyword arguments of
            ``compute`` (e.g. a model loaded once in this process).
        progress, desc: a tqdm bar over the shards.

    Returns:
        ``({(start, stop): record}`` for every shard of the plan, number of shards reused``)``.

    Raises:
        UnknownNameError: an unknown engine. Whatever a shard raises (finished shards stay on disk).
    """
    if engine not in ENGINES:
        raise UnknownNameError("engine", engine, ENGINES)
    records = {}
    for start, stop in plan:
        rec = shard_record(Path(shards) / shard_name(start, stop), key)
        if rec is not None:
            records[(start, stop)] = rec
    todo = [s for s in plan if s not in records]
    reused = len(plan) - len(todo)
    bar = tqdm(total=len(plan), initial=reused, disable=not progress, desc=desc, unit="shard")
    try:
        if todo:
            if engine == "local":
                results = _run_local(compute, job, todo, local() if local is not None else {})
            elif engine == "process":
                results = _run_process(compute, job, todo, workers)
            else:
                results = _run_ray(compute, job, todo, workers, address, max_retries, gpus)
            for rec in results:
                records[(rec["start"], rec["stop"])] = rec
                bar.update()
    finally:
        bar.close()
    return records, reused
