"""Benchmarks of the scale-out paths (issue #9), each side measured in the same run.

1. Quick study (matching; ``--alignments``, one seed; training included) in this process, on a
   local Ray instance with 1 CPU and with 2 CPUs (Ray's start-up included, a fresh output
   directory each time); prints the wall times, the ratios, and whether the metrics.csv files
   are byte-identical.
2. All-pairs SCAN scoring of a gallery (``--images`` x ``--captions``, 36 regions, 12 words,
   float32): one ``ScanSimilarity`` call vs :func:`attnlens.distributed.sharded_similarity`
   on a local pool of 2 spawned processes (1 torch thread each, pool start-up included); the
   single call also runs with 1 thread, so the comparison is 1 core vs 2 cores.
3. Dataset-wide capture + per-example metrics (:func:`attnlens.study.dataset.capture_dataset`)
   of a shipped checkpoint (``--capture-task``, default the matching ``dot`` model) over the
   test split (``--capture-n``, default the whole split) with the demo study's metric settings:
   the local engine (this process, 1 torch thread) vs Ray tasks on a local instance with 2 CPUs
   (1 thread each; ``ray.init`` timed apart, then the job twice: on fresh workers, and again on
   the same workers with their imports done and the model loaded); prints the wall times and
   whether the merged files are byte-identical.

Expected scaling on a cluster (on paper): study units are independent; a unit moves a few
hundred bytes in and about a megabyte of files out, so wall time is about
``ceil(units / workers) x`` the slowest unit plus start-up. An all-pairs block ``bi x bc``
costs ``O(bi * bc * R * L * D)`` and returns ``bi * bc`` floats, after each worker has
received the gallery once (``Ni * R * D + Nc * L * D`` floats), so throughput scales with the
workers until the gallery transfer dominates.

Usage::

    python benchmarks/bench_scaleout.py                         # both parts
    python benchmarks/bench_scaleout.py --skip-study --images 512 --captions 2560
    python benchmarks/bench_scaleout.py --skip-study --skip-allpairs --capture-n 100
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

import torch  # noqa: E402


def bench_study(alignments: list[str]) -> None:
    import ray

    from attnlens.study import run_study

    kw = dict(preset="quick", tasks=["matching"], alignments=alignments, seeds=1, checkpoints=None,
              progress=False)
    root = Path(tempfile.mkdtemp(prefix="bench_scaleout_"))
    try:
        t0 = time.perf_counter()
        run_study(root / "local", **kw)
        local = time.perf_counter() - t0
        times = {}
        for cpus in (1, 2):
            t0 = time.perf_counter()
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
            run_study(root / f"ray{cpus}", engine="ray", **kw)
            times[cpus] = time.perf_counter() - t0
            ray.shutdown()
        same = all((root / f"ray{c}" / "metrics.csv").read_bytes() == (root / "local" / "metrics.csv").read_bytes()
                   for c in (1, 2))
        print(f"quick study, matching x {alignments} (seed 0, training included): local {local:.1f} s, "
              f"ray 1 cpu {times[1]:.1f} s, ray 2 cpus {times[2]:.1f} s; "
              f"ray1/ray2 = {times[1] / times[2]:.2f}x, local/ray2 = {local / times[2]:.2f}x; "
              f"metrics.csv identical: {same}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_allpairs(n_images: int, n_captions: int) -> None:
    from attnlens.distributed import sharded_similarity
    from attnlens.models.scan import ScanSimilarity

    g = torch.Generator().manual_seed(0)
    ims = torch.randn(n_images, 36, 64, generator=g)
    caps = torch.randn(n_captions, 12, 64, generator=g)
    lens = torch.randint(4, 13, (n_captions,), generator=g)
    sim = ScanSimilarity("t2i", "lse")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = sim(ims, caps, lens)
        single = time.perf_counter() - t0
        blocks = (max(16, (n_images // 2) // 16 * 16), max(64, (n_captions // 2) // 64 * 64))
        t0 = time.perf_counter()
        out = sharded_similarity(sim, ims, caps, lens, blocks=blocks, executor="process", workers=2, threads=1)
        pooled = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    print(f"all-pairs {n_images} x {n_captions} (R=36, L=12, D=64, float32, 1 thread per process): "
          f"single call {single:.2f} s, 2-process pool (blocks {blocks}) {pooled:.2f} s, "
          f"speed-up {single / pooled:.2f}x; bit-identical: {bool(torch.equal(out, ref))}")


def bench_capture(task: str, n: int | None, shard_size: int) -> None:
    import ray

    from attnlens.study.dataset import capture_dataset
    from attnlens.study import study_config
    from attnlens.tasks import get_task

    root = Path(tempfile.mkdtemp(prefix="bench_capture_"))
    ckpt = Path(__file__).resolve().parents[1] / "assets" / "checkpoints" / f"{task}-dot-seed0"
    kw = dict(n=n, config=get_task(task).default_config("demo"), settings=study_config("demo"),
              shard_size=shard_size, progress=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        rec = capture_dataset(task, ckpt, root / "local", engine="local", **kw)
        local = time.perf_counter() - t0
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        start = time.perf_counter() - t0
        remote = {}
        for run in ("cold", "warm"):  # warm: the same workers again (imports done, model cached)
            t0 = time.perf_counter()
            capture_dataset(task, ckpt, root / run, engine="ray", workers=2, **kw)
            remote[run] = time.perf_counter() - t0
        ray.shutdown()
        same = all((root / "local" / f).read_bytes() == (root / run / f).read_bytes()
                   for f in ("examples.json", "examples.npz", "long.csv", "curves.csv") for run in remote)
    finally:
        torch.set_num_threads(before)
        shutil.rmtree(root, ignore_errors=True)
    print(f"capture + metrics, {task} dot, {rec['n_examples']} test examples in {rec['n_shards']} shards of "
          f"{shard_size} (demo metric settings, 1 thread per process): local {local:.1f} s; ray 2 cpus: "
          f"ray.init {start:.1f} s, first job {remote['cold']:.1f} s (workers start), same job again "
          f"{remote['warm']:.1f} s; local/ray = {local / remote['cold']:.2f}x cold, "
          f"{local / remote['warm']:.2f}x warm; byte-identical: {same}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--alignments", default="dot,general")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--captions", type=int, default=1280)
    p.add_argument("--skip-study", action="store_true")
    p.add_argument("--skip-allpairs", action="store_true")
    p.add_argument("--capture-task", default="matching")
    p.add_argument("--capture-n", type=int, default=None)
    p.add_argument("--shard-size", type=int, default=25)
    p.add_argument("--skip-capture", action="store_true")
    args = p.parse_args()
    if not args.skip_allpairs:
        bench_allpairs(args.images, args.captions)
    if not args.skip_study:
        bench_study(args.alignments.split(","))
    if not args.skip_capture:
        bench_capture(args.capture_task, args.capture_n, args.shard_size)


if __name__ == "__main__":
    main()
