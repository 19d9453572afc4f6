"""Multi-process training under ``torchrun``: process group from the environment, sharding of
each global batch, gradient averaging, parameter checks.

:func:`attnlens.train.fit` uses these when launched by ``torchrun`` (``WORLD_SIZE > 1`` in the
environment), e.g.::

    torchrun --standalone --nproc_per_node=2 -m attnlens.train --task matching --preset quick

Every rank draws the same global batches (same seed, same epoch generator), takes its
contiguous shard of each (``torch.tensor_split`` along the first axis), computes its loss and
gradients, and the gradients are averaged over the ranks with one ``all_reduce`` before
clipping and the optimizer step: the maths of ``DistributedDataParallel`` (the tasks' loss
functions call the model directly, so the averaging is done in the loop rather than by a DDP
wrapper's hooks). Backend: ``gloo`` on CPU, ``nccl`` on CUDA (each rank uses
``cuda:LOCAL_RANK``). Only rank 0 evaluates (the metrics are broadcast) and writes checkpoints;
after every epoch the ranks compare a SHA-256 of their parameters and buffers and stop with
:class:`DistributedError` if they differ (``state.json`` records the hashes).

Where results equal single-process training with the same global batch and seed: losses that
are a mean of per-sample terms (per-sample cross-entropy, MSE): the averaged gradient is the
global-batch gradient, up to float rounding (summation order). Where they differ:

* the matching task's VSE++ loss is batch-dependent: each rank's similarity matrix is
  ``[B/W, B/W]``, so its negatives (and hardest negatives with ``max_violation``) come from its
  shard only, not from the global batch; the loss is also a *sum* over the batch, so averaged
  gradients are ``1/W`` of the global-batch sum's gradient (a smaller effective learning rate
  for Adam's first steps only: Adam is scale invariant);
* batches with fewer samples than ranks are skipped (all ranks agree), uneven last shards are
  weighted equally in the average, and dropout masks differ from the single-process run;
* the logged loss is the mean of the ranks' losses.

Resuming needs the run directory on a file system shared by the ranks (all ranks read rank 0's
checkpoint; a mismatch of the resumed epoch raises :class:`DistributedError`).
"""
from __future__ import annotations

import atexit
import hashlib
import os
from typing import Any

import torch
from torch import nn

from ..errors import AttnlensError


class DistributedError(AttnlensError, RuntimeError):
    """Ranks disagree (parameters, resumed epoch) or a batch cannot be sharded."""


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_from_env(device: str | torch.device = "cpu") -> tuple[int, int]:
    """Join the process group described by ``torchrun``'s environment; returns ``(rank, world)``.

    Without ``WORLD_SIZE > 1`` (a plain run) nothing happens and ``(0, 1)`` is returned.
    Backend ``nccl`` for a CUDA device (and ``cuda:LOCAL_RANK`` becomes the current device),
    ``gloo`` otherwise. Idempotent.

    >>> init_from_env("cpu") if "WORLD_SIZE" not in os.environ else (0, 1)
    (0, 1)
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if env_world_size() <= 1:
        return 0, 1
    cuda = torch.device(device).type == "cuda" if str(device) != "auto" else torch.cuda.is_available()
    if cuda:  # pragma: no cover - no GPU in CI
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    atexit.register(_destroy)
    return dist.get_rank(), dist.get_world_size()


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def dist_context() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (and in a plain run)."""
    return dist_context()[0] == 0


def batch_size(batch: Any) -> int:
    """Leading size shared by every tensor of a (nested tuple/list/dict) batch."""
    sizes = set()

    def visit(x):
        if isinstance(x, torch.Tensor):
            if x.ndim == 0:
                raise DistributedError("cannot shard a batch holding a 0-d tensor")
            sizes.add(int(x.shape[0]))
        elif isinstance(x, (tuple, list)):
            for v in x:
                visit(v)
        elif isinstance(x, dict):
            for v in x.values():
                visit(v)

    visit(batch)
    if len(sizes) != 1:
        raise DistributedError(f"cannot shard the batch: its tensors have leading sizes {sorted(sizes)} "
                               "(need one shared batch axis)")
    return sizes.pop()


def shard_batch(batch: Any, rank: int, world: int) -> Any:
    """Rank ``rank``'s contiguous shard of every tensor of ``batch`` (split along axis 0 as
    ``torch.tensor_split``); other leaves are kept.

    >>> shard_batch((torch.arange(5), {"k": torch.arange(5) * 10}), 1, 2)
    (tensor([3, 4]), {'k': tensor([30, 40])})
    """
    n = batch_size(batch)
    # tensor_split's sizes: the first n % world shards get one more
    sizes = [n // world + (1 if r < n % world else 0) for r in range(world)]
    start = sum(sizes[:rank])
    stop = start + sizes[rank]

    def cut(x):
        if isinstance(x, torch.Tensor):
            return x[start:stop]
        if isinstance(x, tuple):
            return tuple(cut(v) for v in x)
        if isinstance(x, list):
            return [cut(v) for v in x]
        if isinstance(x, dict):
            return {k: cut(v) for k, v in x.items()}
        return x

    return cut(batch)


def average_gradients(params, world: int) -> None:
    """Average the gradients of ``params`` over the ranks (one ``all_reduce`` of a flat buffer;
    a missing gradient counts as zeros)."""
    import torch.distributed as dist

    params = [p for p in params if p.requires_grad]
    if not params or world <= 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def mean_over_ranks(value: float, world: int, device: torch.device | None = None) -> float:
    """Mean of a float over the ranks (NaN anywhere gives NaN everywhere)."""
    import torch.distributed as dist

    if world <= 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    import torch.distributed as dist

    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, world: int) -> list:
    """Every rank's ``obj``, in rank order."""
    import torch.distributed as dist

    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


def state_hash(module: nn.Module | dict) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and bytes, in name order).

    >>> a = state_hash(nn.Linear(2, 2).requires_grad_(False).apply(lambda m: nn.init.zeros_(m.weight)))
    >>> len(a)
    64
    """
    state = module.state_dict() if isinstance(module, nn.Module) else module
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_in_sync(module: nn.Module, world: int) -> list[str]:
    """Every rank's :func:`state_hash`; raises :class:`DistributedError` when they differ."""
    hashes = gather_objects(state_hash(module), world)
    if len(set(hashes)) != 1:
        raise DistributedError(f"ranks hold different parameters after the epoch: {hashes}")
    return hashes
