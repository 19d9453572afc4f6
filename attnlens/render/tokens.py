"""Highlighted tokens: words coloured by a score, as escaped HTML or a matplotlib strip.

Colours come from the same colour tables as the overlays (:func:`colormap_lut`), and the
normalisation follows :func:`attnlens.render.heatmap.limits` (the scores' own min and max unless
``vmin``/``vmax`` are given; signed scores, e.g. gradient relevance, are centred at 0 on a diverging
colour map by default). Every word and title that reaches HTML is escaped; NaN scores are shown
without a background.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError
from ._checks import heat_array, text_option, word_list
from .export import atomic_write, mpl_text, save_figure
from .heatmap import color_index, colormap_lut, limits, normalize, resolve_cmap, resolve_norm, signed_lut

__all__ = ["TokenStrip", "tokens"]


def _hex(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


def _ink(rgb) -> str:
    r, g, b = (int(c) for c in rgb)
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#ffffff"


@dataclass(frozen=True, eq=False)
class TokenStrip:
    """Words with scores and the colour scale that shows them.

    Attributes:
        words: the ``L`` words.
        scores: ``[L]`` float scores (NaN = no score).
        cmap: colour map name or ``[256, 3]`` RGB table.
        vmin, vmax: the limits of the colour scale.
        title: optional caption shown before the words.
    """

    words: tuple[str, ...]
    scores: np.ndarray
    cmap: object = "viridis"
    vmin: float = 0.0
    vmax: float = 1.0
    title: str | None = None
    signed: bool = False

    @property
    def colors(self) -> np.ndarray:
        """``[L, 3]`` uint8 RGB background colours (row of zeros where the score is NaN)."""
        if self.signed:
            idx, _ = color_index(np.asarray(self.scores, dtype=np.float64)[None], self.vmin, self.vmax, signed=True)
            out = signed_lut(self.cmap)[idx[0]].copy()
            out[np.isnan(self.scores)] = 0
            return out
        u = normalize(self.scores, self.vmin, self.vmax)
        idx = np.rint(np.nan_to_num(u) * 255).astype(np.int64)
        out = colormap_lut(self.cmap)[idx].copy()
        out[np.isnan(u)] = 0
        return out

    def html(self) -> str:
        """An HTML fragment: one ``<span>`` per word with its colour and a tooltip (escaped)."""
        spans = []
        for word, score, rgb in zip(self.words, self.scores, self.colors):
            tip = html.escape(f"{word}: {score:.4g}", quote=True)
            text = html.escape(word, quote=True)
            if np.isnan(score):
                style = "padding:1px 3px;margin:1px;border:1px dashed #bbb;border-radius:3px"
            else:
                style = (f"background:{_hex(rgb)};color:{_ink(rgb)};padding:1px 3px;margin:1px;"
                         "border-radius:3px")
            spans.append(f'<span class="attnlens-token" title="{tip}" style="{style}">{text}</span>')
        head = ""
        if self.title:
            head = f'<div class="attnlens-title" style="font-weight:bold">{html.escape(self.title)}</div>'
        scale = html.escape(f"scale [{self.vmin:.4g}, {self.vmax:.4g}]")
        return (f'<div class="attnlens-tokens" style="line-height:1.9;font-family:sans-serif">{head}'
                f'{" ".join(spans)} <small style="color:#888">{scale}</small></div>')

    def _repr_html_(self) -> str:
        return self.html()

    def __repr__(self) -> str:
        return f"TokenStrip(n={len(self.words)}, vmin={self.vmin:.4g}, vmax={self.vmax:.4g})"

    def to_figure(self, *, width: float | None = None, dpi: float = 100, colorbar: bool = True):
        """A matplotlib figure: one coloured cell per word, words written inside, colour bar."""
        from matplotlib.colors import ListedColormap, Normalize
        from matplotlib.figure import Figure

        n = len(self.words)
        width = width or max(3.0, 0.75 * n + (1.2 if colorbar else 0.3))
        fig = Figure(figsize=(width, 1.1 if not self.title else 1.4), dpi=dpi)
        ax = fig.add_subplot()
        lut = signed_lut(self.cmap)[1:] if self.signed else colormap_lut(self.cmap)
        cm = ListedColormap(lut / 255.0).with_extremes(bad=(1, 1, 1, 0))
        data = np.ma.masked_invalid(np.asarray(self.scores, dtype=float))[None, :]
        im = ax.imshow(data, cmap=cm, norm=Normalize(self.vmin, self.vmax, clip=True), aspect="auto",
                       interpolation="nearest")
        for i, (word, rgb) in enumerate(zip(self.words, self.colors)):
            ink = "black" if np.isnan(self.scores[i]) else _ink(rgb)
            ax.text(i, 0, mpl_text(word), ha="center", va="center", color=ink, fontsize=9, clip_on=True)
        ax.set_xticks([])
        ax.set_yticks([])
        if self.title:
            ax.set_title(mpl_text(self.title), fontsize=10)
        if colorbar:
            fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
        return fig

    def save(self, path, *, dpi: float | None = None):
        """Save as ``.html`` (a small standalone page) or ``.png``/``.svg``/``.pdf``."""
        from pathlib import Path

        suffix = Path(path).suffix.lower()
        if suffix in (".html", ".htm"):
            title = html.escape(self.title or "tokens")
            page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>'
                    f"<body>{self.html()}</body></html>\n")
            return atomic_write(path, page)
        return save_figure(self.to_figure(), path, dpi=dpi)


def tokens(words, scores, *, cmap=None, vmin: float | None = None, vmax: float | None = None,
           title: str | None = None, norm=None) -> TokenStrip:
    """Words highlighted by ``scores``.

    Args:
        words: ``L`` words (a string is split on whitespace).
        scores: ``[L]`` scores (array, tensor or a one-axis AttentionMap); NaN = no score.
        cmap: colour map name or ``[256, 3]`` RGB table (default ``viridis``, ``RdBu_r`` when signed).
        vmin, vmax: colour-scale limits (default: the scores' min and max).
        norm: ``None`` (``"symmetric"`` when a score is negative, else ``"map"``), ``"map"`` or
            ``"symmetric"`` (limits ``(-m, m)``, 0 in the colour map's centre).
        title: optional caption.

    Returns:
        a :class:`TokenStrip` (``_repr_html_`` in notebooks, ``.to_figure()``, ``.save(path)``).

    >>> strip = tokens(["a", "<b>dog</b>"], [0.1, 0.9])
    >>> "&lt;b&gt;dog&lt;/b&gt;" in strip.html(), "<b>" in strip.html()
    (True, False)
    """
    s = np.asarray(heat_array(scores, "scores", "tokens"), dtype=np.float64)
    if s.ndim == 2 and 1 in s.shape:
        s = s.reshape(-1)
    words = word_list(words, "words", "tokens")
    title = text_option(title, "title", "tokens")
    finite = s[np.isfinite(s)]
    norm = resolve_norm(norm, float(finite.min()) if finite.size else 0.0)
    signed = isinstance(norm, str) and norm == "symmetric"
    cmap = resolve_cmap(cmap, signed)
    colormap_lut(cmap)  # an unknown or malformed colour map is an error here, not when shown
    if s.ndim != 1 or len(s) != len(words):
        raise ShapeError(f"tokens: {len(words)} words need [{len(words)}] scores, got shape {s.shape}")
    if np.isinf(s).any():
        from ..errors import NonFiniteError

        raise NonFiniteError(f"token scores contain infinite values at {np.nonzero(np.isinf(s))[0].tolist()}")
    lo, hi = limits(s, norm if signed or isinstance(norm, (tuple, list)) else "map", vmin=vmin, vmax=vmax)
    s = s.copy()
    s.setflags(write=False)
    return TokenStrip(words, s, cmap, lo, hi, title, signed)
