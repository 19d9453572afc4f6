"""The report as a reader sees it (#17): table of contents, tables in their own scroll boxes, figure
file links, and a headless-Chromium check at 1280 x 800 and 390 x 844 (no sideways page scroll, no
console errors, screenshots kept)."""
from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attnlens.io import UnsafePathError

sys.path.insert(0, str(Path(__file__).parent))
from browser import layout, needs_chromium, open_page  # noqa: E402

from attnlens.report import ReportFigure, ReportInput, render_html, write_report  # noqa: E402

METRICS = ["pointing_game", "top1_region_hit", "relevance_mass_accuracy", "relevance_rank_accuracy",
           "mask_auroc", "box_accuracy", "energy_pointing_game", "iou_at_0.5"]
ALIGNS = ["dot", "scaled_dot", "general", "additive", "cosine", "a_very_long_alignment_function_name_without_breaks"]


def demo_metrics() -> pd.DataFrame:
    """A demo-sized summary: 2 tasks, 6 alignments, 8 grounding + 4 faithfulness metrics, 3 seeds."""
    rng = np.random.default_rng(0)
    rows = []
    for task in ("matching", "vqa"):
        for cat, names in (("grounding", METRICS), ("faithfulness", [f"deletion_auc_{o}" for o in
                                                                        ("morf", "lerf", "random", "gap")])):
            for i, m in enumerate(names):
                for j, a in enumerate(ALIGNS):
                    mean = float(rng.random())
                    rows.append({"task": task, "alignment": a, "metric": m, "category": cat, "mean": mean,
                                 "ci_low": mean - 0.05, "ci_high": mean + 0.05, "n": 200, "n_excluded": 0,
                                 "higher_is_better": True, "rank": float(j + 1), "is_best": j == 0,
                                 "significant": j > 2, "p_holm": 0.01, "effect_size": -0.4, "n_seeds": 3,
                                 "seeds": "0,1,2", "seed_sd": 0.02, "seed_min": mean - 0.03,
                                 "seed_max": mean + 0.03, "within_seed_noise": j == 1})
    return pd.DataFrame(rows)


def _figure(path: Path, width_in: float = 14.0):
    from matplotlib.figure import Figure

    from attnlens.render.export import save_figure

    fig = Figure(figsize=(width_in, 2.5), dpi=100)
    ax = fig.subplots()
    ax.plot(np.linspace(0, 1, 50), np.linspace(0, 1, 50) ** 2)
    ax.set_title("a wide figure")
    for suffix in (".png", ".svg", ".pdf"):
        save_figure(fig, path.with_suffix(suffix))


def demo_report(out: Path) -> Path:
    (out / "figures").mkdir(parents=True, exist_ok=True)
    _figure(out / "figures" / "matching_curves.png")
    _figure(out / "figures" / "vqa_grid.png", 4.0)
    (out / "figures" / "vqa_grid.pdf").unlink()  # only the files that exist are linked
    inp = ReportInput(
        title="attnlens study (demo)",
        figures=[ReportFigure("figures/matching_curves.png", "curves " + "x" * 300, "matching", "curves"),
                 ReportFigure("figures/vqa_grid.png", "grid", "vqa", "grid")],
        explorers={"matching": "explorer/matching.html"},
        provenance={"git": "0123456789abcdef" * 8, "config": {"alignments": ALIGNS, "path": "/" + "a" * 200}},
        notes=["a note " + "y" * 250], summary=["Preset demo: 2 tasks x 6 alignment functions x 3 seeds."])
    return write_report(out, demo_metrics(), inp)["html"]


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.hrefs = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "a" and a.get("href", "").startswith("#"):
            self.hrefs.append(a["href"][1:])


def test_toc_links_every_section_and_ids_are_unique(tmp_path):
    page = demo_report(tmp_path).read_text()
    p = _Ids()
    p.feed(page)
    assert len(p.ids) == len(set(p.ids))
    assert p.hrefs and set(p.hrefs) <= set(p.ids)  # every contents entry has its target
    for want in ("task-matching", "task-vqa", "matching-grounding", "vqa-faithfulness", "provenance"):
        assert want in p.hrefs, want
    assert page.index('<nav class="toc"') < page.index('id="task-matching"')


