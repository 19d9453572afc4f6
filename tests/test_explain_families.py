"""attnlens.explain on the families capture reads with full attention (ViLT, CLIP / SigLIP, LLaVA-style
decoders), against slow references written from the equations on the models' own output_attentions
(eager copies, one example at a time, loops over the layers), plus known-answer cases."""
from __future__ import annotations

import pytest
import torch

import attnlens
import attnlens.explain as ex
from attnlens.errors import ExplainError

import explain_reference as ref

transformers = pytest.importorskip("transformers")
T = transformers

IMG = 99
TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            vocab_size=100, max_position_embeddings=64)
VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
              patch_size=8)
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
              "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")
ATTENTION = ("raw", "rollout", "gradient_weighted", "attention_x_gradient")
DEC = dict(rtol=1e-6, atol=1e-9)  # decoders: rotary embeddings are computed in float32 even in a float64 model


def hook_state(model):
    return {f"{n}.{a}": tuple(getattr(m, a).keys()) for n, m in model.named_modules()
            for a in HOOK_DICTS if getattr(m, a, None)}


def impls(model):
    return {n: m.config._attn_implementation_internal for n, m in model.named_modules()
            if hasattr(getattr(m, "config", None), "_attn_implementation_internal")}


def check(amap, expected, b, rtol=1e-8, atol=1e-11):
    torch.testing.assert_close(amap.weights[b], expected, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def vilt():
    torch.manual_seed(0)
    cfg = T.ViltConfig(vocab_size=100, hidden_size=16, num_attention_heads=2, num_hidden_layers=3,
                       intermediate_size=32, image_size=32, patch_size=8, max_position_embeddings=16,
                       max_image_length=-1)
    model = T.ViltForImageAndTextRetrieval(cfg).double().eval()
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(2, 32, 48, dtype=torch.long)
    mask[1, :, 32:] = 0  # the second image is narrower: its right 2 patch columns are padding (dropped cells)
    inputs = dict(input_ids=torch.randint(1, 100, (2, 5), generator=g),
                  pixel_values=torch.randn(2, 3, 32, 48, generator=g, dtype=torch.float64), pixel_mask=mask)
    return model, inputs


def dual(kind):
    torch.manual_seed(0)
    text = {k: v for k, v in TEXT.items() if k != "num_key_value_heads"}
    if kind == "clip":
        model = T.CLIPModel(T.CLIPConfig(text_config=text, vision_config=VISION, projection_dim=8))
    else:
        model = T.SiglipModel(T.SiglipConfig(text_config=text, vision_config=VISION))
    g = torch.Generator().manual_seed(2)
    inputs = dict(input_ids=torch.randint(3, 100, (2, 5), generator=g),
                  pixel_values=torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64))
    return model.double().eval(), inputs


@pytest.fixture(scope="module")
def llava():
    torch.manual_seed(0)
    cfg = T.LlavaConfig(vision_config=T.CLIPVisionConfig(**VISION), text_config=T.LlamaConfig(**TEXT),
                        image_token_id=IMG)
    model = T.LlavaForConditionalGeneration(cfg).double().eval()
    g = torch.Generator().manual_seed(3)
    ids = torch.cat([torch.randint(1, 90, (2, 2), generator=g), torch.full((2, 16), IMG),
                     torch.randint(1, 90, (2, 3), generator=g)], 1)
    inputs = dict(input_ids=ids, pixel_values=torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64))
    return model, inputs


