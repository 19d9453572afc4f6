"""Figures of a study, drawn from the units' saved examples and curves (no model is called).

* gallery: the same test examples across alignment functions (rows examples, columns
  alignments), for the examples with the best and the worst mean grounding score; small images
  are enlarged with nearest neighbour, the heat's opacity follows its value, one colour bar;
* curves: small multiples, one panel per alignment function (or explainer) and curve kind, each
  with its random-order baseline, shared axes and the AUC in the panel title;
* grid: words x alignment functions on one example (``attnlens.render.grid``);
* words: one panel per word of one example's caption (``attnlens.render.word_panels``);
* explorer: ``attnlens.render.interactive`` HTML with the alignments as alternatives.

Every figure is written as PNG (shown in the report), SVG and PDF (linked from the report), with
fonts embedded (:func:`attnlens.render.export.save_figure`).
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..io import TMP_SUFFIX
from ..render.export import save_figure
from ..report import ReportFigure
from ..types import Regions

__all__ = ["ranked_examples", "gallery_figure", "curves_figure", "grid_figure", "words_figure", "write_explorer", "study_view",
           "save_all_formats", "curve_aucs", "GROUNDING_PREFERENCE", "FIGURE_FORMATS"]

#: Files written for every study figure: the PNG is embedded in the report, the others linked.
FIGURE_FORMATS = ("png", "svg", "pdf")

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


def _scale(image_size, target: int = 192) -> int:
    """Nearest-neighbour enlargement that brings a small image's long side near ``target`` pixels."""
    return int(max(1, min(8, target // max(1, max(image_size)))))


def gallery_figure(examples: dict[str, dict[str, dict]], ids: Sequence[str], alignments: Sequence[str], *,
                   title: str, scores: dict[str, float] | None = None):
    """Rows = examples, columns = alignment functions: each panel the head word's attention overlaid
    (opacity following the heat, ground-truth boxes outlined, small images enlarged with nearest
    neighbour), with one colour bar per row (each row one example, one scale).

    ``examples[alignment][example_id]`` are :func:`attnlens.study.units.load_examples` dicts.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.figure import Figure

    from ..render.grid import grid_limits
    from ..render.heatmap import colormap_lut, resolve_cmap, signed_lut, to_pixels
    from ..render.overlay import overlay

    n_r, n_c = len(ids), len(alignments)
    fig = Figure(figsize=(2.1 * n_c + 0.9, 2.3 * n_r + 0.6), dpi=80, layout="constrained")
    axes = np.atleast_2d(fig.subplots(n_r, n_c, squeeze=False))
    for i, eid in enumerate(ids):
        row = []
        for a in alignments:
            ex = examples.get(a, {}).get(eid)
            if ex is None:
                row.append(None)
                continue
            head, word, gt = _target_heat(ex)
            weights = np.asarray(ex["attention"][head], dtype=np.float64)
            weights = np.where(np.asarray(ex["region_valid"], dtype=bool), weights, 0.0)
            row.append((ex, word, gt, weights, to_pixels(weights, tuple(ex["image_size"]), regions=_regions(ex))))
        pix = [[r[4] for r in row if r is not None]]
        if not pix[0]:
            for ax in axes[i]:
                ax.set_axis_off()
            continue
        signed = any(float(np.min(p)) < 0 for p in pix[0])
        lo, hi = grid_limits(pix, "grid", signed=signed)[0, 0]
        cmap = resolve_cmap(None, signed)
        for j, (a, r) in enumerate(zip(alignments, row)):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_visible(False)
            if i == 0:
                ax.set_title(_mpl_text(a), fontsize=9)
            if r is None:
                continue
            ex, word, gt, weights, p = r
            img = overlay(ex["image"], p, norm="symmetric" if signed else "map", vmin=lo, vmax=hi, cmap=cmap,
                          boxes=gt if len(gt) else None, scale=_scale(p.shape), thickness=2)
            ax.imshow(img, interpolation="nearest")
            if j == 0:
                label = f"{eid}\n'{word}'"
                if scores and eid in scores:
                    label += f" ({scores[eid]:.2f})"
                ax.set_ylabel(_mpl_text(label), fontsize=7)
        table = signed_lut(cmap)[1:] if signed else colormap_lut(cmap)
        fig.colorbar(ScalarMappable(Normalize(lo, hi), ListedColormap(table / 255.0)), ax=list(axes[i]),
                     fraction=0.03, pad=0.01)
    fig.suptitle(_mpl_text(title), fontsize=10)
    return fig


def curve_aucs(curves: pd.DataFrame) -> pd.DataFrame:
    """Trapezoid AUC of each mean curve: one row per (task, alignment, curve, order).

    The mean over examples is taken at each fraction first (the curve drawn), then its area over
    the fraction axis (:func:`attnlens.metrics.functional.faithfulness.curve_auc`).

    >>> df = pd.DataFrame({"task": "t", "alignment": "dot", "curve": "deletion", "order": "morf",
    ...                    "fraction": [0.0, 0.5, 1.0, 0.0, 0.5, 1.0], "value": [1.0, 0.5, 0.0, 1.0, 0.7, 0.0]})
    >>> curve_aucs(df)["auc"].round(3).tolist()  # the mean curve 1, 0.6, 0
    [0.55]
    """
    from ..metrics.functional.faithfulness import curve_auc

    rows = []
    keys = [k for k in ("task", "alignment", "curve", "order") if k in curves.columns]
    for key, g in curves.groupby(keys, sort=False):
        m = g.groupby("fraction", as_index=False)["value"].mean().sort_values("fraction")
        v, x = np.array(m["value"], dtype=np.float64), np.array(m["fraction"], dtype=np.float64)  # writable copies
        auc = float(curve_auc(v, x)) if len(m) > 1 else float("nan")
        rows.append(dict(zip(keys, key if isinstance(key, tuple) else (key,)), auc=auc))
    return pd.DataFrame(rows, columns=keys + ["auc"])


def curves_figure(curves: pd.DataFrame, task: str, alignments: Sequence[str], *, max_cols: int = 4):
    """Small multiples of the mean perturbation curves: one panel per alignment function (or
    explainer) and curve kind (rows), MoRF solid and LeRF dashed, the random-order baseline dotted
    grey in every panel, shared axes, the AUC of each order in the panel title."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    sub = curves[curves["task"] == task]
    kinds = list(dict.fromkeys(sub["curve"])) or ["curve"]
    present = [a for a in alignments if (sub["alignment"] == a).any()]
    present += [a for a in dict.fromkeys(sub["alignment"]) if a not in present]
    present = present or list(alignments)[:1]
    n_c = min(max_cols, len(present))
    blocks = -(-len(present) // n_c)
    n_r = blocks * len(kinds)
    fig = Figure(figsize=(2.5 * n_c + 0.3, 2.1 * n_r + 0.8), dpi=80, layout="constrained")
    axes = fig.subplots(n_r, n_c, squeeze=False, sharex=True, sharey=True)
    aucs = curve_aucs(sub) if len(sub) else pd.DataFrame(columns=["alignment", "curve", "order", "auc"])
    styles = {"morf": ("-", "C0"), "lerf": ("--", "C1"), "random": (":", "0.45")}
    short = {"morf": "MoRF", "lerf": "LeRF", "random": "rand"}
    for b in range(blocks):
        for k, kind in enumerate(kinds):
            for j in range(n_c):
                ax = axes[b * len(kinds) + k, j]
                idx = b * n_c + j
                if idx >= len(present):
                    ax.set_visible(False)
                    continue
                a = present[idx]
                g = sub[(sub["alignment"] == a) & (sub["curve"] == kind)]
                parts = []
                for order in dict.fromkeys(g["order"]):
                    m = g[g["order"] == order].groupby("fraction", as_index=False)["value"].mean()
                    ls, col = styles.get(str(order), ("-.", "C2"))
                    ax.plot(m["fraction"], m["value"], ls, color=col, lw=1.4)
                    hit = aucs[(aucs["alignment"] == a) & (aucs["curve"] == kind) & (aucs["order"] == order)]
                    if len(hit):
                        parts.append(f"{short.get(str(order), str(order))} {hit['auc'].iloc[0]:.3f}")
                ax.set_title(_mpl_text(f"{a} · {kind}\nAUC " + ", ".join(parts)), fontsize=8)
                ax.grid(alpha=0.3)
                if j == 0:
                    ax.set_ylabel("model output", fontsize=8)
                if b == blocks - 1 and k == len(kinds) - 1:
                    ax.set_xlabel("fraction of regions", fontsize=8)
                ax.tick_params(labelsize=7)
    handles = [Line2D([], [], ls=ls, color=c) for ls, c in styles.values()]
    fig.legend(handles, ["MoRF (most relevant first)", "LeRF (least relevant first)", "random order (baseline)"],
               loc="outside lower center", ncols=3, fontsize=7, frameon=False)
    fig.suptitle(_mpl_text(f"{task}: mean perturbation curves"), fontsize=10)
    return fig


def _words(ex: dict, limit: int = 5) -> list[int]:
    heads = [t["head"] for t in ex["targets"]]
    rest = [i for i in range(len(ex["tokens"])) if i not in heads]
    return list(dict.fromkeys(heads + rest))[:limit]


def words_figure(ex: dict, *, ncols: int = 6):
    """One panel per word of one saved example (:func:`attnlens.render.word_panels`)."""
    from ..render.grid import word_panels

    att = np.asarray(ex["attention"], dtype=np.float64)
    att = np.where(np.asarray(ex["region_valid"], bool)[None, :], att, 0.0)
    gt = {}
    for tg in ex["targets"]:
        gt[ex["tokens"][tg["head"]]] = np.asarray(tg["boxes"], dtype=float).reshape(-1, 4)
    gt_list = [gt.get(w) if i in {t["head"] for t in ex["targets"]} else None for i, w in enumerate(ex["tokens"])]
    return word_panels(ex["image"], att, words=list(ex["tokens"]), regions=_regions(ex), gt_boxes=gt_list,
                       ncols=ncols, title=f"{ex['example_id']}: " + " ".join(ex["tokens"]),
                       scale=_scale(np.asarray(ex["image"]).shape[:2], 128))


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
                title=f"{eid}: " + " ".join(first["tokens"]), scale=_scale(np.asarray(first["image"]).shape[:2], 128))


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
            p = save_all_formats(fig, fdir / f"{task}_gallery_{which}.png")
            figs.append(ReportFigure(str(p.relative_to(out)), f"{task}: the {which} examples by mean {metric} "
                                     "across alignment functions (outlined boxes: ground truth; heat: the head "
                                     "word's attention over regions).", task, "gallery"))
        if len(curves) and (curves["task"] == task).any():
            p = save_all_formats(curves_figure(curves, task, aligns), fdir / f"{task}_curves.png")
            figs.append(ReportFigure(str(p.relative_to(out)), f"{task}: mean deletion/insertion curves, one panel "
                                     "per alignment function and curve (regions ordered by attention: MoRF solid, "
                                     "LeRF dashed; the random-order baseline dotted grey; AUC in each title).",
                                     task, "curves"))
        if common:
            p = save_all_formats(grid_figure(per_align, common[0], aligns), fdir / f"{task}_grid.png")
            figs.append(ReportFigure(str(p.relative_to(out)), f"{task}: words x alignment functions on example "
                                     f"{common[0]} (shared colour scale).", task, "grid"))
            if not (fdir / "figure.png").exists() or task == next(iter(examples)):
                shutil.copyfile(p, fdir / ".figure.png.tmp")  # the headline figure (README's assets/figure.png)
                os.replace(fdir / ".figure.png.tmp", fdir / "figure.png")
            first = next(per_align[a][common[0]] for a in aligns if common[0] in per_align.get(a, {}))
            if len(first["tokens"]):
                p = save_all_formats(words_figure(first), fdir / f"{task}_words.png")
                figs.append(ReportFigure(str(p.relative_to(out)), f"{task}: every word of example {common[0]} "
                                         f"({aligns[0]}), one panel per word on a shared colour scale.", task, "words"))
            try:
                write_explorer(per_align, common[0], aligns, out / "explorer" / f"{task}.html")
                explorers[task] = f"explorer/{task}.html"
            except ImportError as exc:
                notes.append(f"{task}: interactive explorer not written ({exc}).")
    return figs, explorers, notes


def save_all_formats(fig, png_path: Path, *, dpi: float = 100) -> Path:
    """Save ``fig`` as PNG at ``png_path`` and as SVG and PDF beside it (fonts embedded); returns
    the PNG's path."""
    png_path = Path(png_path)
    for i, fmt in enumerate(FIGURE_FORMATS):
        save_figure(fig, png_path.with_suffix("." + fmt), dpi=dpi, crop=False)
        if i == 0 and fig.get_layout_engine() is not None:
            fig.set_layout_engine("none")  # the layout of the first draw holds for every format: no re-layout
    return png_path


def study_view(out, *, task: str | None = None, alignments: Sequence[str] | None = None, seed: int = 0,
               example: str | None = None):
    """The interactive notebook view of a study's saved maps: one example, its words as buttons and
    the alignment functions as alternatives (:func:`attnlens.render.notebook.map_view`).

    ``out`` is a study's output folder (or a :class:`~attnlens.study.runner.StudyResult`); the
    task, alignments and example default to the first ones found (the example shown first in the
    galleries when the metrics are saved).
    """
    from ..errors import FormatError
    from ..render.notebook import map_view
    from .units import Unit, load_examples

    config = getattr(out, "config", None)
    out = Path(getattr(out, "out", out))
    tasks = list(getattr(config, "tasks", None) or sorted(p.name for p in (out / "units").glob("*") if p.is_dir()))
    if not tasks:
        raise FormatError("no study units here; run `attnlens study` first", path=out / "units")
    task = task if task is not None else tasks[0]
    aligns = list(alignments or getattr(config, "alignments", None) or
                  sorted(p.name for p in (out / "units" / task).glob("*") if p.is_dir()))
    per = {a: {e["example_id"]: e for e in load_examples(Unit(task, a, seed).dir(out))} for a in aligns
           if (Unit(task, a, seed).dir(out) / "examples.json").exists()}
    if not per:
        raise FormatError(f"no saved examples for task {task!r} (seed {seed})", path=out / "units" / task)
    aligns = [a for a in aligns if a in per]
    if example is None:
        long_path = out / "metrics_long.csv"
        ranked = ranked_examples(pd.read_csv(long_path), task)[0] if long_path.exists() else []
        common = [i for i in ranked if all(i in per[a] for a in aligns)] or \
            [i for i in per[aligns[0]] if all(i in per[a] for a in aligns)]
        example = common[0]
    first = per[aligns[0]][example]
    alts = {a: np.where(np.asarray(per[a][example]["region_valid"], bool)[None, :],
                        np.asarray(per[a][example]["attention"], dtype=np.float64), np.nan) for a in aligns}
    gt = {first["tokens"][t["head"]]: np.asarray(t["boxes"], dtype=float).reshape(-1, 4) for t in first["targets"]}
    return map_view(None, first["image"], alternatives=alts, tokens=list(first["tokens"]), regions=_regions(first),
                    gt_boxes=gt, title=f"{task}: {example}: " + " ".join(first["tokens"]), alternative_name="alignment")
