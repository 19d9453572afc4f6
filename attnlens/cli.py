"""The ``attnlens`` command line: ``study``, ``train``, ``capture``, ``evaluate``, ``render``, ``report``.

Exit codes: 0 success, 1 user error (bad name, missing file, bad data: one line on stderr, the
traceback only with ``--debug``), 2 usage error (unknown option, missing argument), 130 interrupted.

>>> main(["--help"])  # doctest: +ELLIPSIS
Usage: attnlens [OPTIONS] COMMAND [ARGS]...
...
0
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import click

from .errors import AttnlensError

__all__ = ["cli", "main"]

USER_ERRORS = (AttnlensError, ValueError, KeyError, OSError, TypeError)


def _check_checkpoints_option(value: str) -> None:
    """``--checkpoints``: 'assets', 'none' or an existing directory (a typo must not silently mean 'train')."""
    if value.lower() in ("assets", "none"):
        return
    path = Path(value)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise click.BadParameter(f"{value!r} {what} (use 'assets', 'none' or an existing directory)",
                                 param_hint="--checkpoints")


def _config_option(text: str) -> dict:
    """``--config``: a JSON object, or the path of a file holding one (``cfg.json``)."""
    import json

    source = "--config"
    stripped = text.strip()
    if not stripped.startswith("{"):
        path = Path(text)
        if path.suffix.lower() == ".json" or path.exists():
            if not path.is_file():
                raise click.BadParameter(f"config file {text!r} does not exist", param_hint="--config")
            try:
                stripped = path.read_text(encoding="utf-8-sig")
            except UnicodeDecodeError as exc:
                raise click.BadParameter(f"{path}: not UTF-8 text ({exc.reason})", param_hint="--config") from None
            source = str(path)
    try:
        overrides = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{'' if source == '--config' else source + ': '}not valid JSON ({exc})",
                                 param_hint="--config") from None
    if not isinstance(overrides, dict):
        raise click.BadParameter(f"{'' if source == '--config' else source + ': '}must be a JSON object",
                                 param_hint="--config")
    return overrides


def _read_metrics(path: Path):
    """A metrics CSV as a DataFrame; unreadable files raise FormatError naming the file."""
    import pandas as pd

    from .errors import FormatError

    try:
        return pd.read_csv(path)
    except UnicodeDecodeError as exc:
        raise FormatError(f"not a UTF-8 CSV file ({exc.reason} at byte {exc.start})", path=path) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as exc:
        raise FormatError(f"not a readable CSV table ({_one_line(exc)})", path=path) from None


def _split(values: Sequence[str]) -> list[str] | None:
    """``--tasks a,b --tasks c`` -> ``["a", "b", "c"]``; nothing -> ``None``."""
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return out or None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="attnlens", prog_name="attnlens")
def cli(debug: bool) -> None:
    """attnlens: understand the region-word attention of vision-and-language models.

    Start with `attnlens study --preset demo --out runs/demo`, then open runs/demo/report.html.
    """


@cli.command()
@click.option("--preset", type=click.Choice(["quick", "demo", "full"]), default="demo", show_default=True,
              help="Study size: quick (tests, ~1 min), demo (README, <= 10 min), full.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory [default: runs/<preset>].")
@click.option("--tasks", multiple=True, help="Tasks to run (comma-separated or repeated) [default: the preset's].")
@click.option("--alignments", multiple=True, help="Alignment functions (comma-separated or repeated).")
@click.option("--seeds", type=click.IntRange(min=1), default=None, help="Number of training seeds (0..N-1).")
@click.option("--n-examples", type=click.IntRange(min=2), default=None, help="Test examples per unit.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--checkpoints", default="assets", show_default=True,
              help="Where shipped checkpoints are looked up: 'assets', a directory, or 'none' to train.")
@click.option("--no-resume", is_flag=True, help="Recompute every unit instead of reusing finished ones.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Run the units here one after another, or as Ray tasks (pip install ray).")
@click.option("--address", default=None, help="Ray cluster to join (--engine ray) [default: start a local one].")
@click.option("--shard-size", type=click.IntRange(min=1), default=None,
              help="Compute each unit's examples and metric rows in shards of this many examples, saved as "
                   "they finish (same numbers; an interrupted unit resumes from its last shard).")
@click.option("--explainers", multiple=True,
              help="Explanation methods (attnlens.explain) scored next to the attention, comma-separated or "
                   "repeated, e.g. raw,rollout,gradient_weighted; rows labelled <alignment>+<method>.")
def study(preset, out, tasks, alignments, seeds, n_examples, device, checkpoints, no_resume, quiet, engine,
          address, shard_size, explainers):
    """Compare alignment functions end to end and write report.html, report.md and metrics.csv."""
    from .study import run_study

    _check_checkpoints_option(checkpoints)
    out = out or Path("runs") / preset
    kw = {} if n_examples is None else {"n_examples": n_examples}
    if shard_size is not None:
        kw["shard_size"] = shard_size
    if _split(explainers):
        kw["explainers"] = tuple(_split(explainers))
    res = run_study(out, preset=preset, tasks=_split(tasks), alignments=_split(alignments), seeds=seeds,
                    device=device, checkpoints=None if checkpoints.lower() == "none" else checkpoints,
                    resume=not no_resume, progress=not quiet, engine=engine, address=address, **kw)
    click.echo(f"{len(res.ran)} unit(s) run, {len(res.reused)} reused")
    click.echo(f"report: {res.report_html}")
    click.echo(f"        {res.report_md}")
    click.echo(f"metrics: {res.metrics_csv}")


@cli.command()
@click.option("--task", required=True, help="Task name (matching, vqa, generation).")
@click.option("--alignment", required=True, help="Alignment function (see attnlens.align.available()).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/checkpoints"),
              show_default=True, help="Parent directory of the run directory.")
@click.option("--preset", type=click.Choice(["quick", "demo", "full"]), default="demo", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--config", "config_json", default=None,
              help='JSON object of config overrides, e.g. \'{"dataset": "easy_vqa"}\' for VQA on easy-VQA, or '
                   'the path of a .json file holding one.')
@click.option("--no-resume", is_flag=True, help="Start over instead of resuming an interrupted run.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(task, alignment, seed, out, preset, device, config_json, no_resume, quiet):
    """Train one task model with one alignment function (seeded, resumable); prints its test numbers."""
    import json

    from . import train as _train

    overrides = _config_option(config_json) if config_json else None
    from .tasks.training import run as train_run

    path = train_run(task, alignment=alignment, seed=seed, out_dir=out, preset=preset, device=device,
                     config=overrides, progress=not quiet, resume=not no_resume)
    from .train.checkpoint import STATE_FILE

    history = _train.read_state(path).get("history") if (Path(path) / STATE_FILE).exists() else None
    if history:  # the built-in tasks record their test numbers after the last epoch
        shown = {k: round(float(v), 2) for k, v in history[-1].items() if k not in ("epoch", "loss", "seconds")}
        click.echo(f"test: {json.dumps(shown)}")
    click.echo(f"checkpoint: {path}")


@cli.command()
@click.option("--task", required=True, help="Task whose model the checkpoint holds.")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True)
@click.option("--n-examples", "--n", "n_examples", type=click.IntRange(min=1), default=None,
              help="Number of examples to capture, from the first [default: the whole split].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for the saved maps (examples.json + examples.npz) and metric rows.")
@click.option("--preset", type=click.Choice(["quick", "demo", "full"]), default="demo", show_default=True,
              help="The study preset's metric settings (and the task config, where the checkpoint has no config.json).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--metrics/--no-metrics", default=False, show_default=True,
              help="Also compute the per-example metric rows (long.csv) and mean curves (curves.csv).")
@click.option("--engine", type=click.Choice(["local", "process", "ray"]), default="local", show_default=True,
              help="Run the shards here one after another, in a local process pool, or as Ray tasks (pip install ray).")
@click.option("--shard-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Examples per shard; finished shards are kept, so a rerun after an interruption resumes.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Processes of the pool / CPUs of a local Ray instance.")
@click.option("--address", default=None, help="Ray cluster to join (--engine ray) [default: start a local one].")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def capture(task, checkpoint, split, n_examples, out, preset, device, metrics, engine, shard_size, workers, address,
            quiet):
    """Run a checkpoint on a data split and save its word x region attention maps (and metric rows)."""
    from .study.dataset import capture_dataset
    from .study.config import study_config
    from .study.units import resolve_device
    from .tasks import get_task

    from .train.checkpoint import CONFIG_FILE, read_json

    t = get_task(task)
    config = t.default_config(preset)
    if (checkpoint / CONFIG_FILE).exists():  # the data the model was trained on (e.g. VQA on easy-VQA)
        config = {**config, **read_json(checkpoint / CONFIG_FILE, kind=dict)}
    rec = capture_dataset(task, checkpoint, out, split=split, n=n_examples, config=config,
                          metrics=metrics, settings=study_config(preset), shard_size=shard_size, engine=engine,
                          workers=workers, address=address, device=resolve_device(device), progress=not quiet)
    what = f"{rec['n_examples']} map(s){' and their metric rows' if metrics else ''}"
    if rec.get("already_done"):
        click.echo(f"{what} already complete in {out} (nothing recomputed)")
    else:
        click.echo(f"{what} saved to {out} ({rec['n_shards']} shard(s), {rec['reused_shards']} reused)")


@cli.command()
@click.option("--model", "model_ref", required=True,
              help="A saved transformers model folder (config.json), a SCAN checkpoint file, or module:function "
                   "returning a model or (model, spec).")
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path),
              help="Dataset folder: Flickr30K Entities, COCO, SCAN layout, RefCOCO or VQA grounding.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output directory (report.html, report.md, metrics.csv, figures, explorer).")
@click.option("--spec", default=None, help="Model spec (attnlens.evaluate.available_specs()) [default: from the model].")
@click.option("--format", "fmt", default="auto", show_default=True, help="Dataset format (auto-detected).")
@click.option("--split", default=None, help="Split file / SCAN-layout split.")
@click.option("--vocab", default=None, help="SCAN vocabulary JSON (with a SCAN checkpoint).")
@click.option("--explainers", multiple=True, help="Explainers, comma-separated or repeated; options after a colon "
              "(raw:layer=0) [default: raw].")
@click.option("--n-examples", "--n", "n_examples", type=click.IntRange(min=2), default=None, help="First N items.")
@click.option("--removal", type=click.Choice(["mask", "zero", "mean"]), default="mask", show_default=True)
@click.option("--engine", type=click.Choice(["local", "process", "ray"]), default="local", show_default=True)
@click.option("--shard-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Examples per shard; finished shards are kept, so a rerun after an interruption resumes.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--address", default=None, help="Ray cluster to join (--engine ray).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def evaluate(model_ref, data, out, spec, fmt, split, vocab, explainers, n_examples, removal, engine, shard_size,
             workers, address, quiet):
    """Score a model on a grounded dataset and write the study's report (report.html, metrics.csv)."""
    from .evaluate import evaluate as run_evaluate, load_data
    from .evaluate.cli_load import load_model

    model, model_spec = load_model(model_ref, spec, vocab)
    if model_spec is None:
        raise click.BadParameter("the model comes without a spec: pass --spec", param_hint="--spec")
    items = load_data(data, fmt, split=split, limit=n_examples)
    res = run_evaluate(model, items, spec=model_spec, explainers=tuple(_split(explainers) or ("raw",)), out=out,
                       settings={"removal": removal}, shard_size=shard_size, engine=engine, workers=workers,
                       address=address, progress=not quiet)
    click.echo(f"{len(items)} item(s), explainers: {', '.join(r['explainer'] for r in res.records)}")
    click.echo(f"report: {res.report_html}")
    click.echo(f"metrics: {res.metrics_csv}")


