"""Figures of a study, drawn from the units' saved examples and curves (no model is called).

* gallery: the same test examples across alignment functions (rows examples, columns
  alignments), for the examples with the best and the worst mean grounding score;
* curves: mean deletion/insertion curves per alignment function;
* grid: words x alignment functions on one example (``attnlens.render.grid``);
* explorer: ``attnlens.render.interactive`` HTML with the alignments as alternatives.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..io import TMP_SUFFIX, save_figure
from ..report import ReportFigure
from ..types import Regions

__all__ = ["ranked_examples", "gallery_figure", "curves_figure", "grid_figure", "write_explorer",
           "GROUNDING_PREFERENCE"]

#: Grounding metrics used to rank examples, in order of preference (the first one present wins).
GROUNDING_PREFERENCE = ("relevance_mass_accuracy", "pointing_game", "mask_auroc", "top1_region_hit")


def _mpl_text(text) -> str:
    """Text for matplotlib: escape mathtext dollars so a caption cannot switch to math mode."""
    return str(text).replace("$", r"\$")


def ranked_examples(long: pd.DataFrame, task: str) -> tuple[list[str], str | None]:
    """Example ids of ``task`` ranked by their grounding score averaged over alignments (best first)."""
    sub = long[(long["task"] == task)]
    for metric in GROUNDING_PREFERENCE:
        m = sub[sub["metric"] == metric]
        if len(m) and m["value"].notna().any():
            means = m.groupby("example_id")["value"].mean().dropna()
            order = means.sort_values(ascending=False, kind="stable")
            return [str(i) for i in order.index], metric
    return [], None


def _target_heat(ex: dict):
    """(head word, its weights over regions, ground-truth boxes) of an example's first target."""
    if ex["targets"]:
        tg = ex["targets"][0]
        return tg["head"], ex["tokens"][tg["head"]], np.asarray(tg["boxes"], dtype=float).reshape(-1, 4)
    return 0, ex["tokens"][0] if ex["tokens"] else "", np.zeros((0, 4))


def _regions(ex: dict) -> Regions:
    return Regions(np.asarray(ex["boxes"], dtype=float).reshape(-1, 4), image_size=tuple(ex["image_size"]))


def gallery_figure(examples: dict[str, dict[str, dict]], ids: Sequence[str], alignments: Sequence[str], *,
                   title: str, scores: dict[str, float] | None = None):
    """Rows = examples, columns = alignment functions: each panel the head word's attention overlaid.

    ``examples[alignment][example_id]`` are :func:`attnlens.study.units.load_examples` dicts.
    """
    from matplotlib.figure import Figure

    from ..render.overlay import overlay

    n_r, n_c = len(ids), len(alignments)
    fig = Figure(figsize=(2.1 * n_c + 0.4, 2.3 * n_r + 0.6), dpi=80)
    axes = np.atleast_2d(fig.subplots(n_r, n_c, squeeze=False))
    for i, eid in enumerate(ids):
        for j, a in enumerate(alignments):
            ax = axes[i, j]
            ax.set_axis_off()
            ex = examples.get(a, {}).get(eid)
            if ex is None:
                continue
            head, word, gt = _target_heat(ex)
            weights = np.asarray(ex["attention"][head], dtype=np.float64)
            valid = np.asarray(ex["region_valid"], dtype=bool)
            weights = np.where(valid, weights, 0.0)
            img = overlay(ex["image"], weights, regions=_regions(ex), boxes=gt if len(gt) else None)
            ax.imshow(img)
            if i == 0:
                ax.set_title(_mpl_text(a), fontsize=9)
            if j == 0:
                label = f"{eid}\n'{word}'"
                if scores and eid in scores:
                    label += f" ({scores[eid]:.2f})"
                ax.text(-0.05, 0.5, _mpl_text(label), transform=ax.transAxes, ha="right", va="center", fontsize=7,
                        rotation=90)
    fig.suptitle(_mpl_text(title), fontsize=10)
    return fig


