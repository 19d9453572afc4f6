"""All-pairs SCAN scoring at gallery scale: image x caption blocks scored independently and
assembled into the ``[Ni, Nc]`` matrix.

Scores are pair-local, so a block ``images[i0:i1] x captions[c0:c1]`` scored on its own holds
the same numbers as the matching block of the full matrix. To make them the same **bits**,
the blocks respect how :class:`~attnlens.models.scan.ScanSimilarity` gets bit-exactness: its
score products run on fixed ``GEMM_TILE`` tiles aligned to absolute indices, so a block must
start on a tile boundary and (unless it is the last one) span whole tiles. Hence block sizes
are multiples of ``GEMM_TILE`` (``(16, 64)``); the last block of each axis takes the rest.
Workers keep the caller's torch thread count (the thread count can change the last bits of
CPU reductions) unless ``threads`` says otherwise.

Data movement: the gallery tensors go to each worker once (process pool: the pool
initializer; Ray: ``ray.put``), jobs carry only index ranges, and each returns its block
(``bi * bc`` numbers).
"""
from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch
from tqdm.auto import tqdm

from ..errors import ShapeError, UnknownNameError
from ..models.scan import GEMM_TILE, ScanSimilarity, check_inputs

EXECUTORS = (None, "process", "ray")

_WORKER: dict = {}  # per worker process: module and gallery tensors (set by the pool initializer)


def block_grid(n_images: int, n_captions: int, blocks: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """``(i0, i1, c0, c1)`` of every block, row-major; block sizes must be multiples of ``GEMM_TILE``.

    >>> block_grid(40, 100, (32, 64))
    [(0, 32, 0, 64), (0, 32, 64, 100), (32, 40, 0, 64), (32, 40, 64, 100)]
    """
    bi, bc = _check_blocks(blocks)
    return [(i0, min(i0 + bi, n_images), c0, min(c0 + bc, n_captions))
            for i0 in range(0, n_images, bi) for c0 in range(0, n_captions, bc)]


def _check_blocks(blocks) -> tuple[int, int]:
    if isinstance(blocks, int):
        blocks = (blocks, blocks)
    try:
        bi, bc = (int(b) for b in blocks)
    except (TypeError, ValueError):
        raise ShapeError(f"blocks must be (images, captions) per block, got {blocks!r}") from None
    ti, tc = GEMM_TILE
    if bi < 1 or bc < 1 or bi % ti or bc % tc:
        raise ShapeError(f"blocks {(bi, bc)} must be positive multiples of GEMM_TILE {GEMM_TILE} "
                         f"(e.g. ({ti * max(1, -(-bi // ti))}, {tc * max(1, -(-bc // tc))})): blocks that cut a "
                         "GEMM tile change the rounding of the score products")
    return bi, bc


def _score_block(module, images, captions, lengths, image_mask, i0, i1, c0, c1) -> torch.Tensor:
    with torch.no_grad():
        mask = None if image_mask is None else image_mask[i0:i1]
        return module(images[i0:i1], captions[c0:c1], lengths[c0:c1], image_mask=mask)


def _init_worker(module, images, captions, lengths, image_mask, threads) -> None:
    if threads:
        torch.set_num_threads(int(threads))
    _WORKER.update(module=module, images=images, captions=captions, lengths=lengths, image_mask=image_mask)


def _worker_block(i0: int, i1: int, c0: int, c1: int) -> torch.Tensor:
    w = _WORKER
    return _score_block(w["module"], w["images"], w["captions"], w["lengths"], w["image_mask"], i0, i1, c0, c1)


def sharded_similarity(sim_module: ScanSimilarity, images: torch.Tensor, captions: torch.Tensor, lengths,
                       *, blocks: tuple[int, int] = (256, 1024), image_mask: torch.Tensor | None = None,
                       executor: str | None = None, workers: int = 2, threads: int | None = None,
                       address: str | None = None, progress: bool = False) -> torch.Tensor:
    """``S [Ni, Nc]`` of ``images [Ni, R, D]`` x ``captions [Nc, L, D]`` scored in blocks.

    Equals ``sim_module(images, captions, lengths, image_mask=image_mask)`` bit for bit (same
    dtype, same thread count), computed without gradients.

    Args:
        sim_module: the similarity (its chunking bounds each worker's memory).
        lengths: ``[Nc]`` real words per caption.
        blocks: ``(images, captions)`` per block, multiples of ``GEMM_TILE``.
        image_mask: ``[Ni, R]`` True = real region (optional).
        executor: ``None`` (blocks one after another in this process), ``"process"`` (a local
            pool of ``workers`` spawned processes) or ``"ray"`` (Ray tasks; joins the cluster at
            ``address``, or starts a local instance with ``workers`` CPUs).
        workers: processes of the local pool / CPUs of a local Ray instance.
        threads: torch threads per worker (None: the caller's count, which keeps the bits).
        progress: a tqdm bar over the blocks.

    Raises:
        ShapeError / DTypeError / NonFiniteError: bad inputs (as ``ScanSimilarity``), bad blocks.
        UnknownNameError: unknown executor.

    >>> g = torch.Generator().manual_seed(0)
    >>> ims, caps = torch.randn(20, 3, 4, generator=g), torch.randn(70, 5, 4, generator=g)
    >>> lens = torch.randint(1, 6, (70,), generator=g)
    >>> sim = ScanSimilarity("t2i", "mean")
    >>> bool(torch.equal(sharded_similarity(sim, ims, caps, lens, blocks=(16, 64)), sim(ims, caps, lens)))
    True
    """
    if executor not in EXECUTORS:
        raise UnknownNameError("executor", executor, [str(e) for e in EXECUTORS])
    lengths, _, image_mask = check_inputs(images, captions, lengths, image_mask, dim=sim_module.dim)
    grid = block_grid(images.shape[0], captions.shape[0], blocks)
    out = images.new_zeros(images.shape[0], captions.shape[0])
    if not grid:
        return out
    threads = torch.get_num_threads() if threads is None else int(threads)
    bar = tqdm(total=len(grid), disable=not progress, desc="all-pairs blocks", unit="block")
    if executor is None:
        for i0, i1, c0, c1 in grid:
            out[i0:i1, c0:c1] = _score_block(sim_module, images, captions, lengths, image_mask, i0, i1, c0, c1)
            bar.update()
    elif executor == "process":
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=max(1, min(int(workers), len(grid))), mp_context=ctx,
                                 initializer=_init_worker,
                                 initargs=(sim_module, images, captions, lengths, image_mask, threads)) as pool:
            futures = {pool.submit(_worker_block, *b): b for b in grid}
            for fut in as_completed(futures):
                i0, i1, c0, c1 = futures[fut]
                out[i0:i1, c0:c1] = fut.result()
                bar.update()
    else:
        from .ray_backend import ray_blocks

        for (i0, i1, c0, c1), block in ray_blocks(sim_module, images, captions, lengths, image_mask, grid,
                                                 threads=threads, workers=workers, address=address):
            out[i0:i1, c0:c1] = block
            bar.update()
    bar.close()
    return out


def n_blocks(n_images: int, n_captions: int, blocks: tuple[int, int]) -> int:
    """Number of blocks of the grid (``ceil(Ni / bi) * ceil(Nc / bc)``)."""
    bi, bc = _check_blocks(blocks)
    return math.ceil(n_images / bi) * math.ceil(n_captions / bc)
