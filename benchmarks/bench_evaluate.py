"""``attnlens evaluate`` at scale: 1,000 examples of a tiny model, sharded, killed in the middle,
resumed; the resumed run must give the numbers of an uninterrupted run.

Runs the CLI in subprocesses on a Flickr30K-Entities-format dataset written here (500 images x 2
captions, region features with boxes; the tiny model is a one-layer ``nn.MultiheadAttention``
from words to regions, :func:`build`):

1. an uninterrupted run into ``A/`` (timed);
2. a run into ``B/`` killed (SIGKILL) once half of its shards are finished;
3. the same command again into ``B/``: it reuses the finished shards and computes the rest (timed);

then compares ``metrics.csv`` and ``metrics_long.csv`` of ``A`` and ``B`` byte for byte and prints
the wall times and the peak resident memory of each child process.

    python benchmarks/bench_evaluate.py [--n-images 500] [--shard-size 50] [--engine local] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "tests"))


def build():
    """The tiny model and its spec (``--model benchmarks/bench_evaluate.py:build``)."""
    import torch
    from torch import nn

    from attnlens.evaluate import ModuleSpec
    from evaluate_fixtures import FEAT_DIM

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(64, FEAT_DIM)
            self.att = nn.MultiheadAttention(FEAT_DIM, 2, batch_first=True)

        def forward(self, features, tokens):
            ctx, _ = self.att(self.emb(tokens), features, features)
            return ctx.sum((1, 2))

    torch.manual_seed(0)
    return Tiny().eval(), ModuleSpec(vocab_size=64)


def _cmd(data: Path, out: Path, args) -> list[str]:
    return [sys.executable, "-m", "attnlens.cli", "evaluate", "--model", f"{HERE}:build", "--data", str(data),
            "--out", str(out), "--shard-size", str(args.shard_size), "--engine", args.engine, "--quiet"]


def _run(cmd, env) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child run."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"run failed: {' '.join(cmd)}")
    return time.perf_counter() - t, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=500)
    ap.add_argument("--shard-size", type=int, default=50)
    ap.add_argument("--engine", default="local", choices=["local", "process"])
    ap.add_argument("--keep", default=None, help="work in this folder and keep it")
    args = ap.parse_args()
    from evaluate_fixtures import write_flickr30k

    work = Path(args.keep or tempfile.mkdtemp(prefix="bench_evaluate_"))
    data = write_flickr30k(work / "data", n_images=args.n_images, images=True)
    n = 2 * args.n_images
    n_shards = -(-n // args.shard_size)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    print(f"{n} examples, {n_shards} shards of {args.shard_size}, engine {args.engine}; work folder {work}")

    wall_a, rss_a = _run(_cmd(data, work / "A", args), env)
    print(f"uninterrupted: {wall_a:.1f} s, peak RSS {rss_a:.0f} MiB")

    p = subprocess.Popen(_cmd(data, work / "B", args), env=env)
    t = time.perf_counter()
    shards = work / "B" / "units" / "module" / "raw" / "seed0" / "shards"
    while p.poll() is None and len(list(shards.glob("*/SHARD.json"))) < n_shards // 2:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done = len(list(shards.glob("*/SHARD.json")))
    print(f"killed after {time.perf_counter() - t:.1f} s with {done}/{n_shards} shards finished")

    wall_b, rss_b = _run(_cmd(data, work / "B", args), env)
    print(f"resumed: {wall_b:.1f} s, peak RSS {rss_b:.0f} MiB")
    same = all((work / "A" / f).read_bytes() == (work / "B" / f).read_bytes()
               for f in ("metrics.csv", "metrics_long.csv", "curves.csv"))
    print(f"metrics.csv, metrics_long.csv, curves.csv identical to the uninterrupted run: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
