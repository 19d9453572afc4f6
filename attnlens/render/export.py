"""Export figures to files without a notebook; every write is atomic.

Static figures (matplotlib) go to PNG, SVG or PDF with the Agg-family backends (no display
needed); overlays (arrays or PIL images) to PNG/JPEG; token strips and interactive views to
HTML. A file is written to a temporary file in the same folder and moved into place with
``os.replace``, so a reader never sees half a file.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ShapeError, UnknownNameError

__all__ = ["atomic_write", "save", "save_figure", "save_image", "STATIC_FORMATS"]

STATIC_FORMATS = ("png", "svg", "pdf")


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


def save_figure(fig, path, *, format: str | None = None, dpi: float | None = None) -> Path:
    """Save a matplotlib figure to PNG/SVG/PDF (format from the suffix unless given).

    >>> import tempfile, pathlib
    >>> from matplotlib.figure import Figure
    >>> fig = Figure(figsize=(1, 1)); _ = fig.add_subplot().plot([0, 1])
    >>> save_figure(fig, pathlib.Path(tempfile.mkdtemp()) / "f.svg").suffix
    '.svg'
    """
    fmt = _format(path, format)
    if fmt not in STATIC_FORMATS:
        raise UnknownNameError("figure format", fmt, STATIC_FORMATS)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi if dpi is not None else "figure", bbox_inches="tight")
    return atomic_write(path, buf.getvalue())


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
