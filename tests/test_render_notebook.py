"""The notebook view (#17): AttentionMap and study results as a click-a-word view with selectors,
self-contained (no CDN), escaped, a static PNG fallback; in headless Chromium a word click changes
the map and the painted pixels equal :func:`attnlens.render.overlay`."""
from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from browser import needs_chromium, open_page  # noqa: E402

import attnlens.render as R  # noqa: E402
from attnlens.attention_map import AttentionMap, Side  # noqa: E402
from attnlens.errors import NonFiniteError, ShapeError  # noqa: E402
from attnlens.render.notebook import map_view  # noqa: E402
from attnlens.types import Regions  # noqa: E402

H, W = 30, 40
BOXES = np.array([[0, 0, 20, 15], [20, 0, 40, 15], [0, 15, 40, 30]], float)
EVIL = '<script>alert("x")</script>'
WORDS = ["a", EVIL, "dog"]


def image():
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def amap4():
    """[layer=2, head=2, word=3, region=3] with different maps per layer/head/word."""
    rng = np.random.default_rng(1)
    w = torch.tensor(rng.dirichlet(np.ones(3), size=(2, 2, 3)), dtype=torch.float32)
    return AttentionMap(w, ("layer", "head", "word", "region"), query=Side("word", "text", tuple(WORDS)),
                        key=Side("region", "image", regions=Regions(BOXES, (H, W), labels=["sky", "<tree>", "dog"])))


def _data(view_html: str) -> dict:
    m = re.search(r'<script type="application/json" class="al-data">(.*?)</script>', view_html, re.S)
    return json.loads(m.group(1))


def test_view_is_self_contained_and_escaped():
    page = amap4().view(image()).html(full_html=True)
    assert "http://" not in page and "https://" not in page and "plotly" not in page.lower()
    assert "<script>alert" not in page and '<tree>' not in page  # words and labels only as JSON strings
    d = _data(page)
    assert d["words"] == WORDS and d["keys"] == ["sky", "<tree>", "dog"]
    assert [x["name"] for x in d["dims"]] == ["layer", "head"] and len(d["maps"]) == 4
    assert 'class="al-static"' in page and "data:image/png;base64," in page  # the fallback without scripts


def test_maps_and_limits_follow_the_selection():
    a = amap4()
    d = _data(a.view().html())
    w = a.weights.numpy()
    for c, (layer, head) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        assert np.allclose(d["maps"][c], w[layer, head], atol=5e-4)
        assert d["lims"][c] == pytest.approx([w[layer, head].min(), w[layer, head].max()], abs=1e-6)
    assert d["signed"] is False


