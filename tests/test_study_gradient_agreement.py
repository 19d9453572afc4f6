"""The study's attention vs gradient-attribution agreement (``ig_*``, ``ixg_*`` rows): a known
answer, completeness, the tasks' ``region_forward`` outputs equal to their scored outputs, the
numbers equal to captum run directly, and NaN rows with a reason where a task has no gradient."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from fake_task import FakeTask  # noqa: E402

from attnlens.errors import UnknownNameError  # noqa: E402
from attnlens.metrics import MetricSuite, get_metric  # noqa: E402
from attnlens.metrics.functional.agreement import attributions, rank_agreement  # noqa: E402
from attnlens.study import example_metrics as EM  # noqa: E402
from attnlens.study.config import study_config  # noqa: E402
from attnlens.study.units import Unit, unit_fingerprint  # noqa: E402
from attnlens.tasks.base import RegionForward  # noqa: E402

captum_attr = pytest.importorskip("captum.attr")

GRADIENT_METRICS = [f"{p}_{k}" for p in ("ig", "ixg") for k in ("kendall_tau", "spearman", "topk_overlap")]
QUICK = study_config("quick")
MATCHING_TINY = dict(epochs=1, batch_size=8, lr=5e-3, n_train=8, n_test=4, embed_dim=16, word_dim=8, channels=(4,),
                     strides=(4,), pool=(2, 2), warmup_epochs=1)
VQA_TINY = dict(epochs=1, batch_size=8, n_train=8, n_test=4, dim=8, word_dim=4, channels=(4, 8), pool=(2, 2))


def _example(imp: torch.Tensor, valid: torch.Tensor):
    """An AnalysisExample of one word whose attention row over the regions is ``imp`` (no targets)."""
    from attnlens.attention_map import AttentionMap, Side
    from attnlens.tasks.base import AnalysisExample
    from attnlens.types import Regions

    R = imp.shape[-1]
    boxes = np.array([[i, 0, i + 1, 1] for i in range(R)], float)
    amap = AttentionMap(imp.reshape(1, R), ("word", "region"), query=Side("word", "text", ("w",)),
                        key=Side("region", "image"))
    return AnalysisExample("toy/0", np.zeros((1, R, 3), np.uint8), Regions(boxes, (1, R)), ("w",), amap, (),
                           valid.reshape(-1).numpy(), 0.0, {})


# ----------------------------------------------------------------------------- known answers
def test_linear_toy_known_attribution_and_perfect_agreement():
    """output = sum_r w_r sum_d x_rd: IG and input x gradient give region r exactly w_r sum_d x_rd;
    an attention ranked like it agrees perfectly, a reversed one perfectly disagrees, and the
    padded region (huge attribution, invalid) is left out."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 5, 3, generator=g) + 0.1
    w = torch.tensor([0.5, -1.0, 2.0, 0.25, 30.0])

    def forward(f):
        return (f.sum(-1) * w).sum(-1)

    truth = (w * x[0].sum(-1)).double()
    for method in ("integrated_gradients", "input_x_gradient"):
        got = attributions(forward, x, method, n_steps=EM.IG_STEPS)[0][0]
        torch.testing.assert_close(got, truth, rtol=1e-5, atol=1e-6)
    valid = torch.tensor([[True, True, True, True, False]])
    src = RegionForward(forward, x, valid[0])
    rank = torch.argsort(torch.argsort(truth[:4])).double() + 1  # ranks of the valid regions' attributions
    for imp, expected in ((rank, 1.0), (-rank, -1.0)):
        imp = torch.cat([imp, torch.tensor([0.0], dtype=torch.float64)])[None]
        # the study's path: a suite with the registered agreement metrics of both sources, fed captum's
        # attributions of the region_forward output (and its valid regions)
        suite = MetricSuite((), (), GRADIENT_METRICS, baselines=(), progress=False)

        def provide(source, i):
            return attributions(src.forward, src.inputs, source, n_steps=EM.IG_STEPS)[0][i], src.valid

        df = suite.run({"attention": [_example(imp[0], valid)]}, attributions={"attention": provide})
        rows = {r["metric"]: dict(r, category=get_metric(r["metric"]).category) for r in df.to_dict("records")}
        assert sorted(rows) == sorted(GRADIENT_METRICS)
        for p in ("ig", "ixg"):
            assert rows[f"{p}_kendall_tau"]["value"] == pytest.approx(expected)
            assert rows[f"{p}_spearman"]["value"] == pytest.approx(expected)
            assert rows[f"{p}_topk_overlap"]["value"] == pytest.approx(1.0 if expected > 0 else 2 / 3)  # 3 of 4
            assert rows[f"{p}_kendall_tau"]["category"] == "agreement"


