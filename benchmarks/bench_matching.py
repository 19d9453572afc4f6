"""Matching on the built-in scenes: training time and test R@1 against the target, next to what
a perfect reader of the captions could reach on the same test split.

Usage: python benchmarks/bench_matching.py [--alignment dot] [--preset demo] [--out runs/bench]
[--config JSON]

Printed:
* the oracle bounds of text-to-image R@1 on the test split of the default scenes (and of the
  scenes the task's config trains and tests on, if its ``scene_options`` change them): a caption
  names 1-3 objects of a scene with 2-6, so other test images may fit it too; an oracle that
  ranks every image consistent with the caption first, ties broken at random, has expected
  R@1 = mean 1 / #consistent; a second oracle also prefers images with fewer objects (more
  likely to produce that caption);
* the trained model's R@1 (both directions), R@5, rsum and its training time (epochs only),
  with the ratio to the 50 % target.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np


def _noun(tokens, shapes, colors, sizes):
    d = {}
    for t in tokens:
        if t in shapes:
            d["shape"] = t
        elif t in colors:
            d["color"] = t
        elif t in sizes:
            d["size"] = t
    return d


def oracle_bounds(test) -> tuple[float, float]:
    """(tie oracle, fewer-objects oracle) expected text-to-image R@1 on ``test`` (fractions)."""
    from attnlens.data.scenes_grammar import relation
    from attnlens.data.scenes_spec import COLORS, SHAPES, SIZES

    def fits(o, d, objs):
        if any(getattr(o, k) != v for k, v in d.items()):
            return False
        return "color" in d or sum(x.shape == o.shape for x in objs) == 1

    def consistent(cap, scene):
        objs = scene.objects
        ds = [_noun(p.tokens, SHAPES, COLORS, SIZES) for p in cap.phrases]
        links = [tuple(cap.tokens[a.first_token + len(a.tokens):b.first_token])
                 for a, b in zip(cap.phrases, cap.phrases[1:])]
        return any(all(fits(o, d, objs) for o, d in zip(named, ds))
                   and all(link == ("and",) or relation(named[k], named[k + 1]) == link
                           for k, link in enumerate(links))
                   for named in itertools.permutations(objs, len(ds)))

    ties, weighted = [], []
    for i, scene in enumerate(test):
        for cap in scene.captions:
            fit = [j for j, s in enumerate(test) if consistent(cap, s)]
            ties.append(1.0 / len(fit))
            k = len(cap.phrases)
            w = {j: 1.0 / np.prod([len(test[j].objects) - m for m in range(k)]) for j in fit}
            top = [j for j in fit if w[j] == max(w.values())]
            weighted.append(1.0 / len(top) if i in top else 0.0)
    return float(np.mean(ties)), float(np.mean(weighted))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--alignment", default="dot")
    p.add_argument("--preset", default="demo")
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=None, help="JSON object of config overrides")
    args = p.parse_args()
    import attnlens.train as T
    from attnlens.data.scenes import load_split
    from attnlens.train.config import MatchingConfig

    cfg = MatchingConfig.preset(args.preset)
    if args.config:
        cfg = cfg.replace(**json.loads(args.config))
    for label, options in (("default scenes", {}), (f"task scenes {cfg.scene_options}", cfg.scene_options)):
        if label.startswith("task") and not cfg.scene_options:
            continue
        test = load_split("test", cfg.n_test, **dict(options))
        tie, weighted = oracle_bounds(test)
        print(f"{label}: test split {len(test)} images, {sum(len(s.captions) for s in test)} captions; "
              f"oracle text-to-image R@1: ties {100 * tie:.1f} %, fewer-objects {100 * weighted:.1f} %")
    t0 = time.perf_counter()
    run_dir = T.run("matching", alignment=args.alignment, seed=args.seed, out_dir=Path(args.out),
                    preset=args.preset, progress=False, config=json.loads(args.config) if args.config else None)
    wall = time.perf_counter() - t0
    state = T.read_state(run_dir)
    m = state["history"][-1]
    print(f"{args.alignment}: train {state['train_seconds']:.1f} s (wall {wall:.1f} s, includes data and "
          f"evaluation, 0 if the run was already there)")
    print(f"  text-to-image R@1 {m['t2i_r1']:.1f} %  R@5 {m['t2i_r5']:.1f} %  | image-to-text R@1 "
          f"{m['i2t_r1']:.1f} %  R@5 {m['i2t_r5']:.1f} %  | rsum {m['rsum']:.1f}")
    print(f"  text-to-image R@1 / target 50 %: {m['t2i_r1'] / 50:.2f}; / tie oracle of its test scenes: "
          f"{m['t2i_r1'] / (100 * tie):.2f}")


if __name__ == "__main__":
    main()
