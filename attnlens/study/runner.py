"""``run_study``: the grid of units, then statistics, figures and the report.

Output directory layout::

    OUT/report.html  report.md  metrics.csv  metrics_long.csv  metrics_seeds.csv  curves.csv
    OUT/report_input.json  provenance.json  study_config.json
    OUT/figures/*.png      OUT/explorer/<task>.html
    OUT/units/<task>/<alignment>/seed<k>/   (one finished unit each; see attnlens.study.units;
                                             rerun when the study settings it used changed)
    OUT/checkpoints/<task>/<alignment>/seed<k>/   (models trained by the study, when none was shipped)
"""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..errors import UnknownNameError
from ..io import save_dataframe, write_json
from ..report import ReportInput, write_report
from .analysis import combine_units, equivalences, seed_table, summarize
from .config import StudyConfig, study_config
from .units import Unit, clean_partials, load_examples, resolve_device, run_unit, unit_done

__all__ = ["run_study", "StudyResult", "analyse_study", "provenance"]

ENGINES = ("local", "ray")


@dataclass
class StudyResult:
    """What :func:`run_study` produced."""

    out: Path
    config: StudyConfig
    metrics: pd.DataFrame
    long: pd.DataFrame
    records: list[dict]
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)

    @property
    def report_html(self) -> Path:
        return self.out / "report.html"

    @property
    def report_md(self) -> Path:
        return self.out / "report.md"

    @property
    def metrics_csv(self) -> Path:
        return self.out / "metrics.csv"

    def __repr__(self) -> str:
        return (f"StudyResult(out={str(self.out)!r}, units={len(self.records)} (ran {len(self.ran)}, "
                f"reused {len(self.reused)}), metrics rows={len(self.metrics)})")

    def view(self, **kwargs):
        """The interactive notebook view of the saved maps (:func:`attnlens.study.figures.study_view`)."""
        from .figures import study_view

        return study_view(self, **kwargs)

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(repr(self))}</pre>{self.view()._repr_html_()}"


def _tasks_available() -> list[str]:
    import importlib

    try:
        importlib.import_module("attnlens.tasks")
    except ModuleNotFoundError as exc:  # pragma: no cover - only while tasks/__init__ is missing
        if exc.name != "attnlens.tasks":
            raise
    from ..tasks.base import available_tasks

    return available_tasks()


