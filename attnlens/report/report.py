"""The study report: one self-contained HTML page and a Markdown twin, built from saved results.

Inputs are plain data, so a report can be rebuilt from disk without rerunning anything:

* ``metrics``: the summary table (``metrics.csv``), one row per task x alignment x metric with at
  least the columns ``task, alignment, metric, mean``; optional ``category, ci_low, ci_high, n,
  n_excluded, higher_is_better, is_best, significant, p_holm, effect_size, equivalent_group,
  equivalent_to_best`` and the between-seed columns ``n_seeds, seed_sd, seed_min, seed_max,
  within_seed_noise`` (:mod:`attnlens.study.analysis`).
* :class:`ReportInput`: figures (paths relative to the output directory, embedded in the HTML as
  base64 PNG), equivalence statements per task, links to the interactive explorers, provenance.

Everything that reaches HTML (captions, names, tokens, file names, provenance values) goes
through :func:`html.escape`; the page has no script and loads nothing from the network.

Layout (read at 1280 px and on a 390 px phone): a table of contents after the title; every table
sits in its own horizontally scrolling box whose first column (the alignment function) stays in
place, so the page itself never scrolls sideways; figures scale to the page width and link to
their PNG/SVG/PDF files (the files beside the figure's path with the same name).

Seeds: with two or more training seeds per alignment function, every cell also shows the range of
the per-seed means and their standard deviation, and ``~`` marks a difference from the best that
lies within seed noise (per-seed ranges overlap); with one seed the report says that the seed
spread was not measured (:func:`seed_note`).
"""
from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Template
from typing import Any, Mapping
from urllib.parse import quote

import pandas as pd

from .layout import Toc, md_links, with_links, wrap_table
from ..errors import FormatError
from ..io import confine, write_text

__all__ = ["ReportFigure", "ReportInput", "render_html", "render_markdown", "write_report", "load_report_input",
           "format_cell", "format_seed_spread", "seed_counts", "seed_note", "metric_table", "ranking_table",
           "REQUIRED_COLUMNS"]

REQUIRED_COLUMNS = ("task", "alignment", "metric", "mean")
CATEGORY_ORDER = ("task", "grounding", "baseline", "faithfulness", "agreement")
_TEMPLATE = Path(__file__).parent / "templates" / "report.html"


@dataclass
class ReportFigure:
    """A static figure of the report.

    Attributes:
        path: PNG/SVG path relative to the report's directory (or absolute).
        caption: plain text (escaped when rendered).
        task: the task the figure belongs to, or ``None`` for a study-wide figure.
        kind: ``"gallery"``, ``"curves"``, ``"grid"`` or any other label.
    """

    path: str
    caption: str = ""
    task: str | None = None
    kind: str = "figure"


@dataclass
class ReportInput:
    """Everything in the report besides the metric table (saved as ``report_input.json``).

    Attributes:
        title: page title.
        figures: static figures, in display order.
        equivalences: per task ``{"groups": [[names]], "norm": str, "unit_features": bool,
            "max_abs_diff": {"a=b": float}}``.
        explorers: per task, the path of its interactive explorer (relative to the report).
        provenance: versions, seeds, config, git commit, timings (nested plain data).
        notes: extra paragraphs (plain text).
        summary: plain-text lines shown at the top.
    """

    title: str = "attnlens study"
    figures: list[ReportFigure] = field(default_factory=list)
    equivalences: dict[str, dict] = field(default_factory=dict)
    explorers: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ReportInput":
        data = dict(data)
        data["figures"] = [ReportFigure(**f) for f in data.get("figures", [])]
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def load_report_input(path: str | Path) -> ReportInput:
    """Read a ``report_input.json`` file."""
    path = Path(path)
    try:
        return ReportInput.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise FormatError(f"not a report input file ({exc})", path=path) from exc


# ----------------------------------------------------------------------------- tables
def _check(metrics: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in metrics.columns]
    if missing:
        raise FormatError(f"metrics table lacks columns {missing}; it has {list(metrics.columns)}")
    m = metrics.copy()
    if "subset" in m.columns:  # the tables show the overall rows; per-subset rows stay in metrics.csv
        sub = m["subset"].fillna("all").astype(str)
        if (sub == "all").any():
            m = m[sub == "all"]
    if "category" not in m.columns:
        m["category"] = "metric"
    m["category"] = m["category"].fillna("metric").astype(str)
    return m


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _truthy(x) -> bool:
    if isinstance(x, str):
        return x.strip().lower() in ("true", "1", "yes")
    try:
        return bool(x) and not (isinstance(x, float) and math.isnan(x))
    except (TypeError, ValueError):
        return False


