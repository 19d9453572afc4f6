"""attnlens.explain against slow references written from the papers' equations, on tiny LXMERT and
VisualBERT models (random weights from configs) and attnlens' own models."""
from __future__ import annotations

import pytest
import torch

import attnlens.explain as ex
from attnlens.errors import ExplainError, RegistryError, ShapeError, UnknownNameError

import explain_reference as ref
from tiny_models import tiny_blip  # noqa: E402

transformers = pytest.importorskip("transformers")

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
              "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


def hook_state(model):
    return {f"{n}.{a}": tuple(getattr(m, a).keys()) for n, m in model.named_modules()
            for a in HOOK_DICTS if getattr(m, a, None)}


def qa_top(output):
    return output.question_answering_score.max(-1).values


@pytest.fixture(scope="module")
def lxmert():
    torch.manual_seed(0)
    cfg = transformers.LxmertConfig(vocab_size=40, hidden_size=16, num_attention_heads=2, intermediate_size=24,
                                    l_layers=2, x_layers=2, r_layers=1, visual_feat_dim=8, visual_pos_dim=4,
                                    max_position_embeddings=16, num_qa_labels=5)
    model = transformers.LxmertForQuestionAnswering(cfg).double().eval()
    g = torch.Generator().manual_seed(1)
    inputs = dict(input_ids=torch.randint(0, 40, (2, 6), generator=g),
                  visual_feats=torch.randn(2, 4, 8, generator=g, dtype=torch.float64),
                  visual_pos=torch.rand(2, 4, 4, generator=g, dtype=torch.float64),
                  attention_mask=torch.tensor([[1] * 6, [1] * 4 + [0] * 2]))
    return model, inputs


@pytest.fixture(scope="module")
def visualbert():
    torch.manual_seed(0)
    cfg = transformers.VisualBertConfig(vocab_size=40, hidden_size=16, num_attention_heads=2, num_hidden_layers=3,
                                        intermediate_size=24, visual_embedding_dim=8, max_position_embeddings=16,
                                        num_labels=4)
    model = transformers.VisualBertForQuestionAnswering(cfg).double().eval()
    g = torch.Generator().manual_seed(2)
    inputs = dict(input_ids=torch.randint(0, 40, (2, 5), generator=g),
                  visual_embeds=torch.randn(2, 4, 8, generator=g, dtype=torch.float64),
                  attention_mask=torch.ones(2, 5, dtype=torch.long))
    return model, inputs


def logits_top(output):
    return output.logits.max(-1).values


# ----------------------------------------------------------------------------- registry and errors
def test_available_names_are_stable():
    assert {"raw", "rollout", "gradient_weighted", "attention_x_gradient", "integrated_gradients",
            "input_x_gradient", "gradcam"} <= set(ex.available())


def test_register_refuses_duplicates_and_runs_new_methods(visualbert):
    with pytest.raises(RegistryError, match="already registered"):
        ex.register("raw", lambda ctx: None)

    def last_layer_sum(ctx):
        trace = ctx.trace(grad=False)
        return ctx.result(trace.steps[-1].weights.sum(1)[:, :5, 5:], trace, note="sum of heads")

    ex.register("test_sum_heads", last_layer_sum)
    try:
        model, inputs = visualbert
        amap = ex.explain(model, inputs, "test_sum_heads")
        assert amap.meta["explainer"] == "test_sum_heads" and amap.meta["note"] == "sum of heads"
        with pytest.raises(RegistryError):
            ex.register("test_sum_heads", last_layer_sum)
        ex.register("test_sum_heads", last_layer_sum, overwrite=True)
    finally:
        ex.registry._METHODS.pop("test_sum_heads", None)


def test_bad_arguments_raise_typed_errors(visualbert):
    model, inputs = visualbert
    with pytest.raises(UnknownNameError, match="rolout"):
        ex.explain(model, inputs, "rolout")
    with pytest.raises(ExplainError, match="keyword dict"):
        ex.explain(model, list(inputs.values()), "raw")
    with pytest.raises(ShapeError, match=r"\[batch\] = \[2\]"):
        ex.explain(model, inputs, "gradient_weighted", target=lambda o: o.logits)
    with pytest.raises(ExplainError, match="layer=7 out of range: 3"):
        ex.explain(model, inputs, "raw", layer=7)
    with pytest.raises(UnknownNameError, match="head fusion"):
        ex.explain(model, inputs, "raw", heads="median")
    with pytest.raises(ExplainError, match="no explain profile"):
        ex.explain(torch.nn.Linear(2, 2), {"input": torch.ones(1, 2)}, "raw")