@cli.command()
@click.argument("maps", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--limit", type=click.IntRange(min=1), default=8, show_default=True, help="Examples to draw.")
@click.option("--format", "fmt", type=click.Choice(["png", "svg", "pdf"]), default="png", show_default=True)
@click.option("--dpi", type=click.FloatRange(min=10, max=2400), default=300, show_default=True,
              help="Resolution of PNG files (and of the images inside SVG/PDF files).")
@click.option("--width", default="column", show_default=True,
              help="Figure width in inches: 'column' (3.3), 'page' (6.9) or a number.")
@click.option("--words/--no-words", default=True, show_default=True,
              help="Also draw one panel per word of each caption (<example>_words.<format>).")
def render(maps, out, limit, fmt, dpi, width, words):
    """Draw saved maps (from `attnlens capture` or a study unit) as publication figures (fonts embedded,
    sizes in inches) and an explorer page."""
    from tqdm.auto import tqdm

    from .render.export import export, paper_width
    from .study.figures import words_figure
    from .study.figures import grid_figure, write_explorer
    from .study.units import load_examples

    from .errors import AttnlensError, FormatError

    try:
        examples = load_examples(maps)[:limit]
    except AttnlensError:
        raise
    except (ValueError, KeyError, TypeError, OSError, EOFError) as exc:   # e.g. JSON or .npz of another kind
        raise FormatError(f"not saved maps (examples.json + examples.npz from `attnlens capture`): "
                          f"{type(exc).__name__}: {_one_line(exc)}", path=maps) from None
    except Exception as exc:   # zipfile.BadZipFile, pickle errors ... from a file of another kind
        raise FormatError(f"not saved maps (examples.json + examples.npz from `attnlens capture`): "
                          f"{type(exc).__name__}: {_one_line(exc)}", path=maps) from None
    if not examples:
        raise click.ClickException(f"no maps in {maps}")
    name = "maps"
    per = {name: {e["example_id"]: e for e in examples}}
    width = _paper_width_option(width)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for e in tqdm(examples, desc="render", leave=False):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in e["example_id"])
        export(grid_figure(per, e["example_id"], [name]), out / f"{safe}.{fmt}", dpi=dpi, width=width)
        n += 1
        if words:
            export(words_figure(e), out / f"{safe}_words.{fmt}", dpi=dpi, width=width)
            n += 1
    write_explorer(per, examples[0]["example_id"], [name], out / "explorer.html")
    click.echo(f"{n} figure(s) ({fmt}, {paper_width(width):g} in wide) and explorer.html written to {out}")


