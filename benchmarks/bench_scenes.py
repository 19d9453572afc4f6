"""Benchmark: built-in scene generation speed (images per second) at the default size.

Target (issue #3): >= 1,000 images/s on the 2-core development machine. Prints the measured
rate (wall-clock, and per CPU-second of the one core it runs on, which is what a busy shared
machine does not distort), the target and their ratio, for the default configuration and for 36 proposals. Each
figure is the best of ``--repeats`` timed runs of ``--n`` images (after a warm-up).

Run: ``python benchmarks/bench_scenes.py [--n 2000] [--repeats 3]``
"""
from __future__ import annotations

import argparse
import time

from attnlens.data import scenes

TARGET = 1000.0


def rate(n: int, repeats: int, **options) -> tuple[float, float]:
    """Best wall-clock and best CPU-time rates (images/s) over ``repeats`` runs."""
    scenes.generate(50, seed=123, **options)  # warm-up (imports, caches)
    wall = cpu = float("inf")
    for r in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        scenes.generate(n, seed=r, **options)
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return n / wall, n / cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    failed = False
    for label, options in [("default (64 px, 16 regions, 5 captions, 4 questions)", {}),
                           ("64 px, 36 regions", {"n_regions": 36})]:
        wall, cpu = rate(args.n, args.repeats, **options)
        print(f"scenes {label}: {wall:,.0f} images/s wall-clock ({cpu:,.0f} per CPU-second, one core) | "
              f"target {TARGET:,.0f} images/s | ratio {wall / TARGET:.2f}x wall, {cpu / TARGET:.2f}x CPU")
        failed |= not options and wall < TARGET
    if failed:
        print("BELOW TARGET")


if __name__ == "__main__":
    main()
