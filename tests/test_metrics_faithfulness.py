"""Faithfulness: toy model with a known answer, slow loop references, RISE AUC, batching."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import attnlens.metrics as M
from attnlens.errors import ShapeError, UnknownNameError

N, R, D = 6, 8, 4


def toy(seed=0):
    """Output = w . features of region 3 only (features positive, so removing region 3 drops it)."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(N, R, D, generator=g, dtype=torch.float64) + 0.5
    w = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    forward = lambda x: x[:, 3, :] @ w  # noqa: E731
    att = torch.rand(N, R, generator=g, dtype=torch.float64) * 0.1
    att[:, 3] = 0.9
    return feats, forward, att


class CountingScore:
    def __init__(self, score):
        self.score, self.calls, self.rows, self.seen = score, 0, 0, []

    def __call__(self, keep, index):
        self.calls += 1
        self.rows += len(keep)
        self.seen += [(int(i), tuple(k.tolist())) for k, i in zip(keep, index)]
        return self.score(keep, index)


def test_region3_toy_leave_one_out_and_steep_morf():
    feats, forward, att = toy()
    score = M.feature_scorer(forward, feats, removal="zero")
    loo = M.leave_one_out(score, (N, R))
    assert (loo.argmax(1) == 3).all()
    assert torch.allclose(loo[:, 3], forward(feats))
    assert torch.count_nonzero(loo[:, [0, 1, 2, 4, 5, 6, 7]]) == 0
    curves = M.perturbation_curves(score, att, steps=8, orders=("morf", "lerf", "random"))
    full = forward(feats)
    morf, lerf = curves[("deletion", "morf")], curves[("deletion", "lerf")]
    assert torch.allclose(morf.values[:, 0], full) and (morf.values[:, 1:] == 0).all()  # drops at the first step
    assert torch.allclose(lerf.values[:, :-1], full[:, None].expand(N, 8))              # flat until the end
    assert (morf.auc < 0.1 * lerf.auc).all()
    rnd = curves[("deletion", "random")].auc
    assert (morf.auc <= rnd).all() and (rnd <= lerf.auc).all()
    ins = curves[("insertion", "morf")]
    assert (ins.values[:, 0] == 0).all() and torch.allclose(ins.values[:, 1], full)


def slow_curve(score, imp, valid, mode, order, steps, seed=0):
    pos = M.element_order(imp, valid, order, seed)
    out = torch.empty(len(imp), steps + 1, dtype=torch.float64)
    for i in range(len(imp)):
        nv = int(valid[i].sum())
        for s in range(steps + 1):
            k = math.floor(s / steps * nv + 0.5)
            if mode == "deletion":
                keep = valid[i] & (pos[i] >= k)
            else:
                keep = valid[i] & (pos[i] < k)
            out[i, s] = score(keep[None], torch.tensor([i]))[0]
    return out


@pytest.mark.parametrize("order", ["morf", "lerf", "random"])
def test_batched_curves_match_one_forward_per_step_loop(order):
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(N, R, D, generator=g, dtype=torch.float64)
    lin = torch.randn(D, generator=g, dtype=torch.float64)
    forward = lambda x: torch.tanh(x @ lin).sum(1) ** 2  # noqa: E731  non-additive
    imp = torch.rand(N, R, generator=g, dtype=torch.float64)
    imp[0, :3] = 0.5  # ties
    valid = torch.ones(N, R, dtype=torch.bool)
    valid[1, 5:] = False
    valid[2, :] = False
    valid[2, 0] = True
    score = CountingScore(M.feature_scorer(forward, feats, removal="mean"))
    cs = M.perturbation_curves(score, imp, valid=valid, orders=(order,), steps=5, batch_size=7)
    # each (example, kept set) is scored once: fewer rows than the 2 x N x 6 curve points (the
    # curves' ends are shared), and no pair twice
    assert score.rows < 2 * N * 6 and score.calls == math.ceil(score.rows / 7)
    assert len(set(score.seen)) == score.rows
    for mode in ("deletion", "insertion"):
        ref = slow_curve(M.feature_scorer(forward, feats, removal="mean"), imp, valid, mode, order, 5)
        torch.testing.assert_close(cs[(mode, order)].values, ref)
        torch.testing.assert_close(cs[(mode, order)].auc, M.curve_auc(ref))