def _paper_width_option(width: str):
    """``--width``: 'column', 'page' or a number of inches (a usage error otherwise)."""
    from .render.export import paper_width

    try:
        value = float(width)
    except ValueError:
        value = width
    try:
        paper_width(value)
    except (ValueError, TypeError, KeyError) as exc:
        raise click.BadParameter(str(exc.args[0] if exc.args else exc), param_hint="--width") from None
    return value


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--metrics", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A metrics table (CSV with task, alignment, metric, mean, ...) [default: RUN_DIR/metrics.csv].")
def report(run_dir, metrics):
    """Rebuild report.html and report.md from saved metrics (no model is run)."""
    from .report import write_report

    if metrics is None and (run_dir / "metrics.csv").is_file():
        metrics = run_dir / "metrics.csv"
    df = _read_metrics(metrics) if metrics is not None else None
    paths = write_report(run_dir, df)
    click.echo(f"report: {paths['html']}\n        {paths['md']}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attnlens`` script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        rv = cli.main(args=argv, prog_name="attnlens", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("attnlens: interrupted", err=True)
        return 130
    except click.ClickException as exc:  # usage errors (2) and user-facing errors (1)
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("attnlens: interrupted", err=True)
        return 130
    except USER_ERRORS as exc:
        if debug:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        click.echo(f"attnlens: error: {_one_line(msg)}", err=True)
        return 1
    except Exception as exc:  # a failure deep inside a dependency: still one line, not a traceback
        if debug:
            raise
        click.echo(f"attnlens: error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for the "
                   f"traceback)", err=True)
        return 1
    return rv if isinstance(rv, int) else 0


def _one_line(msg) -> str:
    """The message on one line (multi-line errors from dependencies are joined)."""
    return " ".join(str(msg).split()) or repr(msg)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
