"""Publication export (#17): sizes in inches, fonts embedded, same bytes for the same figure; the CLI."""
import re
from pathlib import Path

import numpy as np
import pytest

import attnlens.render as R
from attnlens.errors import DTypeError, ParameterError, UnknownNameError


def _fig(title="Attention $x$ of the word «dog»"):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [1, 0], label="MoRF")
    ax.set_title(title)
    ax.legend()
    return fig


def _pdf_size_in(data: bytes):
    box = re.search(rb"/MediaBox \[\s*([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+)\s*\]", data)
    return float(box.group(3)) / 72, float(box.group(4)) / 72


@pytest.mark.parametrize("width,inches", [("column", 3.3), ("page", 6.9), (5, 5.0)])
def test_pdf_has_the_asked_size_and_embedded_truetype_fonts(tmp_path, width, inches):
    path = R.export(_fig(), tmp_path / "f.pdf", width=width)
    data = path.read_bytes()
    w, h = _pdf_size_in(data)
    assert w == pytest.approx(inches, abs=0.01) and h == pytest.approx(inches / 2, abs=0.01)  # aspect kept
    assert b"/FontFile2" in data            # TrueType font program embedded (Type 42)
    assert b"/Subtype /Type3" not in data   # never Type 3 bitmap fonts
    assert b"CreationDate" not in data       # no date: same figure, same bytes
    assert R.export(_fig(), tmp_path / "g.pdf", width=width).read_bytes() == data


def test_svg_glyphs_are_paths_and_size_in_inches(tmp_path):
    data = R.export(_fig(), tmp_path / "f.svg", width="column", height=2.0).read_text()
    assert 'width="237.6pt"' in data and 'height="144pt"' in data  # 3.3 in x 2 in
    assert "<text" not in data  # text drawn as glyph paths: renders the same without the font
    assert "<dc:date>" not in data


def test_png_dpi_sets_the_pixels(tmp_path):
    from PIL import Image

    p = R.export(_fig(), tmp_path / "f.png", width="column", dpi=200)
    assert Image.open(p).size == (660, 330)


def test_export_bad_options(tmp_path):
    with pytest.raises(UnknownNameError, match="column"):
        R.export(_fig(), tmp_path / "f.pdf", width="colum")
    with pytest.raises(ParameterError, match="width"):
        R.export(_fig(), tmp_path / "f.pdf", width=-3)
    with pytest.raises(DTypeError, match="dpi"):
        R.export(_fig(), tmp_path / "f.png", dpi="high")
    with pytest.raises(ParameterError, match="dpi"):
        R.save_figure(_fig(), tmp_path / "f.png", dpi=float("nan"))
    with pytest.raises(UnknownNameError):
        R.export(_fig(), tmp_path / "f.gif")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written


def test_save_figure_embeds_fonts_too(tmp_path):
    data = R.save_figure(_fig(), tmp_path / "f.pdf").read_bytes()
    assert b"/FontFile2" in data and b"/Subtype /Type3" not in data


def _maps_dir(out: Path) -> Path:
    """A saved maps folder in the layout `attnlens capture` writes, built without a model."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    boxes = [[0, 0, 16, 12], [16, 0, 32, 12], [0, 12, 32, 24]]
    att = rng.random((3, 3)).astype(np.float32)
    meta = [{"example_id": "img0/0", "tokens": ["a", "red", "<dog>"], "boxes": boxes, "image_size": [24, 32],
             "region_valid": [True, True, True], "output": 0.5,
             "targets": [{"tokens": ["<dog>"], "boxes": [boxes[2]], "label": "dog", "head": 2}], "meta": {}}]
    (out / "examples.json").write_text(json.dumps(meta))
    np.savez_compressed(out / "examples.npz", att0=att / att.sum(1, keepdims=True),
                        img0=rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    return out


@pytest.mark.parametrize("fmt", ["pdf", "svg", "png"])
def test_cli_render_formats_dpi_and_width(tmp_path, fmt):
    from attnlens.cli import main

    maps = _maps_dir(tmp_path / "maps")
    out = tmp_path / "fig"
    assert main(["render", str(maps), "--out", str(out), "--format", fmt, "--dpi", "150", "--width", "page"]) == 0
    grid, words = out / f"img0_0.{fmt}", out / f"img0_0_words.{fmt}"
    assert grid.exists() and words.exists() and (out / "explorer.html").exists()
    if fmt == "pdf":
        data = grid.read_bytes()
        assert _pdf_size_in(data)[0] == pytest.approx(6.9, abs=0.01) and b"/FontFile2" in data
    elif fmt == "png":
        from PIL import Image

        assert Image.open(grid).size[0] == round(6.9 * 150)
    else:
        assert 'width="496.8pt"' in grid.read_text()
    assert main(["render", str(maps), "--out", str(out), "--width", "wide"]) == 2  # a usage error, one line
    assert main(["render", str(maps), "--out", str(out), "--dpi", "0"]) == 2


def test_export_grows_the_height_so_nothing_is_cut(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = R.grid(None, np.random.default_rng(0).random((1, 3, 8, 12)), cols=["a", "red", "dog"], title="a title")
    R.export(fig, tmp_path / "g.pdf", width="column")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    box = fig.get_tightbbox(canvas.get_renderer())
    w, h = fig.get_size_inches()
    assert w == pytest.approx(3.3) and box.y0 >= -0.01 and box.y1 <= h + 0.01 and box.x1 <= w + 0.01
