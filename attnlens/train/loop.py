"""The epoch loop shared by the tasks: seeding, device selection, progress bars, a checkpoint
after every epoch and resuming from the last one.

Determinism: the data order of epoch ``e`` comes from :func:`epoch_generator` ``(seed, e)``, not
from a global stream, and the global RNG states (dropout) are saved with every checkpoint, so
a run interrupted after any epoch and resumed ends with the same weights and metrics as an
uninterrupted run.

Launched by ``torchrun`` (``WORLD_SIZE > 1``), :func:`fit` joins the process group, wraps the
model in ``DistributedDataParallel`` and trains each rank on its shard of every global batch
(the loss function's forward runs through the wrapper, whose reducer averages the gradients over
the ranks); only rank 0 evaluates and writes checkpoints (see :mod:`attnlens.distributed.ddp`,
which also says where the results differ from a single-process run).
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sized

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import AttnlensError, CheckpointError, UnknownNameError
from .checkpoint import has_checkpoint, load_checkpoint, load_trainer_state, read_config, save_checkpoint

DEVICES = ("cpu", "cuda", "auto")


class DeviceError(AttnlensError, RuntimeError):
    """A device that is not available on this machine."""


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch (CPU and CUDA); make cuDNN
    deterministic (cheap). CPU kernels used here are deterministic for a fixed thread count.

    >>> set_seed(3); a = torch.rand(2)
    >>> set_seed(3); bool(torch.equal(a, torch.rand(2)))
    True
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():  # pragma: no cover - no GPU in CI
        torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``"cpu"``, ``"cuda"`` (or ``"cuda:N"``) or ``"auto"`` (CUDA when available).

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise UnknownNameError("device", name, DEVICES)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} was asked for but CUDA is not available here; use 'cpu' or 'auto'")
    return torch.device(name)


@contextlib.contextmanager
def cpu_threads(n: int):
    """Run the block with ``torch.set_num_threads(n)`` (``n <= 0``: unchanged), then restore.

    >>> with cpu_threads(1):
    ...     torch.get_num_threads()
    1
    """
    before = torch.get_num_threads()
    if n and n > 0:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that fixes the data order (and any sampling) of ``epoch``."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))


def config_diff(a: dict, b: dict) -> list[str]:
    """Keys whose values differ between two config dicts."""
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


def _probe_unused(model: nn.Module, loss_fn: Callable, data: Iterable[Any], epoch: int, rank: int,
                  world: int) -> list[str] | None:
    """Trainable parameters that the loss of the first shardable batch of ``data`` leaves without
    a gradient on any rank (sorted names; None when no batch can be sharded)."""
    from ..distributed import ddp as _ddp

    trial = next((b for b in data if _ddp.batch_size(b) >= world), None)  # the same batch on every rank
    if trial is None:
        return None
    trial = _ddp.shard_batch(trial, rank, world)
    mine = _ddp.probe_unused(model, lambda: loss_fn(trial, epoch, model))
    return sorted(set().union(*_ddp.gather_objects(mine, world)))


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, *, run_dir: str | Path, config: dict, epochs: int,
        seed: int, batches: Callable[[int, torch.Generator], Iterable[Any]],
        loss_fn: Callable[[Any, int, nn.Module], torch.Tensor], evaluate: Callable[[], dict] | None = None,
        eval_every: int = 0, lr_at: Callable[[int], float] | None = None, grad_clip: float = 0.0,
        progress: bool = True, resume: bool = True, desc: str = "train",
        find_unused_parameters: bool | None = None) -> dict:
    """Train ``model`` for ``epochs`` epochs with a checkpoint after each; returns the final state.

    Args:
        run_dir: where checkpoints go (see :mod:`attnlens.train.checkpoint`).
        config: JSON-ready dict saved as ``config.json``; a resumed run must have the same one.
        batches: ``(epoch, generator) -> iterable of batches`` (deterministic given the generator).
        loss_fn: ``(batch, epoch, net) -> scalar loss``, where ``net`` is the module whose forward
            the loss must call: ``model`` itself in a plain run, ``model`` wrapped in
            ``DistributedDataParallel`` under ``torchrun`` (only forwards through the wrapper
            have their gradients averaged over the ranks). The loop does backward, clipping
            and the step.
        evaluate: ``() -> metrics`` called in eval mode under ``no_grad`` every ``eval_every``
            epochs (0: only after the last epoch) and after the last epoch.
        lr_at: learning rate for an epoch (set on every parameter group at the epoch's start).
        resume: continue from the checkpoint in ``run_dir`` if there is one.
        find_unused_parameters: DDP's option, used only under ``torchrun``. ``None``: on when a
            trial forward of the first batch (on any rank; RNG states and buffers restored)
            leaves a trainable parameter without a gradient
            (:func:`attnlens.distributed.ddp.probe_unused`); pass ``True`` for a model whose set
            of used parameters changes from batch to batch.

    Under ``torchrun`` (``WORLD_SIZE > 1``) each rank gets its contiguous shard of every global
    batch (batches smaller than the number of ranks are skipped) and DDP averages the
    gradients: for a loss that is a mean over equal shards this is the single-process
    global-batch step up to float rounding; a batch-dependent loss is computed per shard (the
    ``matching`` task's VSE++ loss mines its hardest negatives among the rank's own shard of the
    batch, not the global batch). See :mod:`attnlens.distributed.ddp` for every difference.
    The ranks start from rank 0's weights, must resume from the same epoch, take rank 0's
    buffers (batch-norm running statistics) and compare a hash of their parameters and buffers
    after every epoch (``state.json``: ``distributed.param_sha256``); the logged loss is the
    mean over the ranks; rank 0 alone evaluates and writes checkpoints (the unwrapped model's
    state dict). A plain run never wraps the model.

    Returns:
        ``{"epoch", "history", "train_seconds"}``; history has one dict per epoch (``loss``,
        ``seconds``, and the metrics of evaluated epochs).
    """
    from ..distributed import ddp as _ddp

    run_dir = Path(run_dir)
    first = next(iter(model.parameters()), None)
    rank, world = _ddp.init_from_env(first.device if first is not None else "cpu")
    progress = progress and rank == 0
    start, history, seconds = 0, [], 0.0
    if resume and has_checkpoint(run_dir):
        old = read_config(run_dir)
        diff = config_diff(old, config)
        if diff:
            raise CheckpointError(f"{run_dir} holds a run with another config (differs in: {', '.join(diff)}); "
                                  "choose another directory or pass resume=False")
        state = load_checkpoint(run_dir, model)
        start, history = int(state["epoch"]), list(state.get("history", []))
        if start < epochs:  # a finished run (e.g. shipped without trainer.pt) needs no optimizer state
            load_trainer_state(run_dir, optimizer)
        seconds = float(state.get("train_seconds", 0.0))
    if world > 1:
        starts = _ddp.gather_objects(start, world)
        if len(set(starts)) != 1:
            raise _ddp.DistributedError(f"ranks resume from different epochs {starts}: the run directory "
                                        f"{run_dir} must be on a file system shared by the ranks")
    net, unused = model, []
    if world > 1 and start < epochs:
        model.train()
        if find_unused_parameters is None:
            unused = _probe_unused(model, loss_fn, batches(start, epoch_generator(seed, start)), start, rank, world)
            find_unused_parameters = unused is None or bool(unused)  # nothing to probe: the safe choice
        net = _ddp.wrap(model, find_unused_parameters=find_unused_parameters)  # copies rank 0's weights
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch)
        net.train()
        data = batches(epoch, epoch_generator(seed, epoch))
        total = len(data) if isinstance(data, Sized) else None
        bar = tqdm(data, total=total, desc=f"{desc} {epoch + 1}/{epochs}", disable=not progress, leave=False)
        losses = []
        for batch in bar:
            if world > 1:
                if _ddp.batch_size(batch) < world:  # every rank sees the same global batch: same decision
                    continue
                batch = _ddp.shard_batch(batch, rank, world)
            loss = loss_fn(batch, epoch, net)
            loss_value = _ddp.mean_over_ranks(float(loss.detach()), world, loss.device)
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"non-finite training loss {loss_value} at epoch {epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # under torchrun DDP's hooks average the gradients over the ranks here
            bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
            if bad:
                raise FloatingPointError(f"non-finite gradients at epoch {epoch + 1} in {', '.join(bad[:8])}"
                                         + (f" ... ({len(bad)} parameters)" if len(bad) > 8 else ""))
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            losses.append(loss_value)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.close()
        entry: dict[str, Any] = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else math.nan}
        last = epoch + 1 == epochs
        if evaluate is not None and (last or (eval_every and (epoch + 1) % eval_every == 0)):
            metrics: dict = {}
            if rank == 0:
                model.eval()
                with torch.no_grad():
                    metrics = {k: float(v) for k, v in evaluate().items()}
                model.train()
            entry.update(_ddp.broadcast_object(metrics) if world > 1 else metrics)
        dt = time.perf_counter() - t0
        seconds += dt
        entry["seconds"] = dt
        history.append(entry)
        extra: dict[str, Any] = {"train_seconds": seconds}
        if world > 1:
            _ddp.sync_buffers(model)  # rank 0's running statistics (as DDP's next forward would copy them)
            extra["distributed"] = {"world_size": world, "param_sha256": _ddp.check_in_sync(model, world),
                                    "find_unused_parameters": bool(find_unused_parameters),
                                    "unused_parameters": unused or []}
        if rank == 0:
            save_checkpoint(run_dir, model, config=config, epoch=epoch + 1, history=history, optimizer=optimizer,
                            extra=extra)
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
    model.eval()
    return {"epoch": max(start, epochs), "history": history, "train_seconds": seconds}
