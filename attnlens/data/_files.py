"""Small file helpers shared by the loaders."""
from __future__ import annotations

from pathlib import Path

from ..errors import FormatError


class MissingFileError(FormatError, FileNotFoundError):
    """A file or folder a loader needs does not exist (also a ``FileNotFoundError``)."""


def require_path(path, what: str, *, folder: bool = False) -> Path:
    """``path`` as a :class:`Path`, or :class:`MissingFileError` naming ``what`` and the path."""
    path = Path(path)
    ok = path.is_dir() if folder else path.is_file()
    if not ok:
        kind = "folder" if folder else "file"
        raise MissingFileError(f"{what} {kind} not found", path=path)
    return path


def progress_bar(items, *, enabled: bool | None, desc: str, threshold: int = 1000):
    """Wrap ``items`` in a tqdm bar when ``enabled`` (``None``: only for more than ``threshold`` items)."""
    items = list(items)
    if enabled is None:
        enabled = len(items) > threshold
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)
