"""Ray tasks for :func:`attnlens.distributed.sharded_similarity` (optional extra ``attnlens[ray]``).

Imported only when ``executor="ray"`` is asked for. The similarity module and the gallery
tensors are put in Ray's object store once; each task gets the references and an index range,
and returns its block. Tasks are retried by Ray when a worker dies (``max_retries``).
"""
from __future__ import annotations

import torch

from ..errors import require


def _ray():
    return require("ray", "ray")


def ensure_ray(address: str | None = None, num_cpus: int = 2):
    """Join Ray at ``address`` or, with none and no running instance, start a local one."""
    ray = _ray()
    if not ray.is_initialized():
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=int(num_cpus), include_dashboard=False, log_to_driver=False)
    return ray


def _block(module, images, captions, lengths, image_mask, threads, i0, i1, c0, c1):
    from .allpairs import _score_block

    if threads:
        torch.set_num_threads(int(threads))
    return _score_block(module, images, captions, lengths, image_mask, i0, i1, c0, c1)


def ray_blocks(module, images, captions, lengths, image_mask, grid, *, threads: int, workers: int = 2,
               address: str | None = None, max_retries: int = 3):
    """Yield ``((i0, i1, c0, c1), block)`` as the Ray tasks finish (any order)."""
    ray = ensure_ray(address, workers)
    remote = ray.remote(num_cpus=1, max_retries=max_retries)(_block)
    refs = [ray.put(x) for x in (module, images, captions, lengths, image_mask)]
    pending = {remote.remote(*refs, threads, *b): b for b in grid}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            yield pending.pop(ref), ray.get(ref)
