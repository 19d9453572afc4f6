"""One unit of a study: (task, alignment function, seed) -> model -> task metrics, examples, metric rows.

A unit writes everything into a hidden staging directory next to its final place and renames it
into ``OUT/units/<task>/<alignment>/seed<k>/`` only once complete, with ``DONE.json`` (timings,
checkpoint, config) inside. So a unit directory is either complete or absent: an interrupted run
leaves at most a ``.partial-*`` directory, which the next run deletes, and a rerun skips every
unit whose directory exists.

Files of a finished unit:

* ``DONE.json``: the unit record (task metrics, checkpoint used and whether it was trained,
  config, timings).
* ``long.csv``: per-example metric rows (``example_id, metric, category, value, reason, subset``).
* ``curves.csv``: mean deletion/insertion curves (``curve, order, fraction, value``).
* ``examples.json`` + ``examples.npz``: the analysed examples (tokens, boxes, targets, image and
  attention arrays) for galleries and the explorer.

With ``StudyConfig.shard_size`` the examples and their rows are computed in shards of that many
examples (:func:`attnlens.study.dataset.capture_dataset`, in the unit's process), each
kept in ``.shards-seed<k>/`` next to the unit until the unit is published, so a unit killed
mid-analysis resumes from its finished shards; the files are the same, bit for bit.
"""
from __future__ import annotations

import json
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import CheckpointError
from ..io import atomic_path, file_digests, publish_dir, save_dataframe, write_json
from ..tasks.base import AnalysisExample, get_task
from .config import StudyConfig
from .example_metrics import example_scorer

__all__ = ["Unit", "DONE", "run_unit", "unit_done", "unit_fingerprint", "checkpoint_digest", "find_checkpoint", "clean_partials", "save_examples",
           "load_examples", "resolve_device"]

DONE = "DONE.json"
PARTIAL = ".partial-"
SHARDS = ".shards-"


@dataclass(frozen=True)
class Unit:
    """One (task, alignment, seed) cell of the study grid."""

    task: str
    alignment: str
    seed: int = 0

    @property
    def key(self) -> str:
        return f"{self.task}/{self.alignment}/seed{self.seed}"

    def dir(self, out: str | Path) -> Path:
        return Path(out) / "units" / self.task / self.alignment / f"seed{self.seed}"


def unit_fingerprint(unit: Unit, cfg: StudyConfig) -> str:
    """Hash of everything that changes a unit's results (the study settings a unit uses and the
    task's config overrides); a finished unit with another fingerprint is stale and is rerun."""
    import hashlib

    keys = ("preset", "n_examples", "split", "removal", "steps", "n_subsets", "agreement", "gradient_agreement")
    data = {k: getattr(cfg, k) for k in keys}
    data["task_overrides"] = cfg.task_overrides.get(unit.task, {})
    data["unit"] = [unit.task, unit.alignment, unit.seed]
    if cfg.explainers:  # only when set, so the fingerprints of studies without explainers do not change
        data["explainers"] = list(cfg.explainers)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_digest(checkpoint: str | Path) -> str:
    """SHA-256 (first 16 hex digits) over the files of a checkpoint directory (names and bytes)."""
    import hashlib

    digests = file_digests(checkpoint)
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]


_ANY = object()


def unit_done(out: str | Path, unit: Unit, cfg: StudyConfig | None = None, checkpoints=_ANY) -> bool:
    """True when the unit's directory holds its done-marker, made with the same settings (when
    ``cfg`` is given) and from the same weights: the checkpoint it used still has the digest it
    recorded, and (when ``checkpoints`` is given) a unit made from a shipped checkpoint would still
    find that same checkpoint. A retrained or replaced checkpoint therefore makes the unit stale.
    Records written before digests were kept are judged by their settings alone."""
    marker = unit.dir(out) / DONE
    if not marker.is_file():
        return False
    if cfg is None:
        return True
    try:
        record = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if record.get("fingerprint") != unit_fingerprint(unit, cfg):
        return False
    digest = record.get("checkpoint_sha256")
    if digest is None:
        return True
    used = Path(str(record.get("checkpoint", "")))
    if not used.is_dir() or checkpoint_digest(used) != digest:
        return False
    if checkpoints is not _ANY and not record.get("trained"):
        found = find_checkpoint(checkpoints, unit)
        return found is not None and found.resolve() == used.resolve()
    return True