def format_cell(row: Mapping[str, Any], digits: int = 3) -> str:
    """``"mean [ci_low, ci_high]"`` (CI left out when absent), as plain text.

    >>> format_cell({"mean": 0.61234, "ci_low": 0.5, "ci_high": 0.7})
    '0.612 [0.500, 0.700]'
    >>> format_cell({"mean": float("nan")})
    'n/a'
    """
    mean = row.get("mean")
    if not _finite(mean):
        return "n/a"
    text = f"{float(mean):.{digits}f}"
    lo, hi = row.get("ci_low"), row.get("ci_high")
    if _finite(lo) and _finite(hi):
        text += f" [{float(lo):.{digits}f}, {float(hi):.{digits}f}]"
    return text


def _mark(row: Mapping[str, Any]) -> str:
    """The significance mark of one cell: best, equivalent to best, significantly different, or none."""
    if _truthy(row.get("is_best")):
        return "best"
    if _truthy(row.get("equivalent_to_best")):
        return "equiv"
    if _truthy(row.get("significant")):
        return "sig"
    return ""


def _n_seeds(row: Mapping[str, Any]) -> int:
    n = row.get("n_seeds")
    return int(float(n)) if _finite(n) else 0


def format_seed_spread(row: Mapping[str, Any], digits: int = 3) -> str:
    """``"seeds min–max, sd s"`` of a row measured on two or more seeds, else ``""`` (plain text).

    >>> format_seed_spread({"n_seeds": 2, "seed_sd": 0.14142, "seed_min": 0.4, "seed_max": 0.6})
    'seeds 0.400–0.600, sd 0.141'
    >>> format_seed_spread({"n_seeds": 1, "seed_sd": float("nan"), "seed_min": 0.4, "seed_max": 0.4})
    ''
    """
    if _n_seeds(row) < 2 or not (_finite(row.get("seed_min")) and _finite(row.get("seed_max"))):
        return ""
    text = f"seeds {float(row['seed_min']):.{digits}f}–{float(row['seed_max']):.{digits}f}"
    if _finite(row.get("seed_sd")):
        text += f", sd {float(row['seed_sd']):.{digits}f}"
    return text


def seed_counts(metrics: pd.DataFrame) -> list[int] | None:
    """The distinct numbers of training seeds behind the (non-baseline) rows (from the ``seeds``
    list, else from ``n_seeds``), or ``None`` when the table has no between-seed columns.

    >>> seed_counts(pd.DataFrame({"alignment": ["dot", "add"], "seeds": ["0,1", "0,1"], "n_seeds": [2, 0]}))
    [2]
    """
    m = metrics[~metrics["alignment"].astype(str).str.startswith("baseline:")]
    if "n_seeds" not in m.columns:  # a table from before the seed columns: nothing was measured
        return None
    listed = [len([x for x in str(v).split(",") if x.strip()]) for v in m["seeds"].dropna()] if "seeds" in m else []
    vals = [v for v in listed if v] or [int(v) for v in pd.to_numeric(m["n_seeds"], errors="coerce").dropna() if v > 0]
    return sorted(set(vals)) or None


def seed_note(metrics: pd.DataFrame) -> tuple[str, bool]:
    """The report's sentence on the between-seed spread and whether it was measured.

    >>> seed_note(pd.DataFrame({"alignment": ["dot"], "n_seeds": [1]}))[1]
    False
    """
    counts = seed_counts(metrics)
    if counts and max(counts) >= 2:
        k = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        return (f"Seed spread ({k} training seeds per alignment function): each cell also shows the range of "
                "the per-seed means and their standard deviation (ddof=1). ~ = within seed noise: the per-seed "
                "ranges of this function and the best one overlap, so some seed of this function scores at least "
                "as well as some seed of the best; such a difference, even when marked *, is no larger than "
                "retraining the same function with another seed (Wiegreffe & Pinter 2019) and is not established. "
                "Without ~, every seed of the best beats every seed of this function; if the two functions did not "
                "differ, that would happen by chance with probability 1/3 with 2 seeds each, 1/10 with 3, 1/35 "
                "with 4.", True)
    why = ("every alignment function was trained with one seed" if counts else
           "this metrics table carries no per-seed columns")
    return (f"Seed spread not measured: {why}, so the tables cannot tell a difference between alignment "
            "functions from a difference between training runs of the same function (Wiegreffe & Pinter 2019); "
            "* is significance over the examples only. Rerun with --seeds 3 (or more) to measure it.", False)