# ----------------------------------------------------------------------------- ViLT
def test_vilt_methods_match_references_on_the_grid_cells(vilt):
    model, inputs = vilt
    target = lambda o: o.logits[:, 0]  # noqa: E731  (the ITM logit: the default top logit of one class)
    per_example = ref.vilt_attentions(model, inputs, target)
    amaps = {m: ex.explain(model, inputs, m) for m in ATTENTION}
    for m in ATTENTION:
        assert amaps[m].dims == ("batch", "word", "patch") and amaps[m].key.grid == (4, 6)
        assert amaps[m].meta["profile"] == "vilt"
    t = 5
    layers = [lay for lay, _ in per_example]
    for b, (_, cells) in enumerate(per_example):
        assert len(cells) == (24 if b == 0 else 16)
        text, image = list(range(t)), list(range(t + 1, t + 1 + len(cells)))  # [CLS] of the image at t: no column
        check(amaps["gradient_weighted"], ref.on_grid(ref.chefer_single_stream(layers[b], text, image), cells, 24), b)
        check(amaps["rollout"], ref.on_grid(ref.rollout_single_stream(layers[b], text, image), cells, 24), b)
        check(amaps["raw"], ref.on_grid(layers[b][-1][0].mean(0)[text][:, image], cells, 24), b)
        check(amaps["attention_x_gradient"],
              ref.on_grid(ref.attention_x_gradient_block(layers[b][-1], text, image), cells, 24), b)
    # known answer: the cells ViLT dropped (the padding of the narrower image) get nothing
    dropped = torch.tensor([r * 6 + c for r in range(4) for c in (4, 5)])
    for m in ATTENTION:
        assert bool((amaps[m].weights[1][:, dropped] == 0).all()), m


def test_vilt_input_x_gradient_of_the_patch_embedding_map_is_on_the_grid(vilt):
    model, inputs = vilt
    amap = ex.explain(model, inputs, "input_x_gradient")
    assert amap.dims == ("batch", "output", "patch") and amap.key.grid == (4, 6)
    seen = {}
    h = model.vilt.embeddings.patch_embeddings.register_forward_hook(lambda m, a, o: seen.setdefault("x", o))
    try:
        with torch.enable_grad():
            out = model(**inputs)
            g, = torch.autograd.grad(out.logits[:, 0].sum(), seen["x"])
    finally:
        h.remove()
    expected = (seen["x"] * g).sum(1).flatten(1).detach()   # [B, rows * cols], row-major cells
    torch.testing.assert_close(amap.weights[:, 0], expected, rtol=1e-7, atol=1e-12)
    assert bool((amap.weights[1, 0].view(4, 6)[:, 4:] == 0).all())  # the padding cells: no effect on the output


# ----------------------------------------------------------------------------- CLIP / SigLIP
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_dual_encoder_methods_match_references_within_the_image_tower(kind):
    model, inputs = dual(kind)
    target = lambda o: o.logits_per_image[:, 0]  # noqa: E731  (batch of one: the pair's similarity)
    layers = ref.layer_attentions(ref.eager_copy(model), inputs, target, lambda o: o.vision_model_output.attentions)
    amaps = {m: ex.explain(model, inputs, m) for m in ATTENTION}
    n = 17 if kind == "clip" else 16
    rows = [0] if kind == "clip" else list(range(n))   # CLIP: the [CLS] row; SigLIP: the mean of the patch rows
    cols = list(range(n - 16, n))
    for m in ATTENTION:
        assert amaps[m].dims == ("batch", "output", "patch") and amaps[m].key.grid == (4, 4)
        assert amaps[m].meta["profile"] == "dual_encoder"
    for b in range(2):
        check(amaps["gradient_weighted"], ref.chefer_single_stream(layers[b], rows, cols).mean(0, keepdim=True), b)
        check(amaps["rollout"], ref.rollout_single_stream(layers[b], rows, cols).mean(0, keepdim=True), b)
        check(amaps["raw"], layers[b][-1][0].mean(0)[rows][:, cols].mean(0, keepdim=True), b)
        check(amaps["attention_x_gradient"],
              ref.attention_x_gradient_block(layers[b][-1], rows, cols).mean(0, keepdim=True), b)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_dual_encoder_text_tower_reads_the_pooled_token_row(kind):
    model, inputs = dual(kind)
    ids = inputs["input_ids"].clone()
    if kind == "clip":  # CLIP pools its first end-of-text token: put one at positions 3 and 2
        model.text_model.eos_token_id = 50
        ids[ids == 50] = 51
        ids[0, 3] = ids[1, 2] = 50
    inputs = dict(inputs, input_ids=ids)
    target = lambda o: o.logits_per_image[:, 0]  # noqa: E731
    layers = ref.layer_attentions(ref.eager_copy(model), inputs, target, lambda o: o.text_model_output.attentions)
    prof = ex.families.dual_encoder_profile(model, "text")
    pooled = [3, 2] if kind == "clip" else [4, 4]  # SigLIP pools the last token
    assert ex.families.pooled_text_position(model, ids)[:, 0].tolist() == pooled
    for method, fn in (("gradient_weighted", ref.chefer_single_stream), ("rollout", ref.rollout_single_stream)):
        amap = ex.explain(model, inputs, method, profile=prof)
        assert amap.dims == ("batch", "output", "word") and amap.key.modality == "text"
        for b in range(2):
            check(amap, fn(layers[b], [pooled[b]], list(range(5))), b)