def clean_partials(out: str | Path) -> list[Path]:
    """Delete staging directories left by an interrupted run; returns what was removed."""
    root = Path(out) / "units"
    removed = []
    if root.is_dir():
        for p in sorted(root.glob(f"*/*/{PARTIAL}*")):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when available else ``"cpu"``; other names pass through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _checkpoint_roots(checkpoints) -> list[Path]:
    if checkpoints is None or checkpoints is False:
        return []
    if str(checkpoints) == "assets":
        pkg_root = Path(__file__).resolve().parents[2]
        roots = [Path.cwd() / "assets" / "checkpoints", pkg_root / "assets" / "checkpoints"]
        return list(dict.fromkeys(r.resolve() for r in roots))
    return [Path(checkpoints)]


def find_checkpoint(checkpoints, unit: Unit) -> Path | None:
    """A shipped checkpoint for ``unit`` under a checkpoint root, the first of:
    ``<root>/<task>/<alignment>/seed<k>/``, ``<root>/<task>/<alignment>/<task>-<alignment>-seed<k>/``,
    ``<root>/<task>-<alignment>-seed<k>/`` (``attnlens train``'s run directory) or, for seed 0,
    ``<root>/<task>/<alignment>/`` itself when it holds files.

    ``checkpoints``: ``None`` (never use shipped checkpoints), ``"assets"`` (``./assets/checkpoints``
    and the repository's ``assets/checkpoints``) or a directory.
    """
    run = f"{unit.task}-{unit.alignment}-seed{unit.seed}"
    for root in _checkpoint_roots(checkpoints):
        d = root / unit.task / unit.alignment
        for cand in (d / f"seed{unit.seed}", d / run, root / run):
            if cand.is_dir() and any(cand.iterdir()):
                return cand
        if unit.seed == 0 and d.is_dir() and any(p.is_file() for p in d.iterdir()):
            return d
    return None


def config_mismatch(checkpoint: Path, config: dict) -> list[str]:
    """Keys of ``config`` whose value differs from the checkpoint's ``config.json`` (empty = same).

    A shipped checkpoint is used only when it was trained with the unit's own task config (the
    preset's, with the study's overrides): a ``quick`` study never analyses ``demo`` models under
    ``quick`` data settings, and a changed preset retrains instead of loading a stale model. Keys
    the checkpoint does not record are not compared; a checkpoint without ``config.json`` matches.
    """
    path = Path(checkpoint) / "config.json"
    if not path.is_file():
        return []
    saved = json.loads(path.read_text())
    norm = lambda v: json.loads(json.dumps(v))  # noqa: E731  (tuples -> lists, as saved)
    return sorted(k for k, v in config.items() if k in saved and norm(v) != saved[k])


def _train(unit: Unit, out_dir: Path, config: dict, preset: str, device: str, progress: bool) -> Path:
    """Train through :func:`attnlens.tasks.training.run` (run directory under ``out_dir``)."""
    from ..tasks.training import run

    return Path(run(unit.task, alignment=unit.alignment, seed=unit.seed, out_dir=out_dir, config=config,
                    preset=preset, device=device, progress=progress, resume=True))


def task_config(task, cfg: StudyConfig) -> dict:
    """The task's preset config with the study's overrides applied."""
    conf = dict(task.default_config(cfg.preset))
    conf.update(cfg.task_overrides.get(task.name, {}))
    return conf


