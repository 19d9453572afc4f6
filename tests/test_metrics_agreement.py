"""Attention vs captum attributions: known answers on linear / region-3 models, tau-b reference."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import attnlens.metrics as M
from attnlens.errors import ShapeError

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor:UserWarning")


def slow_tau_b(a, b):
    nc = nd = ta = tb = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
        if da == 0 and db == 0:
            continue
        if da == 0:
            ta += 1
        elif db == 0:
            tb += 1
        elif da == db:
            nc += 1
        else:
            nd += 1
    return (nc - nd) / math.sqrt((nc + nd + ta) * (nc + nd + tb))


def test_rank_agreement_matches_slow_tau_b_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 4, 9).astype(float)
        b = rng.integers(0, 4, 9).astype(float)
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            continue
        r = M.rank_agreement(a, b, k=3)
        assert r["kendall_tau"] == pytest.approx(slow_tau_b(a, b))
    assert math.isnan(M.rank_agreement(np.ones(4), np.arange(4.0))["kendall_tau"])
    assert M.topk_overlap(np.array([0.0, 5, 4, 1]), np.array([9.0, 8, 1, 0]), 2) == 0.5


def test_linear_model_attributions_known():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(5, 3, generator=g)
    x = torch.randn(4, 5, 3, generator=g)
    forward = lambda f: (f * W).sum((1, 2))  # noqa: E731
    expected = (x * W).sum(-1).double()      # per-region contribution of a linear model
    for method in M.METHODS:
        (a,) = M.attributions(forward, x, method)
        torch.testing.assert_close(a, expected, rtol=1e-4, atol=1e-5)
    (ab,) = M.attributions(forward, x, "input_x_gradient", aggregate="abs_sum")
    torch.testing.assert_close(ab, (x * W).abs().sum(-1).double(), rtol=1e-5, atol=1e-6)


def test_region3_toy_top_leave_one_out_and_agreement():
    g = torch.Generator().manual_seed(1)
    n, r, d = 5, 6, 4
    x = torch.rand(n, r, d, generator=g) + 0.5
    w = torch.tensor([1.0, 2.0, 0.5, 1.5])
    forward = lambda f: f[:, 3, :] @ w  # noqa: E731
    (loo,) = M.attributions(forward, x, "feature_ablation")
    assert (loo.argmax(1) == 3).all()
    torch.testing.assert_close(loo[:, 3], forward(x).double())
    att = torch.full((n, r), 0.1)
    att[:, 3] = 0.5
    df = M.attribution_agreement(forward, x, att, k=1)
    assert set(df.method) == set(M.METHODS) and len(df) == n * 3
    assert (df.topk_overlap == 1.0).all()
    # attention peaked elsewhere disagrees
    att2 = torch.full((n, r), 0.1)
    att2[:, 0] = 0.5
    df2 = M.attribution_agreement(forward, x, att2, methods=("feature_ablation",), k=1)
    assert (df2.topk_overlap == 0.0).all()


def test_regions_and_words_with_padding():
    g = torch.Generator().manual_seed(2)
    reg, wrd = torch.randn(3, 4, 2, generator=g), torch.randn(3, 5, 2, generator=g)
    Wr, Ww = torch.randn(4, 2, generator=g), torch.randn(5, 2, generator=g)
    forward = lambda a, b: (a * Wr).sum((1, 2)) + (b * Ww).sum((1, 2))  # noqa: E731
    att_r = (reg * Wr).sum(-1)       # attention equal to the true contributions -> perfect agreement
    att_w = (wrd * Ww).sum(-1)
    vw = torch.ones(3, 5, dtype=torch.bool)
    vw[0, 3:] = False
    df = M.attribution_agreement(forward, (reg, wrd), (att_r, att_w), valid=(None, vw),
                                 methods=("input_x_gradient",), k=2)
    assert set(df.input) == {"region", "word"}
    assert np.allclose(df.kendall_tau, 1.0) and np.allclose(df.spearman, 1.0)
    assert df[(df.input == "word") & (df.example == 0)].n_elements.item() == 3
    with pytest.raises(ShapeError, match=r"attention \(3, 4\) does not fit inputs \(3, 5, 2\)"):
        M.attribution_agreement(forward, (reg, wrd), (att_r, att_r))
