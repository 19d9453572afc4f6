"""Report rendering: escaping, self-containment, numbers from the table, headless Chromium."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from attnlens.io import save_dataframe, write_text
from attnlens.report import ReportFigure, ReportInput, format_cell, ranking_table, render_html, render_markdown, write_report

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def _metrics():
    rows = []
    for a, mean, best, sig in (("dot", 0.8, True, False), ("cosine", 0.79, False, False), (EVIL, 0.3, False, True)):
        rows.append({"task": "matching", "alignment": a, "metric": "pointing_game", "category": "grounding",
                     "mean": mean, "ci_low": mean - 0.05, "ci_high": mean + 0.05, "n": 20, "n_excluded": 1,
                     "higher_is_better": True, "rank": 1.0 if best else (2.0 if not sig else 3.0), "is_best": best,
                     "significant": sig, "p_holm": 0.01 if sig else 0.5, "effect_size": -0.5,
                     "equivalent_group": "dot=cosine" if a in ("dot", "cosine") else "",
                     "equivalent_to_best": a == "cosine"})
    return pd.DataFrame(rows)


def _png(path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1], [0, 1])
    fig.savefig(path, format="png")


def test_html_escapes_everything(tmp_path):
    (tmp_path / "figures").mkdir()
    name = "figures/a&b.png"
    _png(tmp_path / name)
    inp = ReportInput(title=EVIL, figures=[ReportFigure(name, caption=EVIL, task="matching")],
                      explorers={"matching": 'x"><script>alert(2)</script>.html'}, provenance={"k": EVIL},
                      notes=[EVIL], equivalences={"matching": {"groups": [["dot", "cosine"]], "norm": "clipped_l2norm"}})
    page = render_html(_metrics(), inp, base_dir=tmp_path)
    assert "<script" not in page.lower() and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    assert "<img src=x" not in page
    assert "&lt;script&gt;" in page
    assert "data:image/png;base64," in page  # embedded, not linked
    assert "http://" not in page and "https://" not in page
    md = render_markdown(_metrics(), inp)
    outside_code = md.split("```json")[0]  # inside a fenced code block raw text is inert
    assert "<script" not in outside_code and "&lt;script&gt;" in outside_code


def test_markdown_cells_and_marks():
    md = render_markdown(_metrics(), ReportInput())
    assert "| dot (≡ dot=cosine) | **0.800 [0.750, 0.850]** ▲ |" in md
    assert "| cosine (≡ dot=cosine) | 0.790 [0.740, 0.840] ≡ |" in md
    assert "0.300 [0.250, 0.350] *" in md
    r = ranking_table(_metrics(), "matching")
    assert r["alignment"].tolist()[0] == "dot" and r["n_best"].tolist()[0] == 1


def test_format_cell_nan_ci():
    assert format_cell({"mean": 0.5, "ci_low": np.nan, "ci_high": np.nan}) == "0.500"


def test_write_report_from_disk(tmp_path):
    save_dataframe(_metrics(), tmp_path / "metrics.csv")
    paths = write_report(tmp_path)
    assert paths["html"].exists() and paths["md"].exists()
    assert "0.790 [0.740, 0.840]" in paths["html"].read_text()


def test_missing_columns_error(tmp_path):
    from attnlens.errors import FormatError

    with pytest.raises(FormatError, match="mean"):
        render_markdown(pd.DataFrame({"task": ["t"], "alignment": ["a"], "metric": ["m"]}), ReportInput())


def chromium_console_errors(html_path, tmp_path) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium not installed")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'prof'}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000", "--dump-dom", html_path.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "</html>" in r.stdout or "</body>" in r.stdout
    return "\n".join(ln for ln in r.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln)


@pytest.mark.browser
def test_report_opens_in_chromium(tmp_path):
    (tmp_path / "figures").mkdir()
    _png(tmp_path / "figures" / "f.png")
    write_report(tmp_path, _metrics(), ReportInput(figures=[ReportFigure("figures/f.png", "a figure", "matching")]))
    errors = chromium_console_errors(tmp_path / "report.html", tmp_path)
    assert errors == ""


@pytest.mark.browser
def test_chromium_check_detects_errors(tmp_path):
    bad = tmp_path / "bad.html"
    write_text(bad, "<html><body><script>undefinedFn()</script></body></html>")
    assert "undefinedFn" in chromium_console_errors(bad, tmp_path)
