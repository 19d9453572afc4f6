"""Every notebook runs headless (nbclient) in the default suite (about 30 s together on 2 cores)."""
from __future__ import annotations

from pathlib import Path

import pytest

NB = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name: str, timeout: int = 300):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NB / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs must be cleared"
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(NB)}}).execute()
    return nb


def warnings_in(nb) -> list[str]:
    """Warnings (and tqdm's "IProgress not found") a reader would see in the executed notebook."""
    out = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            text = o.get("text", "") if o.get("output_type") == "stream" else ""
            if o.get("name") == "stderr" or "IProgress" in text or "Warning" in text:
                out.append(text[:300])
    return out


@pytest.fixture(scope="module")
def quickstart():
    return run_notebook("01_quickstart.ipynb")


def test_quickstart(quickstart):
    nb = quickstart
    assert warnings_in(nb) == []
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "most attended region" in text
    assert "similarity of the pair" in text  # the trained, shipped matching model
    # figures reach the reader as pictures, not as "<Figure size ...>" text
    kinds = [set(o.get("data", {})) for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert sum("image/png" in k for k in kinds) >= 2


@pytest.mark.parametrize("name", ["02_compare_alignments.ipynb", "03_your_own_model.ipynb", "04_rcar_regulators.ipynb",
                                  "05_evaluate_your_model.ipynb", "06_capture_any_model.ipynb"])
def test_other_notebooks(name):
    nb = run_notebook(name, timeout=600)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    assert warnings_in(nb) == []
    texts = [str(o.get("data", {}).get("text/plain", "")) for c in nb.cells if c.cell_type == "code"
             for o in c.outputs if "image/png" not in o.get("data", {})]
    assert not any(t.startswith("<Figure size") for t in texts), "a figure was shown as text"


@pytest.mark.browser
def test_quickstart_attention_view_works_offline(quickstart, tmp_path):
    """The AttentionMap view shown in the executed notebook loads offline; a word click changes the map."""
    import html
    import re
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from browser import CHROMIUM, open_page

    if CHROMIUM is None:
        pytest.skip("chromium not installed")
    views = [o["data"]["text/html"] for c in quickstart.cells if c.cell_type == "code" for o in c.outputs
             if "attnlens-view" in str(o.get("data", {}).get("text/html", ""))]
    assert views, "the notebook shows an AttentionMap view"
    assert all("image/png" in o["data"] for c in quickstart.cells for o in c.get("outputs", [])
               if "attnlens-view" in str(o.get("data", {}).get("text/html", "")))  # static fallback alongside
    block = "".join(views[0]) if isinstance(views[0], list) else views[0]
    driver = """<script>(function () {
      var root = document.querySelector('.attnlens-view');
      function tick() {
        if (!root.getAttribute('data-attnlens-ready')) { setTimeout(tick, 20); return; }
        var c = root.querySelector('canvas.al-canvas'), before = c ? c.toDataURL() : '';
        var first = root.getAttribute('data-attnlens-state'), b = root.querySelectorAll('.al-words button');
        b[b.length - 1].click();
        root.setAttribute('data-test', first + '|' + root.getAttribute('data-attnlens-state') + '|' +
                          (c ? String(c.toDataURL() !== before) : 'bars'));
      }
      tick(); })();</script>"""
    page = tmp_path / "view.html"
    page.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{block}{driver}</body></html>")
    dom, consoles, rc = open_page(page.as_uri(), tmp_path, width=800, height=700, shot=tmp_path / "nb_view.png")
    assert rc == 0 and consoles == [], consoles
    first, after, changed = html.unescape(re.search(r'data-test="([^"]*)"', dom).group(1)).split("|")
    assert first.endswith(",0") and after != first and changed in ("true", "bars")


def test_readme_python_blocks(tmp_path, monkeypatch):
    """Every ```python block of the README runs (in order, in one namespace)."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README has an API tour"
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), ns)
