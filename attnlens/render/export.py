"""Export figures to files without a notebook; every write is atomic.

Static figures (matplotlib) go to PNG, SVG or PDF with the Agg-family backends (no display
needed); overlays (arrays or PIL images) to PNG/JPEG; token strips and interactive views to
HTML. A file is written to a temporary file in the same folder and moved into place with
``os.replace``, so a reader never sees half a file.

Publication figures (:func:`export`): sizes are set in inches (``width="column"`` = 3.3 in, one
column of a two-column paper; ``"page"`` = 6.9 in, the full text width; or a number), the file is
not cropped (the size on paper is the size asked for), fonts are embedded (PDF: TrueType, Type 42,
never Type 3 bitmaps; SVG: glyphs as paths, so the file renders the same without the font) and
the files carry no creation date, so the same figure gives the same bytes.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ShapeError, UnknownNameError
from ._checks import real_option

__all__ = ["atomic_write", "save", "save_figure", "save_image", "export", "paper_width", "STATIC_FORMATS",
           "PAPER_WIDTHS", "FONT_RC"]

STATIC_FORMATS = ("png", "svg", "pdf")
#: Widths in inches: one column of a two-column paper, and the full text width.
PAPER_WIDTHS = {"column": 3.3, "page": 6.9}
#: matplotlib settings used for every saved figure: fonts embedded as TrueType / paths.
FONT_RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "path"}
_NO_DATE = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": {}}


def atomic_write(path, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically; returns the path.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> atomic_write(p, "hi").read_text()
    'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def mpl_text(text) -> str:
    """Text for matplotlib with ``$`` escaped, so words are never parsed as mathtext.

    >>> mpl_text("$5")
    '\\\\$5'
    """
    return str(text).replace("$", r"\$")


def _format(path, fmt) -> str:
    fmt = (fmt or Path(path).suffix.lstrip(".")).lower()
    if not fmt:
        raise ShapeError(f"cannot tell the file format of {str(path)!r}: give it a suffix or pass format=")
    return "jpeg" if fmt == "jpg" else fmt


def save_figure(fig, path, *, format: str | None = None, dpi: float | None = None, crop: bool = True) -> Path:
    """Save a matplotlib figure to PNG/SVG/PDF (format from the suffix unless given), fonts
    embedded; ``crop=True`` trims the margins (``bbox_inches="tight"``), ``crop=False`` keeps the
    figure's size.

    >>> import tempfile, pathlib
    >>> from matplotlib.figure import Figure
    >>> fig = Figure(figsize=(1, 1)); _ = fig.add_subplot().plot([0, 1])
    >>> save_figure(fig, pathlib.Path(tempfile.mkdtemp()) / "f.svg").suffix
    '.svg'
    """
    return _save(fig, path, format, dpi, bbox_inches="tight" if crop else None)


def _save(fig, path, format, dpi, *, bbox_inches) -> Path:
    import matplotlib

    fmt = _format(path, format)
    if fmt not in STATIC_FORMATS:
        raise UnknownNameError("figure format", fmt, STATIC_FORMATS)
    if dpi is not None:
        dpi = real_option(dpi, "dpi", "save_figure", lo=10.0, hi=2400.0)
    buf = io.BytesIO()
    with matplotlib.rc_context(FONT_RC):
        fig.savefig(buf, format=fmt, dpi=dpi if dpi is not None else "figure", bbox_inches=bbox_inches,
                    metadata=_NO_DATE[fmt])
    return atomic_write(path, buf.getvalue())


def paper_width(width) -> float:
    """A figure width in inches: ``"column"``, ``"page"`` (:data:`PAPER_WIDTHS`) or a number.

    >>> paper_width("column"), paper_width(5)
    (3.3, 5.0)
    """
    if isinstance(width, str):
        if width not in PAPER_WIDTHS:
            raise UnknownNameError("paper width", width, list(PAPER_WIDTHS))
        return PAPER_WIDTHS[width]
    return real_option(width, "width", "export", lo=0.5, hi=100.0)


def export(fig, path, *, format: str | None = None, dpi: float = 300, width="column",
           height: float | None = None) -> Path:
    """Save a matplotlib figure for a paper: ``width`` in inches (``"column"``, ``"page"`` or a
    number), ``height`` in inches (default: the figure's aspect ratio kept), fonts embedded, the
    exact size (no cropping), PNG at ``dpi``. The figure is resized in place.

    >>> import tempfile, pathlib
    >>> from matplotlib.figure import Figure
    >>> fig = Figure(figsize=(4, 2), layout="constrained"); _ = fig.add_subplot().plot([0, 1])
    >>> p = export(fig, pathlib.Path(tempfile.mkdtemp()) / "f.pdf", width="column")
    >>> [round(float(v), 2) for v in fig.get_size_inches()]
    [3.3, 1.65]
    """
    w = paper_width(width)
    w0, h0 = fig.get_size_inches()
    h = real_option(height, "height", "export", lo=0.2, hi=100.0) if height is not None else w * h0 / w0
    fig.set_size_inches(w, h)
    if height is None:
        _fit_height(fig)
    return _save(fig, path, format, dpi, bbox_inches=None)


def _fit_height(fig, tries: int = 3) -> None:
    """Grow the figure's height (never its width) until titles, labels and colour bars fit on it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if hasattr(fig.canvas, "get_renderer") else FigureCanvasAgg(fig)
    for _ in range(tries):
        canvas.draw()
        box = fig.get_tightbbox(canvas.get_renderer())
        w, h = fig.get_size_inches()
        over = max(0.0, -box.y0) + max(0.0, box.y1 - h)
        if over <= 0.01:
            return
        fig.set_size_inches(w, h + over + 0.05)


def save_image(image, path, *, format: str | None = None) -> Path:
    """Save an RGB uint8 ``[H, W, 3]`` array (or a PIL image) as PNG or JPEG.

    The array is read as RGB and converted to OpenCV's BGR order for encoding, explicitly.
    """
    import cv2

    from .overlay import as_rgb

    fmt = _format(path, format)
    if fmt not in ("png", "jpeg"):
        raise UnknownNameError("image format", fmt, ["png", "jpeg", "jpg"])
    rgb = as_rgb(image)
    ok, enc = cv2.imencode("." + ("jpg" if fmt == "jpeg" else "png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV failure
        raise ShapeError(f"OpenCV could not encode an image of shape {rgb.shape} as {fmt}")
    return atomic_write(path, enc.tobytes())


def save(obj, path, **kwargs) -> Path:
    """Save any attnlens rendering: a matplotlib figure, an overlay image, a token strip or
    an interactive view (anything with a ``save`` method), by the file's suffix."""
    if hasattr(obj, "savefig"):
        return save_figure(obj, path, **kwargs)
    if hasattr(obj, "save") and not hasattr(obj, "convert"):  # our objects; PIL images have convert
        return obj.save(path, **kwargs)
    if type(obj).__module__.startswith("plotly"):
        from .interactive import save_html

        return save_html(obj, path, **kwargs)
    if isinstance(obj, np.ndarray) or hasattr(obj, "convert"):
        return save_image(obj, path, **kwargs)
    raise ShapeError(f"do not know how to save a {type(obj).__name__}")
