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


def test_quickstart():
    nb = run_notebook("01_quickstart.ipynb")
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
    texts = [str(o.get("data", {}).get("text/plain", "")) for c in nb.cells if c.cell_type == "code"
             for o in c.outputs if "image/png" not in o.get("data", {})]
    assert not any(t.startswith("<Figure size") for t in texts), "a figure was shown as text"


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
