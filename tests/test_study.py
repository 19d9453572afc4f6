"""The study end to end on a test double task whose right answer is known (tests/fake_task.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_task import FakeTask  # noqa: E402

from attnlens.io import TMP_SUFFIX  # noqa: E402
from attnlens.study import run_study, study_config  # noqa: E402
from attnlens.study.units import DONE  # noqa: E402
from attnlens.tasks import base as task_base  # noqa: E402
from attnlens.tasks.base import register_task  # noqa: E402

ALIGNS = ["dot", "general", "additive", "cosine"]


@pytest.fixture(scope="module", autouse=True)
def fake_task_registered():
    """Register the test double for this module only (other tests list the real tasks)."""
    register_task("fake", FakeTask, overwrite=True)
    yield
    task_base._TASKS.pop("fake", None)


@pytest.fixture(scope="module")
def study(tmp_path_factory, fake_task_registered):
    out = tmp_path_factory.mktemp("study")
    res = run_study(out, preset="quick", tasks=["fake"], alignments=ALIGNS, checkpoints=None, progress=False,
                    n_boot=500, n_examples=16)
    return res


def _no_partial_files(out: Path):
    bad = [p for p in out.rglob("*") if p.name.endswith(TMP_SUFFIX) or ".partial-" in p.name]
    assert bad == []


def test_outputs_exist_and_columns(study):
    out = study.out
    for name in ("report.html", "report.md", "metrics.csv", "metrics_long.csv", "provenance.json", "figures"):
        assert (out / name).exists(), name
    m = pd.read_csv(out / "metrics.csv")
    for col in ("task", "alignment", "metric", "mean", "ci_low", "ci_high", "n", "n_excluded", "higher_is_better"):
        assert col in m.columns
    # one row per task x alignment x metric
    assert not m.duplicated(["task", "alignment", "metric", "subset"]).any()
    assert set(ALIGNS) <= set(m["alignment"])
    assert {"grounding", "faithfulness", "agreement", "task", "baseline"} <= set(m["category"])
    _no_partial_files(out)


def test_known_answer(study):
    m = study.metrics.set_index(["alignment", "metric"])
    # dot grounds perfectly by construction; additive (random init) does not, and is flagged significant
    assert m.loc[("dot", "pointing_game"), "mean"] == 1.0
    assert m.loc[("dot", "accuracy"), "mean"] == 1.0
    assert m.loc[("additive", "pointing_game"), "mean"] < 0.6
    assert bool(m.loc[("additive", "pointing_game"), "significant"])
    # general with W = I equals dot exactly: tied, never "significantly different"
    assert m.loc[("general", "relevance_mass_accuracy"), "mean"] == pytest.approx(m.loc[("dot", "relevance_mass_accuracy"), "mean"])
    assert not bool(m.loc[("general", "relevance_mass_accuracy"), "significant"])
    # cosine = dot under unit features: flagged equivalent, not significant
    row = m.loc[("cosine", "pointing_game")]
    assert row["equivalent_group"] == "dot=cosine"
    assert not bool(row["significant"])
    # baselines are reported but not ranked
    assert np.isnan(m.loc[("baseline:uniform", "pointing_game"), "rank"])


def test_cell_recomputed_from_long_and_shown_in_report(study):
    out = study.out
    long = pd.read_csv(out / "metrics_long.csv")
    metrics = pd.read_csv(out / "metrics.csv")
    sel = long[(long.task == "fake") & (long.alignment == "additive") & (long.metric == "relevance_mass_accuracy")]
    row = metrics[(metrics.task == "fake") & (metrics.alignment == "additive")
                  & (metrics.metric == "relevance_mass_accuracy")].iloc[0]
    assert row["mean"] == pytest.approx(sel["value"].mean())
    assert row["n"] == sel["value"].notna().sum()
    assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    cell = f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    md = (out / "report.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("| additive |") and "relevance" not in ln
                and cell in ln)
    assert cell in line
    assert cell in (out / "report.html").read_text()
    assert "dot = cosine" in md  # the equivalence statement


def test_resume_reuses_units(study):
    res = run_study(study.out, preset="quick", tasks=["fake"], alignments=ALIGNS, checkpoints=None,
                    progress=False, n_boot=500, n_examples=16)
    assert res.ran == [] and len(res.reused) == len(ALIGNS)
    pd.testing.assert_frame_equal(res.metrics, study.metrics)


def test_interrupted_study_resumes_without_redoing(tmp_path):
    register_task("fake", lambda: FakeTask(fail_on=("general",)), overwrite=True)
    FakeTask.calls["evaluate"].clear()
    try:
        with pytest.raises(RuntimeError, match="injected"):
            run_study(tmp_path, preset="quick", tasks=["fake"], alignments=["dot", "general"],
                      checkpoints=None, progress=False, n_boot=200, n_examples=8)
        assert (tmp_path / "units/fake/dot/seed0" / DONE).exists()
        assert not (tmp_path / "units/fake/general").exists() or not any(
            (tmp_path / "units/fake/general").glob("seed0/*"))
        assert not (tmp_path / "report.html").exists()
        _no_partial_files(tmp_path)
        register_task("fake", FakeTask, overwrite=True)
        FakeTask.calls["evaluate"].clear()
        res = run_study(tmp_path, preset="quick", tasks=["fake"], alignments=["dot", "general"],
                        checkpoints=None, progress=False, n_boot=200, n_examples=8)
        assert res.reused == ["fake/dot/seed0"] and res.ran == ["fake/general/seed0"]
        assert FakeTask.calls["evaluate"] == ["general"]  # dot was not redone
        assert (tmp_path / "report.html").exists()
        _no_partial_files(tmp_path)
    finally:
        register_task("fake", FakeTask, overwrite=True)


def test_unit_failing_midway_leaves_no_unit_and_stays_out_of_the_report(tmp_path, monkeypatch):
    """A unit that raises after part of its results is staged publishes nothing: no unit directory,
    no staging left, the previous report untouched, and a report rebuilt afterwards (``attnlens
    report OUT``) does not include it."""
    from attnlens.report import write_report
    from attnlens.study import units as units_mod

    register_task("fake", FakeTask, overwrite=True)
    kw = dict(preset="quick", tasks=["fake"], checkpoints=None, progress=False, n_boot=200, n_examples=8)
    run_study(tmp_path, alignments=["dot"], **kw)
    before = {n: (tmp_path / n).read_bytes() for n in ("metrics.csv", "metrics_long.csv", "report.md", "report.html")}
    real, staged = units_mod.save_examples, []

    def failing(directory, examples):
        if directory.parent.name == "general":
            staged.append(sorted(p.name for p in directory.iterdir()))
            raise RuntimeError("injected mid-unit failure")
        return real(directory, examples)

    monkeypatch.setattr(units_mod, "save_examples", failing)
    with pytest.raises(RuntimeError, match="mid-unit"):
        run_study(tmp_path, alignments=["dot", "general"], **kw)
    assert staged == [["curves.csv", "long.csv"]]  # it failed mid-way, with results already staged
    assert list((tmp_path / "units/fake/general").iterdir()) == []
    _no_partial_files(tmp_path)
    assert {n: (tmp_path / n).read_bytes() for n in before} == before
    write_report(tmp_path)
    md, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    assert "| dot |" in md and "| general" not in md
    assert '<td class="name">dot' in page and '<td class="name">general' not in page
    assert "general" not in set(pd.read_csv(tmp_path / "metrics.csv")["alignment"])


def test_shipped_checkpoint_is_used(tmp_path):
    register_task("fake", FakeTask, overwrite=True)
    ck = tmp_path / "ck"
    FakeTask().train(alignment="dot", seed=0, out_dir=ck / "fake" / "dot")
    n_train = len(FakeTask.calls["train"])
    res = run_study(tmp_path / "out", preset="quick", tasks=["fake"], alignments=["dot", "additive"],
                    checkpoints=ck, progress=False, n_boot=200, n_examples=8)
    recs = {r["alignment"]: r for r in res.records}
    assert recs["dot"]["trained"] is False and Path(recs["dot"]["checkpoint"]) == ck / "fake" / "dot"
    assert recs["additive"]["trained"] is True
    assert len(FakeTask.calls["train"]) == n_train + 1


def test_shipped_checkpoint_of_another_config_is_not_used(tmp_path):
    """A checkpoint trained with other settings (e.g. the demo preset's) is retrained, not analysed
    under this preset's data settings; the record says which keys differed."""
    register_task("fake", FakeTask, overwrite=True)
    ck = tmp_path / "ck"
    FakeTask().train(alignment="dot", seed=0, out_dir=ck / "fake" / "dot", config={"n_eval": 99})
    n_train = len(FakeTask.calls["train"])
    res = run_study(tmp_path / "out", preset="quick", tasks=["fake"], alignments=["dot", "additive"],
                    checkpoints=ck, progress=False, n_boot=200, n_examples=8)
    rec = {r["alignment"]: r for r in res.records}["dot"]
    assert rec["trained"] is True
    assert rec["skipped_checkpoint"]["differing_keys"] == ["n_eval"]
    assert len(FakeTask.calls["train"]) == n_train + 2


def test_one_seed_report_says_seed_spread_not_measured(study):
    m = study.metrics
    ranked = m[~m["alignment"].str.startswith("baseline:")]
    assert (ranked["n_seeds"] == 1).all() and ranked["seed_sd"].isna().all()
    assert ranked["within_seed_noise"].isna().all()
    for name in ("report.md", "report.html"):
        text = (study.out / name).read_text()
        assert "Seed spread not measured" in text and "--seeds 3" in text
        assert "within seed noise of the best" not in text


def test_config_validation():
    from attnlens.errors import ShapeError, UnknownNameError

    with pytest.raises(UnknownNameError, match="dott"):
        study_config("quick", alignments=["dott"])
    with pytest.raises(UnknownNameError):
        study_config("huge")
    with pytest.raises(ShapeError):
        study_config("quick", n_examples=1)
    assert study_config("quick", seeds=3).seeds == (0, 1, 2)


def test_provenance(study):
    import json

    prov = json.loads((study.out / "provenance.json").read_text())
    assert prov["versions"]["torch"] and prov["seeds"] == [0]
    assert set(prov["units"]) == {f"fake/{a}/seed0" for a in ALIGNS}
    assert all("total" in u["timings_s"] for u in prov["units"].values())


@pytest.mark.browser
def test_study_report_opens_in_chromium(study, tmp_path):
    from test_report import chromium_console_errors

    html = (study.out / "report.html").read_text()
    assert "src=\"http" not in html and "<script" not in html  # self-contained, no script
    assert chromium_console_errors(study.out / "report.html", tmp_path) == ""
    assert chromium_console_errors(study.out / "explorer" / "fake.html", tmp_path) == ""


@pytest.mark.browser
@pytest.mark.parametrize("width,height", [(1280, 800), (390, 844)])
def test_study_report_fits_the_window(study, tmp_path, width, height):
    from browser import CHROMIUM, layout, open_page

    if CHROMIUM is None:
        pytest.skip("chromium not installed")
    m = layout(study.out / "report.html", tmp_path, width=width, height=height)
    assert m["scrollWidth"] == m["clientWidth"] == width and m["bad"] == [], m
    shot = tmp_path / f"study_report_{width}x{height}.png"
    _, consoles, rc = open_page((study.out / "report.html").as_uri(), tmp_path, width=width, height=height, shot=shot)
    assert rc == 0 and consoles == [] and shot.exists()


def test_study_figures_in_three_formats_linked_from_the_report(study):
    figs = study.out / "figures"
    pngs = sorted(p.stem for p in figs.glob("fake_*.png"))
    assert {"fake_gallery_best", "fake_curves", "fake_grid", "fake_words"} <= set(pngs)
    page = (study.out / "report.html").read_text()
    for stem in pngs:
        for fmt in ("png", "svg", "pdf"):
            assert (figs / f"{stem}.{fmt}").stat().st_size > 0
            assert f'href="figures/{stem}.{fmt}"' in page


def test_changed_settings_rerun_stale_units(study, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(study.out, out)
    res = run_study(out, preset="quick", tasks=["fake"], alignments=["dot"], checkpoints=None, progress=False,
                    n_boot=200, n_examples=6)
    assert res.ran == ["fake/dot/seed0"] and res.reused == []
    assert (res.long[res.long.alignment == "dot"]["example_id"].nunique()) == 6


def test_subsets_keep_one_overall_row():
    from attnlens.study.analysis import summarize

    rng = np.random.default_rng(0)
    rows = []
    for a in ("dot", "general"):
        for i in range(10):
            rows.append({"task": "t", "alignment": a, "seed": 0, "example_id": f"e{i}", "target": 0,
                         "metric": "pointing_game", "value": float(rng.random() + (a == "dot")),
                         "subset": "color" if i < 5 else "shape", "category": "grounding"})
    long = pd.DataFrame(rows)
    s = summarize(long, [], n_boot=200)
    allrows = s[s.subset == "all"].set_index("alignment")
    assert allrows.loc["dot", "mean"] == pytest.approx(long[long.alignment == "dot"]["value"].mean())
    assert allrows.loc["dot", "n"] == 10
    assert set(s.subset) == {"all", "color", "shape"}
    from attnlens.report import render_markdown, ReportInput

    md = render_markdown(s, ReportInput())
    table = md.split("| alignment | pointing_game |")[1]
    assert table.count("| dot |") == 1 and table.count("| general |") == 1  # the overall rows only


def test_unit_feature_check_is_measured():
    import torch

    from attnlens.models import CrossAttention
    from attnlens.study.units import _feature_norms, _model_info

    attn = CrossAttention("dot", 4)
    q = torch.nn.functional.normalize(torch.randn(1, 3, 4), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(1, 5, 4), dim=-1)
    for scale, unit in ((1.0, True), (3.0, False)):
        rec: list = []
        with _feature_norms(attn, rec):
            attn(q * scale, k)
        info = _model_info(attn, rec)
        assert info["unit_features"] is unit and info["norms"] == ["clipped_l2norm"]
    assert not attn.alignment._forward_hooks  # hooks removed


def test_unit_feature_check_sees_all_pairs_scoring():
    """SCAN scores all pairs through `alignment.pairwise`, which forward hooks miss: the check
    must still measure the features, and leave no wrapper behind."""
    import torch

    from attnlens.models.attention import l2norm
    from attnlens.models.scan import ScanSimilarity
    from attnlens.study.units import _feature_norms

    sim = ScanSimilarity(dim=8)
    norms = []
    with _feature_norms(sim, norms):
        sim(l2norm(torch.randn(3, 5, 8)), l2norm(torch.randn(4, 6, 8)), torch.tensor([6, 3, 2, 1]))
    assert norms and max(norms) < 1e-5
    assert "pairwise" not in vars(sim.attn.alignment)
    norms.clear()
    with _feature_norms(sim, norms):
        sim(torch.randn(3, 5, 8) * 3, torch.randn(4, 6, 8), torch.tensor([6, 3, 2, 1]))
    assert max(norms) > 0.1


def test_curve_gaps_against_random_order(study):
    """The faithfulness signal is the gap to the random order: positive for attention that picks
    the regions the output depends on (dot grounds perfectly in the fake task), and each gap row
    equals the difference of the two AUC rows of the same example."""
    long = pd.read_csv(study.out / "metrics_long.csv")
    long = long[long.alignment == "dot"].set_index(["example_id", "metric"]).value
    ids = long.index.get_level_values(0).unique()
    for ex in ids:
        assert long[(ex, "deletion_gap")] == pytest.approx(
            long[(ex, "deletion_auc_random")] - long[(ex, "deletion_auc_morf")])
        assert long[(ex, "insertion_gap")] == pytest.approx(
            long[(ex, "insertion_auc_morf")] - long[(ex, "insertion_auc_random")])
    m = study.metrics.set_index(["alignment", "metric"])
    assert m.loc[("dot", "deletion_gap"), "mean"] > 0
    assert bool(m.loc[("dot", "insertion_gap"), "higher_is_better"])


def test_a_replaced_checkpoint_makes_its_unit_stale(tmp_path):
    """Resume keys on the weights too: retraining a checkpoint in place (or another checkpoint
    appearing where the study looks) recomputes that unit only."""
    from safetensors.torch import load_file, save_file

    ck = tmp_path / "ck"
    for a in ("dot", "general"):
        FakeTask().train(alignment=a, seed=0, out_dir=ck / f"fake-{a}-seed0")
    kw = dict(preset="quick", tasks=["fake"], alignments=["dot", "general"], checkpoints=ck, progress=False,
              n_boot=200, n_examples=6)
    first = run_study(tmp_path / "st", **kw)
    assert sorted(first.ran) == ["fake/dot/seed0", "fake/general/seed0"]
    assert run_study(tmp_path / "st", **kw).ran == []
    weights = ck / "fake-general-seed0" / "model.safetensors"
    state = load_file(str(weights))
    save_file({k: v + 1.0 if v.is_floating_point() else v for k, v in state.items()}, str(weights))
    res = run_study(tmp_path / "st", **kw)
    assert res.ran == ["fake/general/seed0"] and res.reused == ["fake/dot/seed0"]
    moved = tmp_path / "ck2"
    (ck / "fake-dot-seed0").rename(moved)  # the study now finds no checkpoint for dot: it trains one
    res = run_study(tmp_path / "st", **{**kw, "checkpoints": ck})
    assert "fake/dot/seed0" in res.ran and "fake/general/seed0" in res.reused
