"""Where captured maps live: in memory up to a byte budget, then in disk shards read back lazily.

A :class:`MapStore` is a sequence of :class:`~attnlens.attention_map.AttentionMap` in the order
they were added. While the tensors held in memory (weights and scores) stay within
``memory_budget`` bytes they are kept as they are. When adding a map would exceed the budget,
every map held in memory is written to one **shard** (a ``.safetensors`` file, or ``.npz`` with
``fmt="npz"``) and only its metadata (axis names, sides, meta: about 2 KB a map) stays in
memory; the freed heap memory is handed back to the OS (glibc ``malloc_trim``). Reading a
spilled map back (``store[i]``) loads only that map's tensors from its shard, every time, so a
capture over a whole dataset holds at most ``memory_budget`` bytes of tensors (plus one map).

Shards are written atomically (temporary file in the same folder, then ``os.replace``). Each
store writes into a folder of its own: a new temporary folder, or with ``spill_dir`` a new
private subfolder ``attnlens-capture-*`` of it (made when the store is built), so two stores
given the same ``spill_dir`` never read, overwrite or delete each other's shards. That folder is
deleted by :meth:`MapStore.close` or when the store is garbage-collected; the caller's
``spill_dir`` itself is left in place. A ``spill_dir`` that cannot be written raises a
:class:`~attnlens.errors.CaptureError` naming it when the store is built, and a shard that cannot
be written raises one at that spill with every map still in memory (nothing is lost).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..attention_map import AttentionMap
from ..errors import CaptureError, FormatError

FORMATS = ("safetensors", "npz")


def nbytes(amap: AttentionMap) -> int:
    """Bytes of the tensors (weights and scores) of ``amap``."""
    total = amap.weights.numel() * amap.weights.element_size()
    if amap.scores is not None:
        total += amap.scores.numel() * amap.scores.element_size()
    return total


class _Spilled:
    """A map whose tensors live in a shard: ``path`` + tensor keys, metadata in ``skeleton``."""

    __slots__ = ("path", "key", "has_scores", "skeleton", "dtypes")

    def __init__(self, path: Path, key: str, has_scores: bool, skeleton: AttentionMap, dtypes):
        self.path, self.key, self.has_scores, self.skeleton, self.dtypes = path, key, has_scores, skeleton, dtypes


class MapStore(Sequence):
    """A sequence of attention maps that spills to disk shards beyond a memory budget.

    Args:
        memory_budget: bytes of map tensors to hold in memory (``None`` = unbounded).
        spill_dir: folder in which the store makes its own shard folder (default: the system's
            temporary folder); the store's folder is deleted on close.
        fmt: ``"safetensors"`` (default) or ``"npz"``.

    >>> store = MapStore(memory_budget=100)  # each map below holds 80 bytes: spills on every 2nd
    >>> for i in range(3):
    ...     store.append(AttentionMap(torch.full((4, 5), float(i)), ("word", "region")))
    >>> len(store), store.spilled_count, float(store[2].weights[0, 0])
    (3, 2, 2.0)
    >>> store.close()
    """

    def __init__(self, memory_budget: int | None = None, spill_dir: str | os.PathLike | None = None,
                 fmt: str = "safetensors"):
        if fmt not in FORMATS:
            raise CaptureError(f"unknown spill format {fmt!r}; valid: {', '.join(FORMATS)}")
        if memory_budget is not None and memory_budget < 0:
            raise CaptureError(f"memory_budget must be >= 0 bytes, got {memory_budget}")
        self.memory_budget = memory_budget
        self.fmt = fmt
        self._entries: list = []          # AttentionMap (in memory) or _Spilled
        self._held: list[int] = []        # indices of in-memory entries
        self.bytes_in_memory = 0
        self.peak_bytes_in_memory = 0
        self.shards: list[Path] = []
        self._given_dir = None if spill_dir is None else Path(spill_dir)
        self._dir: Path | None = None
        self._finalizer = None
        if self._given_dir is not None:
            self._folder()  # fail now, naming the folder, rather than at the first spill

    # ----------------------------------------------------------------- sequence
    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        entry = self._entries[index]
        if isinstance(entry, AttentionMap):
            return entry
        return self._load(entry)

    def metadata(self, index: int) -> AttentionMap:
        """The map at ``index`` without loading spilled tensors (weights of a spilled map are an
        empty placeholder of the right rank); for filtering by site/layer cheaply."""
        entry = self._entries[index]
        return entry if isinstance(entry, AttentionMap) else entry.skeleton

    @property
    def spilled_count(self) -> int:
        """How many maps live in shards."""
        return len(self._entries) - len(self._held)

    # ----------------------------------------------------------------- writing
    def append(self, amap: AttentionMap) -> None:
        """Add a map; spill everything held in memory if the budget would be exceeded."""
        self._entries.append(amap)
        self._held.append(len(self._entries) - 1)
        self.bytes_in_memory += nbytes(amap)
        self.peak_bytes_in_memory = max(self.peak_bytes_in_memory, self.bytes_in_memory)
        if self.memory_budget is not None and self.bytes_in_memory > self.memory_budget:
            self.spill()

    def spill(self) -> None:
        """Write every map held in memory to a new shard."""
        if not self._held:
            return
        folder = self._folder()
        path = folder / f"maps-{len(self.shards):06d}.{self.fmt}"
        tensors, dtypes = {}, {}
        for i in self._held:
            amap = self._entries[i]
            for part in ("weights", "scores"):
                t = getattr(amap, part)
                if t is None:
                    continue
                t = t.detach().to("cpu").contiguous()
                if self.fmt == "npz" and t.dtype == torch.bfloat16:
                    dtypes[f"{i}.{part}"] = t.dtype
                    t = t.float()
                tensors[f"{i}.{part}"] = t
        tmp = folder / f".{path.name}.tmp-{os.getpid()}"
        try:
            if self.fmt == "safetensors":
                from safetensors.torch import save_file

                save_file(tensors, str(tmp))
            else:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **{k: v.numpy() for k, v in tensors.items()})
            os.replace(tmp, path)
        except Exception as exc:  # OSError, or safetensors' own error for a failed write
            raise CaptureError(f"cannot write spill shard {path} (spill folder {folder}): {exc}; the "
                               f"{len(self._held)} maps it would hold are still in memory") from exc
        finally:
            try:
                tmp.unlink()
            except OSError:
                pass
        self.shards.append(path)
        for i in self._held:
            amap = self._entries[i]
            self._entries[i] = _Spilled(path, str(i), amap.scores is not None, _skeleton(amap),
                                        {p: dtypes.get(f"{i}.{p}") for p in ("weights", "scores")})
        self._held.clear()
        self.bytes_in_memory = 0
        release_free_memory()

    def _folder(self) -> Path:
        if self._dir is None:
            parent = self._given_dir
            try:
                if parent is not None:
                    parent.mkdir(parents=True, exist_ok=True)
                self._dir = Path(tempfile.mkdtemp(prefix="attnlens-capture-", dir=parent))
            except OSError as exc:
                where = parent if parent is not None else f"the temporary folder {tempfile.gettempdir()}"
                raise CaptureError(f"cannot write to the spill folder {where}: {exc}") from exc
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._dir), True)
        return self._dir

    # ----------------------------------------------------------------- reading
    def _load(self, entry: _Spilled) -> AttentionMap:
        key = entry.key
        try:
            if self.fmt == "safetensors":
                from safetensors import safe_open

                with safe_open(str(entry.path), framework="pt") as fh:
                    weights = fh.get_tensor(f"{key}.weights")
                    scores = fh.get_tensor(f"{key}.scores") if entry.has_scores else None
            else:
                with np.load(entry.path) as fh:
                    weights = torch.from_numpy(fh[f"{key}.weights"])
                    scores = torch.from_numpy(fh[f"{key}.scores"]) if entry.has_scores else None
        except FileNotFoundError:
            raise CaptureError(f"spill shard {entry.path} is gone (was the recorder closed?)") from None
        except (OSError, KeyError, ValueError) as exc:
            raise FormatError(f"cannot read map {key} back: {exc}", path=entry.path) from exc
        if entry.dtypes.get("weights") is not None:
            weights = weights.to(entry.dtypes["weights"])
        if scores is not None and entry.dtypes.get("scores") is not None:
            scores = scores.to(entry.dtypes["scores"])
        meta = {k: v for k, v in entry.skeleton.meta.items() if k != "spilled_shape"}
        return replace(entry.skeleton, weights=weights, scores=scores, meta=meta)

    # ----------------------------------------------------------------- lifetime
    @property
    def spill_dir(self) -> Path | None:
        """The store's own folder holding the shards (inside ``spill_dir`` when one was given;
        ``None`` until the first spill otherwise)."""
        return self._dir

    def close(self) -> None:
        """Forget every map; delete the shards and the store's own folder."""
        for path in self.shards:
            if path.exists():
                path.unlink()
        if self._finalizer is not None:
            self._finalizer()
        self._entries.clear()
        self._held.clear()
        self.shards.clear()
        self.bytes_in_memory = 0


_LIBC = None


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Spilled maps free many large blocks between long-lived small ones; glibc keeps such freed
    memory in the process (RSS grows although live memory does not) until trimmed.
    """
    global _LIBC
    if not sys.platform.startswith("linux"):
        return
    if _LIBC is None:
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            _LIBC = libc if hasattr(libc, "malloc_trim") else False
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def _skeleton(amap: AttentionMap) -> AttentionMap:
    """The map's metadata with zero-size tensors of the right rank (a cheap stand-in)."""
    shape = tuple(amap.weights.shape)
    empty = torch.empty((0,) * len(shape), dtype=amap.weights.dtype)
    # bypass validation of side lengths against the empty tensor: construct via object.__new__
    skel = object.__new__(AttentionMap)
    for name in ("dims", "query", "key", "alignment", "direction", "layer", "site"):
        object.__setattr__(skel, name, getattr(amap, name))
    object.__setattr__(skel, "weights", empty)
    object.__setattr__(skel, "scores", None)
    object.__setattr__(skel, "meta", {**amap.meta, "spilled_shape": shape})
    return skel
