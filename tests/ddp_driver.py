"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (not a test module).

``python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_driver.py OUT``:

1. ``toy_fit(OUT/toy)``: float64 linear regression (plus a head the loss never uses, so the
   run needs DDP's ``find_unused_parameters``), mean-squared-error loss, SGD, through
   :func:`attnlens.train.fit` (each rank gets half of every global batch of 8); each rank
   writes the type of the module its loss function was given to ``OUT/net<r>.txt``;
2. each rank writes the hash of its parameters to ``OUT/rank<r>.sha256``;
3. the sync check must catch a parameter changed on rank 1 only (``OUT/desync_caught<r>``);
4. ``bn_fit(OUT/bn)``: a toy with a ``BatchNorm1d`` (its running statistics must end equal on
   the ranks);
5. ``generation_fit(OUT/generation)``: the generation task (a mean-reduced pixel loss, Adam,
   gradient clipping) on ``GENERATION_CONFIG``;
6. ``python -m attnlens.train`` (its ``main``) trains the quick matching config for 2 epochs
   into ``OUT/matching``.

``... tests/ddp_driver.py OUT tasks`` (the slow test) trains the quick VQA config (batch norm,
a question-weighted loss) and a matching RCAR ``only_rcr`` model (an unused parameter) instead.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

N, BATCH, EPOCHS = 24, 8, 3
# 32 scenes in batches of 8 (4 per rank), 2 epochs: 8 Adam steps
GENERATION_CONFIG = {"epochs": 2, "n_train": 32, "batch_size": 8, "n_eval": 4}


class ToyRegression(nn.Module):
    """``y = linear(x)``; ``head`` takes no part in the forward (as RCAR ``only_rcr``'s
    ``sim_eval_w`` in training)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.linear(x)


def toy_data():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(N, 3, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([[1.5], [-2.0], [0.5]], dtype=torch.float64) + 0.1 * torch.randn(N, 1, generator=g,
                                                                                            dtype=torch.float64)
    return x, y


def toy_fit(run_dir: Path) -> tuple[nn.Module, list]:
    """Train the toy model with :func:`attnlens.train.fit` (single or multi-process alike); returns
    it and the ``(type name, is the model itself)`` of the module given to each loss call."""
    from attnlens.train import fit

    torch.manual_seed(0)
    model = ToyRegression().double()
    x, y = toy_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def batches(epoch, gen):
        order = torch.randperm(N, generator=gen)
        return [(x[order[a:a + BATCH]], y[order[a:a + BATCH]]) for a in range(0, N, BATCH)]

    nets = []

    def loss_fn(batch, epoch, net):
        nets.append((type(net).__name__, net is model))
        xb, yb = batch
        return ((net(xb) - yb) ** 2).mean()

    fit(model, opt, run_dir=run_dir, config={"toy": 1}, epochs=EPOCHS, seed=3, batches=batches, loss_fn=loss_fn,
        progress=False)
    return model, nets


def bn_fit(run_dir: Path) -> nn.Module:
    """A float64 regression through ``BatchNorm1d`` (train mode: per-shard batch statistics)."""
    from attnlens.train import fit

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double()
    x, y = toy_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def batches(epoch, gen):
        order = torch.randperm(N, generator=gen)
        return [(x[order[a:a + BATCH]], y[order[a:a + BATCH]]) for a in range(0, N, BATCH)]

    def loss_fn(batch, epoch, net):
        xb, yb = batch
        return ((net(xb) - yb) ** 2).mean()

    fit(model, opt, run_dir=run_dir, config={"bn": 1}, epochs=2, seed=4, batches=batches, loss_fn=loss_fn,
        progress=False)
    return model


def generation_fit(run_dir: Path) -> Path:
    """The generation task's training (dot alignment, seed 0) on ``GENERATION_CONFIG``."""
    from attnlens.tasks import get_task

    return get_task("generation").train(alignment="dot", seed=0, out_dir=run_dir, config=GENERATION_CONFIG,
                                        progress=False)


def main_tasks(out: Path) -> int:
    """The slow test's runs: VQA (quick) and matching RCAR ``only_rcr`` through ``attnlens.train``."""
    from attnlens.train.__main__ import main as train_main

    train_main(["--task", "vqa", "--alignment", "general", "--preset", "quick", "--out", str(out / "vqa"),
                "--no-progress", "--config", '{"epochs": 2}'])
    return train_main(["--task", "matching", "--alignment", "dot", "--preset", "quick", "--out", str(out / "rcr"),
                       "--no-progress", "--config", '{"epochs": 2, "rcar": {"mode": "only_rcr", "steps": 1}}'])


def main(out: str) -> int:
    import torch.distributed as dist

    from attnlens.distributed import ddp
    from attnlens.train.__main__ import main as train_main

    out = Path(out)
    model, nets = toy_fit(out / "toy")
    rank, world = ddp.dist_context()
    assert world == 2, world
    (out / f"net{rank}.txt").write_text(repr(nets))
    (out / f"rank{rank}.sha256").write_text(ddp.state_hash(model))
    if rank == 1:
        with torch.no_grad():
            model.linear.weight[0, 0] += 1.0
    try:
        ddp.check_in_sync(model, world)
    except ddp.DistributedError:
        (out / f"desync_caught{rank}").write_text("yes")
    dist.barrier()
    bn_fit(out / "bn")
    generation_fit(out / "generation")
    return train_main(["--task", "matching", "--alignment", "dot", "--preset", "quick", "--out",
                       str(out / "matching"), "--no-progress", "--config", '{"epochs": 2}',
                       "--json", str(out / "rows.json")])


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main_tasks(Path(sys.argv[1])) if sys.argv[2:] == ["tasks"] else main(sys.argv[1]))


def die_once_similarity(marker: str, **kwargs):
    """A ScanSimilarity whose first forward in any process kills that process (after creating
    ``marker``); later forwards score normally. For the Ray retry test."""
    from attnlens.models.scan import ScanSimilarity

    class DieOnce(ScanSimilarity):
        def forward(self, *args, **kw):
            if not os.path.exists(self.marker):
                Path(self.marker).write_text("died")
                os._exit(1)
            return super().forward(*args, **kw)

    sim = DieOnce(**kwargs)
    sim.marker = marker
    return sim
