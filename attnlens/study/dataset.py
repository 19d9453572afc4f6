"""Dataset-wide capture and per-example metrics in shards of example indices (the study's use of
the generic sharded jobs of :mod:`attnlens.distributed.shards`).

A job is (task, checkpoint, split, ``n`` examples, task config, metric settings). It is cut into
shards of ``shard_size`` consecutive example indices ``[start, stop)``; a shard runs
``task.analysis_examples(model, n=stop - start, start=start, ...)`` and, with ``metrics=True``,
:func:`attnlens.study.example_metrics.metric_rows` on those examples. Every number of an example
depends on that example alone (the tasks' ``start`` gives the same examples as one call from 0;
the metric rows score each example on its own with random draws seeded by its id), so the merged
output equals one unsharded pass **bit for bit**, whatever the shard size or the engine:

* ``engine="local"``: the shards one after another in this process (the model is loaded once);
* ``engine="process"``: a pool of ``workers`` spawned processes (each loads the model once);
* ``engine="ray"``: one Ray task per shard (joins ``address`` or starts a local instance with
  ``workers`` CPUs); a worker that dies mid-shard is retried by Ray (``max_retries``). Ray is
  imported only on this path.

Files. Each finished shard is streamed to ``SHARDS/<start>-<stop>/`` (``SHARDS`` is ``OUT/shards``
unless given): ``examples.json``, ``examples.npz``, ``long.csv``, ``example_curves.json`` and
``SHARD.json``, written in a ``.partial-*`` directory renamed into place when complete, so a
killed run leaves only complete shards and a rerun computes only the missing ones (a shard made
with other settings is recomputed). The merge writes, in the format of a study unit and of a
single-machine ``attnlens capture`` (same rows in the same order, same arrays):
``OUT/examples.json``, ``OUT/examples.npz``, ``OUT/long.csv``, ``OUT/curves.csv`` (the mean curves
over all examples) and, last, ``OUT/DONE.json`` (the job record with its fingerprint). The
outputs are staged and each renamed into place, after removing an older ``DONE.json``: a
directory holding ``DONE.json`` is complete. A rerun of a finished job returns its record
without computing anything. The shards are deleted after the merge unless ``keep_shards``.

Data movement: a shard task carries the job description (a few hundred bytes); each worker
reads the checkpoint and the split itself and writes its shard to the file system, which the
workers must share with the driver (a local instance always does).
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..distributed.shards import (DONE, ENGINES, PARTIAL, SHARD, clear_partials, fingerprint, publish_outputs,
                                  run_shards, shard_name, shard_plan, shard_record, write_npz_stream)
from ..distributed.shards import job_done as _job_done
from ..errors import FormatError, ShapeError, UnknownNameError
from ..io import atomic_path, file_digests, publish_dir, save_dataframe, write_json, write_text
from ..tasks import get_task
from . import example_metrics
from .units import save_examples

__all__ = ["DONE", "ENGINES", "MetricSettings", "OUTPUTS", "PARTIAL", "SHARD", "capture_dataset", "job_done",
           "shard_plan"]

#: The merged files, published in this order (``DONE.json`` last).
OUTPUTS = ("examples.json", "examples.npz", "long.csv", "curves.csv")
FORMAT = 1  # bump when a shard's content changes meaning

_MODELS: dict = {}  # per worker process: the last loaded model, by checkpoint and job key


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to compute a shard (picklable)."""

    task: Any  # a registered name or a task object
    checkpoint: str
    split: str
    config: dict
    metrics: bool
    settings: dict  # removal, steps, n_subsets, agreement, gradient_agreement
    baselines: bool
    device: str
    shards: str  # the shard directory
    key: str  # fingerprint of what a shard's content depends on
    columns: dict = field(default_factory=dict)
    threads: int = 0
    probe: Callable | None = None


def _task_name(task) -> str:
    return task if isinstance(task, str) else str(getattr(task, "name", type(task).__name__))


def _get_task(task):
    return get_task(task) if isinstance(task, str) else task


def job_done(out: str | Path, fingerprint: str | None = None) -> dict | None:
    """The record of a finished job in ``out`` (with that fingerprint, when given), else ``None``."""
    return _job_done(out, fingerprint, OUTPUTS)


# ----------------------------------------------------------------------------- one shard
def _load_model(job: _Job, task):
    cache_key = (job.checkpoint, job.key)  # the key covers the checkpoint's content and the device
    if cache_key not in _MODELS:
        _MODELS.clear()  # one model per worker at a time
        model = task.load(Path(job.checkpoint), device=job.device)
        model.eval()
        _MODELS[cache_key] = model
    return _MODELS[cache_key]