def run_unit(unit: Unit, out: str | Path, cfg: StudyConfig, *, device: str = "cpu", checkpoints="assets",
             progress: bool = True, analyse: Callable | None = None) -> dict:
    """Run one unit and publish its directory atomically; returns the unit record (``DONE.json``).

    ``analyse(examples, scorer, cfg, model=, task=, baselines=)`` -> ``(long_df, curves_df)`` computes the
    metric rows (baselines only in the task's first alignment and seed)
    (default: :func:`attnlens.study.analysis.unit_metrics`; ``cfg.shard_size`` applies to the
    default only). ``scorer`` scores each example with the task's scorer built on that example
    alone (:func:`attnlens.study.example_metrics.example_scorer`).
    """
    custom = analyse
    if analyse is None:
        from .analysis import unit_metrics as analyse
    out = Path(out)
    final = unit.dir(out)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f"{PARTIAL}{final.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    timings: dict[str, float] = {}
    t_all = t = time.perf_counter()
    try:
        task = get_task(unit.task)
        conf = task_config(task, cfg)
        ckpt = find_checkpoint(checkpoints, unit)
        skipped = None
        differing = config_mismatch(ckpt, conf) if ckpt is not None else []
        if differing:
            skipped = {"checkpoint": str(ckpt), "differing_keys": differing}
            ckpt = None
        trained = ckpt is None
        if trained:
            ckpt = _train(unit, out / "checkpoints", conf,
                          cfg.preset, device, progress)
        timings["train" if trained else "locate"] = time.perf_counter() - t
        t = time.perf_counter()
        try:
            model = task.load(Path(ckpt), device=device)
        except (OSError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"cannot load checkpoint {ckpt} for {unit.key}: {exc}") from exc
        model.eval()
        timings["load"] = time.perf_counter() - t
        t = time.perf_counter()
        with torch.no_grad():
            perf = {k: float(v) for k, v in task.evaluate(model, split=cfg.split, config=conf).items()}
        timings["evaluate"] = time.perf_counter() - t
        t = time.perf_counter()
        norms: list[float] = []
        baselines = (unit.alignment, unit.seed) == (cfg.alignments[0], cfg.seeds[0])
        columns = {"task": unit.task, "alignment": unit.alignment, "seed": unit.seed}
        if cfg.shard_size and custom is None:  # examples and rows in resumable shards, merged into staging
            from .dataset import capture_dataset

            shards = final.parent / f"{SHARDS}{final.name}"
            job = capture_dataset(task, ckpt, staging, split=cfg.split, n=cfg.n_examples, config=conf, settings=cfg,
                                  baselines=baselines, shard_size=cfg.shard_size, device=device, columns=columns,
                                  model=model, probe=_feature_norms, shard_dir=shards, progress=progress)
            shutil.rmtree(shards, ignore_errors=True)
            norms = [job["probe_max"]] if job["probe_max"] is not None else []
            n_done = job["n_examples"]
            timings["examples+metrics"] = time.perf_counter() - t
        else:
            with _feature_norms(model, norms):
                examples = list(task.analysis_examples(model, n=cfg.n_examples, split=cfg.split, config=conf))
            timings["examples"] = time.perf_counter() - t
            t = time.perf_counter()
            scorer = example_scorer(task, model, examples, removal=cfg.removal)
            long_df, curves_df = analyse(examples, scorer, cfg, model=model, task=task, baselines=baselines)
            timings["metrics"] = time.perf_counter() - t
            if cfg.explainers:
                t = time.perf_counter()
                long_df, explainer_info = _explainer_rows(task, model, examples, scorer, cfg, analyse, long_df)
                timings["explainers"] = time.perf_counter() - t
            save_dataframe(long_df.assign(**columns), staging / "long.csv")
            save_dataframe(curves_df.assign(**columns), staging / "curves.csv")
            save_examples(staging, examples)
            n_done = len(examples)
        timings["total"] = time.perf_counter() - t_all
        if cfg.explainers and not cfg.shard_size:
            extra_record = {"explainers": explainer_info}
        else:
            extra_record = {}
        record = {"task": unit.task, "alignment": unit.alignment, "seed": unit.seed, "task_metrics": perf,
                  "checkpoint": str(ckpt), "checkpoint_sha256": checkpoint_digest(ckpt), "trained": trained,
                  "skipped_checkpoint": skipped,
                  "config": conf, "timings": timings,
                  "model_info": _model_info(model, norms), "n_examples": n_done,
                  "fingerprint": unit_fingerprint(unit, cfg),
                  "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra_record}
        write_json(staging / DONE, record)
        publish_dir(staging, final)  # replaces a stale directory without a done-marker (or a forced rerun)
        return record
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _explainer_rows(task, model, examples, scorer, cfg: StudyConfig, analyse, long_df):
    """``long_df`` plus the rows of each of ``cfg.explainers`` (``method = "explainer:<m>"``; see
    :mod:`attnlens.study.explainers`) and what was done (``{method: "scored" | reason}``)."""
    import pandas as pd

    from .explainers import explained_examples, unavailable_reason

    why = unavailable_reason(task)
    info, parts = {}, [long_df]
    for m in cfg.explainers:
        if m == "raw":
            info[m] = "the task's attention (rows method='attention')"
        elif why is not None:
            info[m] = f"not scored: {why}"
        else:
            ex_examples = explained_examples(task, model, examples, m)
            rows, _ = analyse(ex_examples, scorer, cfg, model=model, task=task, baselines=False)
            parts.append(rows.assign(method=f"explainer:{m}"))
            info[m] = "scored"
    return pd.concat(parts, ignore_index=True), info


@contextmanager
def _feature_norms(model: torch.nn.Module, record: list):
    """Record max | ||x|| - 1 | of the query and key features entering every alignment function of an
    attnlens attention site (all-zero padded rows ignored), to check the unit-feature condition of
    the equivalence statement on the data actually analysed.

    The sites measure it themselves while a capture listens (``ProbeRecord.meta``
    ``feature_norm_deviation``, :func:`attnlens.models.attention.feature_norm_deviation`; SCAN's and
    RCAR's all-pairs paths included), so this is a capture over the block: no method of the model is
    replaced, and outside the block the sites compute nothing extra."""
    from ..capture import capture
    from ..models.attention import FEATURE_NORM_DEVIATION

    with capture(model, strict=False, keep_scores=False) as rec:
        yield
    try:
        record.extend(float(m.meta[FEATURE_NORM_DEVIATION]) for m in rec.maps
                      if m.meta.get(FEATURE_NORM_DEVIATION) is not None)
    finally:
        rec.close()


def _model_info(model: torch.nn.Module, norms: Sequence[float] = ()) -> dict:
    """Normalisations of the model's attention sites, whether the features entering the alignment
    functions were l2-normalised (measured; ``None`` when no site was seen) and the model's size."""
    sites = sorted({str(m.norm) for m in model.modules() if hasattr(m, "probe") and hasattr(m, "norm")})
    unit = (max(norms) < 1e-3) if norms else getattr(model, "unit_features", None)
    return {"norms": sites, "parameters": int(sum(p.numel() for p in model.parameters())),
            "unit_features": unit, "max_feature_norm_deviation": max(norms) if norms else None}


# ----------------------------------------------------------------------------- examples on disk
def save_examples(directory: Path, examples: Sequence[AnalysisExample]) -> None:
    """Write ``examples.json`` (text and boxes) and ``examples.npz`` (image and attention arrays)."""
    meta, arrays = [], {}
    for i, ex in enumerate(examples):
        att = ex.attention.weights.detach().float().cpu().numpy()
        if att.ndim != 2:
            raise CheckpointError(f"example {ex.example_id}: attention has dims {ex.attention.dims}, expected (word, region)")
        arrays[f"att{i}"] = att.astype(np.float32)
        arrays[f"img{i}"] = np.asarray(ex.image, dtype=np.uint8)
        meta.append({"example_id": ex.example_id, "tokens": list(ex.tokens),
                     "boxes": np.asarray(ex.regions.boxes, dtype=float).tolist(),
                     "image_size": list(ex.regions.image_size),
                     "region_valid": np.asarray(ex.region_valid, dtype=bool).tolist(), "output": float(ex.output),
                     "targets": [{"tokens": list(tg.tokens), "boxes": np.asarray(tg.boxes, dtype=float).reshape(-1, 4).tolist(),
                                  "label": tg.label, "head": int(tg.head)} for tg in ex.targets],
                     "meta": {k: v for k, v in dict(ex.meta).items() if isinstance(v, (str, int, float, bool))}})
    write_json(directory / "examples.json", meta)
    with atomic_path(directory / "examples.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def load_examples(directory: Path) -> list[dict]:
    """The saved examples of a unit as dicts with ``image`` and ``attention`` arrays added."""
    meta = json.loads((Path(directory) / "examples.json").read_text())
    with np.load(Path(directory) / "examples.npz", allow_pickle=False) as z:
        for i, m in enumerate(meta):
            m["attention"] = z[f"att{i}"]
            m["image"] = z[f"img{i}"]
    return meta
