"""Multi-process training under ``torchrun``: process group from the environment, batch sharding,
the :class:`~torch.nn.parallel.DistributedDataParallel` wrapper, parameter checks.

:func:`attnlens.train.fit` uses these when launched by ``torchrun`` (``WORLD_SIZE > 1`` in the
environment), e.g.::

    torchrun --standalone --nproc_per_node=2 -m attnlens.train --task matching --preset quick

Every rank draws the same global batches (same seed, same epoch generator) and takes its
contiguous shard of each (``torch.tensor_split`` along the first axis). The model is wrapped in
``DistributedDataParallel`` (:func:`wrap`) and the task's loss function runs its forward pass
through the wrapper (``fit`` passes it as ``net``), so DDP's reducer averages the gradients over
the ranks during ``backward`` (bucketed ``all_reduce``, overlapping the backward pass), before
clipping and the optimizer step. ``find_unused_parameters`` is switched on only when a trial
forward of the first batch leaves a trainable parameter out of the loss's graph
(:func:`unused_parameters`; e.g. ``sim_eval_w`` of an RCAR ``only_rcr`` model). Backend
(:func:`backend_for`): ``gloo`` on CPU, ``nccl`` on CUDA (each rank uses ``cuda:LOCAL_RANK``).
Only rank 0 evaluates (the metrics are broadcast) and writes checkpoints, which hold the
unwrapped module's state dict (no ``module.`` prefix); after every epoch the ranks compare a
SHA-256 of their parameters and buffers and stop with :class:`DistributedError` if they differ
(``state.json`` records the hashes).

Where results equal single-process training with the same global batch and seed: losses that
are a mean of per-sample terms over equal shards (the ``generation`` task's pixel losses,
per-sample MSE): the averaged gradient is the global-batch gradient, up to float rounding
(summation order, kernels run on smaller batches). Where they differ:

* the ``matching`` task's VSE++ loss is batch-dependent: each rank's similarity matrix is
  ``[B/W, B/W]``, so its negatives (and hardest negatives with ``max_violation``) come from its
  shard only, not from the global batch; the loss is also a *sum* over the batch, so averaged
  gradients are ``1/W`` of the global-batch sum's gradient (a smaller effective learning rate
  for Adam's first steps only: Adam is scale invariant);
* the ``vqa`` task shards images, and its cross-entropy is a mean over each rank's questions
  (images carry different numbers of questions, so the ranks' means are weighted equally, not
  by question count); its region ``BatchNorm1d`` normalises with each shard's statistics (no
  ``SyncBatchNorm``, which has no CPU implementation) and its running statistics are rank 0's
  (DDP copies them to the other ranks at every forward, ``fit`` once more after each epoch's
  last step, :func:`sync_buffers`);
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
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import AttnlensError, UnknownNameError

BACKENDS = {"cpu": "gloo", "cuda": "nccl"}


class DistributedError(AttnlensError, RuntimeError):
    """Ranks disagree (parameters, resumed epoch), a batch cannot be sharded, or the set-up
    cannot train with ``DistributedDataParallel``."""


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def backend_for(device: str | torch.device) -> str:
    """The process-group backend for training on ``device``: ``gloo`` for CPU, ``nccl`` for CUDA
    (``"auto"``: CUDA when available).

    >>> backend_for("cpu"), backend_for("cuda:1"), backend_for(torch.device("cuda", 0))
    ('gloo', 'nccl', 'nccl')
    """
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise UnknownNameError("device for distributed training", str(device), BACKENDS) from None
    if kind not in BACKENDS:
        raise UnknownNameError("device type for distributed training", kind, BACKENDS)
    return BACKENDS[kind]


def init_from_env(device: str | torch.device = "cpu") -> tuple[int, int]:
    """Join the process group described by ``torchrun``'s environment; returns ``(rank, world)``.

    Without ``WORLD_SIZE > 1`` (a plain run) nothing happens and ``(0, 1)`` is returned.
    The backend is :func:`backend_for` ``(device)``; with ``nccl``, ``cuda:LOCAL_RANK`` becomes
    the current device. Idempotent.

    >>> init_from_env("cpu") if "WORLD_SIZE" not in os.environ else (0, 1)
    (0, 1)
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if env_world_size() <= 1:
        return 0, 1
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
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


