"""Issue #16: hostile input to the metrics, geometry and statistics.

Property of every test: a public function either returns a value that satisfies its documented
contract or raises a typed ``attnlens.errors`` error (a ``ValueError``/``TypeError``/``KeyError``
subclass) - never a silent wrong number, never a raw numpy/torch/scipy exception.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnlens.metrics as M
from attnlens import geometry as G
from attnlens.errors import (AttnlensError, DTypeError, NonFiniteError, ParameterError, ShapeError,
                             UnknownNameError)

FAST = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
SPECIAL = [float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 1e-310, 0.0, -0.0, -1.0, 0.5, 1.0, 3.0]
BAD_PARAMS = [float("nan"), float("inf"), -float("inf"), -1, 0, 0.5, 1, 2, 1e9, "x", None, True, [1]]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool,
          torch.complex64]


def typed(fn, *args, **kw):
    """``(True, value)`` or ``(False, exc)`` for a typed attnlens error; anything else fails the test."""
    try:
        return True, fn(*args, **kw)
    except AttnlensError as exc:
        assert isinstance(exc, (ValueError, TypeError, KeyError)), type(exc)
        assert str(exc), "an error must say what is wrong"
        return False, exc


@st.composite
def maps_and_masks(draw, special=True):
    n, h, w = draw(st.integers(0, 3)), draw(st.integers(0, 5)), draw(st.integers(0, 5))
    vals = st.sampled_from(SPECIAL) if special else st.floats(0, 10, allow_nan=False)
    flat = draw(st.lists(vals, min_size=n * h * w, max_size=n * h * w))
    dtype = draw(st.sampled_from(DTYPES))
    maps = torch.tensor(flat, dtype=torch.float64).reshape(n, h, w)
    if dtype.is_complex:
        maps = maps.to(dtype)
    elif dtype in (torch.int64, torch.uint8, torch.bool):
        maps = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0).clamp(0, 200).to(dtype)
    else:
        maps = maps.to(dtype)
    mvals = draw(st.sampled_from([[0, 1], [0.0, 1.0], [0, 1, 2], [0.0, 0.5], [float("nan"), 1.0], [False, True]]))
    masks = torch.tensor(draw(st.lists(st.sampled_from(mvals), min_size=n * h * w, max_size=n * h * w)),
                         dtype=torch.float64 if isinstance(mvals[0], float) else None).reshape(n, h, w)
    return maps, masks


GROUNDING = {
    "pointing_game": lambda m, g: M.pointing_game(m, g, tolerance=1),
    "relevance_mass_accuracy": lambda m, g: M.relevance_mass_accuracy(m, g, negative="clip"),
    "relevance_rank_accuracy": M.relevance_rank_accuracy,
    "mask_auroc": M.mask_auroc,
    "topk_intersection": lambda m, g: M.topk_intersection(m, g, k=1),
}


@FAST
@given(maps_and_masks())
def test_grounding_metrics_typed_or_in_range(mm):
    maps, masks = mm
    finite = maps.is_complex() or bool(torch.isfinite(maps.double() if not maps.is_complex() else maps.real).all())
    outcomes = {}
    for name, fn in GROUNDING.items():
        ok, out = typed(fn, maps, masks)
        outcomes[name] = ok if ok else type(out)
        if ok:
            assert out.dtype == torch.float64 and out.shape == (len(maps),)
            v = out[torch.isfinite(out)]
            assert bool(((v >= 0) & (v <= 1)).all()), (name, out)
    ok, out = typed(M.box_accuracy, maps, [np.array([[0.0, 0.0, 2.0, 2.0]])] * len(maps))
    outcomes["box_accuracy"] = ok if ok else type(out)
    if ok:
        assert set(out[torch.isfinite(out)].tolist()) <= {0.0, 1.0}
    masks_ok = bool(((masks == 0) | (masks == 1)).all())
    if not finite:   # every grounding metric treats non-finite maps the same way
        assert all(o is NonFiniteError or o is DTypeError or o is ShapeError for o in outcomes.values()), outcomes
        if masks_ok:  # (box_accuracy takes boxes, not masks)
            assert len({o for o in outcomes.values()}) == 1, outcomes


@FAST
@given(maps_and_masks(special=False))
def test_grounding_metrics_accept_every_float_dtype(mm):
    maps, masks = mm
    masks = masks.nan_to_num(0.0) >= 1
    if maps.shape[1] * maps.shape[2] == 0:
        for fn in GROUNDING.values():
            with pytest.raises(ShapeError, match="no pixels"):
                fn(maps, masks)
        return
    for name, fn in GROUNDING.items():
        if maps.is_complex() or maps.dtype == torch.bool:
            with pytest.raises(DTypeError):
                fn(maps, masks)
            continue
        out = fn(maps, masks)
        ref = fn(maps.double(), masks)
        if maps.dtype in (torch.float32, torch.float64, torch.int64, torch.uint8):
            torch.testing.assert_close(out, ref, equal_nan=True)
        else:   # narrow floats: the metric of the value actually held
            torch.testing.assert_close(out, fn(maps.double(), masks), equal_nan=True)


@pytest.mark.parametrize("bad", BAD_PARAMS)
def test_grounding_parameters(bad):
    maps, masks = torch.rand(2, 4, 4), torch.rand(2, 4, 4) > 0.5
    masks[:, 0, 0] = True
    for fn in (lambda: M.pointing_game(maps, masks, tolerance=bad),
               lambda: M.topk_intersection(maps, masks, k=bad),
               lambda: M.box_accuracy(maps, torch.tensor([[0.0, 0, 2, 2]] * 2), iou_threshold=bad),
               lambda: M.box_accuracy(maps, torch.tensor([[0.0, 0, 2, 2]] * 2), threshold=bad),
               lambda: M.top1_region_hit(torch.rand(2, 3), torch.rand(3, 4).sort(-1).values,
                                         [np.array([[0.0, 0, 1, 1]])] * 2, iou_threshold=bad),
               lambda: M.relevance_mass_accuracy(maps, masks, negative=bad)):
        ok, out = typed(fn)
        if ok:
            assert out.shape == (2,)
    if isinstance(bad, float) and not math.isfinite(bad):
        with pytest.raises(ParameterError, match="tolerance"):
            M.pointing_game(maps, masks, tolerance=bad)
        with pytest.raises(ParameterError, match="iou_threshold"):
            M.box_accuracy(maps, torch.tensor([[0.0, 0, 2, 2]] * 2), iou_threshold=bad)


def test_known_silent_wrong_values_are_gone():
    maps, masks = torch.rand(1, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool)
    with pytest.raises(ParameterError):                        # NaN tolerance used to mean "never a hit"
        M.pointing_game(maps, masks, tolerance=float("nan"))
    with pytest.raises(NonFiniteError):                        # a NaN map used to be "no positive value"
        M.box_accuracy(torch.full((1, 4, 4), float("nan")), torch.tensor([[0.0, 0, 2, 2]]))
    with pytest.raises(NonFiniteError):                        # NaN gt coordinates used to be "degenerate"
        M.box_accuracy(maps, torch.tensor([[0.0, 0, float("nan"), 2]]))
    with pytest.raises(NonFiniteError):                        # NaN weights used to lose the argmax
        M.top1_region_hit(torch.tensor([[float("nan"), 1.0]]), torch.tensor([[0.0, 0, 1, 1], [1, 1, 2, 2]]),
                          [np.array([[0.0, 0, 1, 1]])])
    with pytest.raises(DTypeError):                            # a 0.5 "mask" is not a mask
        M.top1_region_hit(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 0, 1, 1], [1, 1, 2, 2]]),
                          [np.array([[0.0, 0, 1, 1]])], valid=torch.tensor([[0.5, 1.0]]))
    with pytest.raises(ShapeError, match="inverted"):
        M.box_accuracy(maps, torch.tensor([[3.0, 0, 1, 2]]))
    # float overflow in the mass sums: the share is still right
    big = torch.full((1, 2, 2), 1e308, dtype=torch.float64)
    g = torch.tensor([[[True, False], [False, False]]])
    assert M.relevance_mass_accuracy(big, g).item() == pytest.approx(0.25)
    # density maps of huge (finite) weights keep their mass instead of overflowing to inf
    dens = G.regions_to_pixels(torch.tensor([1e308, 1e308], dtype=torch.float64),
                               torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2]]), (2, 2), "density")
    assert bool(torch.isfinite(dens).all()) and dens[0, 0].item() == pytest.approx(5e307)
    # bfloat16 maps work and give the float32 answer
    bf = torch.rand(3, 5, 5).to(torch.bfloat16)
    gg = torch.rand(3, 5, 5) > 0.6
    gg[:, 0, 0] = True
    torch.testing.assert_close(M.pointing_game(bf, gg, tolerance=0), M.pointing_game(bf.float(), gg, tolerance=0))


@FAST
@given(st.integers(0, 3), st.integers(0, 5), st.data())
def test_faithfulness_empty_sets_and_conventions(n, r, data):
    imp = torch.tensor(data.draw(st.lists(st.floats(-5, 5), min_size=n * r, max_size=n * r)),
                       dtype=torch.float64).reshape(n, r)
    valid = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n * r, max_size=n * r)),
                         dtype=torch.bool).reshape(n, r)
    weights = torch.linspace(1, 2, r, dtype=torch.float64) if r else torch.zeros(0, dtype=torch.float64)
    score = lambda keep, index: (keep.double() * weights).sum(1) + index.double()  # noqa: E731
    none = ~valid.any(1)
    curves = M.perturbation_curves(score, imp, valid=valid, steps=data.draw(st.integers(1, 4)))
    er = M.eraser(score, imp, valid=valid, fractions=(0.2, 1.0))
    fc = M.faithfulness_correlation(score, imp, valid=valid, n_subsets=5)
    for c in curves.values():   # one convention: no valid element -> NaN everywhere
        assert torch.equal(torch.isnan(c.auc), none)
    assert torch.equal(torch.isnan(er["comprehensiveness_aopc"]), none)
    assert torch.equal(torch.isnan(er["sufficiency_aopc"]), none)
    assert bool(torch.isnan(fc[none]).all())
    f = fc[torch.isfinite(fc)]
    assert bool(((f >= -1 - 1e-9) & (f <= 1 + 1e-9)).all())


@pytest.mark.parametrize("bad", [b for b in BAD_PARAMS if b != 1e9])   # (1e9 steps is valid, only huge)
def test_faithfulness_parameters(bad):
    imp = torch.rand(2, 4)
    score = lambda keep, index: keep.double().sum(1)  # noqa: E731
    calls = [lambda: M.deletion_curve(score, imp, steps=bad), lambda: M.insertion_curve(score, imp, batch_size=bad),
             lambda: M.eraser(score, imp, fractions=(bad,)), lambda: M.eraser(score, imp, fractions=bad),
             lambda: M.faithfulness_correlation(score, imp, n_subsets=bad),
             lambda: M.faithfulness_correlation(score, imp, subset_size=bad),
             lambda: M.permutation_test(lambda a, i: a[:, 0].double(), imp, n_permutations=bad),
             lambda: M.deletion_curve(score, imp, order=bad)]
    for fn in calls:
        ok, out = typed(fn)
        if ok:
            values = out.auc if isinstance(out, M.Curve) else (out["comprehensiveness_aopc"] if isinstance(out, dict)
                                                                 and "full" in out else out)
            if isinstance(values, dict):
                values = values["median_change"]
            assert not bool(torch.isinf(values).any()), (fn, values)   # NaN = documented "undefined"
    if bad in (0, -1) or (isinstance(bad, float) and not math.isfinite(bad)):
        with pytest.raises(ParameterError, match="steps"):
            M.deletion_curve(score, imp, steps=bad)


def test_faithfulness_non_finite_data():
    score = lambda keep, index: keep.double().sum(1)  # noqa: E731
    with pytest.raises(NonFiniteError):
        M.deletion_curve(score, torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(NonFiniteError, match="score"):
        M.deletion_curve(lambda k, i: torch.full((len(k),), float("nan")), torch.tensor([[1.0, 2.0]]))
    with pytest.raises(DTypeError):
        M.deletion_curve(score, torch.tensor([[1.0, 2.0]]), valid=torch.tensor([[0.5, 1.0]]))
    with pytest.raises(NonFiniteError):
        M.permutation_test(lambda a, i: a[:, 0].double(), torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ShapeError):
        M.curve_auc(torch.tensor([1.0]))                     # one point has no area: not a silent 0
    big = torch.tensor([[1e300, 2e300, 3e300, 5e300]], dtype=torch.float64)
    assert M.faithfulness_correlation(lambda k, i: (k.double() * torch.tensor([1.0, 2, 3, 5])).sum(1), big,
                                      n_subsets=20).item() == pytest.approx(1.0)


@FAST
@given(st.lists(st.sampled_from(SPECIAL), max_size=6), st.lists(st.sampled_from(SPECIAL), max_size=6))
def test_agreement_typed_or_in_range(a, b):
    ok, out = typed(M.rank_agreement, np.array(a), np.array(b), 2)
    if ok:
        for key in ("kendall_tau", "spearman"):
            assert math.isnan(out[key]) or -1 - 1e-9 <= out[key] <= 1 + 1e-9
        assert math.isnan(out["topk_overlap"]) or 0 <= out["topk_overlap"] <= 1
    if len(a) == len(b) and not all(math.isfinite(x) for x in a + b):
        assert not ok and isinstance(out, NonFiniteError)


@FAST
@given(st.lists(st.sampled_from(SPECIAL + [2.0, 7.5]), max_size=12), st.sampled_from([-1, 0, 1, 50, 2.5, "x"]),
       st.sampled_from([float("nan"), 0.0, 0.5, 0.95, 1.0, 1.5]))
def test_stats_typed_or_contract(values, n_resamples, confidence):
    ok, out = typed(M.bootstrap_ci, values, n_resamples=n_resamples, confidence=confidence)
    valid_params = n_resamples in (1, 50) and 0 < confidence < 1
    assert ok == valid_params, (n_resamples, confidence, out)
    if ok:
        mean, lo, hi = out
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            assert math.isfinite(mean) and math.isfinite(lo) and math.isfinite(hi) and lo <= hi
        else:
            assert math.isnan(mean)
    half = len(values) // 2
    ok, w = typed(M.wilcoxon, values[:half], values[half:2 * half])
    if ok:
        assert math.isnan(w["p_value"]) or 0 <= w["p_value"] <= 1
    ok, h = typed(M.holm, values)
    if ok:
        assert bool(np.all(np.isnan(h) | ((h >= 0) & (h <= 1))))
    else:
        assert any(not (0 <= v <= 1) for v in values if not math.isnan(v))


def test_stats_duplicates_and_types():
    df = pd.DataFrame({"example_id": [0, 1, 0, 1, 1], "method": ["a", "a", "b", "b", "b"], "metric": "m",
                       "value": [1.0, 2.0, 0.0, 1.0, 5.0]})
    with pytest.raises(ShapeError, match=r"example_id.*1.*method.*'b'"):
        M.compare_methods(df, n_resamples=10)
    ok = M.compare_methods(df.iloc[:4], n_resamples=10)
    assert ok.p_value.between(0, 1).all()
    with pytest.raises(DTypeError):
        M.bootstrap_ci(["a", "b"])
    with pytest.raises(ParameterError, match="n_resamples"):
        M.bootstrap_ci([1.0, 2.0], n_resamples=0)
    with pytest.raises(ParameterError, match="confidence"):
        M.paired_bootstrap_ci([1.0, 2.0], [0.0, 1.0], confidence=1.0)
    with pytest.raises(ParameterError):
        M.holm([0.5, 1.5])
    assert M.bootstrap_ci([1e308, 1e308], n_resamples=20)[0] == pytest.approx(1e308)


@FAST
@given(st.integers(0, 3), st.integers(0, 4), st.sampled_from([(0, 0), (1, 0), (3, 4), (2.5, 3), (-1, 2)]),
       st.sampled_from(["max", "density", "sum"]), st.sampled_from(DTYPES[:4]), st.data())
def test_geometry_typed_or_contract(n, r, size, mode, dtype, data):
    w = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 0.5, 2.0, float("nan")]), min_size=n * r,
                                        max_size=n * r))).reshape(n, r).to(dtype)
    coords = data.draw(st.lists(st.sampled_from([0.0, 1.0, 3.0, -2.0, float("inf")]), min_size=r * 4, max_size=r * 4))
    boxes = torch.tensor(coords, dtype=torch.float64).reshape(r, 4)
    ok, out = typed(G.regions_to_pixels, w, boxes, size, mode)
    if ok:
        h, wd = size
        assert out.shape == (n, h, wd) and out.dtype == w.dtype
        assert bool(torch.isfinite(out.double()).all()) and bool((out.double() >= 0).all())
        if mode == "density" and n:   # mass is kept (boxes inside the image, none empty)
            pass
    else:
        assert (mode == "sum" or bool(torch.isnan(w).any()) or not bool(torch.isfinite(boxes).all())
                or size in ((0, 0), (1, 0), (2.5, 3), (-1, 2))), out
    ok, out = typed(G.box_iou, boxes.numpy(), boxes.numpy())
    if ok:
        assert np.all((out >= 0) & (out <= 1))
    ok, out = typed(G.grid_to_pixels, torch.rand(n, 6), data.draw(st.sampled_from([(2, 3), (0, 0), (3, 2.5)])), (4, 4))
    if ok:
        assert out.shape == (n, 4, 4)


def test_metric_classes_refuse_unknown_options():
    with pytest.raises(UnknownNameError, match="tolerance"):
        M.PointingGame(tol=3)
    d = M.DeletionAUC(steps=2)
    d.update(lambda k, i: k.double().sum(1), torch.rand(2, 3), torch.tensor([[True, True, False], [False] * 3]))
    assert d.compute()["reasons"] == {"no valid regions": 1}
