"""Dataset-wide capture + metrics in shards (attnlens.study.dataset): the merged files equal
one unsharded pass byte for byte, finished shards are reused, a failed shard leaves nothing
half-written, and ``analysis_examples(start=k)`` is a slice of the call from 0 for every task."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from fake_task import FakeTask  # noqa: E402

from attnlens.study import dataset as D  # noqa: E402
from attnlens.io import save_dataframe  # noqa: E402
from attnlens.study import example_metrics as EM  # noqa: E402
from attnlens.study.analysis import unit_metrics  # noqa: E402
from attnlens.study.config import study_config  # noqa: E402
from attnlens.study.units import save_examples  # noqa: E402
from attnlens.tasks import base as task_base  # noqa: E402
from attnlens.tasks.base import register_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FILES = ("examples.json", "examples.npz", "long.csv", "curves.csv")
SETTINGS = study_config("quick")


@pytest.fixture(scope="module", autouse=True)
def fake_registered():
    register_task("fake", FakeTask, overwrite=True)
    yield
    task_base._TASKS.pop("fake", None)


@pytest.fixture(scope="module")
def fake_ckpt(tmp_path_factory):
    # additive keeps a seeded random init: maps and scores that are not trivially equal
    return FakeTask().train(alignment="additive", seed=0, out_dir=tmp_path_factory.mktemp("fake") / "ck")


def _reference(task, ckpt, n: int, out: Path, config=None) -> Path:
    """The single-machine path: one call for the examples, one for the rows, written as a unit does."""
    model = task.load(ckpt)
    model.eval()
    with torch.no_grad():
        examples = list(task.analysis_examples(model, n=n, split="test", config=config))
    out.mkdir(parents=True)
    save_examples(out, examples)
    long, curves = unit_metrics(examples, EM.example_scorer(task, model, examples, removal=SETTINGS.removal),
                                SETTINGS, baselines=True)
    save_dataframe(long, out / "long.csv")
    save_dataframe(curves, out / "curves.csv")
    return out


def _assert_same_files(a: Path, b: Path, files=FILES):
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    with np.load(a / "examples.npz") as za, np.load(b / "examples.npz") as zb:
        assert sorted(za.files) == sorted(zb.files)
        for k in za.files:
            assert za[k].dtype == zb[k].dtype and np.array_equal(za[k], zb[k]), k


def _no_partials(*dirs: Path):
    for d in dirs:
        assert not [p for p in d.rglob("*") if p.name.startswith(D.PARTIAL)], d


@pytest.fixture(scope="module")
def fake_reference(fake_ckpt, tmp_path_factory):
    return _reference(FakeTask(), fake_ckpt, 7, tmp_path_factory.mktemp("ref") / "ref")


# ----------------------------------------------------------------------------- local engine
@pytest.mark.parametrize("shard_size", [1, 3, 4, 7, 10])
def test_sharded_equals_unsharded(fake_ckpt, fake_reference, tmp_path, shard_size):
    out = tmp_path / "out"
    rec = D.capture_dataset("fake", fake_ckpt, out, n=7, settings=SETTINGS, shard_size=shard_size, progress=False)
    _assert_same_files(fake_reference, out)
    assert rec["n_examples"] == 7 and rec["n_shards"] == -(-7 // shard_size)
    assert json.loads((out / D.DONE).read_text())["fingerprint"] == rec["fingerprint"]
    assert not (out / "shards").exists()  # merged, then removed
    _no_partials(out)


def test_rows_of_an_example_do_not_depend_on_the_others(fake_ckpt):
    task = FakeTask()
    model = task.load(fake_ckpt)
    with torch.no_grad():
        ex = list(task.analysis_examples(model, n=5))
    both, curves_both = EM.metric_rows(ex, EM.example_scorer(task, model, ex), SETTINGS)
    alone, curves_alone = EM.metric_rows(ex[3:4], EM.example_scorer(task, model, ex[3:4]), SETTINGS)
    mine = both[both.example_id == ex[3].example_id].reset_index(drop=True)
    # random baseline maps, the random deletion order and the correlation subsets included
    assert {"baseline:random"} <= set(mine.method) and "deletion_auc_random" in set(mine.metric)
    assert mine.equals(alone)
    assert curves_both[curves_both.example_id == ex[3].example_id].reset_index(drop=True).equals(curves_alone)
    # different examples draw different random orders (one seed per example, not one shared)
    r = both[both.metric == "deletion_auc_random"]
    assert EM.example_seed(0, ex[0].example_id) != EM.example_seed(0, ex[1].example_id)
    assert r["value"].nunique() > 1


def test_resume_skips_finished_shards_and_a_failed_shard_leaves_nothing(fake_ckpt, fake_reference, tmp_path,
                                                                        monkeypatch):
    out = tmp_path / "out"
    calls = []
    real_shard, real_rows = D._compute_shard, EM.metric_rows

    def counting(job, start, stop, model=None):
        calls.append((start, stop))
        return real_shard(job, start, stop, model=model)

    def failing(examples, *args, **kwargs):
        if examples[0].example_id == "img4/0":
            raise RuntimeError("injected failure in the metrics of shard 4-6")
        return real_rows(examples, *args, **kwargs)

    monkeypatch.setattr(D, "_compute_shard", counting)
    monkeypatch.setattr(EM, "metric_rows", failing)
    kw = dict(n=7, settings=SETTINGS, shard_size=2, progress=False)
    with pytest.raises(RuntimeError, match="injected"):
        D.capture_dataset("fake", fake_ckpt, out, **kw)
    shards = sorted(p.name for p in (out / "shards").iterdir())
    assert shards == ["00000000-00000002", "00000002-00000004"]  # complete shards only
    for name in shards:
        assert {p.name for p in (out / "shards" / name).iterdir()} == {"examples.json", "examples.npz", "long.csv",
                                                                       "example_curves.json", D.SHARD}
    assert not any((out / f).exists() for f in FILES + (D.DONE,))  # no output lands
    _no_partials(out)

    monkeypatch.setattr(EM, "metric_rows", real_rows)
    calls.clear()
    rec = D.capture_dataset("fake", fake_ckpt, out, **kw)
    assert calls == [(4, 6), (6, 7)] and rec["reused_shards"] == 2
    _assert_same_files(fake_reference, out)

    calls.clear()
    again = D.capture_dataset("fake", fake_ckpt, out, **kw)  # finished: nothing is recomputed
    assert calls == [] and again["already_done"] and again["fingerprint"] == rec["fingerprint"]

    # shards made with other settings are recomputed, not mixed in
    other = out.parent / "other"
    D.capture_dataset("fake", fake_ckpt, other, keep_shards=True, **kw)
    calls.clear()
    D.capture_dataset("fake", fake_ckpt, other, **{**kw, "settings": study_config("quick", steps=3)})
    assert calls == [(0, 2), (2, 4), (4, 6), (6, 7)]


def test_default_n_is_the_whole_split_and_maps_only(fake_ckpt, tmp_path):
    rec = D.capture_dataset("fake", fake_ckpt, tmp_path / "maps", metrics=False, shard_size=5, progress=False)
    assert rec["n"] == rec["n_examples"] == FakeTask().split_size("test", {}) == 12
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["DONE.json", "examples.json", "examples.npz"]
    ids = [e["example_id"] for e in json.loads((tmp_path / "maps" / "examples.json").read_text())]
    assert ids == [f"img{i}/0" for i in range(12)]


def test_bad_arguments(fake_ckpt, tmp_path):
    from attnlens.errors import ShapeError, UnknownNameError

    with pytest.raises(UnknownNameError, match="local, process, ray"):
        D.capture_dataset("fake", fake_ckpt, tmp_path / "a", n=2, engine="dask")
    with pytest.raises(ShapeError, match="shard_size"):
        D.capture_dataset("fake", fake_ckpt, tmp_path / "b", n=2, shard_size=0)
    with pytest.raises(ShapeError, match="shard_size"):
        study_config("quick", shard_size=0)


def test_capture_command_shards_and_resumes(fake_ckpt, tmp_path, capsys):
    from attnlens.cli import main

    base = ["capture", "--task", "fake", "--checkpoint", str(fake_ckpt), "--preset", "quick", "--metrics",
            "--n-examples", "6", "--quiet"]
    assert main(base + ["--shard-size", "4", "--out", str(tmp_path / "a")]) == 0
    assert main(base + ["--shard-size", "6", "--out", str(tmp_path / "b")]) == 0
    _assert_same_files(tmp_path / "a", tmp_path / "b")
    capsys.readouterr()
    assert main(base + ["--shard-size", "4", "--out", str(tmp_path / "a")]) == 0
    assert "already complete" in capsys.readouterr().out


def test_study_unit_with_shards_equals_one_pass(tmp_path):
    from attnlens.study.units import Unit, run_unit

    unit = Unit("fake", "additive", 0)
    cfg = study_config("quick", tasks=["fake"], alignments=["additive"], n_examples=5)
    one = run_unit(unit, tmp_path / "one", cfg, checkpoints=None, progress=False)
    sharded = run_unit(unit, tmp_path / "sharded", study_config("quick", tasks=["fake"], alignments=["additive"],
                                                                 n_examples=5, shard_size=2),
                       checkpoints=None, progress=False)
    _assert_same_files(unit.dir(tmp_path / "one"), unit.dir(tmp_path / "sharded"))
    assert sharded["model_info"] == one["model_info"] and sharded["n_examples"] == 5
    assert sharded["fingerprint"] == one["fingerprint"]  # the shard size does not change results
    assert not list((tmp_path / "sharded" / "units").rglob(".shards-*"))
    _no_partials(tmp_path / "sharded")


def test_local_engine_does_not_import_ray(fake_ckpt, tmp_path):
    if "ray" in sys.modules:
        pytest.skip("ray was imported by an earlier test")
    D.capture_dataset(FakeTask(), fake_ckpt, tmp_path / "o", n=2, settings=SETTINGS, progress=False)
    assert "ray" not in sys.modules


# ----------------------------------------------------------------------------- tasks: start offsets
TINY = {
    "matching": dict(epochs=1, batch_size=8, lr=5e-3, n_train=8, n_test=4, embed_dim=16, word_dim=8, channels=(4,),
                     strides=(4,), pool=(2, 2), warmup_epochs=1, eval_every=1),
    "vqa": dict(epochs=1, batch_size=8, n_train=8, n_test=6, dim=8, word_dim=4, channels=(4, 8), pool=(2, 2)),
    "generation": dict(epochs=1, batch_size=16, n_train=8, n_test=4, n_eval=4, dim=8, word_dim=4, width=4,
                       image_size=16, grid=4, captions_per_image=2),
}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from attnlens.tasks import get_task

    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for name, conf in TINY.items():
        task = get_task(name)
        cfg = {**task.default_config("quick"), **conf}
        ckpt = task.train(alignment="additive", seed=0, out_dir=root / name, config=cfg, progress=False)
        out[name] = (task, ckpt, cfg)
    return out


def _assert_same_example(a, b):
    assert a.example_id == b.example_id and a.tokens == b.tokens
    assert np.array_equal(a.image, b.image) and np.array_equal(a.regions.boxes, b.regions.boxes)
    assert torch.equal(a.attention.weights, b.attention.weights)
    assert (a.attention.scores is None) == (b.attention.scores is None)
    if a.attention.scores is not None:
        assert torch.equal(a.attention.scores, b.attention.scores)
    assert a.output == b.output and np.array_equal(a.region_valid, b.region_valid)
    assert [(t.tokens, t.label, t.head) for t in a.targets] == [(t.tokens, t.label, t.head) for t in b.targets]
    for ta, tb in zip(a.targets, b.targets):
        assert np.array_equal(ta.boxes, tb.boxes)
    assert a.meta.keys() == b.meta.keys()
    for k in a.meta:
        assert np.array_equal(np.asarray(a.meta[k]), np.asarray(b.meta[k])), k


@pytest.mark.parametrize("name", ["matching", "vqa", "generation", "fake"])
def test_analysis_examples_start_is_a_slice(name, tiny_models, fake_ckpt):
    if name == "fake":
        task, ckpt, cfg = FakeTask(), fake_ckpt, None
    else:
        task, ckpt, cfg = tiny_models[name]
    model = task.load(ckpt)
    with torch.no_grad():
        full = list(task.analysis_examples(model, n=8, config=cfg))
        assert len(full) == (6 if name == "vqa" else 8)  # VQA analyses its n_test = 6 images at most
        for start, n in [(0, 2), (1, 3), (5, 1), (4, 4)]:
            part = list(task.analysis_examples(model, n=n, config=cfg, start=start))
            assert len(part) == len(full[start:start + n]), (start, n)  # a short last slice where the split ends
            for a, b in zip(full[start:start + n], part):
                _assert_same_example(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["matching", "vqa", "generation"])
def test_real_tasks_sharded_equal_unsharded(name, tiny_models, tmp_path):
    task, ckpt, cfg = tiny_models[name]
    ref = _reference(task, ckpt, 5, tmp_path / "ref", config=cfg)
    D.capture_dataset(name, ckpt, tmp_path / "out", n=5, config=cfg, settings=SETTINGS, shard_size=2, progress=False)
    _assert_same_files(ref, tmp_path / "out")


# ----------------------------------------------------------------------------- other engines
@pytest.mark.slow
def test_process_engine_equals_local(fake_ckpt, fake_reference, tmp_path):
    D.capture_dataset(FakeTask(), fake_ckpt, tmp_path / "p", n=7, settings=SETTINGS, shard_size=3, engine="process",
                      workers=2, progress=False)
    _assert_same_files(fake_reference, tmp_path / "p")


class DieOnceTask(FakeTask):
    """Kills its worker process the first time shard ``[2, ...)`` is captured (marker file)."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def analysis_examples(self, model, *, n, split="test", config=None, start=0):
        if start == 2 and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return super().analysis_examples(model, n=n, split=split, config=config, start=start)


@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    path = os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_engine_equals_local(local_ray, fake_ckpt, fake_reference, tmp_path):
    rec = D.capture_dataset(FakeTask(), fake_ckpt, tmp_path / "r", n=7, settings=SETTINGS, shard_size=2,
                            engine="ray", progress=False)
    assert rec["engine"] == "ray" and rec["n_shards"] == 4
    _assert_same_files(fake_reference, tmp_path / "r")


@pytest.mark.slow
def test_ray_retries_a_shard_whose_worker_died(local_ray, fake_ckpt, fake_reference, tmp_path):
    marker = tmp_path / "died"
    D.capture_dataset(DieOnceTask(str(marker)), fake_ckpt, tmp_path / "r", n=7, settings=SETTINGS, shard_size=2,
                      engine="ray", progress=False)
    assert marker.exists()  # a worker did die mid-job
    _assert_same_files(fake_reference, tmp_path / "r")
    _no_partials(tmp_path / "r")