def test_clip_target_is_the_pair_similarity_and_captum_reads_the_patch_embeddings():
    model, inputs = dual("clip")
    amap = ex.explain(model, inputs, "input_x_gradient")
    assert amap.dims == ("batch", "output", "patch") and amap.weights.shape == (2, 1, 16)
    # input x gradient of the patch embeddings (the [CLS] embedding dropped), written out
    emb = {}
    h = model.vision_model.embeddings.register_forward_hook(lambda m, a, o: emb.setdefault("x", o))
    try:
        with torch.enable_grad():
            out = model(**inputs)
            x = emb["x"]
            g, = torch.autograd.grad(torch.diagonal(out.logits_per_image).sum(), x)
    finally:
        h.remove()
    torch.testing.assert_close(amap.weights[:, 0], (x * g).sum(-1)[:, 1:].detach(), rtol=1e-7, atol=1e-10)


# ----------------------------------------------------------------------------- LLaVA-style decoders
def test_llava_methods_match_references_over_the_language_model(llava):
    model, inputs = llava
    target = lambda o: o.logits[:, -1].amax(-1)  # noqa: E731  (the default: the next token's top logit)
    layers = ref.layer_attentions(ref.eager_copy(model), inputs, target, lambda o: o.attentions)
    amaps = {m: ex.explain(model, inputs, m) for m in ATTENTION}
    text, image = [0, 1, 18, 19, 20], list(range(2, 18))
    for m in ATTENTION:
        assert amaps[m].dims == ("batch", "word", "patch") and amaps[m].key.grid == (4, 4)
        assert amaps[m].meta["profile"] == "decoder"
    for b in range(2):
        check(amaps["gradient_weighted"], ref.chefer_single_stream(layers[b], text, image), b, **DEC)
        check(amaps["rollout"], ref.rollout_single_stream(layers[b], text, image), b, **DEC)
        check(amaps["raw"], layers[b][-1][0].mean(0)[text][:, image], b, **DEC)
        check(amaps["attention_x_gradient"], ref.attention_x_gradient_block(layers[b][-1], text, image), b, **DEC)
    # known answer (causal attention): the tokens before the image cannot have read it
    for m in ATTENTION:
        assert bool((amaps[m].weights[:, :2] == 0).all()), m
    for m in ("raw", "rollout", "gradient_weighted"):
        assert bool((amaps[m].weights[:, 2:].sum(-1) > 0).all()), m
    # ... and in the last layer only the last position reaches the target (the next token's logit)
    axg = amaps["attention_x_gradient"].weights
    assert bool((axg[:, :-1] == 0).all()) and bool((axg[:, -1].sum(-1) > 0).all())


def test_llava_given_answer_target_and_captum_on_the_projector(llava):
    model, inputs = llava
    answer = lambda o: o.logits[:, -2, 7]  # noqa: E731  (teacher forcing: token 7 as the last token)
    layers = ref.layer_attentions(ref.eager_copy(model), inputs, answer, lambda o: o.attentions)
    amap = ex.explain(model, inputs, "gradient_weighted", target=answer)
    check(amap, ref.chefer_single_stream(layers[0], [0, 1, 18, 19, 20], list(range(2, 18))), 0, **DEC)
    ixg = ex.explain(model, inputs, "input_x_gradient")
    assert ixg.dims == ("batch", "output", "patch") and ixg.weights.shape == (2, 1, 16)