def _trainable(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


def device_ids_for(device: str | torch.device) -> dict:
    """``DistributedDataParallel``'s device arguments for a module on ``device``: its CUDA index as
    ``device_ids``/``output_device`` (the current device for a bare ``"cuda"``), none on CPU.

    >>> device_ids_for("cpu"), device_ids_for("cuda:1")
    ({}, {'device_ids': [1], 'output_device': 1})
    """
    device = torch.device(device)
    if device.type != "cuda":
        return {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    return {"device_ids": [index], "output_device": index}


def wrap(module: nn.Module, *, find_unused_parameters: bool = False) -> nn.Module:
    """``module`` in :class:`~torch.nn.parallel.DistributedDataParallel` on the initialised
    process group. DDP's construction checks that the ranks' parameters have the same shapes and
    copies rank 0's parameters and buffers to every rank.

    Raises:
        DistributedError: no process group, no trainable parameter, or an ``nccl`` group with a
            module that is not on one CUDA device.
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not (dist.is_available() and dist.is_initialized()):
        raise DistributedError("no process group to wrap the model in: launch with torchrun and call "
                               "init_from_env first")
    params = _trainable(module)
    if not params:
        raise DistributedError(f"{type(module).__name__} has no trainable parameter: nothing to train "
                               "with DistributedDataParallel")
    devices = sorted({str(p.device) for _, p in params})
    backend = dist.get_backend()
    if backend == "nccl" and (len(devices) != 1 or not devices[0].startswith("cuda")):
        raise DistributedError(f"the process group uses nccl but the model's parameters are on {devices}; "
                               f"nccl reduces tensors of one CUDA device (train on cuda, or on CPU with a "
                               f"{BACKENDS['cpu']} group: init_from_env('cpu'))")
    kwargs = device_ids_for(devices[0]) if len(devices) == 1 else {}
    return DistributedDataParallel(module, find_unused_parameters=bool(find_unused_parameters), **kwargs)


def unused_parameters(module: nn.Module, loss: torch.Tensor) -> list[str]:
    """Names of ``module``'s trainable parameters that ``loss``'s autograd graph does not reach:
    ``loss.backward()`` would leave them without a gradient (DDP needs
    ``find_unused_parameters=True`` for those).

    >>> m = nn.ModuleDict({"used": nn.Linear(2, 1), "head": nn.Linear(2, 1)})
    >>> unused_parameters(m, m["used"](torch.ones(1, 2)).sum())
    ['head.weight', 'head.bias']
    """
    reached: set[int] = set()
    seen: set = set()
    stack = [loss.grad_fn] if loss.grad_fn is not None else []
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        leaf = getattr(node, "variable", None)  # AccumulateGrad: the leaf tensor it accumulates into
        if leaf is not None:
            reached.add(id(leaf))
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    return [name for name, p in _trainable(module) if id(p) not in reached]


def probe_unused(module: nn.Module, loss_of: Callable[[], torch.Tensor]) -> list[str]:
    """:func:`unused_parameters` of the trial loss ``loss_of()`` (which calls ``module``), leaving
    no trace: the CPU and CUDA RNG states and the buffers (batch-norm running statistics) are
    restored afterwards; no gradient is computed.

    >>> m = nn.ModuleDict({"used": nn.Linear(2, 1), "head": nn.Linear(2, 1)})
    >>> probe_unused(m, lambda: m["used"](torch.ones(1, 2)).sum())
    ['head.weight', 'head.bias']
    """
    cuda = sorted({p.device for p in module.parameters() if p.device.type == "cuda"}, key=str)
    saved = [b.detach().clone() for b in module.buffers()]
    try:
        with torch.random.fork_rng(devices=cuda), torch.enable_grad():
            return unused_parameters(module, loss_of())
    finally:
        with torch.no_grad():
            for b, s in zip(module.buffers(), saved):
                b.copy_(s)


def mean_over_ranks(value: float, world: int, device: torch.device | None = None) -> float:
    """Mean of a float over the ranks (NaN anywhere gives NaN everywhere)."""
    import torch.distributed as dist

    if world <= 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world


def sync_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank, as DDP does at the
    start of each forward; :func:`attnlens.train.fit` calls it after an epoch's last step so that
    the ranks agree when their hashes are compared."""
    import torch.distributed as dist

    with torch.no_grad():
        for b in module.buffers():
            dist.broadcast(b, src=0)


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
        raise DistributedError(f"ranks hold different parameters or buffers after the epoch: {hashes}")
    return hashes
