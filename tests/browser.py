"""Headless Chromium helpers shared by the browser tests (marked ``browser``; skipped without chromium).

* :func:`open_page`: load a page offline at a window size, return the DOM after its scripts ran,
  the console lines, and a screenshot.
* :func:`layout`: measure a page in a viewport of a given size (an iframe of exactly that size, as
  headless Chromium's window is at least 500 px wide): the document's scroll width, the viewport width
  and every element whose right edge passes the viewport outside a scroll box (tables in
  ``.table-wrap`` and ``pre`` blocks may scroll inside their own box).

Screenshots are test artefacts: they are written under the test's ``tmp_path`` (pytest keeps the
last three runs under ``/tmp/pytest-of-<user>/pytest-<N>/``), and copied to ``$ATTNLENS_ARTEFACTS``
when that variable names a folder.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0",
         "--hide-scrollbars", "--virtual-time-budget=5000"]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make browser installs it)")

_MEASURE = """<script>
(function () {
  var vw = document.documentElement.clientWidth, bad = [];
  var all = document.body.querySelectorAll('*');
  for (var i = 0; i < all.length; i++) {
    var el = all[i];
    if (el.parentElement && el.parentElement.closest('.table-wrap, pre')) { continue; }
    var r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > vw + 0.5) {
      bad.push(el.tagName.toLowerCase() + (el.className ? '.' + el.className : '') + ' right=' + Math.round(r.right));
    }
  }
  var boxes = document.querySelectorAll('.table-wrap'), scrolling = 0;
  for (var j = 0; j < boxes.length; j++) { if (boxes[j].scrollWidth > boxes[j].clientWidth) { scrolling++; } }
  var out = document.createElement('div');
  out.id = 'attnlens-layout';
  out.setAttribute('data-layout', JSON.stringify({scrollWidth: document.documentElement.scrollWidth,
    clientWidth: vw, innerWidth: window.innerWidth, bad: bad.slice(0, 20), tables: boxes.length,
    scrolling: scrolling}));
  out.style.display = 'none';
  document.body.appendChild(out);
  if (window.parent !== window) { window.parent.postMessage(out.getAttribute('data-layout'), '*'); }
})();
</script></body>"""

# Chromium's headless window is at least 500 px wide: narrower viewports are measured in an iframe of
# exactly that size (media queries and widths inside it follow the iframe, as on a phone).
_HOST = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body style="margin:0">
<iframe id="f" src="%s" style="width:%dpx;height:%dpx;border:0;display:block"></iframe>
<div id="attnlens-layout"></div>
<script>window.addEventListener('message', function (e) {
  document.getElementById('attnlens-layout').setAttribute('data-layout', String(e.data)); });</script>
</body></html>"""


def artefact(path: Path) -> Path:
    """Copy a test artefact to ``$ATTNLENS_ARTEFACTS`` (when set); returns the original path."""
    dest = os.environ.get("ATTNLENS_ARTEFACTS")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(dest) / path.name)
    return path


def open_page(url: str, tmp_path: Path, *, width: int, height: int, shot: Path | None = None):
    """``(dom, console_lines, returncode)`` of ``url`` loaded at ``width x height`` (and a screenshot)."""
    args = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--window-size={width},{height}",
            "--dump-dom"]
    if shot is not None:
        args.append(f"--screenshot={shot}")
    res = subprocess.run(args + [url], capture_output=True, text=True, timeout=120)
    consoles = [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    if shot is not None and shot.exists():
        artefact(shot)
    return res.stdout, consoles, res.returncode


def layout(page: Path, tmp_path: Path, *, width: int, height: int) -> dict:
    """Measure ``page`` at ``width x height`` (a copy with a measuring script; the page is untouched)."""
    probe = page.with_name(f".layout-{width}x{height}-{page.name}")  # beside the page: same relative links
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _MEASURE, 1), encoding="utf-8")
    host = page.with_name(f".host-{width}x{height}-{page.name}")
    host.write_text(_HOST % (probe.name, width, height), encoding="utf-8")
    try:
        dom, consoles, rc = open_page(host.as_uri(), tmp_path, width=max(width, 520) + 20, height=height + 20)
    finally:
        probe.unlink()
        host.unlink()
    assert rc == 0, consoles
    m = re.search(r'data-layout="([^"]*)"', dom)
    assert m, dom[-2000:]
    return json.loads(html.unescape(m.group(1)))