def run_study(out: str | Path, preset: str = "demo", tasks: Sequence[str] | None = None,
              alignments: Sequence[str] | None = None, seeds: Sequence[int] | int | None = None,
              device: str = "cpu", checkpoints: str | Path | None = "assets", resume: bool = True,
              progress: bool = True, config: StudyConfig | None = None, engine: str = "local",
              address: str | None = None, **overrides) -> StudyResult:
    """Run (or resume) a study and write its report.

    Args:
        out: output directory.
        preset: ``"quick"``, ``"demo"`` or ``"full"`` (see :mod:`attnlens.study.config`).
        tasks, alignments, seeds: replace the preset's (``seeds`` an int N means ``0..N-1``).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        checkpoints: where shipped checkpoints are looked up (``"assets"``, a directory, or
            ``None`` to always train, caching under ``OUT/checkpoints``).
        resume: reuse finished units (``False`` recomputes every unit).
        progress: progress bars.
        config: a full :class:`StudyConfig` (then ``preset``/``tasks``/... are ignored).
        engine: ``"local"`` (units one after another in this process) or ``"ray"`` (units as Ray
            tasks, see :mod:`attnlens.study.ray_engine`; same files and report).
        address: the Ray cluster to join (``engine="ray"``; None starts a local instance).
        **overrides: other :class:`StudyConfig` fields (``n_examples``, ``n_boot`` ...).

    Returns:
        :class:`StudyResult` (summary table, per-example rows, unit records).
    """
    from tqdm.auto import tqdm

    out = Path(out)
    available = _tasks_available()
    if config is None:
        config = study_config(preset, tasks=tasks, alignments=alignments, seeds=seeds, **overrides)
        if tasks is None:  # the preset's tasks that exist here
            config = study_config(preset, tasks=[t for t in config.tasks if t in available] or config.tasks,
                                  alignments=alignments, seeds=seeds, **overrides)
    for t in config.tasks:
        if t not in available:
            raise UnknownNameError("task", t, available)
    if engine not in ENGINES:
        raise UnknownNameError("engine", engine, ENGINES)
    device = resolve_device(device)
    out.mkdir(parents=True, exist_ok=True)
    clean_partials(out)
    write_json(out / "study_config.json", config.to_json())
    units = [Unit(t, a, s) for t in config.tasks for a in config.alignments for s in config.seeds]
    records, ran, reused = [], [], []
    started = time.time()
    if engine == "ray":
        from .ray_engine import run_units_ray

        done = {u.key for u in units if resume and unit_done(out, u, config, checkpoints)}
        todo = [u for u in units if u.key not in done]
        fresh = dict(zip([u.key for u in todo], run_units_ray(todo, out, config, device=device,
                                                             checkpoints=checkpoints, address=address,
                                                             progress=progress)))
        for unit in units:
            if unit.key in fresh:
                records.append(fresh[unit.key])
                ran.append(unit.key)
            else:
                records.append(json.loads((unit.dir(out) / "DONE.json").read_text()))
                reused.append(unit.key)
    bar = tqdm(units if engine == "local" else [], desc="study", unit="unit", disable=not progress)
    for unit in bar:
        bar.set_postfix_str(unit.key)
        if resume and unit_done(out, unit, config, checkpoints):
            records.append(json.loads((unit.dir(out) / "DONE.json").read_text()))
            reused.append(unit.key)
            continue
        records.append(run_unit(unit, out, config, device=device, checkpoints=checkpoints, progress=progress))
        ran.append(unit.key)
    bar.close()
    clean_partials(out)  # staging left by attempts that died (a Ray worker killed mid-unit and retried)
    metrics, long = analyse_study(out, config, records, started=started, device=device, progress=progress)
    return StudyResult(out, config, metrics, long, records, ran, reused)


