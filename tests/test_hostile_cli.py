"""Issue #16: the CLI on broken input answers with one line naming the file/option, never a traceback,
and never reports success for work it did not do."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnlens.cli import main


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "an error must be reported"
    text = " ".join(lines)
    for n in needles:
        assert n in text, (n, err)
    return err


@pytest.mark.parametrize("config", ['{"epochs": 0}', '{"epochs": -3}', '{"epochs": "2"}', '{"lr": NaN}',
                                    '{"batch_size": 0}', '[1, 2]', '{"epochs": 1.5}'])
def test_train_refuses_configs_that_would_do_nothing(tmp_path, capsys, config):
    rc = main(["train", "--task", "matching", "--alignment", "dot", "--preset", "quick", "--out", str(tmp_path),
               "--config", config, "--quiet"])
    assert rc in (1, 2)
    err = _one_line_error(capsys)
    assert ("epochs" in err or "lr" in err or "batch_size" in err or "JSON object" in err)
    assert not list(tmp_path.rglob("model.safetensors"))      # nothing claimed, nothing written
    assert "checkpoint:" not in capsys.readouterr().out


def test_options_paths_that_do_not_exist(tmp_path, capsys):
    rc = main(["study", "--preset", "quick", "--out", str(tmp_path / "o"), "--checkpoints", str(tmp_path / "nope"),
               "--quiet"])
    assert rc == 2
    _one_line_error(capsys, "--checkpoints", "does not exist")
    assert not (tmp_path / "o").exists()
    rc = main(["train", "--task", "matching", "--alignment", "dot", "--out", str(tmp_path), "--config",
               str(tmp_path / "missing.json"), "--quiet"])
    assert rc == 2
    _one_line_error(capsys, "missing.json", "does not exist")
    (tmp_path / "bad.json").write_text('{"epochs": 0}')
    rc = main(["train", "--task", "matching", "--alignment", "dot", "--preset", "quick", "--out", str(tmp_path),
               "--config", str(tmp_path / "bad.json"), "--quiet"])
    assert rc == 1
    _one_line_error(capsys, "epochs")


CSV_JUNK = [b"", b"\x00\x01\x02\xff\xfe", b"task,alignment\n1,2,3,4\n\"", "épée".encode("latin-1"),
            b"\x89PNG\r\n\x1a\n" + bytes(range(256)), b"a,b\n1,2\n"]


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(CSV_JUNK), st.booleans())
def test_report_on_broken_metrics_is_one_line(tmp_path_factory, junk, as_option):
    run = tmp_path_factory.mktemp("run")
    path = run / ("other.csv" if as_option else "metrics.csv")
    path.write_bytes(junk)
    argv = ["report", str(run)] + (["--metrics", str(path)] if as_option else [])
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    assert rc == 1
    text = err.getvalue()
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1
    assert path.name in text or "column" in text


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"figures": [{"nope": 1}]}', '{"figures": 3}',
                                     '{"figures": [{"path": ["a"]}]}'])
def test_report_on_broken_run_file_is_one_line(tmp_path, capsys, content):
    pd.DataFrame({"task": ["t"], "alignment": ["dot"], "metric": ["m"], "mean": [0.5]}).to_csv(
        tmp_path / "metrics.csv", index=False)
    (tmp_path / "report_input.json").write_text(content)
    assert main(["report", str(tmp_path)]) == 1
    _one_line_error(capsys, "report_input.json")


def test_capture_with_a_foreign_config_file(tmp_path, capsys):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text(json.dumps([1, 2, 3]))
    rc = main(["capture", "--task", "matching", "--checkpoint", str(ck), "--out", str(tmp_path / "o"),
               "--preset", "quick", "--quiet"])
    assert rc == 1
    _one_line_error(capsys, "config.json")


def test_render_on_a_file_of_another_kind(tmp_path, capsys):
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "examples.json").write_text("\x89PNG not json")
    np.save(maps / "examples.npz", np.zeros(3))
    rc = main(["render", str(maps), "--out", str(tmp_path / "o")])
    assert rc == 1
    _one_line_error(capsys, str(maps), "examples.json")
