"""``attnlens.evaluate``: any model with a spec, any grounded dataset, to the study's report.

One path: each explainer is a :class:`~attnlens.evaluate.task.SpecTask` run by the study's
dataset-wide capture (:func:`attnlens.study.dataset.capture_dataset`: resumable shards of
examples on the local / process / Ray engines, per-example metric rows of
:func:`attnlens.study.example_metrics.metric_rows`), into the study's unit layout
``OUT/units/<name>/<explainer>/seed0/``. The units are then summarised by
:func:`attnlens.study.analysis.summarize` (explainers ranked on the same examples, Wilcoxon tests
against the best, Holm-corrected; baselines uniform / centre / random beside them), drawn by
:func:`attnlens.study.figures.study_figures` and written by :func:`attnlens.report.write_report`.

Output directory::

    OUT/report.html  report.md  metrics.csv  metrics_long.csv  curves.csv  report_input.json
    OUT/evaluate.json            (what was run: spec, explainers, items, settings, timings)
    OUT/figures/*.png  OUT/explorer/<name>.html
    OUT/model/model.json         (digest of the weights and items: a changed model recomputes)
    OUT/units/<name>/<explainer>/seed0/   (examples, per-example rows, curves, DONE.json)

In ``metrics.csv`` the ``alignment`` column holds the explainer (the study's method axis).
A rerun with the same model, items and settings reuses every finished unit and shard.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from ..errors import ShapeError
from ..io import save_dataframe, write_json
from ..study.dataset import MetricSettings

__all__ = ["evaluate", "EvaluateResult", "DEFAULT_SETTINGS"]

#: Metric settings of an evaluation unless ``settings=`` says otherwise (as the ``quick`` study,
#: without the gradient agreement: a spec with ``feature_forward`` can ask for it).
DEFAULT_SETTINGS = dict(removal="mask", steps=10, n_subsets=20, agreement=True, gradient_agreement=())


@dataclass
class EvaluateResult:
    """What :func:`evaluate` wrote."""

    out: Path
    metrics: pd.DataFrame
    long: pd.DataFrame
    records: list[dict] = field(default_factory=list)

    @property
    def report_html(self) -> Path:
        return self.out / "report.html"

    @property
    def metrics_csv(self) -> Path:
        return self.out / "metrics.csv"

    def __repr__(self) -> str:
        return (f"EvaluateResult(out={str(self.out)!r}, explainers={len(self.records)}, "
                f"metrics rows={len(self.metrics)})")


def _settings(settings) -> MetricSettings:
    if settings is None:
        return MetricSettings(**DEFAULT_SETTINGS)
    if isinstance(settings, dict):
        return MetricSettings(**{**DEFAULT_SETTINGS, **settings})
    return MetricSettings(**{k: getattr(settings, k) for k in DEFAULT_SETTINGS})


def _digest_model(model: torch.nn.Module) -> str:
    h = hashlib.sha256(type(model).__qualname__.encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if v.numel() else b"")
    return h.hexdigest()[:16]


def _digest_items(items) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps([it.item_id, list(it.tokens), [list(t.tokens) for t in it.targets],
                             [t.boxes.tolist() for t in it.targets], list(it.image_size)]).encode())
        for arr in (it.image, it.features, it.boxes):
            h.update(b"-" if arr is None else hashlib.sha256(arr.tobytes()).digest())
    return h.hexdigest()[:16]


def _spec(spec):
    from .specs import get_spec

    if isinstance(spec, str):
        return get_spec(spec)
    if spec is None:
        raise ShapeError("evaluate needs spec= (a ModelSpec or a registered name, see "
                         "attnlens.evaluate.available_specs())")
    return spec


def evaluate(model: torch.nn.Module, data, *, spec, explainers: Sequence[str] = ("raw",), out, name: str | None = None,
             n: int | None = None, settings=None, shard_size: int = 64, engine: str = "local", workers: int = 2,
             address: str | None = None, device: str = "cpu", n_boot: int = 2000, alpha: float = 0.05,
             gallery: int = 3, progress: bool = False) -> EvaluateResult:
    """Score ``model`` on a grounded dataset and write the study's report to ``out``.

    Args:
        model: the model (any module the spec can run).
        data: a dataset folder (:func:`attnlens.evaluate.load_data`), a loader's list
            (``GroundedCaption``, ``CocoCaption``, ...) or :class:`~attnlens.evaluate.EvalItem` s.
        spec: a :class:`~attnlens.evaluate.ModelSpec` or a registered spec name (``"vilt"``,
            ``"lxmert"``, ``"visualbert"``, ``"scan"``, ``"module"``).
        explainers: method names of :mod:`attnlens.explain` (``raw``, ``rollout``,
            ``gradient_weighted``, ...), with options after a colon for layers and heads:
            ``"raw:layer=0"``, ``"raw:layer=-1,heads=max"``; each is one ranked row per metric.
        out: output directory (module docstring).
        name: the model's name in the report (default: the spec's).
        n: evaluate the first ``n`` items (default all).
        settings: metric settings (``removal``, ``steps``, ``n_subsets``, ``agreement``,
            ``gradient_agreement``): a dict or a ``StudyConfig`` (default :data:`DEFAULT_SETTINGS`).
        shard_size, engine, workers, address: sharding over examples (:mod:`attnlens.study.dataset`;
            engines ``local``, ``process``, ``ray``); finished shards are reused after an interruption.
        device: device of the model. n_boot, alpha: bootstrap resamples and significance level.
        gallery: examples in each gallery. progress: progress bars.

    Returns:
        :class:`EvaluateResult` (summary table, per-example rows, one record per explainer).

    Example (your own module, :class:`~attnlens.evaluate.ModuleSpec`; a transformers model passes
    ``spec="vilt"``, ``"lxmert"``, ...; with a checkpoint only the model line changes)::

    >>> import tempfile, numpy as np
    >>> from attnlens.types import GroundedCaption, Phrase
    >>> class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.emb, self.att = torch.nn.Embedding(64, 8), torch.nn.MultiheadAttention(8, 1, batch_first=True)
    ...     def forward(self, features, tokens):
    ...         return self.att(self.emb(tokens), features, features)[0].sum((1, 2))
    >>> boxes = np.array([[0, 0, 10, 10], [10, 0, 20, 10.]])
    >>> caps = [GroundedCaption(f"i{k}", ("a", "dog"), (Phrase("1", ("animals",), 1, ("dog",), boxes[k][None]),),
    ...                         (10, 20)) for k in range(2)]
    >>> from attnlens.evaluate import ModuleSpec, as_items
    >>> items = as_items(caps, features={f"i{k}": (boxes, np.eye(2, 8)) for k in range(2)})
    >>> res = evaluate(Net(), items, spec=ModuleSpec(vocab_size=64), out=tempfile.mkdtemp(), n_boot=50,
    ...                settings={"steps": 2, "n_subsets": 2, "agreement": False})
    >>> res.report_html.is_file(), sorted(set(res.metrics["alignment"]))[-1]
    (True, 'raw')
    """
    from ..report import ReportInput, write_report
    from ..study.analysis import combine_units, summarize
    from ..study.dataset import capture_dataset
    from ..study.figures import study_figures
    from ..study.units import load_examples
    from .items import as_items, load_data
    from .task import SpecTask

    t0 = time.time()
    spec = _spec(spec)
    explainers = tuple(dict.fromkeys(str(e) for e in ([explainers] if isinstance(explainers, str) else explainers)))
    if not explainers:
        raise ShapeError("evaluate needs at least one explainer")
    items = load_data(data) if isinstance(data, (str, Path)) else as_items(data)
    items = items[:n] if n is not None else items
    if len(items) < 2:
        raise ShapeError(f"evaluate needs at least 2 grounded items for paired statistics, got {len(items)}")
    if not any(it.targets for it in items):
        raise ShapeError("no item has a grounded phrase with a box: nothing to score")
    name = str(name or spec.name)
    if not name or any(c in name for c in "/\\"):
        raise ShapeError(f"name must be a plain file name, got {name!r}")
    tasks = [SpecTask(spec, items, e, name=name, model=model) for e in explainers]  # checks the explainers
    sett = _settings(settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mdir = out / "model"
    mdir.mkdir(exist_ok=True)
    write_json(mdir / "model.json", {"spec": spec.name, "spec_class": type(spec).__qualname__,
                                     "model": type(model).__qualname__, "weights": _digest_model(model),
                                     "items": _digest_items(items), "n_items": len(items)})
    model.eval()
    records = []
    for i, (e, task) in enumerate(zip(explainers, tasks)):
        unit = out / "units" / name / _safe(e) / "seed0"
        rec = capture_dataset(task, mdir, unit, n=len(items), config={"explainer": e}, settings=sett,
                              baselines=i == 0, shard_size=shard_size, engine=engine, workers=workers,
                              address=address, device=device, model=model,
                              columns={"task": name, "alignment": e, "seed": 0}, progress=progress)
        records.append({**rec, "explainer": e})
    longs = [pd.read_csv(out / "units" / name / _safe(e) / "seed0" / "long.csv",
                         dtype={"reason": str, "phrase": str}).fillna({"reason": "", "phrase": ""}) for e in explainers]
    long = combine_units(longs)
    curves = pd.concat([pd.read_csv(out / "units" / name / _safe(e) / "seed0" / "curves.csv") for e in explainers],
                       ignore_index=True)
    metrics = summarize(long, [], n_boot=n_boot, alpha=alpha)
    save_dataframe(long, out / "metrics_long.csv")
    save_dataframe(metrics, out / "metrics.csv")
    save_dataframe(curves, out / "curves.csv")
    examples = {name: {e: {x["example_id"]: x for x in load_examples(out / "units" / name / _safe(e) / "seed0")}
                       for e in explainers}}
    figs, explorers, notes = study_figures(out, long, curves, examples, {name: list(explainers)}, n_gallery=gallery)
    run = {"spec": spec.name, "model": type(model).__qualname__, "explainers": list(explainers), "n_items": len(items),
           "settings": sett.__dict__, "engine": engine, "shard_size": shard_size,
           "wall_seconds": round(time.time() - t0, 2),
           "units": [{k: r.get(k) for k in ("explainer", "n_examples", "n_shards", "reused_shards", "already_done")}
                     for r in records]}
    write_json(out / "evaluate.json", run)
    placeholder = sum(1 for it in items if it.image is None)
    summary = [f"Model {type(model).__name__} (spec {spec.name!r}) on {len(items)} grounded item(s); explainers: "
               f"{', '.join(explainers)}.",
               "Rows of the tables are the explainers (column 'alignment' of metrics.csv): ranked and tested against "
               "the best on the same examples; baselines (uniform, centre, random maps) beside them."]
    if placeholder:
        summary.append(f"{placeholder} item(s) had no image file: their galleries show a grey placeholder.")
    notes += [f"Faithfulness: regions/patches ordered by the map averaged over the words, removed with the spec's "
              f"'{sett.removal}' removal; the scored output is the spec's target. Agreement: the map vs leave-one-out "
              "importance of the same regions (Kendall tau-b, Spearman, top-3 overlap). Significance: Wilcoxon "
              "signed-rank on paired examples against the best explainer, Holm-corrected per metric."]
    inp = ReportInput(title=f"attnlens evaluate: {name}", figures=figs, explorers=explorers,
                      provenance={"evaluate": run}, notes=notes, summary=summary)
    write_json(out / "report_input.json", inp.to_json())
    write_report(out, metrics, inp)
    return EvaluateResult(out, metrics, long, records)


def _safe(label: str) -> str:
    """A folder name for an explainer label (``raw:layer=0`` -> ``raw_layer=0``)."""
    return "".join(c if c.isalnum() or c in "-_=." else "_" for c in label)
