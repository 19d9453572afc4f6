"""Failure handling of the Ray study engine: a unit whose worker process dies mid-unit is retried,
the study completes with the numbers of a run without the failure, and nothing partial is left."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from fake_task import DIE_MARKER_ENV, RUN_LOG_ENV, FakeTask  # noqa: E402

from attnlens.study import run_study  # noqa: E402
from attnlens.tasks import base as task_base  # noqa: E402
from attnlens.tasks.base import register_task  # noqa: E402

ALIGNS, SEEDS = ["dot", "additive"], 2
KW = dict(preset="quick", tasks=["fake"], alignments=ALIGNS, seeds=SEEDS, checkpoints=None, progress=False,
          n_boot=200, n_examples=8)
OUTPUTS = ("metrics.csv", "metrics_long.csv", "metrics_seeds.csv", "curves.csv")


@pytest.mark.slow
def test_worker_dying_mid_unit_is_retried_and_leaves_nothing_partial(tmp_path):
    ray = pytest.importorskip("ray")
    register_task("fake", FakeTask, overwrite=True)  # the driver checks the name; workers run DieOnceTask
    marker, log = tmp_path / "died", tmp_path / "runs.log"
    if ray.is_initialized():
        ray.shutdown()
    try:
        local = run_study(tmp_path / "local", **KW)  # the same study without the failure
        env = {DIE_MARKER_ENV: str(marker), RUN_LOG_ENV: str(log),
               "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)}
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": env, "worker_process_setup_hook": "fake_task.register_die_once"})
        res = run_study(tmp_path / "ray", engine="ray", **KW)
        n_units = len(ALIGNS) * SEEDS
        assert marker.exists()  # a worker did die, after training and evaluation, before writing its unit
        runs = log.read_text().splitlines()
        assert len(runs) == n_units + 1  # every unit once, plus the attempt that died
        died = marker.read_text().split()
        assert died[0] in ALIGNS and sum(r.split()[0] == died[0] for r in runs) == SEEDS + 1
        assert sorted(res.ran) == sorted(local.ran) and len(res.ran) == n_units
        for name in OUTPUTS:
            assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
        assert not [p for p in (tmp_path / "ray").rglob("*") if ".partial-" in p.name]
        again = run_study(tmp_path / "ray", engine="ray", **KW)  # a rerun recomputes nothing
        assert again.ran == [] and len(again.reused) == n_units
        assert len(log.read_text().splitlines()) == n_units + 1
        assert (tmp_path / "ray" / "metrics.csv").read_bytes() == (tmp_path / "local" / "metrics.csv").read_bytes()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        task_base._TASKS.pop("fake", None)
