"""Overlays per second for 640x480 images from region maps (36 boxes).

Prints attnlens.render.overlay (region weights -> pixels with the metrics' regions_to_pixels,
per-map normalisation, RGB colour table, blend) next to a bare OpenCV baseline measured in the
same run (a precomputed uint8 heat map through cv2.applyColorMap + cv2.addWeighted, with no
region conversion, no normalisation and no RGB handling), and their ratio. Target: >= 300/s.

    .venv/bin/python benchmarks/bench_render.py [--n 600] [--rounds 10]
"""
from __future__ import annotations

import argparse
import os
import time

import cv2
import numpy as np

from attnlens.geometry import regions_to_pixels
from attnlens.render import overlay


def make_inputs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    H, W, R = 480, 640, 36
    images = rng.integers(0, 256, (4, H, W, 3), dtype=np.uint8)
    xy = rng.uniform(0, 1, (n, R, 2)) * [W - 40, H - 40]
    wh = rng.uniform(40, 300, (n, R, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [W, H])], axis=-1)
    weights = rng.dirichlet(np.ones(R), size=n)
    return images, boxes, weights


def rates(fns: dict, n: int, rounds: int) -> dict:
    """Overlays per second of each function: best and median over ``rounds`` interleaved rounds.

    The machine is shared, so rounds alternate between the functions (each sees the same load)
    and the best round is the figure least disturbed by other processes.
    """
    for fn in fns.values():
        fn(0)  # warm-up (colour tables, imports)
    times = {name: [] for name in fns}
    per = max(1, n // rounds)
    for k in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for i in range(k * per, (k + 1) * per):
                fn(i)
            times[name].append((time.perf_counter() - t0) / per)
    return {name: (1.0 / min(t), 1.0 / float(np.median(t))) for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    images, boxes, weights = make_inputs(args.n)
    heats = [cv2.normalize(regions_to_pixels(weights[i], boxes[i], (480, 640)), None, 0, 255,
                           cv2.NORM_MINMAX).astype(np.uint8) for i in range(min(args.n, 16))]

    def baseline(i):
        colour = cv2.applyColorMap(heats[i % len(heats)], cv2.COLORMAP_VIRIDIS)
        return cv2.addWeighted(images[i % 4], 0.5, colour, 0.5, 0.0)

    def ours(i):
        return overlay(images[i % 4], weights[i], regions=boxes[i], alpha=0.5)

    def ours_topk(i):
        return overlay(images[i % 4], weights[i], regions=boxes[i], alpha=0.5, top_k=3)

    r = rates({"baseline": baseline, "ours": ours, "topk": ours_topk}, args.n, args.rounds)
    (base, base_med), (mine, mine_med), (topk, topk_med) = r["baseline"], r["ours"], r["topk"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"640x480, 36 region boxes, {args.n} overlays each in {args.rounds} interleaved rounds; "
          f"{os.cpu_count()} CPUs, load average {load:.1f}; best round (median round)")
    print(f"cv2 baseline (applyColorMap + addWeighted on a ready uint8 map): {base:8.1f} /s ({base_med:.1f})")
    print(f"attnlens.render.overlay (region weights -> pixels -> RGB blend): {mine:8.1f} /s ({mine_med:.1f})  "
          f"ratio {mine / base:.3f}  target >= 300/s: {'PASS' if mine >= 300 else 'FAIL'}")
    print(f"attnlens.render.overlay with top_k=3 labelled boxes:            {topk:8.1f} /s ({topk_med:.1f})")

if __name__ == "__main__":
    main()
