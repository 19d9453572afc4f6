"""Typed errors raised by attnlens.

Every error restates the shapes, names, files or lines at fault, so that a message read in a
notebook or a CI log is enough to find the problem. Errors subclass the built-in exception that
fits (``ValueError``, ``TypeError``, ``KeyError`` ...) so callers can catch either.
"""
from __future__ import annotations

from difflib import get_close_matches
from typing import Iterable


class AttnlensError(Exception):
    """Base class of every attnlens error."""


class ShapeError(AttnlensError, ValueError):
    """Tensors whose shapes or axis names do not fit together."""


class DTypeError(AttnlensError, TypeError):
    """Tensors of a dtype that is not accepted, or of mixed dtypes."""


class NonFiniteError(AttnlensError, ValueError):
    """NaN or infinite values where finite numbers are required."""


class ParameterError(AttnlensError, ValueError):
    """A parameter that is non-finite or outside its domain (names the parameter and the value)."""


class UnknownNameError(AttnlensError, KeyError):
    """A name that is not registered; the message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        valid = sorted(valid)
        close = get_close_matches(str(name), valid, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        self.kind, self.name, self.valid = kind, name, valid
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(valid)}.{hint}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class RegistryError(AttnlensError, ValueError):
    """Registering a name twice without ``overwrite=True``."""


class FormatError(AttnlensError, ValueError):
    """A file that does not follow its format; names the file and the line or element."""

    def __init__(self, message: str, *, path: object = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f":{line}"
            where += ": "
        self.path, self.line = path, line
        super().__init__(where + message)


class CheckpointError(AttnlensError, ValueError):
    """A checkpoint that does not fit the model (names the mismatched keys)."""


class CaptureError(AttnlensError, RuntimeError):
    """Capture sites that match nothing or never produced attention."""


class MissingDependencyError(AttnlensError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str):
        super().__init__(
            f"{package} is required for this feature: pip install 'attnlens[{extra}]' "
            f"(or pip install {package})"
        )


def require(module: str, extra: str):
    """Import an optional dependency lazily, raising :class:`MissingDependencyError`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(module.split(".")[0], extra) from exc