def test_element_order_and_random_seed():
    imp = torch.tensor([[0.3, 0.9, 0.3, 0.1]])
    valid = torch.tensor([[True, True, True, False]])
    assert M.element_order(imp, valid, "morf").tolist() == [[1, 0, 2, 3]]   # stable on the 0.3 tie
    assert M.element_order(imp, valid, "lerf").tolist() == [[0, 2, 1, 3]]
    a = M.element_order(imp.expand(20, 4), valid.expand(20, 4), "random", seed=3)
    assert torch.equal(a, M.element_order(imp.expand(20, 4), valid.expand(20, 4), "random", seed=3))
    assert (a[:, 3] == 3).all() and len({tuple(r) for r in a.tolist()}) > 1
    with pytest.raises(UnknownNameError):
        M.element_order(imp, valid, "best")


def rise_auc(arr):
    """RISE's auc(): (sum - first/2 - last/2) / (len - 1), i.e. trapezoid over a normalised x axis."""
    arr = np.asarray(arr, dtype=float)
    return (arr.sum() - arr[0] / 2 - arr[-1] / 2) / (arr.shape[0] - 1)


def test_auc_follows_rise_convention():
    hand = [1.0, 0.6, 0.3, 0.1, 0.0]
    assert M.curve_auc(torch.tensor(hand)).item() == pytest.approx(0.375)
    assert rise_auc(hand) == pytest.approx(0.375)
    rng = np.random.default_rng(0)
    curves = rng.random((5, 21))
    np.testing.assert_allclose(M.curve_auc(torch.tensor(curves)).numpy(), [rise_auc(c) for c in curves])
    with pytest.raises(ShapeError):
        M.curve_auc(torch.ones(5), torch.linspace(0, 1, 4))


def test_eraser_against_loop_reference():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(N, R, D, generator=g, dtype=torch.float64)
    forward = lambda x: (x.sum(-1) ** 2).sum(1)  # noqa: E731
    imp = torch.rand(N, R, generator=g, dtype=torch.float64)
    valid = torch.ones(N, R, dtype=torch.bool)
    valid[0, 4:] = False
    score = M.feature_scorer(forward, feats)
    fr = (0.01, 0.05, 0.1, 0.2, 0.5)
    res = M.eraser(score, imp, valid=valid, fractions=fr)
    for i in range(N):
        nv = int(valid[i].sum())
        order = [r for r in np.argsort(-imp[i].numpy(), kind="stable") if valid[i, r]]
        full = score(valid[i][None], torch.tensor([i]))[0]
        for j, f in enumerate(fr):
            k = min(nv, max(1, math.floor(f * nv + 0.5)))
            top = torch.zeros(R, dtype=torch.bool)
            top[order[:k]] = True
            comp = full - score((valid[i] & ~top)[None], torch.tensor([i]))[0]
            suff = full - score(top[None], torch.tensor([i]))[0]
            assert res["comprehensiveness"][i, j].item() == pytest.approx(comp.item())
            assert res["sufficiency"][i, j].item() == pytest.approx(suff.item())
    torch.testing.assert_close(res["comprehensiveness_aopc"], res["comprehensiveness"].mean(1))
    # the region-3 toy: its top element carries everything
    feats3, forward3, att3 = toy()
    r3 = M.eraser(M.feature_scorer(forward3, feats3), att3)
    torch.testing.assert_close(r3["comprehensiveness_aopc"], forward3(feats3))
    assert torch.allclose(r3["sufficiency_aopc"], torch.zeros(N, dtype=torch.float64))


def test_faithfulness_correlation_known_signs():
    g = torch.Generator().manual_seed(4)
    c = torch.rand(N, R, generator=g, dtype=torch.float64) + 0.1
    # additive model: output = sum_r c_r * kept_r, so the drop of S equals the mass of c in S
    score = lambda keep, index: (keep.double() * c[index]).sum(1)  # noqa: E731
    assert torch.allclose(M.faithfulness_correlation(score, c, n_subsets=30), torch.ones(N, dtype=torch.float64))
    assert torch.allclose(M.faithfulness_correlation(score, -c, n_subsets=30), -torch.ones(N, dtype=torch.float64))
    noisy = c + 0.3 * torch.rand(N, R, generator=g, dtype=torch.float64)
    a = M.faithfulness_correlation(score, noisy, n_subsets=30, seed=1)
    assert torch.equal(a, M.faithfulness_correlation(score, noisy, n_subsets=30, seed=1))   # seeded
    assert not torch.equal(a, M.faithfulness_correlation(score, noisy, n_subsets=30, seed=2))
    assert ((a > 0.5) & (a < 1.0)).all()
    const = M.faithfulness_correlation(lambda k, i: torch.zeros(len(k)), c, n_subsets=10)
    assert torch.isnan(const).all()