# ----------------------------------------------------------------------------- LXMERT (dual stream)
def test_lxmert_gradient_weighted_matches_chefer_reference(lxmert):
    model, inputs = lxmert
    amap = ex.explain(model, inputs, "gradient_weighted")
    assert amap.dims == ("batch", "word", "region") and amap.shape == {"batch": 2, "word": 6, "region": 4}
    records = ref.lxmert_records(model, inputs, qa_top)
    for b in range(2):
        expected = ref.chefer_lxmert(records[b], 6, 4)
        torch.testing.assert_close(amap.weights[b], expected, rtol=1e-9, atol=1e-12)
    assert amap.weights.abs().sum() > 0


def test_lxmert_rollout_matches_joint_graph_reference(lxmert):
    model, inputs = lxmert
    amap = ex.explain(model, inputs, "rollout")
    records = ref.lxmert_records(model, inputs, qa_top)
    for b in range(2):
        torch.testing.assert_close(amap.weights[b], ref.rollout_lxmert(records[b], 6, 4), rtol=1e-9, atol=1e-12)


def test_lxmert_raw_and_attention_x_gradient_of_last_cross_layer(lxmert):
    model, inputs = lxmert
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    raw = ex.explain(model, inputs, "raw")
    torch.testing.assert_close(raw.weights, out.cross_encoder_attentions[-1].mean(1))
    first = ex.explain(model, inputs, "raw", layer=0, heads=1)
    torch.testing.assert_close(first.weights, out.cross_encoder_attentions[0][:, 1])
    assert first.meta["layer_index"] == 0 and first.meta["heads"] == 1 and first.site.endswith("x_layers.0.visual_attention.att/t2i")
    axg = ex.explain(model, inputs, "attention_x_gradient")
    records = ref.lxmert_records(model, inputs, qa_top)
    for b in range(2):
        a, g = [(a, g) for kind, layer, d, a, g in records[b] if kind == "cross" and d == "t2i"][-1]
        torch.testing.assert_close(axg.weights[b], ref.avg_heads(a, g))


# ----------------------------------------------------------------------------- VisualBERT (single stream)
def test_visualbert_gradient_weighted_and_rollout_match_references(visualbert):
    model, inputs = visualbert
    layers = ref.joint_attentions(model, inputs, logits_top)
    text, image = list(range(5)), list(range(5, 9))
    gw = ex.explain(model, inputs, "gradient_weighted")
    for b in range(2):
        torch.testing.assert_close(gw.weights[b], ref.chefer_single_stream(layers[b], text, image), rtol=1e-9,
                                   atol=1e-12)
    for fuse in ("mean", "max", "min"):
        ro = ex.explain(model, inputs, "rollout", heads=fuse)
        assert ro.meta["heads"] == fuse and ro.meta["options"] == {"heads": fuse}
        for b in range(2):
            torch.testing.assert_close(ro.weights[b], ref.rollout_single_stream(layers[b], text, image, fuse),
                                       rtol=1e-9, atol=1e-12)


def test_visualbert_raw_is_the_text_region_block(visualbert):
    model, inputs = visualbert
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    for heads, fuse in (("mean", lambda a: a.mean(1)), ("max", lambda a: a.amax(1)), (0, lambda a: a[:, 0])):
        amap = ex.explain(model, inputs, "raw", heads=heads, layer=1)
        torch.testing.assert_close(amap.weights, fuse(out.attentions[1])[:, :5, 5:])


def test_single_stream_profile_named_by_paths_equals_visualbert_profile(visualbert):
    model, inputs = visualbert
    prof = ex.single_stream(model, "visual_bert.encoder.layer.*.attention.self", text_positions=slice(0, 5),
                            image_positions=lambda inp: range(5, 5 + inp["visual_embeds"].shape[1]), key_dim="region")
    for method in ("gradient_weighted", "rollout", "raw"):
        a = ex.explain(model, inputs, method, profile=prof)
        b = ex.explain(model, inputs, method)
        torch.testing.assert_close(a.weights, b.weights)
        assert a.meta["profile"] == "single_stream"