def _compute_shard(job: _Job, start: int, stop: int, model=None) -> dict:
    """Compute shard ``[start, stop)`` and publish its directory; returns its record."""
    t0 = time.perf_counter()
    if job.threads:
        torch.set_num_threads(int(job.threads))
    task = _get_task(job.task)
    if model is None:
        model = _load_model(job, task)
    root = Path(job.shards)
    final = root / shard_name(start, stop)
    staging = root / f"{PARTIAL}{final.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        record: list[float] = []
        with torch.no_grad(), (job.probe(model, record) if job.probe is not None else nullcontext()):
            examples = list(task.analysis_examples(model, n=stop - start, split=job.split, config=job.config,
                                                   start=start))
        t_examples = time.perf_counter() - t0
        save_examples(staging, examples)
        if job.metrics and examples:
            scorer = example_metrics.example_scorer(task, model, examples, removal=job.settings["removal"])
            long, curves = example_metrics.metric_rows(examples, scorer, MetricSettings(**job.settings), baselines=job.baselines)
            save_dataframe(long.assign(**job.columns), staging / "long.csv")
        if job.metrics:  # exact floats (JSON keeps every bit of a float64, NaN included)
            cols = {c: curves[c].tolist() for c in example_metrics.EXAMPLE_CURVE_COLUMNS} if examples else \
                {c: [] for c in example_metrics.EXAMPLE_CURVE_COLUMNS}
            write_text(staging / "example_curves.json", json.dumps(cols))
        rec = {"key": job.key, "start": start, "stop": stop, "n_examples": len(examples),
               "example_ids": [e.example_id for e in examples], "probe_max": max(record) if record else None,
               "seconds": {"examples": t_examples, "total": time.perf_counter() - t0}, "pid": os.getpid()}
        write_json(staging / SHARD, rec)
        # a finished copy may be there already (a retried task): keep it; a stale one is replaced
        publish_dir(staging, final, keep_existing=lambda d: shard_record(d, job.key) is not None)
        return rec
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@dataclass(frozen=True)
class MetricSettings:
    """The metric settings :func:`metric_rows` reads (a ``StudyConfig`` has the same fields)."""

    removal: str = "mask"
    steps: int = 20
    n_subsets: int = 50
    agreement: bool = True
    gradient_agreement: tuple = ("integrated_gradients", "input_x_gradient")


# ----------------------------------------------------------------------------- merge
def _merge(shard_dirs: Sequence[Path], staging: Path, metrics: bool, columns: dict) -> int:
    """Merge the shards (in index order) into ``staging``; returns the number of examples."""
    import pandas as pd

    meta: list = []
    counts = []
    for d in shard_dirs:
        part = json.loads((d / "examples.json").read_text())
        meta += part
        counts.append(len(part))
    write_json(staging / "examples.json", meta)

    def arrays():
        i = 0
        for d, n_part in zip(shard_dirs, counts):
            with np.load(d / "examples.npz", allow_pickle=False) as z:
                for j in range(n_part):
                    yield f"att{i}", z[f"att{j}"]
                    yield f"img{i}", z[f"img{j}"]
                    i += 1

    write_npz_stream(staging / "examples.npz", arrays())
    if metrics:
        header, body = None, []
        for d in shard_dirs:
            p = d / "long.csv"
            if not p.is_file():
                continue
            text = p.read_text(encoding="utf-8")
            first, _, rest = text.partition("\n")
            if header is None:
                header = first
            elif first != header:
                raise FormatError(f"columns differ from the first shard's ({header!r})", path=p, line=1)
            body.append(rest)
        with atomic_path(staging / "long.csv") as tmp:
            tmp.write_text((header + "\n" if header is not None else "") + "".join(body), encoding="utf-8")
        parts = [pd.DataFrame(json.loads((d / "example_curves.json").read_text())) for d in shard_dirs]
        curves = example_metrics.mean_curves(pd.concat(parts, ignore_index=True))
        save_dataframe(curves.assign(**columns), staging / "curves.csv")
    return len(meta)