def test_integrated_gradients_completeness_at_the_study_steps():
    """sum_r IG_r = f(x) - f(0) up to the quadrature error of IG_STEPS steps, on a nonlinear toy."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 6, 4, generator=g)
    w = torch.randn(6, 4, generator=g)

    def forward(f):
        return torch.nn.functional.softplus((f * w).sum((1, 2))) + torch.tanh(f).pow(2).sum((1, 2))

    ig = attributions(forward, x, "integrated_gradients", n_steps=EM.IG_STEPS)[0]
    delta = float(forward(x)[0] - forward(torch.zeros_like(x))[0])
    assert abs(float(ig.sum()) - delta) < 1e-3 * max(1.0, abs(delta))


# ----------------------------------------------------------------------------- tasks
def _task_model(name: str, tmp_path_factory):
    from attnlens.tasks import get_task

    task = get_task(name)
    out = tmp_path_factory.mktemp(name) / "run"
    task.train(alignment="general", seed=0, out_dir=out, progress=False,
               config=MATCHING_TINY if name == "matching" else VQA_TINY)
    return task, task.load(out)


@pytest.fixture(scope="module", params=["matching", "vqa"])
def task_examples(request, tmp_path_factory):
    task, model = _task_model(request.param, tmp_path_factory)
    return task, model, list(task.analysis_examples(model, n=2))


def test_region_forward_output_is_the_scored_output(task_examples):
    task, model, examples = task_examples
    for ex in examples:
        rf = task.region_forward(model, ex)
        R = len(ex.regions)
        assert rf.inputs.shape[:2] == (1, R) and rf.valid.shape == (R,) and not rf.inputs.requires_grad
        with torch.no_grad():
            y = rf.forward(rf.inputs)
            full = task.scorer(model, [ex])(torch.ones(1, R, dtype=torch.bool), torch.zeros(1, dtype=torch.long))
            batch = rf.forward(torch.cat([rf.inputs, 0.5 * rf.inputs, rf.inputs]))
        assert y.shape == (1,)
        assert float(y[0]) == pytest.approx(ex.output, rel=1e-6, abs=1e-7)
        assert float(y[0]) == pytest.approx(float(full[0]), rel=1e-6, abs=1e-7)
        torch.testing.assert_close(batch[[0, 2]], y.expand(2))  # a batch of perturbed copies, one row each


def test_study_rows_equal_captum_run_directly(task_examples):
    task, model, examples = task_examples
    long, _ = EM.metric_rows(examples, EM.example_scorer(task, model, examples), QUICK, baselines=False)
    att = long[long.category == "agreement"]
    for ex in examples:
        rf = task.region_forward(model, ex)
        v = np.asarray(ex.region_valid, bool) & rf.valid.numpy()
        imp = ex.region_importance.double().numpy()[v]
        direct = {
            "ig": captum_attr.IntegratedGradients(rf.forward).attribute(
                rf.inputs.clone().requires_grad_(True), baselines=torch.zeros_like(rf.inputs), n_steps=EM.IG_STEPS),
            "ixg": captum_attr.InputXGradient(rf.forward).attribute(rf.inputs.clone().requires_grad_(True)),
        }
        for p, method in (("ig", "integrated_gradients"), ("ixg", "input_x_gradient")):  # the study's call
            ours = attributions(rf.forward, rf.inputs, method, n_steps=EM.IG_STEPS)[0]
            assert torch.equal(ours, direct[p].detach().sum(-1).double()), p
        rows = att[att.example_id == ex.example_id].set_index("metric")
        for p, a in direct.items():
            a = a.detach().sum(-1).double()[0].numpy()[v]
            assert np.isfinite(a).all() and np.ptp(a) > 0
            expected = rank_agreement(imp, a, k=3)
            for k, value in expected.items():
                got = rows.loc[f"{p}_{k}"]
                assert got["value"] == value or (np.isnan(value) and np.isnan(got["value"])), (p, k)
                assert got["higher_is_better"] is True or got["higher_is_better"] == 1
            assert np.isfinite(rows.loc[f"{p}_topk_overlap", "value"])
        assert set(GRADIENT_METRICS) <= set(rows.index)


# ----------------------------------------------------------------------------- no gradient
class _NoGradientTask(FakeTask):
    region_forward = None
    region_forward_undefined = "undefined for this toy: no differentiable output"


def test_task_without_region_forward_gets_nan_rows_with_its_reason(tmp_path):
    task = _NoGradientTask()
    model = task.load(task.train(alignment="dot", seed=0, out_dir=tmp_path / "ck"))
    examples = task.analysis_examples(model, n=2)
    long, _ = EM.metric_rows(examples, EM.example_scorer(task, model, examples), QUICK, baselines=False)
    rows = long[long.metric.isin(GRADIENT_METRICS)]
    assert len(rows) == 2 * len(GRADIENT_METRICS)
    assert rows.value.isna().all() and (rows.reason == _NoGradientTask.region_forward_undefined).all()
    # a plain score function (not an example_scorer) has no task to differentiate: NaN, with a reason
    plain = EM.example_scorer(task, model, examples)
    long2, _ = EM.metric_rows(examples, lambda keep, index: plain(keep, index), QUICK, baselines=False)
    rows2 = long2[long2.metric.isin(GRADIENT_METRICS)]
    assert rows2.value.isna().all() and rows2.reason.str.contains("example_scorer").all()
    # the other rows do not depend on the gradient rows
    rest = long[~long.metric.isin(GRADIENT_METRICS)].reset_index(drop=True)
    assert rest.equals(long2[~long2.metric.isin(GRADIENT_METRICS)].reset_index(drop=True))


def test_generation_says_why_it_has_no_gradient_rows():
    from attnlens.tasks.generation import GenerationTask

    assert not hasattr(GenerationTask, "region_forward")
    assert "zero gradient" in GenerationTask.region_forward_undefined


# ----------------------------------------------------------------------------- settings
def test_setting_switches_rows_validates_names_and_changes_the_fingerprint(tmp_path):
    task = FakeTask()
    model = task.load(task.train(alignment="additive", seed=0, out_dir=tmp_path / "ck"))
    examples = task.analysis_examples(model, n=2)
    off = study_config("quick", gradient_agreement=())
    only_ig = study_config("quick", gradient_agreement="integrated_gradients")
    assert only_ig.gradient_agreement == ("integrated_gradients",)
    long_off, _ = EM.metric_rows(examples, EM.example_scorer(task, model, examples), off, baselines=False)
    long_ig, _ = EM.metric_rows(examples, EM.example_scorer(task, model, examples), only_ig, baselines=False)
    assert not long_off.metric.str.match(r"(ig|ixg)_").any()
    assert sorted(set(long_ig.metric[long_ig.metric.str.match(r"(ig|ixg)_")])) == GRADIENT_METRICS[:3]
    assert long_ig[long_ig.metric.isin(GRADIENT_METRICS)].value.notna().all()
    with pytest.raises(UnknownNameError, match="integrated_gradient"):
        study_config("quick", gradient_agreement=("integrated_gradient",))
    unit = Unit("fake", "dot", 0)
    assert unit_fingerprint(unit, off) != unit_fingerprint(unit, QUICK)