def test_one_backward_for_the_batch_equals_one_example_at_a_time(visualbert):
    model, inputs = visualbert
    both = ex.explain(model, inputs, "gradient_weighted")
    for b in range(2):
        one = ex.explain(model, {k: v[b:b + 1] for k, v in inputs.items()}, "gradient_weighted")
        torch.testing.assert_close(both.weights[b:b + 1], one.weights, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- the model is left as it was
def test_model_is_left_exactly_as_it_was(lxmert):
    model, inputs = lxmert
    model.train()
    frozen = model.lxmert.embeddings.word_embeddings.weight
    frozen.requires_grad_(False)
    old_grad = torch.full_like(model.answer_head.logit_fc[0].weight, 0.5)
    model.answer_head.logit_fc[0].weight.grad = old_grad
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    hooks = hook_state(model)
    try:
        for method in ex.available():
            ex.explain(model, inputs, method, target=qa_top)
            if method not in ("raw", "rollout", "attention_flow"):  # these never evaluate the target
                with pytest.raises(RuntimeError, match="boom"):
                    ex.explain(model, inputs, method, target=lambda o: (_ for _ in ()).throw(RuntimeError("boom")))
            assert hook_state(model) == hooks, method
            assert {n: p.requires_grad for n, p in model.named_parameters()} == flags, method
            assert {n: m.training for n, m in model.named_modules()} == modes, method
            assert model.answer_head.logit_fc[0].weight.grad is old_grad, method
            assert all(p.grad is None for n, p in model.named_parameters() if "logit_fc.0.weight" not in n), method
            for k, v in model.state_dict().items():
                assert torch.equal(v, state[k]), (method, k)
    finally:
        model.answer_head.logit_fc[0].weight.grad = None
        frozen.requires_grad_(True)
        model.eval()


def test_explain_sets_eval_mode_during_the_pass(visualbert):
    model, inputs = visualbert
    model.train()
    try:
        a = ex.explain(model, inputs, "gradient_weighted")
        b = ex.explain(model, inputs, "gradient_weighted")
        torch.testing.assert_close(a.weights, b.weights)  # dropout off: deterministic
        assert model.training
    finally:
        model.eval()


def test_tokens_and_regions_are_attached_for_one_example(visualbert):
    from attnlens.types import Regions

    model, inputs = visualbert
    one = {k: v[:1] for k, v in inputs.items()}
    regions = Regions([[0, 0, 4, 4], [4, 0, 8, 4], [0, 4, 4, 8], [4, 4, 8, 8]], image_size=(8, 8))
    amap = ex.explain(model, one, "rollout", tokens="[CLS] a red dog [SEP]", regions=regions)
    assert amap.isel(batch=0).sel(word="dog").shape == {"region": 4}
    assert amap.key.regions is regions


# ----------------------------------------------------------------------------- BLIP (text -> patch)
@pytest.fixture(scope="module")
def blip():
    torch.manual_seed(0)
    model = tiny_blip(vision_layers=2).double()
    g = torch.Generator().manual_seed(3)
    inputs = dict(input_ids=torch.randint(3, 40, (2, 6), generator=g),
                  pixel_values=torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64),
                  attention_mask=torch.tensor([[1] * 6, [1] * 4 + [0] * 2]))
    return model, inputs


def test_blip_gradient_weighted_matches_reference_and_keeps_the_patch_grid(blip):
    model, inputs = blip
    amap = ex.explain(model, inputs, "gradient_weighted")
    assert amap.dims == ("batch", "word", "patch") and amap.key.grid == (4, 4) and amap.meta["profile"] == "blip"
    expected = ref.blip_relevance(model, inputs, lambda o: o.itm_score[:, 1])
    for b in range(2):
        torch.testing.assert_close(amap.weights[b], expected[b], rtol=1e-9, atol=1e-12)
    raw = ex.explain(model, inputs, "raw")
    with torch.no_grad():
        from attnlens.capture import capture
        from attnlens.capture.adapters import blip as blip_adapter

        with capture(model, blip_adapter.taps(model, drop_cls=True)) as rec:
            model(**inputs)
    torch.testing.assert_close(raw.weights, rec.maps[-1].weights.mean(1))
    ixg = ex.explain(model, inputs, "input_x_gradient")
    assert ixg.shape == {"batch": 2, "output": 1, "patch": 16}


# ----------------------------------------------------------------------------- attention flow
def test_attention_flow_matches_a_networkx_reference(visualbert):
    pytest.importorskip("networkx")
    model, inputs = visualbert
    layers = ref.joint_attentions(model, inputs, logits_top, grad=False)
    amap = ex.explain(model, inputs, "attention_flow")
    assert amap.shape == {"batch": 2, "word": 5, "region": 4}
    for b in range(2):
        expected = ref.attention_flow_single_stream(layers[b], list(range(5)), list(range(5, 9)))
        torch.testing.assert_close(amap.weights[b], expected, rtol=0, atol=5e-5)  # integer capacities, scale 1e6
    with pytest.raises(ExplainError, match="max_tokens=8"):
        ex.explain(model, inputs, "attention_flow", max_tokens=8)


def test_attention_flow_of_one_layer_is_its_capacity():
    from attnlens.explain.flow import max_flows

    g = torch.Generator().manual_seed(0)
    m = torch.softmax(torch.randn(1, 6, 6, generator=g, dtype=torch.float64), -1).numpy()
    torch.testing.assert_close(torch.as_tensor(max_flows(m, range(6), range(6))), torch.as_tensor(m[0]),
                               rtol=0, atol=1e-6)