def test_paligemma_llava_next_and_qwen2_vl_are_covered_by_the_decoder_profile():
    torch.manual_seed(0)
    cfg = T.LlavaNextConfig(vision_config=T.CLIPVisionConfig(**VISION), text_config=T.LlamaConfig(**TEXT),
                            image_token_id=IMG, image_grid_pinpoints=[[32, 64]])
    model = T.LlavaNextForConditionalGeneration(cfg).double().eval()
    ids = torch.cat([torch.tensor([[3, 4]]), torch.full((1, 52), IMG), torch.tensor([[5, 6, 7]])], 1)  # any-res
    inputs = dict(input_ids=ids, pixel_values=torch.randn(1, 3, 3, 32, 32, dtype=torch.float64),
                  image_sizes=torch.tensor([[32, 64]]))
    target = lambda o: o.logits[:, -1].amax(-1)  # noqa: E731
    layers = ref.layer_attentions(ref.eager_copy(model), inputs, target, lambda o: o.attentions)
    amap = ex.explain(model, inputs, "gradient_weighted")
    assert amap.key.grid is None and amap.weights.shape == (1, 5, 52)  # any-res tokens: no single grid
    check(amap, ref.chefer_single_stream(layers[0], [0, 1, 54, 55, 56], list(range(2, 54))), 0, **DEC)

    cfg = T.PaliGemmaConfig(vision_config=T.SiglipVisionConfig(**VISION), projection_dim=16,
                            text_config=T.GemmaConfig(**TEXT, head_dim=8), image_token_id=IMG)
    model = T.PaliGemmaForConditionalGeneration(cfg).double().eval()
    ids = torch.cat([torch.full((1, 16), IMG), torch.tensor([[5, 6, 7]])], 1)
    prefix = torch.ones_like(ids)
    prefix[:, -1:] = 0
    inputs = dict(input_ids=ids, token_type_ids=prefix, pixel_values=torch.randn(1, 3, 32, 32, dtype=torch.float64))
    target = lambda o: o.logits[:, -1].amax(-1)  # noqa: E731
    layers = ref.layer_attentions(ref.eager_copy(model), inputs, target, lambda o: o.attentions)
    amap = ex.explain(model, inputs, "gradient_weighted")
    assert amap.meta["profile"] == "decoder" and amap.key.grid == (4, 4)
    check(amap, ref.chefer_single_stream(layers[0], [16, 17, 18], list(range(16))), 0, **DEC)

    cfg = T.Qwen2VLConfig(vision_config=dict(depth=1, embed_dim=16, hidden_size=16, num_heads=2, patch_size=4,
                                             spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
                          text_config=dict(TEXT, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
                          image_token_id=IMG)
    model = T.Qwen2VLForConditionalGeneration(cfg).eval()
    ids = torch.cat([torch.tensor([[3, 4]]), torch.full((1, 6), IMG), torch.tensor([[5, 6]])], 1)
    inputs = dict(input_ids=ids, mm_token_type_ids=(ids == IMG).long(), pixel_values=torch.randn(24, 96),
                  image_grid_thw=torch.tensor([[1, 4, 6]]))
    amap = ex.explain(model, inputs, "rollout")
    assert amap.key.grid == (2, 3) and amap.weights.shape == (1, 4, 6)
    with pytest.raises(ExplainError, match="LLaVA and PaliGemma"):
        ex.explain(model, inputs, "input_x_gradient")


# ----------------------------------------------------------------------------- the model is left as it was
@pytest.mark.parametrize("family", ["vilt", "clip", "llava", "blip2"])
def test_model_is_left_exactly_as_it_was(family, request):
    if family == "clip":
        model, inputs = dual("clip")
    else:
        model, inputs = request.getfixturevalue(family)
    model.train()
    first = next(model.parameters())
    first.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    hooks, attn = hook_state(model), impls(model)
    try:
        for method in (ATTENTION if family != "blip2" else ("rollout", "gradient_weighted")):
            ex.explain(model, inputs, method)
            if method not in ("raw", "rollout"):  # these never evaluate the target
                with pytest.raises(RuntimeError, match="boom"):
                    ex.explain(model, inputs, method, target=lambda o: (_ for _ in ()).throw(RuntimeError("boom")))
            assert hook_state(model) == hooks and impls(model) == attn, method
            assert {n: p.requires_grad for n, p in model.named_parameters()} == flags, method
            assert {n: m.training for n, m in model.named_modules()} == modes, method
            assert all(p.grad is None for p in model.parameters()), method
            assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), method
    finally:
        first.requires_grad_(True)
        model.eval()


def test_profiles_are_registered_and_found():
    assert {"vilt", "dual_encoder", "decoder", "blip2"} <= set(ex.profiles.available())


# ----------------------------------------------------------------------------- through attnlens.evaluate
def test_evaluate_vilt_with_gradient_explainers(tmp_path):
    from evaluate_fixtures import write_flickr30k

    torch.manual_seed(0)
    cfg = T.ViltConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                       image_size=32, patch_size=8, max_image_length=-1, vocab_size=100, max_position_embeddings=40)
    model = T.ViltForImageAndTextRetrieval(cfg).eval()
    root = write_flickr30k(tmp_path / "f30k", n_images=1)
    res = attnlens.evaluate(model, root, spec="vilt", explainers=("raw", "gradient_weighted", "rollout"),
                            out=tmp_path / "out", settings={"steps": 4, "n_subsets": 5}, n_boot=200, gallery=1)
    pg = res.metrics.query("metric == 'pointing_game'").set_index("alignment")
    assert set(pg.index) >= {"raw", "gradient_weighted", "rollout"}
    assert pg.loc["gradient_weighted", "n"] == pg.loc["raw", "n"] > 0