# ----------------------------------------------------------------------------- the job
def capture_dataset(task, checkpoint: str | Path, out: str | Path, *, split: str = "test", n: int | None = None,
                    config: dict | None = None, metrics: bool = True, settings: Any = None, baselines: bool = True,
                    shard_size: int = 64, engine: str = "local", workers: int = 2, address: str | None = None,
                    device: str = "cpu", threads: int | None = None, max_retries: int = 3,
                    columns: dict | None = None, model: torch.nn.Module | None = None,
                    probe: Callable | None = None, shard_dir: str | Path | None = None, keep_shards: bool = False,
                    progress: bool = True) -> dict:
    """Capture ``n`` examples of ``split`` (and their metric rows) in shards; returns the job record.

    Args:
        task: a registered task name or a task object (``attnlens.tasks.base.Task``).
        checkpoint: the model's checkpoint directory (``task.load``).
        out: output directory (module docstring).
        split: data split.
        n: examples from index 0 (default: ``task.split_size(split, config)`` with ``config`` over the
            checkpoint's ``config.json``: the whole split).
        config: task config passed to ``analysis_examples`` (default: the task's own defaults and
            the checkpoint's config).
        metrics: also compute the per-example metric rows (``long.csv``, ``curves.csv``).
        settings: metric settings with ``removal``, ``steps``, ``n_subsets``, ``agreement`` and
            ``gradient_agreement`` (a ``StudyConfig``; default: the ``demo`` study preset's).
        baselines: also score the uniform/centre/random maps.
        shard_size: examples per shard.
        engine: ``"local"``, ``"process"`` or ``"ray"``.
        workers: processes of the pool / CPUs of a local Ray instance.
        address: Ray cluster to join (``engine="ray"``).
        device: device the model runs on.
        threads: torch threads per worker (default: this process's count).
        max_retries: Ray retries of a shard whose worker died.
        columns: constant columns added to ``long.csv`` and ``curves.csv`` (the study adds
            ``task``, ``alignment``, ``seed``).
        model: the loaded model, used by the local engine instead of loading ``checkpoint``.
        probe: ``probe(model, values)`` -> a context manager entered around each shard's
            ``analysis_examples``; the largest float it appends to ``values`` is kept
            (``record["probe_max"]``).
        shard_dir: where the shards go (default ``out/shards``).
        keep_shards: keep the shard directories after the merge.
        progress: a tqdm bar over the shards.

    Returns:
        The record written to ``DONE.json`` (with ``"already_done": True`` when the job had finished
        before and nothing was computed).

    Raises:
        UnknownNameError: unknown engine or task. ShapeError: bad ``n`` / ``shard_size``, no examples.
        Whatever a shard raises (after Ray's retries for a dead worker); finished shards stay on
        disk for the rerun, the outputs are not written.
    """
    if engine not in ENGINES:
        raise UnknownNameError("engine", engine, ENGINES)
    t0 = time.perf_counter()
    task_obj = _get_task(task)
    out = Path(out)
    checkpoint = Path(checkpoint)
    config = dict(config or {})
    if n is None:
        if not hasattr(task_obj, "split_size"):
            raise ShapeError(f"task {_task_name(task)!r} does not say how large its splits are (no split_size); "
                             "pass the number of examples")
        saved = checkpoint / "config.json"  # the tasks read a model's own config under ``config``
        saved = json.loads(saved.read_text()) if saved.is_file() else {}
        n = int(task_obj.split_size(split, {**saved, **config}))
    n = int(n)
    if n < 1:
        raise ShapeError(f"n must be >= 1, got {n}")
    plan = shard_plan(n, shard_size)
    if settings is None:
        from .config import study_config

        settings = study_config("demo")
    sett = {k: getattr(settings, k) for k in ("removal", "steps", "n_subsets", "agreement")}
    sett["gradient_agreement"] = tuple(getattr(settings, "gradient_agreement", ()))
    columns = dict(columns or {})
    base = {"format": FORMAT, "task": _task_name(task), "checkpoint": file_digests(checkpoint), "split": split,
            "config": config, "metrics": bool(metrics), "settings": sett if metrics else None,
            "baselines": bool(baselines) if metrics else None, "device": str(device), "columns": columns}
    key = fingerprint(base)
    job_print = fingerprint({**base, "n": n})
    done = job_done(out, job_print)
    if done is not None:
        return {**done, "already_done": True}
    shards = Path(shard_dir) if shard_dir is not None else out / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    clear_partials(shards, out)  # left by a killed run
    job = _Job(task=task, checkpoint=str(checkpoint.resolve()), split=split, config=config, metrics=bool(metrics),
               settings=sett, baselines=bool(baselines), device=str(device), shards=str(shards.resolve()), key=key,
               columns=columns, threads=int(threads) if threads else torch.get_num_threads(), probe=probe)

    def load_here() -> dict:
        local = model if model is not None else task_obj.load(checkpoint, device=device)
        local.eval()
        return {"model": local}

    records, reused = run_shards(_compute_shard, job, plan, shards, key, engine=engine, workers=workers,
                                 address=address, max_retries=max_retries,
                                 gpus=1 if str(device).startswith("cuda") else 0, local=load_here,
                                 progress=progress, desc=f"capture {_task_name(task)} shards")
    dirs = [shards / shard_name(a, b) for a, b in plan]
    n_examples = sum(records[s]["n_examples"] for s in plan)
    if n_examples == 0:
        raise ShapeError(f"split {split!r} of task {_task_name(task)!r} gave no examples (n={n})")
    staging = out / f"{PARTIAL}merge-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        _merge(dirs, staging, bool(metrics), columns)
        names = [name for name in OUTPUTS if (staging / name).is_file()]
        probes = [r["probe_max"] for r in records.values() if r.get("probe_max") is not None]
        record = {"task": _task_name(task), "checkpoint": str(checkpoint), "split": split, "n": n,
                  "n_examples": n_examples, "config": config, "metrics": bool(metrics),
                  "settings": sett if metrics else None, "baselines": bool(baselines) if metrics else None,
                  "device": str(device), "columns": columns, "engine": engine, "shard_size": int(shard_size),
                  "n_shards": len(plan), "reused_shards": reused, "outputs": names,
                  "probe_max": max(probes) if probes else None,
                  "seconds": {"wall": time.perf_counter() - t0,
                              "shards": sum(r["seconds"]["total"] for r in records.values())},
                  "fingerprint": job_print, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        publish_outputs(staging, out, names, record, OUTPUTS)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    clear_partials(shards)  # left by a worker that died (its shard was retried)
    if not keep_shards:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
        if shard_dir is None:
            try:
                shards.rmdir()
            except OSError:  # other files left there by the user
                pass
    return record