def analyse_study(out: Path, config: StudyConfig, records: list[dict], *, started: float | None = None,
                  device: str = "cpu", progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Statistics, figures and report of finished units (cheap; rerun on every study call)."""
    from .figures import study_figures

    units = [Unit(r["task"], r["alignment"], int(r["seed"])) for r in records]
    longs, curves = [], []
    for u in units:
        longs.append(pd.read_csv(u.dir(out) / "long.csv", dtype={"reason": str, "phrase": str}).fillna({"reason": "", "phrase": ""}))
        curves.append(pd.read_csv(u.dir(out) / "curves.csv"))
    long = combine_units(longs)
    curves_df = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    eq, eq_report = {}, {}
    for task in config.tasks:
        recs = [r for r in records if r["task"] == task]
        norms = sorted({n for r in recs for n in r.get("model_info", {}).get("norms", [])})
        unit_feats = [r.get("model_info", {}).get("unit_features") for r in recs]
        # measured on the analysed inputs: True / False, None when no unit could tell
        unit = (True if unit_feats and all(u is True for u in unit_feats)
                else False if any(u is False for u in unit_feats) else None)
        assumed = unit is None
        norm = norms[0] if len(norms) == 1 else ("mixed: " + ", ".join(norms) if norms else "unknown")
        eq[task] = equivalences(config.alignments, norm, bool(unit))
        groups = [g.split("=") for g in dict.fromkeys(eq[task].values())]
        eq_report[task] = {"groups": groups, "norm": norm, "unit_features": unit, "assumed": assumed,
                           "max_abs_diff": _measured_differences(out, task, groups, config.seeds[0])}
    metrics = summarize(long, records, equivalent=eq, n_boot=config.n_boot, alpha=config.alpha)
    save_dataframe(long, out / "metrics_long.csv")
    save_dataframe(metrics, out / "metrics.csv")
    save_dataframe(seed_table(long, records), out / "metrics_seeds.csv")
    save_dataframe(curves_df, out / "curves.csv")
    examples = {t: {a: {e["example_id"]: e for e in load_examples(Unit(t, a, config.seeds[0]).dir(out))}
                    for a in config.alignments} for t in config.tasks}
    figs, explorers, notes = study_figures(out, long, curves_df, examples,
                                           {t: list(config.alignments) for t in config.tasks},
                                           n_gallery=config.gallery)
    prov = provenance(config, records, device=device, started=started)
    write_json(out / "provenance.json", prov)
    trained = [f"{r['task']}/{r['alignment']}/seed{r['seed']}" for r in records if r.get("trained")]
    summary = [f"Preset {config.preset}: {len(config.tasks)} task(s) x {len(config.alignments)} alignment "
               f"function(s) x {len(config.seeds)} seed(s); {config.n_examples} {config.split} examples per unit.",
               f"{len(records) - len(trained)} unit(s) used shipped checkpoints, {len(trained)} trained (cached "
               f"under checkpoints/)."]
    notes += ["Faithfulness: regions ordered by the attention averaged over the words; removal mode "
              f"'{config.removal}'. Agreement: attention vs leave-one-out importance of the same regions "
              "(Kendall tau-b, Spearman, top-3 overlap). Significance: Wilcoxon signed-rank on the paired "
              "examples against the best alignment function, Holm-corrected across those comparisons per metric; effect size = "
              "matched-pairs rank-biserial correlation (alignment minus best). Baselines (uniform, centre, "
              "random maps) are scored on the same targets and are not ranked."]
    if config.explainers:
        notes.append("Explainers (attnlens.explain): " + ", ".join(config.explainers) + ". Rows '<alignment>+<method>' "
                     "score the method's word x region map of the same output the faithfulness metrics use "
                     "(matching: the pair's similarity; VQA: the predicted answer's probability), on the same "
                     "examples, ranked and tested against the best like the alignment functions; 'raw' is the "
                     "attention itself. Tasks without region_forward (generation) have no explainer rows.")
    inp = ReportInput(title=f"attnlens study ({config.preset})", figures=figs, equivalences=eq_report,
                      explorers=explorers, provenance=prov, notes=notes, summary=summary)
    write_json(out / "report_input.json", inp.to_json())
    write_report(out, metrics, inp)
    return metrics, long


def _measured_differences(out: Path, task: str, groups: list[list[str]], seed: int) -> dict[str, float]:
    """Max |difference| of attention weights between equivalent alignments on the same examples."""
    import numpy as np

    res = {}
    for g in groups:
        loaded = {a: {e["example_id"]: e["attention"] for e in load_examples(Unit(task, a, seed).dir(out))} for a in g}
        for b in g[1:]:
            diffs = [float(np.abs(loaded[g[0]][i] - loaded[b][i]).max()) for i in loaded[g[0]]
                     if i in loaded[b] and loaded[b][i].shape == loaded[g[0]][i].shape]
            if diffs:
                res[f"{g[0]} vs {b}"] = max(diffs)
    return res


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists() or shutil.which("git") is None:
        return None
    try:
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    return r.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def provenance(config: StudyConfig, records: Sequence[dict], *, device: str = "cpu", started: float | None = None) -> dict[str, Any]:
    """Package versions, git commit, seeds, config and per-unit timings."""
    from importlib import metadata

    versions = {}
    for pkg in ("attnlens", "torch", "numpy", "scipy", "pandas", "matplotlib", "plotly", "captum", "opencv-python-headless"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return {"python": platform.python_version(), "platform": platform.platform(), "device": device,
            "git_commit": _git_commit() or "none", "seeds": list(config.seeds),
            "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_seconds": round(time.time() - started, 2) if started else None,
            "versions": versions, "config": config.to_json(),
            "units": {f"{r['task']}/{r['alignment']}/seed{r['seed']}": {
                "timings_s": {k: round(v, 3) for k, v in r.get("timings", {}).items()},
                "checkpoint": r.get("checkpoint"), "trained": r.get("trained"),
                "task_config": r.get("config")} for r in records}}