def test_bad_inputs_raise_typed_errors(llava):
    model, inputs = dual("clip")
    uneven = dict(inputs, input_ids=torch.cat([inputs["input_ids"], inputs["input_ids"][:1]]))  # 3 texts, 2 images
    with pytest.raises(ExplainError, match="square"):
        ex.explain(model, uneven, "gradient_weighted")
    with pytest.raises(ExplainError, match="last position"):
        ex.families.next_token_top(torch.zeros(2, 5))
    model, inputs = llava
    no_image = dict(input_ids=torch.tensor([[1, 2, 3]]))  # a text-only call: no image columns to explain
    with pytest.raises(ExplainError):
        ex.explain(model, no_image, "rollout")


# ----------------------------------------------------------------------------- BLIP-2 (Q-Former linked to the LM)
@pytest.fixture(scope="module")
def blip2():
    torch.manual_seed(0)
    cfg = T.Blip2Config(vision_config=dict(VISION), num_query_tokens=4, image_token_id=IMG,
                        qformer_config=dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                            intermediate_size=32, encoder_hidden_size=16, vocab_size=100,
                                            cross_attention_frequency=1),
                        text_config=dict(model_type="opt", hidden_size=16, ffn_dim=32, num_hidden_layers=2,
                                         num_attention_heads=2, vocab_size=100, word_embed_proj_dim=16))
    model = T.Blip2ForConditionalGeneration(cfg).double().eval()
    g = torch.Generator().manual_seed(4)
    ids = torch.cat([torch.full((2, 4), IMG), torch.randint(3, 90, (2, 3), generator=g)], 1)
    inputs = dict(input_ids=ids, pixel_values=torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64))
    return model, inputs


def test_blip2_relevance_and_rollout_go_through_the_qformer_to_the_patches(blip2):
    model, inputs = blip2
    target = lambda o: o.logits[:, -1].amax(-1)  # noqa: E731
    recs = ref.blip2_records(ref.eager_copy(model), inputs, target)
    gw = ex.explain(model, inputs, "gradient_weighted")
    ro = ex.explain(model, inputs, "rollout")
    assert gw.dims == ("batch", "word", "patch") and gw.key.grid == (4, 4) and gw.meta["profile"] == "blip2"
    text, image = [4, 5, 6], [0, 1, 2, 3]
    for b in range(2):
        check(gw, ref.chefer_blip2(recs[b], text, image), b, **DEC)
        check(ro, ref.rollout_blip2(recs[b], text, image), b, **DEC)
    assert bool((gw.weights.abs().sum(-1) > 0).all()) and bool((ro.weights.sum(-1) > 0).all())
    # BLIP-2 has no text -> image attention call: raw maps come from capture, not from this profile
    with pytest.raises(ExplainError, match="no attention step"):
        ex.explain(model, inputs, "raw")


