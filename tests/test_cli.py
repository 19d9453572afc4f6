"""The attnlens command line: help everywhere, exit codes, errors without tracebacks."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from attnlens.cli import main

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def fake_task_registered():
    from fake_task import FakeTask

    from attnlens.tasks import base

    base.register_task("fake", FakeTask, overwrite=True)
    yield
    base._TASKS.pop("fake", None)


@pytest.mark.parametrize("cmd", [[], ["study"], ["train"], ["capture"], ["render"], ["report"]])
def test_help(cmd, capsys):
    assert main([*cmd, "--help"]) == 0
    assert "Usage: attnlens" in capsys.readouterr().out


def test_usage_error_exit_2(capsys):
    assert main(["study", "--preset", "nope"]) == 2
    assert main(["frobnicate"]) == 2
    assert "Usage" in capsys.readouterr().err


def test_user_error_exit_1_without_traceback(tmp_path, capsys):
    rc = main(["study", "--preset", "quick", "--out", str(tmp_path), "--alignments", "dott", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "unknown alignment function 'dott'" in err and "Traceback" not in err
    with pytest.raises(Exception):
        main(["--debug", "study", "--preset", "quick", "--out", str(tmp_path), "--alignments", "dott", "--quiet"])


def test_report_missing_metrics_is_user_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    assert "metrics.csv" in capsys.readouterr().err


def test_report_command(tmp_path):
    pd.DataFrame({"task": ["t"], "alignment": ["dot"], "metric": ["m"], "mean": [0.5]}).to_csv(tmp_path / "metrics.csv", index=False)
    assert main(["report", str(tmp_path)]) == 0
    assert "0.500" in (tmp_path / "report.md").read_text()


def test_capture_and_render(tmp_path):
    from fake_task import FakeTask

    from attnlens.tasks.base import register_task

    register_task("fake", FakeTask, overwrite=True)
    ck = FakeTask().train(alignment="dot", seed=0, out_dir=tmp_path / "ck")
    assert main(["capture", "--task", "fake", "--checkpoint", str(ck), "--n", "2", "--out", str(tmp_path / "maps")]) == 0
    assert (tmp_path / "maps" / "examples.npz").exists()
    assert main(["render", str(tmp_path / "maps"), "--out", str(tmp_path / "fig"), "--limit", "1"]) == 0
    assert (tmp_path / "fig" / "img0_0.png").exists() and (tmp_path / "fig" / "explorer.html").exists()


def test_train_and_study_commands(tmp_path, capsys):
    from fake_task import FakeTask

    from attnlens.tasks.base import register_task

    register_task("fake", FakeTask, overwrite=True)
    assert main(["train", "--task", "fake", "--alignment", "dot", "--out", str(tmp_path / "ck"), "--quiet"]) == 0
    assert "checkpoint:" in capsys.readouterr().out
    assert list((tmp_path / "ck").rglob("model.safetensors"))
    for bad in ("{not json", "[1, 2]"):
        assert main(["train", "--task", "fake", "--alignment", "dot", "--config", bad, "--quiet"]) == 2
        assert "--config" in capsys.readouterr().err
    rc = main(["study", "--preset", "quick", "--out", str(tmp_path / "st"), "--tasks", "fake", "--alignments",
               "dot,additive", "--n-examples", "4", "--checkpoints", str(tmp_path / "ck"), "--quiet"])
    assert rc == 0
    for f in ("report.html", "report.md", "metrics.csv"):
        assert (tmp_path / "st" / f).exists()
    rc = main(["study", "--preset", "quick", "--out", str(tmp_path / "sh"), "--tasks", "fake", "--alignments",
               "dot,additive", "--n-examples", "4", "--checkpoints", str(tmp_path / "ck"), "--quiet",
               "--shard-size", "3"])
    assert rc == 0  # shards of 3 examples give the same numbers as one pass
    assert (tmp_path / "sh" / "metrics_long.csv").read_bytes() == (tmp_path / "st" / "metrics_long.csv").read_bytes()
    assert "unknown task 'nope'" in (main(["study", "--tasks", "nope", "--quiet", "--out", str(tmp_path / "x")]) == 1
                                     and capsys.readouterr().err or "")
