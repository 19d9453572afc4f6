"""MetricSuite over hand-built AnalysisExamples: known values, NaN reasons, baselines, summary."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import attnlens.metrics as M
from attnlens.attention_map import AttentionMap, Side
from attnlens.errors import ShapeError, UnknownNameError
from attnlens.tasks.base import AnalysisExample, GroundingTarget
from attnlens.types import Regions

TOKENS = ("a", "red", "circle", "and", "square")
BOXES = [[0, 0, 16, 16], [16, 16, 32, 32], [0, 16, 16, 32], [0, 0, 32, 32]]   # region 3 is padding


def example(eid, circle_row, alignment):
    w = torch.full((len(TOKENS), 4), 0.25, dtype=torch.float64)
    w[2] = torch.tensor(circle_row, dtype=torch.float64)
    amap = AttentionMap(w, ("word", "region"), query=Side("word", "text", TOKENS), key=Side("region", "image"),
                        alignment=alignment)
    targets = (GroundingTarget((1, 2), np.array([[16.0, 16, 32, 32]]), "red circle", 2),
               GroundingTarget((4,), np.zeros((0, 4)), "square", 4))                  # no box: NaN with reason
    return AnalysisExample(eid, np.zeros((32, 32, 3), np.uint8), Regions(BOXES, (32, 32)), TOKENS, amap, targets,
                           np.array([True, True, True, False]), 1.0, {})


def examples():
    return {"dot": [example("img0/0", [0.05, 0.6, 0.15, 0.2], "dot"), example("img1/0", [0.5, 0.1, 0.2, 0.2], "dot")],
            "cosine": [example("img0/0", [0.6, 0.1, 0.1, 0.2], "cosine"),
                       example("img1/0", [0.1, 0.6, 0.1, 0.2], "cosine")]}


def test_grounding_rows_known_values():
    suite = M.MetricSuite(faithfulness=(), tolerance=0, progress=False)
    df = suite.run(examples(), subset="test")
    assert list(df.columns) == ["example_id", "method", "metric", "value", "reason", "subset", "target", "phrase"]
    assert set(df.method) == {"dot", "cosine", "baseline:uniform", "baseline:centre", "baseline:random"}
    assert (df.subset == "test").all()
    get = lambda m, e, metric, t=0: df[(df.method == m) & (df.example_id == e) & (df.metric == metric)  # noqa: E731
                                      & (df.target == t)].value.item()
    # padded region 3 is dropped and the rest renormalised: 0.6 / 0.8 of the mass lies in the target box
    assert get("dot", "img0/0", "relevance_mass_accuracy") == pytest.approx(0.75)
    assert get("dot", "img0/0", "pointing_game") == 1.0 and get("dot", "img1/0", "pointing_game") == 0.0
    assert get("dot", "img0/0", "top1_region_hit") == 1.0 and get("cosine", "img0/0", "top1_region_hit") == 0.0
    assert get("dot", "img0/0", "box_accuracy") == 1.0
    assert get("dot", "img0/0", "mask_auroc") == 1.0
    nan_rows = df[df.target == 1]
    assert nan_rows.value.isna().all()
    assert set(nan_rows.reason) == {"empty mask", "empty or degenerate ground-truth box"}
    # baselines scored once per (example, target), not once per method
    assert len(df[(df.method == "baseline:uniform") & (df.metric == "pointing_game")]) == 4


def test_span_mean_uses_all_tokens():
    df = M.MetricSuite(grounding=("relevance_mass_accuracy",), faithfulness=(), span="mean", baselines=(),
                       progress=False).run(examples())
    # mean of the "red" row (0.25 each) and the circle row, then padding dropped and renormalised
    v = df[(df.method == "dot") & (df.example_id == "img0/0") & (df.target == 0)].value.item()
    assert v == pytest.approx(((0.25 + 0.6) / 2) / ((0.25 + 0.05 + 0.25 + 0.6 + 0.25 + 0.15) / 2))


def test_faithfulness_rows_and_summary():
    calls = []

    def scorer(keep, index):
        calls.append(len(keep))
        return keep[:, 1].double()   # the output needs region 1 only

    exs = examples()
    suite = M.MetricSuite(grounding=("pointing_game",), faithfulness=("deletion_auc_morf", "deletion_auc_lerf",
                          "comprehensiveness_aopc", "faithfulness_correlation"), steps=4, n_subsets=10,
                          batch_size=64, progress=False)
    df = suite.run(exs, scorers={"dot": scorer, "cosine": scorer})
    f = df[df.metric == "deletion_auc_morf"].set_index(["method", "example_id"]).value
    # "dot" img0 ranks region 1 first (mean attention over words) -> output gone after the first step
    assert f[("dot", "img0/0")] == pytest.approx(1 / 4 * 0.5)
    lerf = df[df.metric == "deletion_auc_lerf"].set_index(["method", "example_id"]).value
    assert lerf[("dot", "img0/0")] > f[("dot", "img0/0")]
    assert (df[df.metric == "comprehensiveness_aopc"].target == -1).all()
    s = M.summary(df, n_resamples=200)
    pg = s[(s.method == "dot") & (s.metric == "pointing_game")].iloc[0]
    assert pg.n == 2 and pg.n_excluded == 2 and pg.reasons == "empty mask: 2"
    assert bool(pg.higher_is_better)
    assert set(s.metric) >= {"deletion_auc_morf", "faithfulness_correlation"}
    cmp = M.compare_methods(df[~df.method.str.startswith("baseline")], n_resamples=200)
    assert set(cmp.metric) == set(df.metric)
    with pytest.raises(ShapeError, match="scorers"):
        suite.run(exs, scorers={"dot": scorer})


def test_flat_list_grouped_by_alignment_and_bad_names():
    flat = [e for v in examples().values() for e in v]
    df = M.MetricSuite(grounding=("pointing_game",), faithfulness=(), baselines=(), progress=False).run(flat)
    assert set(df.method) == {"dot", "cosine"}
    with pytest.raises(UnknownNameError):
        M.MetricSuite(grounding=("pointing",))
    assert M.regions_to_pixels is not None and not math.isnan(df.value.iloc[0])
