"""Scale-out: sharded all-pairs scoring equals the single-process matrix bit for bit; training
under torchrun (2 CPU processes, gloo) keeps the ranks' parameters in sync."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from attnlens.distributed import block_grid, sharded_similarity
from attnlens.distributed import ddp
from attnlens.errors import NonFiniteError, ShapeError, UnknownNameError
from attnlens.models.scan import GEMM_TILE, ScanSimilarity

ROOT = Path(__file__).resolve().parents[1]


def gallery(ni=40, nc=150, R=5, L=7, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ims = torch.randn(ni, R, D, generator=g, dtype=torch.float64)
    caps = torch.randn(nc, L, D, generator=g, dtype=torch.float64)
    lens = torch.randint(1, L + 1, (nc,), generator=g)
    mask = torch.rand(ni, R, generator=g) > 0.3
    mask[:, 0] = True
    return ims, caps, lens, mask


# ----------------------------------------------------------------------------- all-pairs blocks
def test_block_grid_covers_every_pair_once():
    grid = block_grid(40, 150, (16, 128))
    cover = torch.zeros(40, 150, dtype=torch.long)
    for i0, i1, c0, c1 in grid:
        assert i0 % GEMM_TILE[0] == 0 and c0 % GEMM_TILE[1] == 0
        cover[i0:i1, c0:c1] += 1
    assert bool((cover == 1).all()) and len(grid) == 3 * 2
    assert block_grid(0, 5, (16, 64)) == []


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("alignment", ["dot", "general"])
def test_sharded_equals_single_process_bit_for_bit(direction, alignment):
    ims, caps, lens, mask = gallery()
    sim = ScanSimilarity(direction, "lse", alignment=alignment, dim=8).double()
    with torch.no_grad():
        ref = sim(ims, caps, lens, image_mask=mask)
    for blocks in [(16, 64), (32, 128), (48, 64), (64, 192), (16, 1024)]:
        out = sharded_similarity(sim, ims, caps, lens, blocks=blocks, image_mask=mask)
        assert out.dtype == torch.float64 and out.shape == (40, 150)
        assert torch.equal(out, ref), (blocks, (out - ref).abs().max())


def test_sharded_matches_slow_reference():
    """Each entry equals SCAN scored on that one pair (pair-locality), up to rounding."""
    ims, caps, lens, _ = gallery(ni=17, nc=65)
    sim = ScanSimilarity("t2i", "mean").double()
    out = sharded_similarity(sim, ims, caps, lens, blocks=(16, 64))
    for i, c in [(0, 0), (16, 64), (5, 33), (16, 0), (3, 64)]:
        one = sim(ims[i:i + 1], caps[c:c + 1, :int(lens[c])], lens[c:c + 1])
        assert torch.allclose(out[i, c], one[0, 0], rtol=1e-12, atol=1e-12)


def test_process_pool_equals_single_process_bit_for_bit():
    ims, caps, lens, mask = gallery()
    for direction, blocks in [("t2i", (16, 64)), ("i2t", (32, 128))]:
        sim = ScanSimilarity(direction, "lse", alignment="general", dim=8).double()
        with torch.no_grad():
            ref = sim(ims, caps, lens, image_mask=mask)
        out = sharded_similarity(sim, ims, caps, lens, blocks=blocks, image_mask=mask, executor="process",
                                 workers=2)
        assert torch.equal(out, ref), (direction, (out - ref).abs().max())


def test_sharded_bad_input():
    ims, caps, lens, _ = gallery(ni=4, nc=6)
    sim = ScanSimilarity("t2i", "mean")
    with pytest.raises(ShapeError, match="multiples of GEMM_TILE"):
        sharded_similarity(sim, ims, caps, lens, blocks=(10, 64))
    with pytest.raises(UnknownNameError, match="dask"):
        sharded_similarity(sim, ims, caps, lens, blocks=(16, 64), executor="dask")
    with pytest.raises(ShapeError, match=r"lengths \(5,\)"):
        sharded_similarity(sim, ims, caps, lens[:5], blocks=(16, 64))
    bad = caps.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        sharded_similarity(sim, ims, bad, lens.clamp(min=1).fill_(7), blocks=(16, 64))


# ----------------------------------------------------------------------------- ddp helpers
def test_shard_batch_splits_like_tensor_split():
    x, y = torch.arange(7), torch.arange(14).reshape(7, 2)
    parts = [ddp.shard_batch((x, {"y": y, "tag": "t"}), r, 3) for r in range(3)]
    for (xs, d), ref_x, ref_y in zip(parts, torch.tensor_split(x, 3), torch.tensor_split(y, 3)):
        assert torch.equal(xs, ref_x) and torch.equal(d["y"], ref_y) and d["tag"] == "t"
    with pytest.raises(ddp.DistributedError, match=r"\[3, 7\]"):
        ddp.shard_batch((x, torch.arange(3)), 0, 2)


def test_state_hash_sees_every_bit():
    m = torch.nn.Linear(3, 2)
    h = ddp.state_hash(m)
    assert h == ddp.state_hash({k: v.clone() for k, v in m.state_dict().items()})
    with torch.no_grad():
        m.bias[0] = torch.nextafter(m.bias[0], torch.tensor(1.0))
    assert ddp.state_hash(m) != h


# ----------------------------------------------------------------------------- torchrun
@pytest.fixture(scope="module")
def torchrun_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_driver.py"), str(out)]
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_torchrun_matching_training_keeps_ranks_in_sync(torchrun_out):
    out, proc = torchrun_out
    run_dir = out / "matching" / "matching-dot-seed0"
    state = json.loads((run_dir / "state.json").read_text())
    assert state["epoch"] == 2
    hashes = state["distributed"]["param_sha256"]
    assert state["distributed"]["world_size"] == 2 and len(hashes) == 2 and hashes[0] == hashes[1]
    # the saved weights are the ones every rank held
    assert ddp.state_hash(load_file(str(run_dir / "model.safetensors"))) == hashes[0]
    # only rank 0 printed and wrote the results
    assert len([ln for ln in proc.stdout.splitlines() if ln.startswith("{")]) == 1
    rows = json.loads((out / "rows.json").read_text())
    assert len(rows) == 1 and "t2i_r1" in rows[0]
    # training moved every rank's weights away from the (seeded) initialisation
    from attnlens.tasks import get_task
    from attnlens.tasks.matching import _vocab
    from attnlens.train import set_seed

    task = get_task("matching")
    trained = task.load(run_dir).state_dict()
    set_seed(0)
    init = task.build_model(task.resolve_config(json.loads((run_dir / "config.json").read_text())),
                            alignment="dot", vocab_size=len(_vocab())).state_dict()
    assert {k: v.shape for k, v in init.items()} == {k: v.shape for k, v in trained.items()}
    changed = [k for k in init if init[k].is_floating_point() and not torch.equal(init[k], trained[k])]
    assert len(changed) > len(init) // 2, changed


def test_torchrun_ranks_agree_and_desync_is_caught(torchrun_out):
    out, _ = torchrun_out
    assert (out / "rank0.sha256").read_text() == (out / "rank1.sha256").read_text()
    assert (out / "desync_caught0").exists() and (out / "desync_caught1").exists()


def test_torchrun_mean_loss_equals_single_process(torchrun_out, tmp_path, monkeypatch):
    """Mean-of-samples loss: 2 ranks x half batches == 1 process x global batch (up to rounding)."""
    out, _ = torchrun_out
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    from ddp_driver import toy_fit

    single = toy_fit(tmp_path / "single")
    two = load_file(str(out / "toy" / "model.safetensors"))
    for name, value in single.state_dict().items():
        assert torch.allclose(two[name], value, rtol=1e-12, atol=1e-14), name
    x0 = torch.nn.Linear(3, 1).double()  # training changed the weights
    assert not torch.allclose(two["weight"], x0.weight)
    state = json.loads((out / "toy" / "state.json").read_text())
    single_state = json.loads((tmp_path / "single" / "state.json").read_text())
    for a, b in zip(state["history"], single_state["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-12)


@pytest.mark.slow
def test_ray_equals_single_process_bit_for_bit():
    ray = pytest.importorskip("ray")
    ims, caps, lens, mask = gallery()
    started = not ray.is_initialized()
    try:
        for direction, blocks in [("t2i", (16, 64)), ("i2t", (32, 128))]:
            sim = ScanSimilarity(direction, "lse", alignment="general", dim=8).double()
            with torch.no_grad():
                ref = sim(ims, caps, lens, image_mask=mask)
            out = sharded_similarity(sim, ims, caps, lens, blocks=blocks, image_mask=mask, executor="ray",
                                     workers=2)
            assert torch.equal(out, ref), (direction, (out - ref).abs().max())
    finally:
        if started:
            ray.shutdown()


# ----------------------------------------------------------------------------- study engines
def test_default_paths_do_not_import_ray():
    code = ("import sys, attnlens.study, attnlens.study.runner, attnlens.distributed, attnlens.train, "
            "attnlens.cli; assert 'ray' not in sys.modules, 'ray imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_unknown_engine(tmp_path):
    from attnlens.study import run_study

    with pytest.raises(UnknownNameError, match="local, ray"):
        run_study(tmp_path, preset="quick", tasks=["matching"], alignments=["dot"], seeds=1, engine="dask",
                  progress=False)


@pytest.mark.slow
def test_study_on_ray_equals_local(tmp_path):
    ray = pytest.importorskip("ray")
    from attnlens.study import run_study

    kw = dict(preset="quick", tasks=["matching"], alignments=["dot", "general"], seeds=1, checkpoints=None,
              progress=False)
    local = run_study(tmp_path / "local", **kw)
    started = not ray.is_initialized()
    try:
        remote = run_study(tmp_path / "ray", engine="ray", **kw)
        assert sorted(remote.ran) == sorted(local.ran) and len(remote.ran) == 2
        for name in ("metrics.csv", "metrics_long.csv", "curves.csv"):
            assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name
        again = run_study(tmp_path / "ray", engine="ray", **kw)  # finished units are not recomputed
        assert again.ran == [] and len(again.reused) == 2
        assert not list((tmp_path / "ray" / "units").rglob(".partial-*"))
    finally:
        if started:
            ray.shutdown()


@pytest.mark.slow
def test_ray_retries_a_worker_that_dies(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    from ddp_driver import die_once_similarity

    if ray.is_initialized():
        ray.shutdown()
    ims, caps, lens, mask = gallery()
    sim = die_once_similarity(str(tmp_path / "died"), direction="t2i", agg="lse").double()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = sharded_similarity(sim, ims, caps, lens, blocks=(16, 64), image_mask=mask, executor="ray")
    finally:
        ray.shutdown()
    assert (tmp_path / "died").exists()  # a worker did die mid-job
    with torch.no_grad():
        ref = sim(ims, caps, lens, image_mask=mask)  # the marker exists now: scores normally
    assert torch.equal(out, ref)