def test_feature_scorer_modes_and_errors():
    f = torch.arange(12.0).reshape(2, 3, 2)
    s0 = M.feature_scorer(lambda x: x.sum((1, 2)), f, removal="zero")
    s1 = M.feature_scorer(lambda x: x.sum((1, 2)), f, removal="mean")
    keep = torch.tensor([[True, False, True]])
    assert s0(keep, torch.tensor([1])).tolist() == [6 + 7 + 10 + 11]
    assert s1(keep, torch.tensor([1])).tolist() == [6 + 7 + 10 + 11 + 5.5 * 2]
    with pytest.raises(UnknownNameError):
        M.feature_scorer(lambda x: x, f, removal="blur")
    with pytest.raises(ShapeError, match=r"keep \((\d+), 3\).*got \(\1, 2\)"):
        M.deletion_curve(lambda k, i: torch.zeros(len(k), 2), torch.rand(2, 3))
    with pytest.raises(ShapeError, match=r"importance \(2, 3\) and valid \(2, 4\)"):
        M.eraser(s0, torch.rand(2, 3), valid=torch.ones(2, 4, dtype=torch.bool))


def test_permutation_test():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(N, R, generator=g, dtype=torch.float64)
    att = torch.softmax(torch.randn(N, R, generator=g, dtype=torch.float64) * 3, dim=1)
    valid = torch.ones(N, R, dtype=torch.bool)
    valid[0, 6:] = False
    att = torch.where(valid, att, 0.0)
    seen = []

    def f(a, idx):
        seen.append((a.clone(), idx.clone()))
        return (a * v[idx]).sum(1)

    res = M.permutation_test(f, att, n_permutations=25, seed=1, valid=valid, batch_size=40)
    rows = torch.cat([a for a, _ in seen])
    idx = torch.cat([i for _, i in seen])
    for a, i in zip(rows, idx):
        assert torch.allclose(a.sort().values, att[i].sort().values)     # a permutation of the original
        assert (a[~valid[i]] == 0).all()                                  # padded weights stay in place
    expected = torch.stack([(torch.stack([(rows[j] * v[i]).sum() for j in torch.nonzero(idx == i)[1:, 0]])
                             - (att[i] * v[i]).sum()).abs().median() for i in range(N)])
    torch.testing.assert_close(res["median_change"], expected)
    torch.testing.assert_close(res["max_attention"], att.max(1).values)
    uni = M.permutation_test(f, torch.full((2, R), 1.0 / R, dtype=torch.float64), n_permutations=5)
    assert (uni["median_change"] == 0).all()


def test_model_randomisation_cascading():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
    x = torch.randn(10, 5, generator=torch.Generator().manual_seed(1))
    before = [p.clone() for p in net.parameters()]
    df = M.model_randomisation(net, lambda m: torch.softmax(m(x), -1), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))   # the input model is untouched
    assert df.layer.unique().tolist() == ["2", "0"] and df.step.max() == 2 and len(df) == 20
    assert df.spearman.mean() < 0.8
    # an "explanation" that ignores the model stays perfectly correlated: the check flags it
    const = M.model_randomisation(net, lambda m: x.clone())
    assert np.allclose(const.spearman, 1.0)
    again = M.model_randomisation(net, lambda m: torch.softmax(m(x), -1), seed=0)
    assert np.allclose(again.spearman, df.spearman)
    with pytest.raises(ShapeError, match="nope"):
        M.model_randomisation(net, lambda m: m(x), layers=["nope"])


def test_faithfulness_classes_match_functions():
    feats, forward, att = toy()
    score = M.feature_scorer(forward, feats)
    d = M.DeletionAUC(order="lerf", steps=5)
    # ``index`` counts rows of each update's importance: one scorer per batch
    d.update(M.feature_scorer(forward, feats[:3]), att[:3])
    d.update(M.feature_scorer(forward, feats[3:]), att[3:])
    torch.testing.assert_close(d.values, M.deletion_curve(score, att, order="lerf", steps=5).auc)
    # the direction is the registry's deletion_auc_<order>: LeRF deletion should stay high, MoRF drop fast
    assert d.higher_is_better is True and d.category == "faithfulness"
    assert M.DeletionAUC().higher_is_better is False and M.DeletionAUC.higher_is_better is False
    c = M.Comprehensiveness()
    c.update(score, att)
    torch.testing.assert_close(c.values, M.eraser(score, att)["comprehensiveness_aopc"])
    i = M.InsertionAUC(steps=4)
    i.update(score, att)
    assert i.compute()["n"] == N and i.higher_is_better