def curves_figure(curves: pd.DataFrame, task: str, alignments: Sequence[str]):
    """Mean perturbation curves: one panel per curve kind, one line per alignment (MoRF solid,
    other orders dashed/dotted)."""
    from matplotlib.figure import Figure

    sub = curves[curves["task"] == task]
    kinds = list(dict.fromkeys(sub["curve"]))
    fig = Figure(figsize=(4.2 * max(1, len(kinds)), 3.4), dpi=80)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(kinds)), squeeze=False)[0])
    styles = {"morf": "-", "lerf": "--", "random": ":"}
    colors = {a: f"C{i % 10}" for i, a in enumerate(alignments)}
    for ax, kind in zip(axes, kinds):
        k = sub[sub["curve"] == kind]
        for (a, order), g in k.groupby(["alignment", "order"], sort=False):
            g = g.groupby("fraction", as_index=False)["value"].mean()
            ax.plot(g["fraction"], g["value"], styles.get(str(order), "-."), color=colors.get(a, "k"),
                    label=_mpl_text(f"{a} ({order})"), lw=1.4)
        ax.set_title(_mpl_text(f"{kind} curve"), fontsize=10)
        ax.set_xlabel("fraction of regions")
        ax.set_ylabel("model output")
        ax.grid(alpha=0.3)
    if kinds:
        axes[-1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    return fig


def _words(ex: dict, limit: int = 5) -> list[int]:
    heads = [t["head"] for t in ex["targets"]]
    rest = [i for i in range(len(ex["tokens"])) if i not in heads]
    return list(dict.fromkeys(heads + rest))[:limit]


def grid_figure(examples: dict[str, dict[str, dict]], eid: str, alignments: Sequence[str]):
    """Words (columns) x alignment functions (rows) for one example (``attnlens.render.grid``)."""
    from ..render.grid import grid

    first = next(examples[a][eid] for a in alignments if eid in examples.get(a, {}))
    idx = _words(first)
    cols = [f"{i}:{first['tokens'][i]}" for i in idx]
    aligns = [a for a in alignments if eid in examples.get(a, {})]
    maps = {a: {c: np.where(np.asarray(examples[a][eid]["region_valid"], bool),
                            np.asarray(examples[a][eid]["attention"][i], dtype=np.float64), 0.0)
                for c, i in zip(cols, idx)} for a in aligns}
    gt = {}
    for tg in first["targets"]:
        col = f"{tg['head']}:{first['tokens'][tg['head']]}"
        gt[col] = np.asarray(tg["boxes"], dtype=float).reshape(-1, 4)
    return grid(first["image"], maps, rows=aligns, cols=cols, regions=_regions(first), gt_boxes=gt,
                title=_mpl_text(f"{eid}: " + " ".join(first["tokens"])))


def write_explorer(examples: dict[str, dict[str, dict]], eid: str, alignments: Sequence[str], path: Path) -> Path:
    """The interactive explorer of one example with every alignment function as an alternative."""
    import torch

    from ..render import interactive
    from ..types import AttentionMap, Side

    aligns = [a for a in alignments if eid in examples.get(a, {})]
    first = examples[aligns[0]][eid]
    regions = _regions(first)

    def amap(a):
        ex = examples[a][eid]
        return AttentionMap(torch.as_tensor(ex["attention"]), ("word", "region"),
                            query=Side("word", "text", tuple(ex["tokens"])), key=Side("region", "image", regions=regions),
                            alignment=a)

    view = interactive(first["image"], amap(aligns[0]), tokens=list(first["tokens"]), regions=regions,
                       alternatives={a: amap(a) for a in aligns})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{uuid.uuid4().hex[:8]}{TMP_SUFFIX}-{path.name}"  # keeps the .html suffix
    try:
        view.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def study_figures(out: Path, long: pd.DataFrame, curves: pd.DataFrame, examples: dict[str, dict[str, dict[str, dict]]],
                  alignments: dict[str, list[str]], *, n_gallery: int = 3) -> tuple[list[ReportFigure], dict[str, str], list[str]]:
    """Draw every figure of the study into ``out/figures`` and the explorers into ``out/explorer``.

    Returns ``(figures, explorers, notes)``: report figures (paths relative to ``out``), explorer
    paths per task, and notes about figures that could not be drawn.
    """
    figs, explorers, notes = [], {}, []
    fdir = out / "figures"
    for task, per_align in examples.items():
        aligns = alignments[task]
        ids, metric = ranked_examples(long, task)
        common = [i for i in ids if all(i in per_align.get(a, {}) for a in aligns)]
        if not common:
            common = list(next(iter(per_align.values())).keys()) if per_align else []
        scores = None
        if metric:
            sub = long[(long["task"] == task) & (long["metric"] == metric)]
            scores = sub.groupby("example_id")["value"].mean().to_dict()
        k = min(n_gallery, max(1, len(common) // 2))
        for which, ids_ in (("best", common[:k]), ("worst", common[::-1][:k])):
            if not ids_:
                continue
            fig = gallery_figure(per_align, ids_, aligns, scores=scores,
                                 title=f"{task}: {which} {len(ids_)} examples by mean {metric or 'grounding'}")
            p = save_figure(fig, fdir / f"{task}_gallery_{which}.png", dpi=80)
            figs.append(ReportFigure(str(p.relative_to(out)), f"{task}: the {which} examples by mean {metric} "
                                     "across alignment functions (outlined boxes: ground truth; heat: the head "
                                     "word's attention over regions).", task, "gallery"))
        if len(curves) and (curves["task"] == task).any():
            p = save_figure(curves_figure(curves, task, aligns), fdir / f"{task}_curves.png", dpi=80)
            figs.append(ReportFigure(str(p.relative_to(out)), f"{task}: mean deletion/insertion curves (regions "
                                     "ordered by attention; MoRF solid, LeRF dashed, random dotted).", task, "curves"))
        if common:
            p = save_figure(grid_figure(per_align, common[0], aligns), fdir / f"{task}_grid.png", dpi=80)
            figs.append(ReportFigure(str(p.relative_to(out)), f"{task}: words x alignment functions on example "
                                     f"{common[0]} (shared colour scale).", task, "grid"))
            if not (fdir / "figure.png").exists() or task == next(iter(examples)):
                shutil.copyfile(p, fdir / ".figure.png.tmp")  # the headline figure (README's assets/figure.png)
                os.replace(fdir / ".figure.png.tmp", fdir / "figure.png")
            try:
                write_explorer(per_align, common[0], aligns, out / "explorer" / f"{task}.html")
                explorers[task] = f"explorer/{task}.html"
            except ImportError as exc:
                notes.append(f"{task}: interactive explorer not written ({exc}).")
    return figs, explorers, notes
