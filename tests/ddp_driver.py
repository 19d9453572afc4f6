"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (not a test module).

``python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_driver.py OUT``:

1. ``toy_fit(OUT/toy)``: float64 linear regression, mean-squared-error loss, SGD, through
   :func:`attnlens.train.fit` (each rank gets half of every global batch of 8);
2. each rank writes the hash of its parameters to ``OUT/rank<r>.sha256``;
3. the sync check must catch a parameter changed on rank 1 only (``OUT/desync_caught<r>``);
4. ``python -m attnlens.train`` (its ``main``) trains the quick matching config for 2 epochs
   into ``OUT/matching``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

N, BATCH, EPOCHS = 24, 8, 3


def toy_data():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(N, 3, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([[1.5], [-2.0], [0.5]], dtype=torch.float64) + 0.1 * torch.randn(N, 1, generator=g,
                                                                                            dtype=torch.float64)
    return x, y


def toy_fit(run_dir: Path) -> nn.Module:
    """Train the toy model with :func:`attnlens.train.fit` (single or multi-process alike)."""
    from attnlens.train import fit

    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    x, y = toy_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def batches(epoch, gen):
        order = torch.randperm(N, generator=gen)
        return [(x[order[a:a + BATCH]], y[order[a:a + BATCH]]) for a in range(0, N, BATCH)]

    def loss_fn(batch, epoch):
        xb, yb = batch
        return ((model(xb) - yb) ** 2).mean()

    fit(model, opt, run_dir=run_dir, config={"toy": 1}, epochs=EPOCHS, seed=3, batches=batches, loss_fn=loss_fn,
        progress=False)
    return model


def main(out: str) -> int:
    import torch.distributed as dist

    from attnlens.distributed import ddp
    from attnlens.train.__main__ import main as train_main

    out = Path(out)
    model = toy_fit(out / "toy")
    rank, world = ddp.dist_context()
    assert world == 2, world
    (out / f"rank{rank}.sha256").write_text(ddp.state_hash(model))
    if rank == 1:
        with torch.no_grad():
            model.weight[0, 0] += 1.0
    try:
        ddp.check_in_sync(model, world)
    except ddp.DistributedError:
        (out / f"desync_caught{rank}").write_text("yes")
    dist.barrier()
    return train_main(["--task", "matching", "--alignment", "dot", "--preset", "quick", "--out",
                       str(out / "matching"), "--no-progress", "--config", '{"epochs": 2}',
                       "--json", str(out / "rows.json")])


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main(sys.argv[1]))


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