def metric_table(metrics: pd.DataFrame, task: str, category: str | None = None) -> pd.DataFrame:
    """The alignment x metric table of one task (cells are row dicts of the summary).

    Returns a DataFrame indexed by alignment with one column per metric whose values are the
    summary rows (dicts), in the summary's order.
    """
    m = _check(metrics)
    m = m[m["task"].astype(str) == str(task)]
    if category is not None:
        m = m[m["category"] == category]
    aligns = list(dict.fromkeys(m["alignment"].astype(str)))
    names = list(dict.fromkeys(m["metric"].astype(str)))
    table = pd.DataFrame(index=aligns, columns=names, dtype=object)
    for rec in m.to_dict("records"):
        table.at[str(rec["alignment"]), str(rec["metric"])] = rec
    return table


def ranking_table(metrics: pd.DataFrame, task: str) -> pd.DataFrame:
    """Per alignment: mean rank over the task's ranked metrics, #best, #not significantly worse,
    #metrics whose difference from the best is within seed noise (0 with one seed).

    Only rows with a known ``higher_is_better`` and a ``rank`` take part (task-performance and
    baseline rows are ranked too when the study ranked them).
    """
    m = _check(metrics)
    m = m[(m["task"].astype(str) == str(task))]
    cols = ["alignment", "mean_rank", "n_best", "n_not_worse", "n_within_seed_noise", "n_metrics"]
    if "rank" not in m.columns:
        return pd.DataFrame(columns=cols)
    m = m[m["rank"].map(_finite)]
    rows = []
    for a, g in m.groupby(m["alignment"].astype(str), sort=False):
        recs = g.to_dict("records")
        marks = [_mark(r) for r in recs]
        rows.append({"alignment": a, "mean_rank": float(g["rank"].astype(float).mean()),
                     "n_best": sum(k == "best" for k in marks),
                     "n_not_worse": sum(k != "sig" for k in marks),
                     "n_within_seed_noise": sum(_truthy(r.get("within_seed_noise")) for r in recs), "n_metrics": len(g)})
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(["mean_rank", "alignment"]).reset_index(drop=True)


def _tasks(metrics: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(_check(metrics)["task"].astype(str)))


def _categories(metrics: pd.DataFrame, task: str) -> list[str]:
    cats = list(dict.fromkeys(metrics.loc[metrics["task"].astype(str) == task, "category"]))
    return sorted(cats, key=lambda c: (CATEGORY_ORDER.index(c) if c in CATEGORY_ORDER else len(CATEGORY_ORDER), c))


def _equivalence_lines(eq: Mapping[str, Any] | None) -> list[str]:
    if not eq:
        return []
    groups = [g for g in eq.get("groups", []) if len(g) > 1]
    norm, unit = eq.get("norm", "?"), eq.get("unit_features", True)
    feats = {True: ", l2-normalised features (checked on the analysed inputs)",
             False: ", features not (all) l2-normalised, so cosine differs from dot",
             None: ", features of unknown norm (cosine not assumed equal to dot)"}
    cond = f"score normalisation {norm}" + feats[None if eq.get("assumed") else bool(unit)]
    if not groups:
        return [f"No two of the compared alignment functions are equivalent by construction under {cond}."]
    lines = []
    for g in groups:
        lines.append(f"{' = '.join(g)}: the same attention function under {cond}: with the same parameters they "
                     f"give the same attention. Models trained with them differ only by training noise "
                     f"(floating-point differences amplified by training), not by a property of the function; "
                     f"they are flagged with '≡' and never marked significantly different from each other.")
    for pair, d in (eq.get("max_abs_diff") or {}).items():
        if _finite(d):
            lines.append(f"Measured on the analysed examples of the trained models: max |difference of attention "
                         f"weights| {pair}: {float(d):.2e} (the size of that training noise here).")
    return lines


