"""Scale-out: sharded all-pairs scoring equals the single-process matrix bit for bit; training
under torchrun (2 CPU processes, gloo, DistributedDataParallel) keeps the ranks' parameters in
sync and, for mean-reduced losses, equals single-process training."""
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


def test_backend_for_device(monkeypatch):
    assert ddp.backend_for("cpu") == "gloo"
    assert ddp.backend_for("cuda") == ddp.backend_for("cuda:1") == ddp.backend_for(torch.device("cuda", 0)) == "nccl"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ddp.backend_for("auto") == "nccl"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ddp.backend_for("auto") == "gloo"
    with pytest.raises(UnknownNameError, match="cpu, cuda"):
        ddp.backend_for("mps")
    assert ddp.device_ids_for("cpu") == {}
    assert ddp.device_ids_for("cuda:1") == {"device_ids": [1], "output_device": 1}


@pytest.mark.parametrize("device, backend, cuda_device", [("cpu", "gloo", None), ("cuda", "nccl", 1),
                                                          ("cuda:0", "nccl", 1)])
def test_init_from_env_joins_with_the_device_backend(monkeypatch, device, backend, cuda_device):
    """The process group's backend follows the device; nccl also selects cuda:LOCAL_RANK (mocked:
    no GPU and no second process here)."""
    import torch.distributed as dist

    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda b: calls.setdefault("backend", b))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.setdefault("cuda_device", i))
    monkeypatch.setattr(ddp.atexit, "register", lambda fn: None)
    assert ddp.init_from_env(device) == (1, 2)
    assert calls == ({"backend": backend} if cuda_device is None else {"backend": backend, "cuda_device": cuda_device})


def test_unused_parameters_found_from_the_loss_graph():
    """RCAR ``rcr`` never uses its final scorer ``sim_eval_w`` (so DDP needs find_unused_parameters);
    the cooperative ``rcar`` mode uses every parameter."""
    from attnlens.models.rcar import RCARSimilarity

    g = torch.Generator().manual_seed(0)
    images, captions = torch.randn(3, 4, 16, generator=g), torch.randn(2, 5, 16, generator=g)
    for mode, expected in [("rcr", ["sim_eval_w.weight", "sim_eval_w.bias"]), ("rcar", [])]:
        torch.manual_seed(0)
        sim = RCARSimilarity(16, 8, mode=mode, steps=2).train()
        assert ddp.probe_unused(sim, lambda sim=sim: sim(images, captions, [5, 3]).sum()) == expected, mode
        assert all(p.grad is None for p in sim.parameters())
    with torch.no_grad():
        assert ddp.unused_parameters(sim, sim(images, captions, [5, 3]).sum()) == [n for n, _ in sim.named_parameters()]


