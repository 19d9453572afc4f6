"""The explainer axis of the study, end to end on the test double task (tests/fake_task.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_task import FakeTask  # noqa: E402

from attnlens.errors import ShapeError, UnknownNameError  # noqa: E402
from attnlens.study import run_study, study_config  # noqa: E402
from attnlens.tasks import base as task_base  # noqa: E402
from attnlens.tasks.base import register_task  # noqa: E402

EXPLAINERS = ("raw", "rollout", "gradient_weighted", "input_x_gradient")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    register_task("fake", FakeTask, overwrite=True)
    try:
        out = tmp_path_factory.mktemp("study_explain")
        yield run_study(out, preset="quick", tasks=["fake"], alignments=["dot", "additive"], checkpoints=None,
                        progress=False, n_boot=200, n_examples=6, explainers=EXPLAINERS)
    finally:
        task_base._TASKS.pop("fake", None)


def test_explainer_rows_are_ranked_next_to_the_alignments_with_the_baselines(study):
    m = study.metrics
    labels = set(m.alignment)
    for a in ("dot", "additive"):
        assert {a, f"{a}+rollout", f"{a}+gradient_weighted", f"{a}+input_x_gradient"} <= labels
        assert f"{a}+raw" not in labels  # raw is the attention itself
    assert any(str(x).startswith("baseline:") for x in labels)
    rows = m[(m.metric == "pointing_game") & (m.alignment.str.contains(r"\+"))]
    assert len(rows) == 6 and rows.p_vs_best.notna().sum() + rows.is_best.sum() >= 6  # paired tests vs the best
    record = study.records[0]
    assert record["explainers"]["rollout"] == "scored" and "attention" in record["explainers"]["raw"]


def test_rollout_of_one_cross_attention_grounds_like_the_attention(study):
    """One text->image step: rollout's word x region block is 0.5 A, the same argmax as A."""
    long = study.long
    for a in ("dot", "additive"):
        att = long[(long.alignment == a) & (long.metric == "pointing_game")].set_index(["example_id", "target"]).value
        rol = long[(long.alignment == f"{a}+rollout") & (long.metric == "pointing_game")] \
            .set_index(["example_id", "target"]).value
        pd.testing.assert_series_equal(att.sort_index(), rol.sort_index(), check_names=False)


def test_study_config_validates_explainers():
    with pytest.raises(UnknownNameError, match="rolout"):
        study_config("quick", explainers=("rolout",))
    with pytest.raises(ShapeError, match="shard_size"):
        study_config("quick", explainers=("rollout",), shard_size=4)
    assert study_config("quick", explainers="raw,rollout").explainers == ("raw", "rollout")
    assert study_config("quick").explainers == ()


def test_cli_study_explainers_option(tmp_path, capsys):
    from attnlens.cli import main

    register_task("fake", FakeTask, overwrite=True)
    try:
        rc = main(["study", "--preset", "quick", "--out", str(tmp_path / "st"), "--tasks", "fake", "--alignments",
                   "dot", "--n-examples", "3", "--checkpoints", "none", "--quiet", "--explainers", "raw,rollout"])
        assert rc == 0
        m = pd.read_csv(tmp_path / "st" / "metrics.csv")
        assert {"dot", "dot+rollout"} <= set(m.alignment)
        assert main(["study", "--preset", "quick", "--out", str(tmp_path / "x"), "--tasks", "fake", "--quiet",
                     "--explainers", "rolout"]) == 1
        assert "unknown explanation method (explainers) 'rolout'" in capsys.readouterr().err
    finally:
        task_base._TASKS.pop("fake", None)