def test_clip_and_llava_specs_give_the_gradient_maps_in_the_raw_maps_shape(llava):
    import numpy as np

    from attnlens.evaluate import EvalItem
    from attnlens.evaluate.specs.clip import ClipSpec
    from attnlens.evaluate.specs.llava import LlavaSpec

    img = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    item = EvalItem("q/0", ("a", "red", "dog"), (), (40, 40), image=img)
    import copy

    for spec, model in ((ClipSpec(), dual("clip")[0].float()), (LlavaSpec(), copy.deepcopy(llava[0]).float())):
        inputs = spec.inputs(model, item)
        raw = spec.attention(model, item, inputs, "raw")
        methods = ("rollout", "gradient_weighted", "attention_x_gradient")
        for method in methods + (("input_x_gradient",) if spec.name == "clip" else ()):
            w = spec.attention(model, item, inputs, method)
            assert w.shape == raw.shape and bool(torch.isfinite(w).all()), (spec.name, method)


def test_instructblip_instruction_tokens_pass_through_the_cross_attention():
    torch.manual_seed(0)
    cfg = T.InstructBlipConfig(vision_config=dict(VISION), num_query_tokens=4, image_token_id=IMG,
                               qformer_config=dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                   intermediate_size=32, encoder_hidden_size=16, vocab_size=100,
                                                   cross_attention_frequency=1),
                               text_config=dict(model_type="opt", hidden_size=16, ffn_dim=32, num_hidden_layers=2,
                                                num_attention_heads=2, vocab_size=100, word_embed_proj_dim=16))
    model = T.InstructBlipForConditionalGeneration(cfg).double().eval()
    ids = torch.cat([torch.full((1, 4), IMG), torch.tensor([[11, 12, 13]])], 1)
    inputs = dict(input_ids=ids, qformer_input_ids=torch.tensor([[5, 6, 7]]),
                  pixel_values=torch.randn(1, 3, 32, 32, dtype=torch.float64))
    target = lambda o: o.logits[:, -1].amax(-1)  # noqa: E731
    recs = ref.blip2_records(ref.eager_copy(model), inputs, target)
    assert recs[0]["qself"][0][0].shape[-1] == 7 and recs[0]["qcross"][0][0].shape[-2] == 4
    gw = ex.explain(model, inputs, "gradient_weighted")
    ro = ex.explain(model, inputs, "rollout")
    assert gw.meta["profile"] == "blip2" and gw.weights.shape == (1, 3, 16)
    check(gw, ref.chefer_blip2(recs[0], [4, 5, 6], [0, 1, 2, 3]), 0, **DEC)
    check(ro, ref.rollout_blip2(recs[0], [4, 5, 6], [0, 1, 2, 3]), 0, **DEC)


def test_uniform_image_attention_rolls_out_to_its_closed_form():
    """Known answer: with the vision tower's query/key projections zeroed every attention row is uniform
    (U = 1/N), so raw gives 1/N and rollout (0.5 U + 0.5 I)^L = 0.5^L I + (1 - 0.5^L) U gives the [CLS] row
    (1 - 0.5^L) / N on every patch."""
    model, inputs = dual("clip")
    with torch.no_grad():
        for layer in model.vision_model.encoder.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                proj.weight.zero_()
                proj.bias.zero_()
    n, L = 17, 2
    raw = ex.explain(model, inputs, "raw")
    ro = ex.explain(model, inputs, "rollout")
    torch.testing.assert_close(raw.weights, torch.full((2, 1, 16), 1 / n, dtype=torch.float64))
    torch.testing.assert_close(ro.weights, torch.full((2, 1, 16), (1 - 0.5 ** L) / n, dtype=torch.float64))