def test_probe_unused_leaves_no_trace():
    """The trial forward restores the RNG (dropout) and the buffers (batch-norm statistics)."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.5),
                                torch.nn.Linear(4, 1)).train()
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    rng = torch.get_rng_state()
    assert ddp.probe_unused(model, lambda: model(x).sum()) == []
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(buffers[k], v) for k, v in model.state_dict().items())
    model(x)  # a real training forward does update the running statistics
    assert not torch.equal(buffers["1.running_mean"], model.state_dict()["1.running_mean"])


# ----------------------------------------------------------------------------- torchrun
def _torchrun_driver(out, *args, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_driver.py"), str(out), *args]
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


@pytest.fixture(scope="module")
def torchrun_out(tmp_path_factory):
    return _torchrun_driver(tmp_path_factory.mktemp("ddp"))


def _in_sync(state: dict) -> bool:
    hashes = state["distributed"]["param_sha256"]
    return state["distributed"]["world_size"] == 2 and len(hashes) == 2 and hashes[0] == hashes[1]


@pytest.fixture
def driver(monkeypatch):
    """tests/ddp_driver.py imported in this (single) process."""
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    import ddp_driver

    return ddp_driver


def test_torchrun_matching_training_keeps_ranks_in_sync(torchrun_out):
    """VSE++ with hardest negatives is batch-dependent (each rank mines its own half-batch), so no
    single-process equality: the run must still train, stay finite and keep the ranks equal."""
    out, proc = torchrun_out
    run_dir = out / "matching" / "matching-dot-seed0"
    state = json.loads((run_dir / "state.json").read_text())
    assert state["epoch"] == 2 and _in_sync(state)
    hashes = state["distributed"]["param_sha256"]
    # SCAN with the dot alignment uses every parameter: DDP runs without find_unused_parameters
    assert state["distributed"]["find_unused_parameters"] is False and state["distributed"]["unused_parameters"] == []
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in state["history"])
    # the saved weights are the ones every rank held, under the unwrapped module's names
    saved = load_file(str(run_dir / "model.safetensors"))
    assert ddp.state_hash(saved) == hashes[0]
    assert not [k for k in saved if k.startswith("module.")]
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


def test_torchrun_trains_through_ddp(torchrun_out, driver, tmp_path):
    """Under torchrun every training forward goes through DistributedDataParallel (after one trial
    forward of the bare model for the unused-parameter probe); a plain run never wraps."""
    out, _ = torchrun_out
    steps = driver.EPOCHS * (driver.N // driver.BATCH)
    for rank in (0, 1):
        nets = eval((out / f"net{rank}.txt").read_text())
        assert nets == [("ToyRegression", True)] + [("DistributedDataParallel", False)] * steps, nets
    _, nets = driver.toy_fit(tmp_path / "single")
    assert nets == [("ToyRegression", True)] * steps


def test_torchrun_mean_loss_equals_single_process(torchrun_out, driver, tmp_path):
    """Mean-of-samples loss, float64, SGD: 2 ranks x half batches == 1 process x global batch up to
    rounding. The only differences are the order of float64 sums (two means of 4 averaged vs one
    mean of 8), a few ulps per step; 9 steps of a well-conditioned regression keep them near 1e-15,
    so rtol=1e-12 has a wide margin and would still catch a missing or doubled average."""
    out, _ = torchrun_out
    single, _ = driver.toy_fit(tmp_path / "single")
    two = load_file(str(out / "toy" / "model.safetensors"))
    for name, value in single.state_dict().items():
        assert torch.allclose(two[name], value, rtol=1e-12, atol=1e-14), name
    torch.manual_seed(0)
    x0 = driver.ToyRegression().double()
    assert not torch.allclose(two["linear.weight"], x0.linear.weight)  # training changed the weights
    assert torch.equal(two["head.weight"], x0.head.weight)  # the unused head did not move
    state = json.loads((out / "toy" / "state.json").read_text())
    assert state["distributed"]["find_unused_parameters"] is True
    assert state["distributed"]["unused_parameters"] == ["head.bias", "head.weight"]
    single_state = json.loads((tmp_path / "single" / "state.json").read_text())
    assert "distributed" not in single_state
    for a, b in zip(state["history"], single_state["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-12)


def test_torchrun_batch_norm_statistics_agree(torchrun_out):
    """Each rank's batch norm sees its own half-batch; the running statistics end as rank 0's on
    every rank (the hash covers buffers), and training did update them."""
    out, _ = torchrun_out
    state = json.loads((out / "bn" / "state.json").read_text())
    assert state["epoch"] == 2 and _in_sync(state)
    saved = load_file(str(out / "bn" / "model.safetensors"))
    assert ddp.state_hash(saved) == state["distributed"]["param_sha256"][0]
    assert int(saved["1.num_batches_tracked"]) == 2 * 3
    assert not torch.allclose(saved["1.running_mean"], torch.zeros(4, dtype=torch.float64))


def test_torchrun_generation_equals_single_process(torchrun_out, driver, tmp_path):
    """The generation task (per-pixel mean losses over equal 4-sample shards, Adam, clipping at the
    global norm): the 2-rank weights equal the single-process ones within float32 rounding.

    Tolerance atol=1e-5: the runs differ only in float32 summation order (convolutions and means
    over 4 instead of 8 samples, the gradient all_reduce), ~1e-7 relative per gradient; Adam
    normalises each update to at most ~lr=1e-2, so 8 steps leave differences of a few 1e-7
    (measured: 2.5e-7). 1e-5 is 40x that, and 1000x smaller than how far training moved every
    tensor (>= 1.4e-2), which the test also checks."""
    out, _ = torchrun_out
    single = load_file(str(driver.generation_fit(tmp_path / "single") / "model.safetensors"))
    two = load_file(str(out / "generation" / "model.safetensors"))
    assert two.keys() == single.keys()
    for name in single:
        assert torch.allclose(two[name], single[name], rtol=0, atol=1e-5), (name, (two[name] - single[name]).abs().max())
    from attnlens.data.vocab import scenes_vocabulary
    from attnlens.tasks import get_task
    from attnlens.train import set_seed

    task = get_task("generation")
    set_seed(0)
    init = task.build_model(task.resolve_config(driver.GENERATION_CONFIG), alignment="dot",
                            vocab_size=len(scenes_vocabulary())).state_dict()
    assert min((single[k] - init[k]).abs().max().item() for k in init) > 1e-3
    state = json.loads((out / "generation" / "state.json").read_text())
    assert state["distributed"]["find_unused_parameters"] is False
    single_state = json.loads((tmp_path / "single" / "state.json").read_text())
    for a, b in zip(state["history"], single_state["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


@pytest.mark.slow
def test_torchrun_vqa_and_rcar_tasks_stay_in_sync(tmp_path):
    """The VQA task (region batch norm, a loss averaged over each rank's questions) and a matching
    RCAR ``only_rcr`` model (whose ``sim_eval_w`` takes no part in training: DDP needs
    find_unused_parameters) train under torchrun with the ranks in sync."""
    out, _ = _torchrun_driver(tmp_path, "tasks", timeout=300)
    vqa = json.loads((out / "vqa" / "vqa-general-seed0" / "state.json").read_text())
    assert vqa["epoch"] == 2 and _in_sync(vqa) and vqa["distributed"]["find_unused_parameters"] is False
    rcr = json.loads((out / "rcr" / "matching-dot-seed0" / "state.json").read_text())
    assert rcr["epoch"] == 2 and _in_sync(rcr)
    assert rcr["distributed"]["find_unused_parameters"] is True
    assert rcr["distributed"]["unused_parameters"] == ["sim.sim_eval_w.bias", "sim.sim_eval_w.weight"]


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
