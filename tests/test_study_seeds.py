"""Seeds as a study axis: per-seed means, between-seed spread, the within-seed-noise flag and the
report, on hand-made per-example rows whose answers are known exactly, then end to end."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_task import FakeTask  # noqa: E402

from attnlens.io import save_dataframe  # noqa: E402
from attnlens.report import ReportInput, ranking_table, render_html, render_markdown, write_report  # noqa: E402
from attnlens.study import run_study  # noqa: E402
from attnlens.study.analysis import SEED_COLUMNS, SUMMARY_COLUMNS, ranges_overlap, seed_table, summarize  # noqa: E402
from attnlens.tasks import base as task_base  # noqa: E402
from attnlens.tasks.base import register_task  # noqa: E402

EVIL = '<script>alert("x")</script>'


def long_rows(per_seed: dict, metric: str = "pointing_game", n: int = 4, task: str = "t") -> pd.DataFrame:
    """Per-example rows: ``per_seed[(alignment, seed)]`` is a list of the seed's example values, or
    one number (then every example of that seed has that value, so the seed's mean is exact)."""
    rows = []
    for (a, s), vals in per_seed.items():
        vals = [vals] * n if np.isscalar(vals) else vals
        rows += [{"task": task, "alignment": a, "seed": s, "example_id": f"e{i}", "target": 0, "metric": metric,
                  "value": float(v), "category": "grounding"} for i, v in enumerate(vals)]
    return pd.DataFrame(rows)


def row(summary: pd.DataFrame, alignment: str, metric: str = "pointing_game", subset: str = "all") -> pd.Series:
    sel = summary[(summary.alignment == alignment) & (summary.metric == metric) & (summary.subset == subset)]
    assert len(sel) == 1
    return sel.iloc[0]


# ----------------------------------------------------------------------------- spread, known values
def test_two_seeds_means_04_and_06_give_sd_01414_with_ddof_1():
    long = long_rows({("dot", 0): [0.3, 0.5, 0.4, 0.4], ("dot", 1): [0.5, 0.7, 0.6, 0.6]})
    r = row(summarize(long, [], n_boot=200), "dot")
    assert r["n_seeds"] == 2
    assert r["seed_sd"] == pytest.approx(np.sqrt(0.02), abs=1e-12)  # 0.1414: ddof=1 (ddof=0 would be 0.1)
    assert (r["seed_min"], r["seed_max"]) == (pytest.approx(0.4), pytest.approx(0.6))
    assert r["mean"] == pytest.approx(0.5) and r["n"] == 8 and r["seeds"] == "0,1"  # pooled, as before
    per = seed_table(long).set_index("seed")
    assert per["mean"].tolist() == pytest.approx([0.4, 0.6]) and per["n"].tolist() == [4, 4]


def test_spread_uses_seed_means_not_pooled_examples_and_skips_nan():
    # unequal numbers of finite examples: the pooled mean weighs examples, the seed spread weighs seeds
    long = long_rows({("dot", 0): [0.0, 0.0, 0.0, np.nan], ("dot", 1): [1.0, 1.0, np.nan, np.nan],
                      ("dot", 2): [np.nan] * 4})
    r = row(summarize(long, [], n_boot=200), "dot")
    assert r["mean"] == pytest.approx(0.4) and r["n"] == 5 and r["n_excluded"] == 7
    assert r["n_seeds"] == 2  # seed 2 has no finite value
    assert r["seed_sd"] == pytest.approx(np.std([0.0, 1.0], ddof=1))
    per = seed_table(long).set_index("seed")
    assert per.loc[2, "n"] == 0 and per.loc[2, "n_excluded"] == 4 and np.isnan(per.loc[2, "mean"])
    assert per.loc[0, "n_excluded"] == 1


def test_subsets_and_task_rows_get_their_own_spread():
    long = long_rows({("dot", 0): 0.2, ("dot", 1): 0.4})
    long["subset"] = ["color", "color", "shape", "shape"] * 2
    long.loc[(long.seed == 1) & (long.subset == "shape"), "value"] = 0.8  # seed 1: color 0.4, shape 0.8
    recs = [{"task": "t", "alignment": "dot", "seed": s, "task_metrics": {"accuracy": acc}}
            for s, acc in ((0, 0.5), (1, 0.9))]
    s = summarize(long, recs, n_boot=200)
    assert row(s, "dot", subset="color")["seed_sd"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert row(s, "dot", subset="shape")["seed_sd"] == pytest.approx(np.std([0.2, 0.8], ddof=1))
    assert row(s, "dot")["seed_sd"] == pytest.approx(np.std([0.2, 0.6], ddof=1))
    task = row(s, "dot", metric="accuracy")
    assert task["category"] == "task" and task["n_seeds"] == 2
    assert task["seed_sd"] == pytest.approx(np.std([0.5, 0.9], ddof=1)) and task["seed_max"] == 0.9


def test_columns_keep_their_order_and_seed_columns_come_last():
    s = summarize(long_rows({("dot", 0): 0.5}), [], n_boot=50)
    assert list(s.columns[:len(SUMMARY_COLUMNS)]) == SUMMARY_COLUMNS
    assert SUMMARY_COLUMNS[-len(SEED_COLUMNS):] == SEED_COLUMNS
    assert SUMMARY_COLUMNS.index("seeds") == len(SUMMARY_COLUMNS) - len(SEED_COLUMNS) - 1


# ----------------------------------------------------------------------------- the flag
@pytest.mark.parametrize("other, noise", [
    ((0.5, 0.625), True),     # the ranges touch: seed 1 of "add" equals seed 0 of the best
    ((0.5, 0.6249), False),   # just below: complete separation
    ((0.125, 0.9375), True),  # a noisy function overlaps even with a large gap of the means
])
def test_within_seed_noise_on_both_sides_of_the_threshold(other, noise):
    # dyadic values: the per-seed means are exact, so the threshold is hit exactly
    long = long_rows({("dot", 0): 0.625, ("dot", 1): 0.875, ("add", 0): other[0], ("add", 1): other[1]})
    s = summarize(long, [], n_boot=200)
    assert bool(row(s, "dot")["is_best"]) and row(s, "dot")["within_seed_noise"] is None
    assert row(s, "add")["within_seed_noise"] is noise


def test_flag_needs_a_seed_spread_not_a_large_gap():
    # a tiny gap (0.01) with no seed variation is a separation; a 0.2 gap within a 0.5 seed range is not
    long = long_rows({("dot", 0): 0.70, ("dot", 1): 0.70, ("add", 0): 0.69, ("add", 1): 0.69,
                      ("gen", 0): 0.3, ("gen", 1): 0.8})
    s = summarize(long, [], n_boot=200)
    assert row(s, "add")["within_seed_noise"] is False
    assert row(s, "gen")["within_seed_noise"] is True


def test_flag_direction_free_for_lower_is_better():
    long = long_rows({("dot", 0): 0.2, ("dot", 1): 0.3, ("add", 0): 0.3, ("add", 1): 0.5,
                      ("gen", 0): 0.31, ("gen", 1): 0.5}, metric="loss")
    # "loss" is not a registered metric: unranked without a direction, ranked by the rows' own one
    unranked = summarize(long, [], n_boot=200)
    assert unranked["rank"].isna().all() and not unranked["is_best"].any()
    assert unranked["higher_is_better"].isna().all()
    s = summarize(long.assign(higher_is_better=False), [], n_boot=200)
    assert bool(row(s, "dot", "loss")["is_best"])
    assert row(s, "add", "loss")["within_seed_noise"] is True
    assert row(s, "gen", "loss")["within_seed_noise"] is False


def test_ranges_overlap_is_not_measured_below_two_seeds():
    two = {"n_seeds": 2, "seed_min": 0.1, "seed_max": 0.2}
    assert ranges_overlap(two, {"n_seeds": 1, "seed_min": 0.15, "seed_max": 0.15}) is None
    assert ranges_overlap(two, {"n_seeds": np.nan, "seed_min": np.nan, "seed_max": np.nan}) is None
    assert ranges_overlap(two, {"n_seeds": 3, "seed_min": 0.2, "seed_max": 0.9}) is True


def test_one_seed_measures_no_spread():
    s = summarize(long_rows({("dot", 0): [0.6, 0.7, 0.8, 0.9], ("add", 0): [0.1, 0.2, 0.3, 0.4]}), [], n_boot=200)
    for a in ("dot", "add"):
        r = row(s, a)
        assert r["n_seeds"] == 1 and np.isnan(r["seed_sd"]) and r["seed_min"] == r["seed_max"] == pytest.approx(r["mean"])
        assert r["within_seed_noise"] is None


# ----------------------------------------------------------------------------- the report
def _two_seed_summary(name: str = "gen") -> pd.DataFrame:
    long = long_rows({("dot", 0): [0.39, 0.41, 0.4, 0.4], ("dot", 1): [0.59, 0.61, 0.6, 0.6],
                      (name, 0): [0.29, 0.31, 0.3, 0.3], (name, 1): [0.44, 0.46, 0.45, 0.45],
                      ("add", 0): [0.09, 0.11, 0.1, 0.1], ("add", 1): [0.19, 0.21, 0.2, 0.2]})
    return summarize(long, [], n_boot=200)


def test_report_shows_spread_and_flag_with_several_seeds():
    s = _two_seed_summary()
    assert row(s, "gen")["within_seed_noise"] is True and row(s, "add")["within_seed_noise"] is False
    md = render_markdown(s, ReportInput())
    assert "Seed spread (2 training seeds per alignment function)" in md and "not measured" not in md
    lines = {ln.split(" |")[0]: ln for ln in md.splitlines() if ln.startswith("| ")}
    assert "▲ · seeds 0.400–0.600, sd 0.141 |" in lines["| dot"]
    assert "~ · seeds 0.300–0.450, sd 0.106 |" in lines["| gen"]
    assert "~" not in lines["| add"] and "· seeds 0.100–0.200, sd 0.071 |" in lines["| add"]
    ranking = ranking_table(s, "t").set_index("alignment")
    assert ranking.loc["gen", "n_within_seed_noise"] == 1 and ranking.loc["add", "n_within_seed_noise"] == 0
    page = render_html(s, ReportInput())
    assert '<small class="seed">seeds 0.300–0.450, sd 0.106</small>' in page
    assert page.count('noise"') == 1 and "#within seed noise of the best" in page


def test_report_with_one_seed_says_not_measured():
    s = summarize(long_rows({("dot", 0): 0.6, ("add", 0): 0.2}), [], n_boot=100)
    for text in (render_markdown(s, ReportInput()), render_html(s, ReportInput())):
        assert "Seed spread not measured: every alignment function was trained with one seed" in text
        assert "--seeds 3" in text and "sd " not in text.split("Seed spread not measured")[1]
        assert "within seed noise of the best" not in text


def test_report_escapes_names_with_seeds_and_rebuilds_from_csv(tmp_path):
    s = _two_seed_summary(EVIL)
    save_dataframe(s, tmp_path / "metrics.csv")
    paths = write_report(tmp_path)  # from disk: the flag survives the CSV round trip
    page, md = paths["html"].read_text(), paths["md"].read_text()
    assert "<script" not in page.lower() and "&lt;script&gt;" in page
    assert "<script" not in md and "~ · seeds 0.300–0.450, sd 0.106" in md
    assert page.count('noise"') == 1


# ----------------------------------------------------------------------------- end to end
@pytest.fixture()
def fake_registered():
    register_task("fake", FakeTask, overwrite=True)
    yield
    task_base._TASKS.pop("fake", None)


def _check_seed_outputs(out: Path) -> pd.DataFrame:
    """metrics.csv's seed columns equal the per-seed means of metrics_seeds.csv, which equal the
    per-seed means recomputed from metrics_long.csv; the flags follow the rule."""
    m = pd.read_csv(out / "metrics.csv")
    per = pd.read_csv(out / "metrics_seeds.csv")
    long = pd.read_csv(out / "metrics_long.csv")
    att = long[~long.alignment.str.startswith("baseline:")]
    recomputed = att.groupby(["task", "alignment", "metric", "seed"])["value"].mean()
    mine = per[per.subset == "all"].set_index(["task", "alignment", "metric", "seed"])["mean"]
    pd.testing.assert_series_equal(mine.loc[recomputed.index], recomputed, check_names=False)
    for r in m[m.subset == "all"].itertuples():
        vals = per[(per.task == r.task) & (per.alignment == r.alignment) & (per.metric == r.metric)
                   & (per.subset == "all")]["mean"].dropna()
        assert r.n_seeds == len(vals)
        if len(vals) > 1:
            assert r.seed_sd == pytest.approx(vals.std(ddof=1)) and r.seed_min == pytest.approx(vals.min())
    for (task, metric), g in m[(m.subset == "all") & m["rank"].notna()].groupby(["task", "metric"]):
        best = g[g.is_best].iloc[0]
        for r in g[~g.is_best].to_dict("records"):
            expected = ranges_overlap(r, best)
            got = r["within_seed_noise"]
            assert (pd.isna(got) if expected is None else bool(got) == expected), (task, metric, r["alignment"])
    return m


def test_fake_study_with_two_seeds(tmp_path, fake_registered):
    res = run_study(tmp_path, preset="quick", tasks=["fake"], alignments=["dot", "general", "additive"], seeds=2,
                    checkpoints=None, progress=False, n_boot=200, n_examples=8)
    assert len(res.records) == 6
    m = _check_seed_outputs(tmp_path).set_index(["alignment", "metric"])
    # dot has no parameters: its seeds are identical by construction; general (W = I) ties with it
    assert m.loc[("dot", "pointing_game"), "n_seeds"] == 2 and m.loc[("dot", "pointing_game"), "seed_sd"] == 0.0
    assert bool(m.loc[("general", "pointing_game"), "is_best"])
    assert pd.isna(m.loc[("general", "pointing_game"), "within_seed_noise"])
    assert m.loc[("dot", "accuracy"), "seed_min"] == m.loc[("dot", "accuracy"), "seed_max"] == 1.0
    md = (tmp_path / "report.md").read_text()
    assert "Seed spread (2 training seeds" in md and "seeds 1.000–1.000, sd 0.000" in md


@pytest.mark.slow
def test_quick_study_with_two_seeds(tmp_path):
    """The real quick preset (all its tasks, trained here) with seeds=2: the same consistency checks
    (`attnlens study --preset quick --seeds 2`)."""
    run_study(tmp_path, preset="quick", seeds=2, checkpoints=None, progress=False)
    m = _check_seed_outputs(tmp_path)
    ranked = m[~m.alignment.str.startswith("baseline:")]
    assert (ranked.n_seeds.max() == 2) and ranked.within_seed_noise.notna().any()
    md = (tmp_path / "report.md").read_text()
    assert "Seed spread (2 training seeds" in md and " · seeds " in md
