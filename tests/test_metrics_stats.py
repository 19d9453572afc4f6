"""Paired statistics: bootstrap coverage, Holm by hand, Wilcoxon vs scipy, effect sizes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from attnlens.errors import ShapeError
from attnlens.metrics import stats as S


def test_bootstrap_ci_covers_known_mean():
    rng = np.random.default_rng(0)
    hits = 0
    trials = 150
    for t in range(trials):
        x = rng.normal(1.0, 2.0, 40)
        m, lo, hi = S.bootstrap_ci(x, n_resamples=2000, seed=t)
        assert lo <= m <= hi and m == pytest.approx(x.mean())
        hits += lo <= 1.0 <= hi
    assert 0.88 <= hits / trials <= 0.99


def test_paired_bootstrap_covers_known_difference_and_is_seeded():
    rng = np.random.default_rng(1)
    hits = 0
    for t in range(100):
        a = rng.normal(0, 1, 30)
        b = a - 0.5 + rng.normal(0, 0.3, 30)
        _, lo, hi = S.paired_bootstrap_ci(a, b, n_resamples=2000, seed=t)
        hits += lo <= 0.5 <= hi
    assert 0.85 <= hits / 100 <= 1.0
    assert S.paired_bootstrap_ci(a, b, seed=3) == S.paired_bootstrap_ci(a, b, seed=3)
    with pytest.raises(ShapeError, match=r"\(3,\).*\(2,\)"):
        S.paired_bootstrap_ci([1, 2, 3], [1, 2])


def test_holm_hand_example():
    # sorted p: .01*5=.05, .02*4=.08, .03*3=.09, .04*2=.08 -> .09 (monotone), .5*1=.5
    np.testing.assert_allclose(S.holm([0.04, 0.01, 0.5, 0.03, 0.02]), [0.09, 0.05, 0.5, 0.09, 0.08])
    np.testing.assert_allclose(S.holm([0.6, 0.9]), [1.0, 1.0])  # 1.2 capped; monotone
    out = S.holm([0.01, np.nan, 0.04])
    assert np.isnan(out[1]) and np.allclose(out[[0, 2]], [0.02, 0.04])


def test_wilcoxon_matches_scipy_and_effect_sizes():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.3, 1, 25), rng.normal(0, 1, 25)
    r = S.wilcoxon(a, b)
    ref = sps.wilcoxon(a - b)
    assert r["p_value"] == pytest.approx(ref.pvalue) and r["statistic"] == pytest.approx(ref.statistic)
    d = a - b
    ranks = sps.rankdata(np.abs(d))
    wplus, wminus = ranks[d > 0].sum(), ranks[d < 0].sum()
    assert r["rank_biserial"] == pytest.approx((wplus - wminus) / (wplus + wminus))
    assert r["cohens_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert np.isnan(S.wilcoxon([1.0, 2.0], [1.0, 2.0])["p_value"])
    a[3] = np.nan
    assert S.wilcoxon(a, b)["n"] == 24


def test_compare_methods_table():
    rng = np.random.default_rng(3)
    n = 30
    base = rng.random(n)
    rows = []
    for m, shift in (("dot", 0.0), ("cosine", 0.2), ("general", 0.01)):
        v = base + shift + rng.normal(0, 0.05, n)
        v[0] = np.nan if m == "general" else v[0]
        for i in range(n):
            rows.append({"example_id": f"e{i}", "target": 0, "method": m, "metric": "pg", "value": v[i], "subset": "all"})
    df = pd.DataFrame(rows)
    out = S.compare_methods(df, n_resamples=1000)
    assert len(out) == 3 and set(out.columns) >= {"p_value", "p_holm", "rank_biserial", "cohens_dz", "ci_low"}
    row = out[(out.method_a == "cosine") & (out.method_b == "dot")].iloc[0]
    assert row.mean_diff == pytest.approx(0.2, abs=0.05) and row.ci_low > 0 and row.p_holm < 0.01
    assert out[(out.method_a == "cosine") & (out.method_b == "general")].n_dropped.item() == 1
    np.testing.assert_allclose(out.p_holm, S.holm(out.p_value))
    wide = df[df.method != "general"].rename(columns={"value": "score"})
    out2 = S.compare_methods(wide, metric_col="score", example_col="example_id", n_resamples=500)
    assert len(out2) == 1 and out2.mean_diff.item() == pytest.approx(0.2, abs=0.05)