def test_static_png_is_the_overlay_of_the_first_word():
    import cv2

    a = amap4()
    v = a.view(image())
    png = cv2.imdecode(np.frombuffer(v.png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    w = a.weights.numpy()[0, 0]
    s = v.data["display"][0] // H
    ref = R.overlay(image(), w[0], regions=BOXES, vmin=w.min(), vmax=w.max(), scale=s, colorbar=True)
    assert np.array_equal(png, ref)
    assert v._repr_png_() == v.png and a._repr_png_() is not None


def test_signed_alternatives_grid_and_transposed_maps():
    rng = np.random.default_rng(2)
    g = rng.normal(size=(3, 6))
    v = map_view(None, image(), alternatives={"ig": g, "saliency": np.abs(g)}, tokens=WORDS, grid=(2, 3))
    d = v.data
    assert d["kind"] == "grid" and d["dims"][0] == {"name": "alternative", "labels": ["ig", "saliency"]}
    assert d["signed"] and d["lims"][0] == pytest.approx([-np.abs(g).max(), np.abs(g).max()], abs=1e-9)
    i2t = AttentionMap(torch.tensor(g.T), ("region", "word"), query=Side("region", "image", grid=(2, 3)),
                       key=Side("word", "text", tuple(WORDS)))
    assert np.allclose(i2t.view().data["maps"][0], g, atol=5e-3)
    one = amap4().sel(layer=0, head=1, word="dog")  # one query left: shown as one word
    assert one.view().data["words"] == ["dog"]
    bars = map_view(np.eye(2), tokens=["x", "y"])  # no geometry: bars of the keys
    assert bars.data["kind"] == "none" and 'class="al-bars"' in bars.html()


def test_missing_regions_and_uncovered_pixels_show_nothing():
    w = np.array([[0.7, np.nan, 0.3]])  # region 1 invalid (NaN): not drawn
    v = map_view(w, image(), regions=[[0, 0, 10, 10], [10, 0, 20, 10], [0, 20, 10, 30]], tokens=["dog"])
    assert v.data["maps"][0][0][1] is None
    import cv2

    png = cv2.imdecode(np.frombuffer(v.png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    s = v.data["display"][0] // H
    assert np.array_equal(png[15 * s, 30 * s], image()[15, 30])  # no box here: the bare image
    assert np.array_equal(png[5 * s, 15 * s], image()[5, 15])    # the NaN region: the bare image


def test_bad_input_is_a_typed_error():
    with pytest.raises(ShapeError, match="0 words"):
        map_view(np.zeros((0, 3)), regions=BOXES)
    with pytest.raises(NonFiniteError):
        map_view(np.array([[np.inf, 0, 1]]), regions=BOXES)
    with pytest.raises(ShapeError, match="3 keys"):
        map_view(np.ones((1, 3)), regions=BOXES[:2])
    with pytest.raises(ShapeError, match="max_values"):
        map_view(np.ones((50, 50)), max_values=100)
    assert "<pre>" in AttentionMap(torch.zeros(0, 3), ("word", "region"))._repr_html_()  # never raises


def test_study_view(tmp_path):
    from attnlens.study.figures import study_view

    from test_render_export import _maps_dir

    run = tmp_path / "run"
    for a in ("dot", "cosine"):
        _maps_dir(run / "units" / "t" / a / "seed0")
    v = study_view(run, task="t", alignments=["dot", "cosine"], seed=0)
    d = v.data
    assert d["dims"][0] == {"name": "alignment", "labels": ["dot", "cosine"]} and d["words"] == ["a", "red", "<dog>"]
    assert d["gt"][2] == [[0.0, 12.0, 32.0, 24.0]]


# ----------------------------------------------------------------------------- browser
_DRIVER = """<script>
(function () {
  var root = document.querySelector('.attnlens-view'), log = [];
  function px(x, y) { var d = root.querySelector('canvas.al-canvas').getContext('2d').getImageData(x, y, 1, 1).data;
                      return [d[0], d[1], d[2]]; }
  function snap() { log.push({state: root.getAttribute('data-attnlens-state'), p: [px(%d, %d), px(%d, %d), px(%d, %d)]}); }
  function tick() {
    if (!root.getAttribute('data-attnlens-ready')) { setTimeout(tick, 20); return; }
    snap();
    root.querySelector('button[data-word="2"]').click(); snap();
    var s = root.querySelector('select[data-dim="head"]'); s.value = '1'; s.dispatchEvent(new Event('change')); snap();
    root.setAttribute('data-test-log', JSON.stringify(log));
    root.setAttribute('data-test-static', getComputedStyle(root.querySelector('.al-static')).display);
  }
  tick();
})();
</script></body>"""


@pytest.mark.browser
@needs_chromium
def test_word_click_changes_the_map_in_chromium(tmp_path):
    a = amap4()
    img = image()
    view = a.view(img)
    page = view.save(tmp_path / "view.html")
    points = [(10, 7), (30, 7), (20, 25)]  # one pixel inside each region (away from the outlines)
    driver = _DRIVER % tuple(v for p in points for v in p)
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", driver, 1))
    shot = tmp_path / "notebook_view.png"
    dom, consoles, rc = open_page(probe.as_uri(), tmp_path, width=700, height=600, shot=shot)
    assert rc == 0 and consoles == [], consoles
    log = json.loads(html.unescape(re.search(r'data-test-log="([^"]*)"', dom).group(1)))
    assert [e["state"] for e in log] == ["0,0", "0,2", "1,2"]  # word click, then head 1 of layer 0
    assert log[0]["p"] != log[1]["p"] and log[1]["p"] != log[2]["p"]  # the displayed map changed
    assert 'data-test-static="none"' in dom  # the static PNG gives way to the live view
    w = a.weights.numpy()
    for entry, (layer, head, word) in zip(log, [(0, 0, 0), (0, 0, 2), (0, 1, 2)]):
        m = w[layer, head]
        ref = R.overlay(img, m[word], regions=BOXES, vmin=m.min(), vmax=m.max())
        for (x, y), got in zip(points, entry["p"]):
            assert np.abs(np.asarray(got) - ref[y, x].astype(int)).max() <= 2, (entry, x, y)
    assert shot.exists()
