"""attnlens.render.interactive: linked plotly view, offline HTML, escaping, a real browser."""
import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import attnlens.render as R
from attnlens.attention_map import AttentionMap, Side
from attnlens.errors import NonFiniteError, ShapeError, UnknownNameError
from attnlens.geometry import regions_to_pixels
from attnlens.types import Regions

H, W = 60, 80
BOXES = np.array([[0, 0, 40, 30], [40, 0, 80, 30], [0, 30, 80, 60], [20.4, 15.6, 60.2, 45.5]], float)
EVIL_CAPTION = '<script>alert("pwned")</script>'
WORDS = ["a", "<b>red</b>", "dog's", '"big"']


def weights(seed=0, words=4, regions=4):
    w = np.random.default_rng(seed).random((words, regions))
    return w / w.sum(1, keepdims=True)


def image(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def view(**kw):
    reg = Regions(BOXES, (H, W), labels=["sky", "tree", "road", "<car>"])
    args = dict(tokens=WORDS, regions=reg, alternatives={"cosine": weights(1), "general": weights(2)},
                title=EVIL_CAPTION)
    args.update(kw)
    return R.interactive(image(), weights(0), **args)


def expand(z, xe, ye):
    """Cells back to a full pixel map (the slow, obvious way)."""
    out = np.zeros((H, W))
    for i in range(len(ye) - 1):
        for j in range(len(xe) - 1):
            out[int(ye[i]):int(ye[i + 1]), int(xe[j]):int(xe[j + 1])] = z[i][j]
    return out


def test_figure_structure_and_escaping():
    v = view()
    fig = v.figure
    assert [t.type for t in fig.data] == ["bar", "image", "heatmap"]
    assert fig.layout.xaxis.ticktext == ("a", "&lt;b&gt;red&lt;/b&gt;", "dog's", '"big"')
    assert "&lt;script&gt;" in fig.layout.title.text and "<script>" not in fig.layout.title.text
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["attention", "cosine", "general"]
    assert len(fig.layout.sliders[0].steps) == 4
    assert fig.data[1].source.startswith("data:image/png;base64,")
    assert "<script" not in v.script.split("(function", 1)[1]  # the data JSON cannot close a script
    assert repr(v) == f"InteractiveView(title={EVIL_CAPTION!r})"


def test_heat_cells_are_the_metrics_pixel_maps():
    v = view()
    w = weights(0)
    heat = v.figure.data[2]
    xe, ye = list(heat.x), list(heat.y)
    full = expand(heat.z, xe, ye)
    assert np.allclose(full, regions_to_pixels(w[0], BOXES, (H, W)), atol=1e-5)
    data = _payload(v)
    for a, alt in enumerate([weights(0), weights(1), weights(2)]):
        for l in range(4):
            ref = regions_to_pixels(alt[l], BOXES, (H, W))
            assert np.allclose(expand(data["z"][a][l], xe, ye), ref, atol=1e-5)
    # share="alternative": one scale per alternative
    assert all(tuple(z) == tuple(data["zlim"][1][0]) for z in data["zlim"][1])
    assert data["boxes"][3] == [20, 16, 60, 45]  # pixel bounds under the pixel-centre rule


def _payload(v):
    import json

    m = re.search(r"var D = (\{.*?\});\n", v.script, re.S)
    return json.loads(m.group(1))


def test_attention_map_axes_become_alternatives_and_i2t_is_transposed():
    reg = Regions(BOXES, (H, W))
    w = torch.tensor(np.stack([weights(0), weights(1)]))  # head, word, region
    amap = AttentionMap(w, ("head", "word", "region"), alignment="dot",
                        query=Side("word", "text", tuple(WORDS)), key=Side("region", "image", regions=reg))
    v = R.interactive(image(), amap)
    assert [b.label for b in v.figure.layout.updatemenus[0].buttons] == ["dot head=0", "dot head=1"]
    i2t = AttentionMap(torch.tensor(weights(0).T.copy()), ("region", "word"),
                       query=Side("region", "image", regions=reg), key=Side("word", "text", tuple(WORDS)))
    v2 = R.interactive(image(), i2t)
    assert np.allclose(_payload(v2)["weights"][0], weights(0), atol=1e-5)


def test_grid_and_pixel_inputs():
    w = np.random.default_rng(0).random((2, 6))
    v = R.interactive(image(), w, tokens=["a", "b"], grid=(2, 3))
    heat = v.figure.data[2]
    from attnlens.geometry import grid_to_pixels

    assert np.allclose(expand(heat.z, list(heat.x), list(heat.y)), grid_to_pixels(w[0], (2, 3), (H, W)))
    pix = np.random.default_rng(1).random((2, H, W))
    v = R.interactive(image(), pix, tokens=["a", "b"], max_cells=20)
    assert np.asarray(v.figure.data[2].z).shape == (15, 20)


def test_bad_input():
    with pytest.raises(ShapeError, match="tokens"):
        R.interactive(image(), weights(0), tokens=["a"], regions=BOXES)
    with pytest.raises(ShapeError, match="regions"):
        R.interactive(image(), weights(0), tokens=WORDS)
    with pytest.raises(ShapeError, match="shape"):
        R.interactive(image(), weights(0), tokens=WORDS, regions=BOXES, alternatives={"x": weights(0)[:2]})
    bad = weights(0)
    bad[0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        R.interactive(image(), bad, tokens=WORDS, regions=BOXES)
    with pytest.raises(UnknownNameError):
        R.interactive(image(), weights(0), tokens=WORDS, regions=BOXES, share="nope")


def test_saved_html_is_self_contained_and_escaped(tmp_path):
    path = view().save(tmp_path / "view.html")
    text = path.read_text(encoding="utf-8")
    assert os.listdir(tmp_path) == ["view.html"]
    assert len(text) > 3_000_000                         # plotly.js is inlined
    assert not re.search(r"<script[^>]*\bsrc=", text)    # no external scripts (no CDN)
    assert 'src="https://cdn.plot.ly' not in text and "plotly-latest" not in text  # (geo's topojson URL is unused)
    assert "<title>&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;</title>" in text
    assert 'alert("pwned")' not in text and "<b>red</b>" not in text
    assert R.save_html(view().figure, tmp_path / "bare.html").stat().st_size > 3_000_000
    assert "<div" in view()._repr_html_()


# ----------------------------------------------------------------------------- browser
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=10000"]


def _chromium(tmp_path, *args):
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make browser installs it)")
def test_interactive_html_in_headless_chromium(tmp_path):
    import cv2

    v = view()
    path = v.save(tmp_path / "view.html")
    # drive the linking the way plotly does: emit its events on the plot div once it is ready
    data = _payload(v)
    cell = [int(np.searchsorted(data["ye"], 5, side="right") - 1), int(np.searchsorted(data["xe"], 70, "right") - 1)]
    driver = """<script>
    (function () {
      var gd = document.querySelector('.plotly-graph-div'), step = 0;
      var events = [
        ['plotly_click', {points: [{curveNumber: 2, pointIndex: %s}]}],
        ['plotly_click', {points: [{curveNumber: 0, pointIndex: 2}]}],
        ['plotly_buttonclicked', {active: 0}],
        ['plotly_sliderchange', {slider: {active: 3}}]];
      function tick() {
        if (!gd.getAttribute('data-attnlens-ready')) { setTimeout(tick, 20); return; }
        if (step === 0) { gd.setAttribute('data-test-initial', gd.getAttribute('data-attnlens-state')); }
        if (step < events.length) { gd.emit(events[step][0], events[step][1]); step++; setTimeout(tick, 200); return; }
        gd.setAttribute('data-test-bars', JSON.stringify(gd.data[0].y));
      }
      tick();
    })();
    </script></body>""" % cell
    linked = tmp_path / "linked.html"
    linked.write_text(path.read_text(encoding="utf-8").replace("</body>", driver, 1), encoding="utf-8")
    url = linked.as_uri()
    shot = tmp_path / "shot.png"
    # one browser run: dump the DOM after the scripts ran, and take a screenshot
    res = _chromium(tmp_path, "--window-size=900,760", f"--screenshot={shot}", "--dump-dom",
                    url + "#word=1&region=3&alt=2")
    assert res.returncode == 0, res.stderr[-2000:]
    # 1. the page loads offline, the linking script runs, the URL state is applied, no console errors
    consoles = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    assert consoles == [], consoles
    out = res.stdout
    assert 'data-attnlens-ready="1"' in out, out[-2000:]
    assert 'data-attnlens-errors="[]"' in out
    assert 'data-test-initial="2,1,3"' in out                      # the URL state: alt 2, word 1, region 3
    # after clicking region 1 on the image, word 2, alternative 0 and slider step 3:
    assert 'data-attnlens-state="0,3,1"' in out, re.findall(r'data-(?:attnlens|test)-[a-z]+="[^"]*"', out)
    bars = json.loads(html.unescape(re.search(r'data-test-bars="([^"]*)"', out).group(1)))
    assert np.allclose(bars, weights(0)[:, 1], atol=1e-5)        # the bars show region 1's attention
    assert 'class="main-svg"' in out                               # plotly drew the figure
    title = re.search(r'<text class="gtitle"[^>]*>(.*?)</text>', out).group(1)
    # the caption and the word are text: escaped in the DOM, never elements
    assert title.startswith("&lt;script&gt;alert(\"pwned\")&lt;/script&gt;: \"big\" (attention) | ")
    assert title.endswith("region tree")
    assert "<script>alert" not in out
    # 2. the screenshot is not blank
    assert shot.exists(), res.stderr[-2000:]
    pixels = cv2.imread(str(shot))
    assert pixels is not None and pixels.std() > 20
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200   # image, heat and bars, not a flat page


def test_heat_opacity_follows_the_heat_and_signed_maps_are_centred():
    img = np.zeros((20, 30, 3), np.uint8)
    boxes = [[0, 0, 10, 10], [10, 5, 30, 20]]
    v = R.interactive(img, np.array([[0.9, 0.1], [0.2, 0.8]]), tokens=["red", "dog"], regions=boxes, alpha=0.8)
    scale = v.figure.data[2].colorscale
    assert scale[0][1].endswith(",0.0000)") and scale[-1][1].endswith(",0.8000)")  # transparent at the low end
    assert v.figure.data[2].opacity == 1.0
    s = R.interactive(img, np.array([[-0.9, 0.3], [0.2, -0.4]]), tokens=["red", "dog"], regions=boxes)
    data = _payload(s)
    assert data["signed"] and data["zlim"][0][0] == [-0.9, 0.9]
    mid = [c for t, c in s.figure.data[2].colorscale if abs(t - 0.5) < 0.04]
    assert mid and all(float(c.rsplit(",", 1)[1][:-1]) < 0.1 for c in mid)  # near 0: (almost) transparent
    from attnlens.render.heatmap import signed_lut

    assert s.figure.data[0].marker.color[0] == "#{:02x}{:02x}{:02x}".format(*signed_lut("RdBu_r")[1])  # -0.9: full blue