def test_every_table_is_in_its_own_scroll_box_with_a_sticky_first_column(tmp_path):
    page = demo_report(tmp_path).read_text()
    body = page.split("<body>", 1)[1]
    tables = re.findall(r"<table[ >]", body)
    wrapped = re.findall(r'<div class="table-wrap"[^>]*><table', body)
    kv = re.findall(r'<table class="kv">', body)  # key/value provenance: wraps its text instead
    assert len(tables) == len(wrapped) + len(kv) and len(wrapped) == 2 * (1 + 2)  # ranking + 2 categories, 2 tasks
    css = page.split("<style>", 1)[1].split("</style>", 1)[0]
    assert re.search(r"\.table-wrap \{[^}]*overflow-x: auto", css)
    assert re.search(r"tr > :first-child \{[^}]*position: sticky; left: 0", css)


def test_figures_link_their_files(tmp_path):
    page = demo_report(tmp_path).read_text()
    assert '<a href="figures/matching_curves.png">PNG</a><a href="figures/matching_curves.svg">SVG</a>' \
           '<a href="figures/matching_curves.pdf">PDF</a>' in page
    assert '<a href="figures/vqa_grid.svg">SVG</a>' in page and "vqa_grid.pdf" not in page
    # a figure path outside the run folder is never embedded nor linked: a typed error names it
    out = tmp_path / "other"
    (out / "figures").mkdir(parents=True)
    _figure(out / "figures" / "f.png", 2.0)
    outside = str((out / "figures" / "f.png").resolve())
    with pytest.raises(UnsafePathError, match="figure path"):
        render_html(demo_metrics().head(3), ReportInput(figures=[ReportFigure(outside, "abs", "matching")]),
                    base_dir=tmp_path / "run")


def test_file_names_in_links_are_escaped(tmp_path):
    (tmp_path / "figures").mkdir()
    name = 'figures/a"b<i>&.png'
    _figure(tmp_path / name, 2.0)
    page = render_html(demo_metrics().head(3), ReportInput(figures=[ReportFigure(name, "<b>x</b>", "matching")]),
                       base_dir=tmp_path)
    assert "<i>" not in page and "<b>x</b>" not in page
    assert 'href="figures/a%22b%3Ci%3E%26.png"' in page


@pytest.mark.browser
@needs_chromium
@pytest.mark.parametrize("width,height", [(1280, 800), (390, 844)])
def test_report_fits_the_window_in_chromium(tmp_path, width, height):
    page = demo_report(tmp_path / "run")
    m = layout(page, tmp_path, width=width, height=height)
    assert m["innerWidth"] == width, m  # the window really is that wide
    assert m["scrollWidth"] == m["clientWidth"] == width, m  # no sideways scroll of the page itself
    assert m["bad"] == [], m  # nothing sticks out of the page outside a scroll box
    assert m["tables"] == 6
    if width < 600:
        assert m["scrolling"] >= 4, m  # the wide tables scroll inside their own boxes
    shot = tmp_path / f"report_{width}x{height}.png"
    dom, consoles, rc = open_page(page.as_uri(), tmp_path, width=width, height=height, shot=shot)
    assert rc == 0 and consoles == [], consoles
    assert "</html>" in dom
    import cv2

    pixels = cv2.imread(str(shot))
    assert pixels is not None and pixels.shape[:2] == (height, width) and pixels.std() > 10
    print(f"screenshot: {shot}")


def test_markdown_links_the_figure_files(tmp_path):
    md = (demo_report(tmp_path).parent / "report.md").read_text()
    assert "([PNG](figures/matching_curves.png) · [SVG](figures/matching_curves.svg) · " \
           "[PDF](figures/matching_curves.pdf))" in md


def test_figures_open_full_size_when_clicked(tmp_path):
    page = demo_report(tmp_path).read_text()
    assert re.search(r'<a class="full" href="figures/matching_curves.png"><img src="data:image/png;base64,', page)
