"""The metric registry: one entry per metric that the suite, the study's rows, the analysis and the
report read; adding a metric is one register_metric call (shown end to end on the fake task)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from fake_task import FakeTask  # noqa: E402

import attnlens.metrics as M  # noqa: E402
from attnlens.errors import DTypeError, ParameterError, RegistryError, UnknownNameError  # noqa: E402
from attnlens.metrics.registry import Option, metrics  # noqa: E402


# ----------------------------------------------------------------------------- registration rules
def test_duplicate_refused_unless_overwrite_and_removed_again():
    fn = lambda maps, masks, gt: (maps.flatten(1).amax(1), torch.zeros(len(maps), dtype=torch.long))  # noqa: E731
    M.register_metric("toy_peak", category="grounding", higher_is_better=True, inputs="pixel_map", pixels="max", fn=fn)
    try:
        with pytest.raises(RegistryError, match="toy_peak"):
            M.register_metric("toy_peak", category="grounding", higher_is_better=False, inputs="pixel_map",
                              pixels="max", fn=fn)
        assert M.get_metric("toy_peak").higher_is_better is True
        M.register_metric("toy_peak", category="grounding", higher_is_better=False, inputs="pixel_map", pixels="max",
                          fn=fn, overwrite=True)
        assert M.direction("toy_peak") is False
        assert "toy_peak" in M.metric_names(category="grounding")
    finally:
        M.unregister_metric("toy_peak")
    assert "toy_peak" not in M.metric_names()
    with pytest.raises(UnknownNameError):
        M.get_metric("toy_peak")
    with pytest.raises(UnknownNameError):
        M.unregister_metric("toy_peak")


@pytest.mark.parametrize("kwargs, error", [
    (dict(category="groundng", inputs="pixel_map", pixels="max"), UnknownNameError),
    (dict(category="grounding", inputs="pixels", pixels="max"), UnknownNameError),
    (dict(category="grounding", inputs="pixel_map", pixels="mean"), UnknownNameError),
    (dict(category="faithfulness", inputs="curves"), RegistryError),
    (dict(category="faithfulness", inputs="curves", curves=(("deletion", "best"),)), UnknownNameError),
    (dict(category="agreement", inputs="attribution", source="saliency"), UnknownNameError),
    (dict(category="task", inputs="task"), RegistryError),  # a task metric takes no function
    (dict(category="grounding", inputs="pixel_map", pixels="max", higher_is_better="yes"), DTypeError),
    (dict(category="grounding", inputs="pixel_map", pixels="max", options=(Option("k", 1, "int"),) * 2), RegistryError),
    (dict(category="grounding", inputs="pixel_map", pixels="max", fn=5), DTypeError),
    (dict(category="grounding", inputs="pixel_map", pixels="max", options=({"k": 1},)), DTypeError),
    (dict(category="grounding", inputs="pixel_map", pixels="max", options=Option("k", 1, "int")), DTypeError),
])
def test_bad_entries_are_typed_errors_and_not_registered(kwargs, error):
    kwargs = {"higher_is_better": True, "fn": lambda *a, **k: None, **kwargs}
    with pytest.raises(error):
        M.register_metric("toy_bad", **kwargs)
    assert "toy_bad" not in M.metric_names()


def test_options_are_typed_with_defaults():
    assert M.get_metric("pointing_game").defaults() == {"tolerance": 15.0}
    assert M.get_metric("topk_intersection").resolve({"k": 7, "tolerance": 3}) == {"k": 7}
    with pytest.raises(ParameterError, match="tolerance"):
        M.MetricSuite(tolerance=-1)
    with pytest.raises(DTypeError, match="k"):
        M.MetricSuite(k="many")
    with pytest.raises(UnknownNameError, match="tolerence"):
        M.MetricSuite(tolerence=3)
    with pytest.raises(UnknownNameError):
        M.MetricSuite(negative="flip")
    with pytest.raises(ParameterError, match="n_subsets"):  # checked even when no selected metric reads it
        M.MetricSuite(grounding=(), faithfulness=(), n_subsets=1)


def test_every_suite_metric_and_class_reads_its_entry():
    suite = M.MetricSuite()
    assert [e.name for e in suite.grounding] == list(M.metric_names(category="grounding"))
    assert [e.name for e in suite.faithfulness] == list(M.metric_names(category="faithfulness"))
    for cls in (M.PointingGame, M.RelevanceMassAccuracy, M.RelevanceRankAccuracy, M.MaskAUROC, M.TopKIntersection,
                M.BoxAccuracy, M.Top1RegionHit, M.Comprehensiveness, M.Sufficiency):
        e = M.get_metric(cls.name)
        assert (cls.higher_is_better, cls.category) == (e.higher_is_better, e.category), cls
    for order in ("morf", "lerf", "random"):
        assert M.DeletionAUC(order=order).higher_is_better is M.direction(f"deletion_auc_{order}")
        assert M.InsertionAUC(order=order).higher_is_better is M.direction(f"insertion_auc_{order}")
    # the directions the study ranked by before the registry (METRICS.md)
    lower = {e.name for e in metrics() if not e.higher_is_better}
    assert lower == {"sufficiency_aopc", "deletion_auc_morf", "insertion_auc_lerf", "deletion_auc_random",
                     "i2t_medr", "i2t_meanr", "t2i_medr", "t2i_meanr", "mse"}


# ----------------------------------------------------------------------------- one change adds a metric
def peak_distance_reference(maps: torch.Tensor, masks: torch.Tensor, gt_boxes=None):
    """Distance in pixels from each map's first maximum to the nearest mask pixel (0 inside the
    mask), by loops over the pixels; NaN with the empty-mask reason code for an empty mask."""
    values, codes = [], []
    for m, g in zip(maps.tolist(), masks.tolist()):
        flat = [v for row in m for v in row]
        p = flat.index(max(flat))
        pr, pc = divmod(p, len(m[0]))
        inside = [(r, c) for r, row in enumerate(g) for c, x in enumerate(row) if x]
        if not inside:
            values.append(math.nan)
            codes.append(1)
            continue
        values.append(min(math.hypot(r - pr, c - pc) for r, c in inside))
        codes.append(0)
    return torch.tensor(values, dtype=torch.float64), torch.tensor(codes)


@pytest.fixture(scope="module")
def toy_study(tmp_path_factory):
    """A quick study of the fake task with a toy metric registered here and nowhere else."""
    from attnlens.study import run_study
    from attnlens.tasks import base as task_base
    from attnlens.tasks.base import register_task

    register_task("fake", FakeTask, overwrite=True)
    M.register_metric("peak_distance", category="grounding", higher_is_better=False, inputs="pixel_map",
                      pixels="max", fn=peak_distance_reference,
                      description="pixels from the map's peak to the nearest mask pixel")
    M.register_metric("loo_top1_match", category="agreement", higher_is_better=True, inputs="attribution",
                      source="leave_one_out", fn=lambda a, b: float(int(a.argmax()) == int(b.argmax())),
                      description="the most attended region is the one whose removal drops the output most")
    try:
        out = tmp_path_factory.mktemp("toy_study")
        yield run_study(out, preset="quick", tasks=["fake"], alignments=["dot", "additive"], checkpoints=None,
                        progress=False, n_boot=200, n_examples=6, gradient_agreement=(), gallery=1)
    finally:
        M.unregister_metric("peak_distance")
        M.unregister_metric("loo_top1_match")
        task_base._TASKS.pop("fake", None)


def test_registered_metric_flows_to_metrics_csv(toy_study):
    out = toy_study.out
    metrics_csv = pd.read_csv(out / "metrics.csv")
    rows = metrics_csv[metrics_csv.metric == "peak_distance"].set_index("alignment")
    assert {"dot", "additive", "baseline:uniform", "baseline:centre", "baseline:random"} <= set(rows.index)
    assert set(rows.loc[["dot", "additive"], "category"]) == {"grounding"}
    assert (rows["higher_is_better"] == False).all()  # noqa: E712  (the registered direction)
    # dot grounds perfectly by construction (fake_task): its peak is inside the box, the best at 0
    assert rows.loc["dot", "mean"] == 0.0 and bool(rows.loc["dot", "is_best"]) and rows.loc["dot", "rank"] == 1.0
    assert rows.loc["additive", "mean"] > 0 and rows.loc["additive", "rank"] == 2.0  # lower is better
    # the per-example rows carry it too, and the summary's mean is theirs
    long = pd.read_csv(out / "metrics_long.csv")
    sel = long[(long.metric == "peak_distance") & (long.alignment == "additive")]
    assert len(sel) == 6 and (sel.category == "grounding").all() and (sel.higher_is_better == False).all()  # noqa: E712
    assert rows.loc["additive", "mean"] == pytest.approx(sel.value.mean())
    # the report shows it in the grounding table
    assert "peak_distance" in (out / "report.md").read_text()
    # an agreement metric of another input kind flows the same way (no baseline rows: not a map metric)
    agree = metrics_csv[metrics_csv.metric == "loo_top1_match"].set_index("alignment")
    assert set(agree.index) == {"dot", "additive"} and set(agree["category"]) == {"agreement"}
    assert (agree["higher_is_better"] == True).all() and agree["n"].tolist() == [6, 6]  # noqa: E712


def test_grounding_baselines_score_registered_map_metrics():
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, 2:6, 3:9] = True
    masks[1, 10:16, 0:4] = True
    M.register_metric("toy_peak_distance", category="grounding", higher_is_better=False, inputs="pixel_map",
                      pixels="max", fn=peak_distance_reference)
    try:
        base = M.grounding_baselines(masks, baselines=("uniform",))
        assert set(base["uniform"]) == set(M.metric_names(category="grounding", inputs="pixel_map"))
        # the uniform map's first maximum is pixel (0, 0): nearest mask pixels (2, 3) and (10, 0)
        assert base["uniform"]["toy_peak_distance"].tolist() == [math.hypot(2, 3), 10.0]
    finally:
        M.unregister_metric("toy_peak_distance")
    with pytest.raises(UnknownNameError):
        M.grounding_baselines(masks, metrics=("top1_region_hit",))  # reads region weights, not a map
    with pytest.raises(UnknownNameError, match="tolerence"):
        M.grounding_baselines(masks, tolerence=3)


def test_analysis_takes_direction_and_category_from_the_registry():
    from attnlens.study.analysis import summarize

    rows = [{"task": "t", "alignment": a, "seed": 0, "example_id": f"e{i}", "target": -1, "metric": "sufficiency_aopc",
             "value": v + 0.01 * i} for a, v in (("dot", 0.1), ("additive", 0.4)) for i in range(4)]
    # the rows claim the wrong direction and no category: the registry wins
    s = summarize(pd.DataFrame(rows).assign(higher_is_better=True), [], n_boot=100).set_index("alignment")
    assert (s["higher_is_better"] == False).all() and (s["category"] == "faithfulness").all()  # noqa: E712
    assert bool(s.loc["dot", "is_best"]) and s.loc["additive", "rank"] == 2.0