# ----------------------------------------------------------------------------- HTML
def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _img_data_uri(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    mime = {"png": "image/png", "svg": "image/svg+xml", "jpg": "image/jpeg", "jpeg": "image/jpeg"}.get(suffix)
    if mime is None:
        raise FormatError(f"figure format {suffix!r} cannot be embedded (use png, svg or jpg)", path=path)
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_table(metrics: pd.DataFrame, task: str, category: str) -> str:
    table = metric_table(metrics, task, category)
    head = "".join(f"<th>{_e(c)}</th>" for c in table.columns)
    body = []
    for align, row in table.iterrows():
        cells = []
        for rec in row.tolist():
            if not isinstance(rec, dict):
                cells.append("<td>–</td>")
                continue
            mark = _mark(rec)
            text = _e(format_cell(rec))
            sym = {"best": " ▲", "equiv": " ≡", "sig": " *"}.get(mark, "")
            noise = _truthy(rec.get("within_seed_noise"))
            if noise:
                sym += " ~"
            spread = format_seed_spread(rec)
            n = rec.get("n")
            extra = []
            if _finite(n):
                extra.append(f"n={int(float(n))}")
            if _finite(rec.get("n_excluded")) and float(rec["n_excluded"]) > 0:
                extra.append(f"excluded={int(float(rec['n_excluded']))}")
            if _finite(rec.get("p_holm")):
                extra.append(f"p_holm={float(rec['p_holm']):.3g}")
            if _finite(rec.get("effect_size")):
                extra.append(f"effect={float(rec['effect_size']):.3g}")
            if _finite(rec.get("diff_vs_best")):
                extra.append(f"diff vs best={float(rec['diff_vs_best']):.3g}")
            if _n_seeds(rec) >= 2:
                extra.append(f"n_seeds={_n_seeds(rec)}")
            title = f' title="{_e(", ".join(extra))}"' if extra else ""
            cls = " ".join(c for c in (mark, "noise" if noise else "") if c)
            small = f'<small class="seed">{_e(spread)}</small>' if spread else ""
            cells.append(f'<td class="{cls}"{title}>{text}{_e(sym)}{small}</td>')
        eqg = ""
        sub = metrics[(metrics["task"].astype(str) == task) & (metrics["alignment"].astype(str) == align)]
        if "equivalent_group" in sub.columns and len(sub):
            g = sub["equivalent_group"].iloc[0]
            if isinstance(g, str) and g:
                eqg = f" <small>(≡ {_e(g)})</small>"
        body.append(f'<tr><td class="name">{_e(align)}{eqg}</td>{"".join(cells)}</tr>')
    return wrap_table(f'<table><thead><tr><th class="name">alignment</th>{head}</tr></thead>'
                 f'<tbody>{"".join(body)}</tbody></table>', f"{task} {category}", hint=len(table.columns) > 1)


def _html_kv(d: Mapping[str, Any]) -> str:
    rows = "".join(f'<tr><td class="name">{_e(k)}</td><td class="name">{_e(v)}</td></tr>' for k, v in d.items())
    return f'<table class="kv">{rows}</table>'


def render_html(metrics: pd.DataFrame, inp: ReportInput, *, base_dir: str | Path = ".") -> str:
    """The report as one self-contained HTML string (figures embedded, no scripts, no network).

    >>> df = pd.DataFrame({"task": ["t"], "alignment": ["<b>dot</b>"], "metric": ["m"], "mean": [0.5]})
    >>> page = render_html(df, ReportInput(title="x"))
    >>> "<b>dot</b>" in page, "&lt;b&gt;dot&lt;/b&gt;" in page
    (False, True)
    """
    metrics = _check(metrics)
    base_dir = Path(base_dir)
    toc = Toc()
    parts = []
    for line in inp.summary:
        parts.append(f"<p>{_e(line)}</p>")
    parts.append('<p class="legend">Cells: mean [95% bootstrap CI]. ▲ best alignment function for the '
                 'metric; * significantly different from the best (Wilcoxon signed-rank, Holm-corrected over the '
                 'comparisons with the best, '
                 'p &lt; 0.05); ≡ mathematically equivalent to the best under the model\'s normalisation '
                 '(a difference would be noise). Hover a cell for n, exclusions, p and effect size.</p>')
    note, measured = seed_note(metrics)
    parts.append(f'<p class="{"legend" if measured else "note warn"}">{_e(note)}</p>')
    tasks = _tasks(metrics)
    for task in tasks:
        sid = toc.anchor(1, f"Task: {task}", f"task-{task}")
        parts.append(f'<h2 id="{_e(sid)}">Task: {_e(task)}</h2>')
        for line in _equivalence_lines(inp.equivalences.get(task)):
            parts.append(f'<div class="note">{_e(line)}</div>')
        ranking = ranking_table(metrics, task)
        if len(ranking):
            parts.append(f'<h3 id="{_e(toc.anchor(2, "Ranking summary", f"{task}-ranking"))}">Ranking summary</h3>')
            noise = (lambda r: f"<td>{r.n_within_seed_noise}/{r.n_metrics}</td>") if measured else (lambda r: "")
            rows = "".join(f'<tr><td class="name">{_e(r.alignment)}</td><td>{r.mean_rank:.2f}</td>'
                           f'<td>{r.n_best}</td><td>{r.n_not_worse}/{r.n_metrics}</td>{noise(r)}</tr>'
                           for r in ranking.itertuples())
            head = "<th>#within seed noise of the best</th>" if measured else ""
            parts.append(wrap_table('<table><thead><tr><th class="name">alignment</th><th>mean rank</th><th>#best</th>'
                               f'<th>#not significantly worse</th>{head}</tr></thead><tbody>{rows}</tbody></table>',
                               f"{task} ranking"))
        for cat in _categories(metrics, task):
            cid = toc.anchor(2, cat.capitalize(), f"{task}-{cat}")
            parts.append(f'<h3 id="{_e(cid)}">{_e(cat.capitalize())}</h3>')
            parts.append(_html_table(metrics, task, cat))
        if task in inp.explorers:
            href = quote(str(inp.explorers[task]), safe="/._-")
            parts.append(f'<p>Interactive explorer (opens offline): <a href="{_e(href)}">{_e(inp.explorers[task])}</a></p>')
        task_figs = [f for f in inp.figures if f.task == task]
        if task_figs:
            parts.append(f'<h3 id="{_e(toc.anchor(2, "Figures", f"{task}-figures"))}">Figures</h3>')
        for fig in task_figs:
            parts.append(with_links(_html_figure(fig, base_dir), fig, base_dir))
    others = [f for f in inp.figures if f.task is None or f.task not in tasks]
    if others:
        parts.append(f'<h2 id="{_e(toc.anchor(1, "Figures", "figures"))}">Figures</h2>')
        parts.extend(with_links(_html_figure(f, base_dir), f, base_dir) for f in others)
    if inp.notes:
        parts.append(f'<h2 id="{_e(toc.anchor(1, "Notes", "notes"))}">Notes</h2>')
    for note in inp.notes:
        parts.append(f'<div class="note">{_e(note)}</div>')
    if inp.provenance:
        parts.append(f'<h2 id="{_e(toc.anchor(1, "Provenance", "provenance"))}">Provenance</h2>')
        flat = {k: v for k, v in inp.provenance.items() if not isinstance(v, (dict, list))}
        if flat:
            parts.append(_html_kv(flat))
        nested = {k: v for k, v in inp.provenance.items() if isinstance(v, (dict, list))}
        if nested:
            parts.append(f"<pre>{_e(json.dumps(nested, indent=2, sort_keys=True, default=str))}</pre>")
    head = [f"<h1>{_e(inp.title)}</h1>"] + ([toc.html()] if toc.entries else [])
    return Template(_TEMPLATE.read_text()).substitute(title=_e(inp.title), body="\n".join(head + parts))


def _html_figure(fig: ReportFigure, base_dir: Path) -> str:
    # the path comes from a run file: only files inside the run directory are embedded
    path = confine(fig.path, base_dir, source=base_dir / "report_input.json", what="figure path")
    if not path.exists():
        return f'<p class="note warn">Figure missing: {_e(fig.path)}</p>'
    return (f'<figure><img src="{_img_data_uri(path)}" alt="{_e(fig.caption or fig.path)}">'
            f'<figcaption>{_e(fig.caption)} <small>({_e(fig.path)})</small></figcaption></figure>')


# ----------------------------------------------------------------------------- Markdown
def _md(x) -> str:
    """Escape text for Markdown: HTML-escape (renderers pass raw HTML through) and escape pipes."""
    return html.escape(str(x), quote=False).replace("|", "\\|").replace("\n", " ")


def render_markdown(metrics: pd.DataFrame, inp: ReportInput, *, base_dir: str | Path | None = None) -> str:
    """The report as Markdown (figures linked by relative path; with ``base_dir``, also their
    PNG/SVG/PDF files).

    >>> df = pd.DataFrame({"task": ["t"], "alignment": ["dot"], "metric": ["m"], "mean": [0.5],
    ...                    "ci_low": [0.4], "ci_high": [0.6]})
    >>> print(render_markdown(df, ReportInput(title="x")).splitlines()[-1])
    | dot | 0.500 [0.400, 0.600] |
    """
    metrics = _check(metrics)
    out = [f"# {_md(inp.title)}", ""]
    out += [_md(s) for s in inp.summary] + ([""] if inp.summary else [])
    out += ["Cells: mean [95% bootstrap CI]. **bold** ▲ = best; * = significantly different from the best "
            "(Wilcoxon, Holm-corrected p < 0.05); ≡ = mathematically equivalent to the best.", ""]
    note, measured = seed_note(metrics)
    out += [_md(note) if measured else f"> {_md(note)}", ""]
    for task in _tasks(metrics):
        out += [f"## Task: {_md(task)}", ""]
        for line in _equivalence_lines(inp.equivalences.get(task)):
            out += [f"> {_md(line)}", ""]
        ranking = ranking_table(metrics, task)
        if len(ranking):
            extra = " #within seed noise of the best |" if measured else ""
            out += ["### Ranking summary", "", "| alignment | mean rank | #best | #not significantly worse |" + extra,
                    "|---|---|---|---|" + ("---|" if measured else "")]
            out += [f"| {_md(r.alignment)} | {r.mean_rank:.2f} | {r.n_best} | {r.n_not_worse}/{r.n_metrics} |"
                    + (f" {r.n_within_seed_noise}/{r.n_metrics} |" if measured else "")
                    for r in ranking.itertuples()]
            out.append("")
        for cat in _categories(metrics, task):
            table = metric_table(metrics, task, cat)
            out += [f"### {_md(cat.capitalize())}", "",
                    "| alignment | " + " | ".join(_md(c) for c in table.columns) + " |",
                    "|---" * (len(table.columns) + 1) + "|"]
            for align, row in table.iterrows():
                cells = []
                for rec in row.tolist():
                    if not isinstance(rec, dict):
                        cells.append("–")
                        continue
                    text, mark = format_cell(rec), _mark(rec)
                    text = {"best": f"**{text}** ▲", "equiv": f"{text} ≡", "sig": f"{text} *"}.get(mark, text)
                    if _truthy(rec.get("within_seed_noise")):
                        text += " ~"
                    spread = format_seed_spread(rec)
                    cells.append(f"{text} · {spread}" if spread else text)
                group = next((r.get("equivalent_group") for r in row.tolist() if isinstance(r, dict)
                              and isinstance(r.get("equivalent_group"), str) and r.get("equivalent_group")), "")
                name = _md(align) + (f" (≡ {_md(group)})" if group else "")
                out.append(f"| {name} | " + " | ".join(cells) + " |")
            out.append("")
        if task in inp.explorers:
            out += [f"Interactive explorer: [{_md(inp.explorers[task])}]({quote(str(inp.explorers[task]), safe='/._-')})", ""]
        for fig in inp.figures:
            if fig.task == task:
                out += [f"![{_md(fig.caption)}]({quote(str(fig.path), safe='/._-')})", "", f"*{_md(fig.caption)}*{md_links(fig, base_dir)}", ""]
    others = [f for f in inp.figures if f.task is None or f.task not in _tasks(metrics)]
    if others:
        out += ["## Figures", ""]
        for fig in others:
            out += [f"![{_md(fig.caption)}]({quote(str(fig.path), safe='/._-')})", "", f"*{_md(fig.caption)}*{md_links(fig, base_dir)}", ""]
    for note in inp.notes:
        out += [f"> {_md(note)}", ""]
    if inp.provenance:
        out += ["## Provenance", "", "```json",
                json.dumps(inp.provenance, indent=2, sort_keys=True, default=str).replace("```", "'''"), "```", ""]
    return "\n".join(out).rstrip() + "\n"


def write_report(out_dir: str | Path, metrics: pd.DataFrame | None = None, inp: ReportInput | None = None) -> dict[str, Path]:
    """Write ``report.html`` and ``report.md`` into ``out_dir`` (atomically).

    With ``metrics``/``inp`` omitted they are read from ``out_dir/metrics.csv`` and
    ``out_dir/report_input.json`` (the latter optional), so a finished study's report can be
    rebuilt with ``attnlens report OUT``.
    """
    out_dir = Path(out_dir)
    if metrics is None:
        path = out_dir / "metrics.csv"
        if not path.exists():
            raise FormatError("no metrics.csv here; run `attnlens study` first or pass --metrics", path=path)
        metrics = pd.read_csv(path)
    if inp is None:
        p = out_dir / "report_input.json"
        inp = load_report_input(p) if p.exists() else ReportInput()
    html_path = write_text(out_dir / "report.html", render_html(metrics, inp, base_dir=out_dir))
    md_path = write_text(out_dir / "report.md", render_markdown(metrics, inp, base_dir=out_dir))
    return {"html": html_path, "md": md_path}
