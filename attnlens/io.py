"""Atomic file writes: a reader (or a rerun after an interruption) never sees a half-written file.

Every writer here writes to a temporary file in the destination's directory, flushes and
fsyncs it, then renames it over the destination with :func:`os.replace` (atomic on POSIX and
Windows when source and destination are on the same file system, which a sibling temp file
guarantees). If anything fails before the rename, the temporary file is removed and the
destination is left as it was.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> p = write_text(d / "a" / "hello.txt", "hi")
>>> p.read_text(), sorted(x.name for x in p.parent.iterdir())
('hi', ['hello.txt'])
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import FormatError

__all__ = ["atomic_path", "write_bytes", "write_text", "write_json", "save_dataframe", "save_figure",
           "TMP_SUFFIX", "UnsafePathError", "confine"]

TMP_SUFFIX = ".tmp-attnlens"


class UnsafePathError(FormatError):
    """A path read from a data or run file that leaves the folder it must stay in."""


def confine(entry: str | os.PathLike, root: str | os.PathLike, *, source: object = None,
            what: str = "path", line: int | None = None) -> Path:
    """Resolve ``entry`` (read from a data or run file) below ``root``, or raise.

    ``entry`` is taken relative to ``root``; the result is resolved (symbolic links followed, ``..``
    removed) and must lie inside the resolved ``root``. Absolute paths, ``..`` escapes, links out of
    ``root``, empty or NUL-containing entries are refused with :class:`UnsafePathError` (a
    :class:`~attnlens.errors.FormatError`) naming ``source`` (the file the entry came from), ``what``
    (the entry, e.g. ``"figures[2].path"``), ``line`` (its line in ``source``, if any) and the
    offending value. The file need not exist.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> confine("figs/a.png", root) == (root / "figs" / "a.png").resolve()
    True
    >>> confine("../etc/passwd", root, source="run.json", what="figures[0].path")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    attnlens.io.UnsafePathError: run.json: figures[0].path '../etc/passwd' leaves ...
    """
    if not isinstance(entry, (str, os.PathLike)):
        raise UnsafePathError(f"{what} must be a relative path string, got {type(entry).__name__} {entry!r}",
                              path=source, line=line)
    text = os.fspath(entry)
    if isinstance(text, bytes) or not text or "\x00" in text:
        raise UnsafePathError(f"{what} {text!r} is not a usable relative path", path=source, line=line)
    if os.path.isabs(text) or Path(text).drive or Path(text).anchor:
        raise UnsafePathError(f"{what} {text!r} is absolute; only paths inside {root} are allowed", path=source,
                              line=line)
    base = Path(root).resolve()
    target = (base / text).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(f"{what} {text!r} leaves {base} (resolves to {target})", path=source, line=line)
    return target


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    Use it for writers that want a file name (``fig.savefig``, ``df.to_parquet``, ``torch.save``).
    Parent directories are created. On an exception the temporary file is deleted and the
    exception propagates; ``path`` is untouched.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "x.bin") as tmp:
    ...     _ = tmp.write_bytes(b"abc")
    >>> (d / "x.bin").read_bytes()
    b'abc'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    except OSError:  # pragma: no cover - e.g. file systems without fsync
        pass


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return path


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8 by default); returns the path."""
    return write_bytes(path, text.encode(encoding))


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON atomically (non-JSON values such as paths go through ``str``).

    >>> import tempfile, pathlib
    >>> p = write_json(pathlib.Path(tempfile.mkdtemp()) / "c.json", {"a": 1})
    >>> json.loads(p.read_text())
    {'a': 1}
    """
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=True, default=str) + "\n")


def save_dataframe(df, path: str | os.PathLike, **to_csv_kwargs) -> Path:
    """Write a pandas DataFrame to CSV atomically (``index=False`` unless given); returns the path.

    >>> import tempfile, pathlib, pandas as pd
    >>> p = save_dataframe(pd.DataFrame({"a": [1, 2]}), pathlib.Path(tempfile.mkdtemp()) / "t.csv")
    >>> p.read_text().split()
    ['a', '1', '2']
    """
    to_csv_kwargs.setdefault("index", False)
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **to_csv_kwargs)
    return path


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """Save a matplotlib figure atomically; the format follows ``path``'s suffix."""
    path = Path(path)
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **savefig_kwargs)
    return path


def file_digests(path: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of a file, or of every file below a directory (hidden ones skipped), keyed by the
    path relative to the directory (the file's name for a file)."""
    import hashlib

    path = Path(path)
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
    out = {}
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out[f.name if path.is_file() else str(f.relative_to(path))] = h.hexdigest()
    return out


def publish_dir(staging: str | os.PathLike, final: str | os.PathLike, *, keep_existing=None) -> Path:
    """Move the complete directory ``staging`` to ``final`` (one rename when ``final`` is absent).

    A directory already at ``final`` is replaced, unless ``keep_existing(final)`` says it is a
    finished copy (e.g. written by a retried task), which is then kept and ``staging`` dropped.
    """
    import shutil

    final = Path(final)
    try:
        os.replace(staging, final)
    except OSError:
        if not final.exists():
            raise
        if keep_existing is not None and keep_existing(final):
            shutil.rmtree(staging, ignore_errors=True)
        else:
            shutil.rmtree(final)
            os.replace(staging, final)
    return final
