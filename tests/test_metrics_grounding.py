"""Grounding metrics: known answers, slow references, Quantus and TorchRay agreement, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnlens.metrics as M
from attnlens.errors import DTypeError, NonFiniteError, ShapeError


# --------------------------------------------------------------------------- slow references
def ref_first_argmax(m):
    h, w = m.shape
    best, arg = -math.inf, None
    for r in range(h):
        for c in range(w):
            if m[r, c] > best:
                best, arg = m[r, c], (r, c)
    return arg


def ref_torchray_hit(mask, point, tolerance):
    """TorchRay's PointingGame.evaluate rule: hit iff some mask pixel has squared distance
    < tolerance**2 from the point (strict). We add: tolerance 0 means the point itself is in G
    (TorchRay with tolerance 0 would never hit: a deliberate difference)."""
    r0, c0 = point
    if tolerance == 0:
        return bool(mask[r0, c0])
    h, w = mask.shape
    return any(mask[r, c] and (r - r0) ** 2 + (c - c0) ** 2 < tolerance ** 2 for r in range(h) for c in range(w))


def ref_pointing(maps, masks, tol):
    out = []
    for m, g in zip(maps, masks):
        out.append(float("nan") if not g.any() else float(ref_torchray_hit(g, ref_first_argmax(m), tol)))
    return out


def ref_mass(maps, masks):
    out = []
    for m, g in zip(maps, masks):
        tot = float(m.sum())
        out.append(float("nan") if not g.any() or tot <= 0 else float(m[g].sum()) / tot)
    return out


def ref_ranked(m):
    flat = [(-float(v), i) for i, v in enumerate(m.reshape(-1))]
    return [i for _, i in sorted(flat)]  # descending value, ties in raster order


def ref_rank(maps, masks):
    out = []
    for m, g in zip(maps, masks):
        k = int(g.sum())
        if k == 0:
            out.append(float("nan"))
            continue
        top = ref_ranked(m)[:k]
        out.append(sum(bool(g.reshape(-1)[i]) for i in top) / k)
    return out


def ref_topk(maps, masks, k):
    return [float("nan") if not g.any() else sum(bool(g.reshape(-1)[i]) for i in ref_ranked(m)[:k]) / k
            for m, g in zip(maps, masks)]


def ref_auroc(maps, masks):
    out = []
    for m, g in zip(maps, masks):
        pos, neg = m[g].tolist(), m[~g].tolist()
        if not pos or not neg:
            out.append(float("nan"))
            continue
        s = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
        out.append(s / (len(pos) * len(neg)))
    return out


def assert_same(a, b):
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-9, atol=1e-12)


maps_masks = st.integers(1, 4).flatmap(lambda n: st.tuples(st.integers(1, 5), st.integers(1, 5)).flatmap(
    lambda hw: st.tuples(
        st.lists(st.integers(0, 3), min_size=n * hw[0] * hw[1], max_size=n * hw[0] * hw[1]),
        st.lists(st.booleans(), min_size=n * hw[0] * hw[1], max_size=n * hw[0] * hw[1]),
        st.just((n, *hw)))))


def _unpack(data, dtype=torch.float64):
    vals, bools, shape = data
    # small integers: many ties; some negative values and -0.0 (ties with +0.0)
    maps = (torch.tensor(vals, dtype=torch.float64).reshape(shape) - 1.0) / 3.0
    maps = torch.where(maps == 0, torch.tensor(-0.0, dtype=torch.float64), maps)
    maps[..., 0] = maps[..., 0].abs()  # mixes +0.0 and -0.0
    maps = maps.to(dtype)
    masks = torch.tensor(bools).reshape(shape)
    return maps, masks


@settings(max_examples=60, deadline=None)
@given(maps_masks, st.sampled_from([0, 1, 1.5, 2, 15]), st.sampled_from([torch.float64, torch.float32]))
def test_pointing_game_matches_slow_reference(data, tol, dtype):
    maps, masks = _unpack(data, dtype)
    assert_same(M.pointing_game(maps, masks, tolerance=tol), ref_pointing(maps.double().numpy(), masks.numpy(), tol))


@settings(max_examples=60, deadline=None)
@given(maps_masks, st.sampled_from([torch.float64, torch.float32, torch.float16]))
def test_mass_rank_auroc_topk_match_slow_references(data, dtype):
    """float64 takes torch.sort; float32/float16 take the uint64-key SIMD sort."""
    maps, masks = _unpack(data, dtype)
    mn, gn = maps.double().numpy(), masks.numpy()
    assert_same(M.relevance_mass_accuracy(maps.clamp(min=0), masks), ref_mass(np.maximum(mn, 0), gn))
    assert_same(M.relevance_rank_accuracy(maps, masks), ref_rank(mn, gn))
    assert_same(M.mask_auroc(maps, masks), ref_auroc(mn, gn))
    k = max(1, mn.shape[1] * mn.shape[2] // 2)
    assert_same(M.topk_intersection(maps, masks, k=k), ref_topk(mn, gn, k))


# --------------------------------------------------------------------------- known answers
def _box_case():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 2:5, 2:5] = True
    maps = torch.zeros(2, 8, 8)
    maps[0, 3, 3] = 2.0
    maps[0, 2:5, 2:5] += 0.1        # all mass inside the box
    maps[1, 6:, 6:] = 1.0           # all mass outside
    return maps, masks


def test_mass_accuracy_known_answers():
    maps, masks = _box_case()
    assert M.relevance_mass_accuracy(maps, masks).tolist() == [1.0, 0.0]
    assert M.pointing_game(maps, masks, tolerance=0).tolist() == [1.0, 0.0]
    assert M.energy_pointing_game is M.relevance_mass_accuracy


def test_uniform_map_is_not_a_free_hit():
    """A constant map points at the first pixel (top-left); Quantus would count it a hit because
    a tied maximum lies in G. Our documented rule: hit only if G lies within tolerance of (0, 0)."""
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[0, 20:30, 20:30] = True   # far from (0, 0)
    masks[1, 0:4, 0:4] = True       # contains (0, 0)
    masks[2, 12:13, 0:1] = True     # 12 px below (0, 0): inside tolerance 15, outside 5
    uniform = M.uniform_map(3, 32, 32)
    assert M.pointing_game(uniform, masks, tolerance=15).tolist() == [0.0, 1.0, 1.0]
    assert M.pointing_game(uniform, masks, tolerance=5).tolist() == [0.0, 1.0, 0.0]
    base = M.grounding_baselines(masks, tolerance=15)
    assert base["uniform"]["pointing_game"].tolist() == [0.0, 1.0, 1.0]
    # the centre Gaussian's first maximum is pixel (15, 15): box 0 is within 15 px, box 2 at 15.3 px is not
    assert base["centre"]["pointing_game"].tolist() == [1.0, 0.0, 0.0]
    area = masks.reshape(3, -1).double().mean(1)
    assert torch.allclose(base["uniform"]["relevance_mass_accuracy"], area)
    assert base["uniform"]["mask_auroc"].tolist() == [0.5, 0.5, 0.5]
    assert set(base) == {"uniform", "centre", "random"}
    again = M.grounding_baselines(masks, tolerance=15, seed=0)
    assert torch.equal(base["random"]["mask_auroc"], again["random"]["mask_auroc"])


def test_quantus_counts_ties_as_hits_we_do_not():
    quantus = pytest.importorskip("quantus")
    masks = np.zeros((1, 1, 8, 8))
    masks[0, 0, 5:7, 5:7] = 1
    a = np.full((1, 1, 8, 8), 0.25)
    a[0, 0, 0, 0] = a[0, 0, 6, 6] = 0.5   # two tied maxima: the first outside G, the second inside
    q = quantus.PointingGame(disable_warnings=True, normalise=False)(model=None, x_batch=a.copy(), y_batch=np.zeros(1, int),
                                                    a_batch=a, s_batch=masks, channel_first=True)
    assert bool(q[0]) is True  # Quantus: a tied maximum in G is a hit
    ours = M.pointing_game(torch.tensor(a[:, 0]), torch.tensor(masks[:, 0]).bool(), tolerance=0)
    assert ours.tolist() == [0.0]  # deliberate difference: first maximum only


def test_empty_and_full_masks_are_nan_with_reasons():
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[1] = True
    masks[2, 0, 0] = True
    for f in (M.pointing_game, M.relevance_mass_accuracy, M.relevance_rank_accuracy, M.mask_auroc):
        assert math.isnan(f(maps, masks)[0])
    auc = M.mask_auroc(maps, masks)
    assert math.isnan(auc[1]) and not math.isnan(auc[2])
    m = M.MaskAUROC()
    m.update(maps, masks)
    out = m.compute()
    assert out["n"] == 1 and out["n_excluded"] == 2
    assert out["reasons"] == {"empty mask": 1, "mask covers the whole image": 1}
    assert M.MaskAUROC.higher_is_better and M.MaskAUROC.category == "grounding"


def test_classes_and_functions_agree():
    g = torch.Generator().manual_seed(1)
    maps, masks = torch.rand(10, 6, 6, generator=g), torch.rand(10, 6, 6, generator=g) > 0.6
    pairs = [(M.PointingGame(tolerance=2), lambda a, b: M.pointing_game(a, b, tolerance=2)),
             (M.RelevanceMassAccuracy(), M.relevance_mass_accuracy), (M.RelevanceRankAccuracy(),
             M.relevance_rank_accuracy), (M.MaskAUROC(), M.mask_auroc),
             (M.TopKIntersection(k=5), lambda a, b: M.topk_intersection(a, b, k=5))]
    for cls, fn in pairs:
        cls.update(maps[:4], masks[:4])
        cls.update(maps[4:], masks[4:])
        assert torch.equal(cls.values, fn(maps, masks))
        cls.reset()
        assert len(cls.values) == 0


# --------------------------------------------------------------------------- reference agreement
def _quantus_inputs(n=12, h=9, w=11, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.random((n, 1, h, w)) + 1e-3           # tie-free, positive
    s = np.zeros((n, 1, h, w))
    for i in range(n):
        r0, c0 = rng.integers(0, h - 3), rng.integers(0, w - 3)
        s[i, 0, r0:r0 + rng.integers(1, 4), c0:c0 + rng.integers(1, 4)] = 1
    x = rng.random((n, 1, h, w))
    return x, a, s


@pytest.mark.parametrize("name", ["PointingGame", "RelevanceMassAccuracy", "RelevanceRankAccuracy", "AUC",
                                  "TopKIntersection"])
def test_agrees_with_quantus_on_tie_free_inputs(name):
    """Deliberate differences (not exercised here): Quantus' pointing game has no tolerance (ours is
    called with tolerance=0) and counts any tied maximum as a hit; Quantus breaks rank ties with an
    unstable argsort (ours: stable, raster order); ours returns NaN when the mask covers the whole
    image (AUROC) or the map has zero mass. Quantus normalises maps by their max, which changes
    none of these four scores on positive maps."""
    quantus = pytest.importorskip("quantus")
    x, a, s = _quantus_inputs()
    kw = {"k": 20} if name == "TopKIntersection" else {}
    metric = getattr(quantus, name)(disable_warnings=True, **kw)
    q = np.asarray(metric(model=None, x_batch=x, y_batch=np.zeros(len(x), int), a_batch=a.copy(), s_batch=s.copy(),
                          channel_first=True), dtype=float)
    maps, masks = torch.tensor(a[:, 0]), torch.tensor(s[:, 0]).bool()
    ours = {"PointingGame": lambda: M.pointing_game(maps, masks, tolerance=0),
            "RelevanceMassAccuracy": lambda: M.relevance_mass_accuracy(maps, masks),
            "RelevanceRankAccuracy": lambda: M.relevance_rank_accuracy(maps, masks),
            "AUC": lambda: M.mask_auroc(maps, masks),
            "TopKIntersection": lambda: M.topk_intersection(maps, masks, k=20)}[name]()
    np.testing.assert_allclose(ours.numpy(), q, rtol=1e-9, atol=1e-12)


def test_torchray_tolerance_rule_on_random_maps():
    g = torch.Generator().manual_seed(3)
    maps = torch.rand(20, 24, 24, generator=g, dtype=torch.float64)
    masks = torch.zeros(20, 24, 24, dtype=torch.bool)
    for i in range(20):
        r, c = (int(v) for v in torch.randint(0, 20, (2,), generator=g))
        masks[i, r:r + 4, c:c + 4] = True
    for tol in (0, 1, 3, 15):
        assert_same(M.pointing_game(maps, masks, tolerance=tol), ref_pointing(maps.numpy(), masks.numpy(), tol))


# --------------------------------------------------------------------------- boxes
def test_box_accuracy_component_and_peak():
    maps = torch.zeros(2, 20, 20)
    maps[:, 2:8, 2:8] = 0.8         # large component
    maps[:, 15:17, 15:17] = 1.0     # small component holding the peak
    gt_big, gt_small = np.array([[2.0, 2, 8, 8]]), np.array([[15.0, 15, 17, 17]])
    assert M.box_accuracy(maps, [gt_big, gt_small]).tolist() == [1.0, 0.0]
    assert M.box_accuracy(maps, [gt_big, gt_small], method="peak").tolist() == [0.0, 1.0]
    # union box of two GT boxes is the target
    two = [np.array([[2.0, 2, 5, 8], [5.0, 2, 8, 8]])]
    assert M.box_accuracy(maps[:1], two).tolist() == [1.0]
    # empty / degenerate boxes -> NaN with a reason; all-zero map -> NaN
    v, c = M.functional.grounding._box_accuracy_update(torch.zeros(2, 5, 5), [np.zeros((0, 4)),
                                                                              np.array([[1.0, 1, 3, 3]])])
    assert math.isnan(v[0]) and math.isnan(v[1])
    assert M.reason_text(c) == ["empty or degenerate ground-truth box", "map has no positive value"]


def test_top1_region_hit():
    w = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.5, 0.0], [0.9, 0.04, 0.06]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [10, 10, 20, 20], [0, 10, 10, 20]])
    gt = [np.array([[10.0, 10, 20, 21]]), np.array([[10.0, 10, 20, 20]]), np.array([[0.0, 10, 10, 20]])]
    valid = torch.tensor([[True, True, True], [True, True, True], [False, True, True]])
    assert M.top1_region_hit(w, boxes, gt).tolist() == [1.0, 0.0, 0.0]      # ties -> first region
    assert M.top1_region_hit(w, boxes, gt, valid=valid).tolist() == [1.0, 0.0, 1.0]
    assert M.top1_region_hit(w, boxes, gt, iou_threshold=0.99).tolist() == [0.0, 0.0, 0.0]


# --------------------------------------------------------------------------- bad input
def test_bad_input_errors():
    maps, masks = torch.rand(2, 4, 5), torch.ones(2, 5, 4, dtype=torch.bool)
    with pytest.raises(ShapeError, match=r"\(2, 4, 5\).*\(2, 5, 4\)"):
        M.pointing_game(maps, masks)
    with pytest.raises(ShapeError, match=r"\[N, H, W\]"):
        M.mask_auroc(torch.rand(4, 5), torch.ones(4, 5, dtype=torch.bool))
    neg = torch.rand(2, 4, 4) - 0.5
    g = torch.ones(2, 4, 4, dtype=torch.bool)
    g[:, 0] = False
    with pytest.raises(ValueError, match="negative"):
        M.relevance_mass_accuracy(neg, g)
    clip = M.relevance_mass_accuracy(neg, g, negative="clip")
    absv = M.relevance_mass_accuracy(neg, g, negative="abs")
    assert torch.allclose(clip, M.relevance_mass_accuracy(neg.clamp(min=0), g))
    assert torch.allclose(absv, M.relevance_mass_accuracy(neg.abs(), g))
    with pytest.raises(NonFiniteError):
        M.pointing_game(torch.full((1, 2, 2), float("nan")), torch.ones(1, 2, 2, dtype=torch.bool))
    with pytest.raises(DTypeError):
        M.pointing_game(torch.rand(1, 2, 2), torch.full((1, 2, 2), 0.5))
    with pytest.raises(ShapeError, match="k=17"):
        M.topk_intersection(torch.rand(1, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool), k=17)
    zero = M.relevance_mass_accuracy(torch.zeros(1, 2, 2), torch.ones(1, 2, 2, dtype=torch.bool))
    assert math.isnan(zero[0])
