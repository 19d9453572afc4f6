"""Page layout pieces of the HTML report: table scroll boxes, the table of contents, and the links
from a figure to its PNG/SVG/PDF files.

Every table sits in its own horizontally scrolling box (keyboard-scrollable, labelled for screen
readers) whose first column stays in place (CSS in ``templates/report.html``), so the page itself
never scrolls sideways at 1280 px or on a 390 px phone. Figure files are linked only when they lie
beside the figure inside the report's folder (a relative path without ``..``). Every text is
HTML-escaped; hrefs are percent-quoted.
"""
from __future__ import annotations

import html
import re
from pathlib import Path
from urllib.parse import quote

__all__ = ["wrap_table", "Toc", "figure_links", "with_links", "md_links", "FIGURE_SUFFIXES"]

#: The files a figure may have beside it, in the order they are linked.
FIGURE_SUFFIXES = (".png", ".svg", ".pdf")


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def wrap_table(table: str, label: str, *, hint: bool = False) -> str:
    """A table in its own horizontal scroll box (keyboard-scrollable, labelled for screen readers);
    ``hint``: a line shown on narrow screens saying the table scrolls sideways."""
    tip = '<p class="scroll-hint">Scroll the table sideways for more columns.</p>' if hint else ""
    return f'<div class="table-wrap" tabindex="0" role="region" aria-label="{_e(label)} table">{table}</div>{tip}'


class Toc:
    """Unique anchors and the nested table of contents of the page."""

    def __init__(self):
        self.entries: list[tuple[int, str, str]] = []
        self._used: set[str] = set()

    def anchor(self, level: int, text: str, hint: str | None = None) -> str:
        base = "".join(c if c.isalnum() else "-" for c in (hint or text).lower()).strip("-")[:48] or "section"
        slug, k = base, 2
        while slug in self._used:
            slug, k = f"{base}-{k}", k + 1
        self._used.add(slug)
        self.entries.append((level, slug, text))
        return slug

    def html(self) -> str:
        out, depth = ['<nav class="toc" aria-label="Contents"><h2>Contents</h2>'], 0
        for level, slug, text in self.entries:
            while depth < level:
                out.append("<ol>")
                depth += 1
            while depth > level:
                out.append("</li></ol>")
                depth -= 1
            if out[-1] not in ("<ol>",):
                out.append("</li>")
            out.append(f'<li><a href="#{_e(slug)}">{_e(text)}</a>')
        while depth > 0:
            out.append("</li></ol>")
            depth -= 1
        out.append("</nav>")
        return "".join(out)


def figure_links(fig, base_dir: Path) -> str:
    """Links to the figure's files (PNG/SVG/PDF with the same name beside it, inside ``base_dir``)."""
    rel = Path(fig.path)
    if rel.is_absolute() or ".." in rel.parts:
        return ""
    links = []
    for suffix in FIGURE_SUFFIXES:
        cand = rel.with_suffix(suffix)
        if (base_dir / cand).is_file():
            href = quote(cand.as_posix(), safe="/._-")
            links.append(f'<a href="{_e(href)}">{suffix[1:].upper()}</a>')
    return f'<span class="files">files:{"".join(links)}</span>' if links else ""


def with_links(figure_html: str, fig, base_dir: Path) -> str:
    """The figure with its file links in the caption and the picture itself linked to its PNG (tap
    or click to see it full size, e.g. on a phone)."""
    links = figure_links(fig, base_dir)
    if not links or "</figcaption>" not in figure_html:
        return figure_html
    out = figure_html.replace("</figcaption>", f" {links}</figcaption>", 1)
    png = re.search(r'<a href="([^"]*\.png)">PNG</a>', links)
    start = out.find("<img ")
    if png and start >= 0:
        end = out.index(">", start) + 1
        out = f'{out[:start]}<a class="full" href="{png.group(1)}">{out[start:end]}</a>{out[end:]}'
    return out


def md_links(fig, base_dir) -> str:
    """`` (PNG · SVG · PDF)`` links to a figure's files when ``base_dir`` is known."""
    if base_dir is None:
        return ""
    html_links = figure_links(fig, Path(base_dir))
    pairs = re.findall(r'<a href="([^"]*)">([A-Z]+)</a>', html_links)
    return (" (" + " · ".join(f"[{name}]({html.unescape(href)})" for href, name in pairs) + ")") if pairs else ""
