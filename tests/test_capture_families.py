"""attnlens.capture(model) on transformers vision-language families (tiny configs, random weights).

Every captured block is checked against the model's own ``output_attentions`` from an eager
copy, sliced by independent indexing (image tokens found from ``input_ids`` here, not by the
adapter); outputs with and without the capture agree; implementations and hooks are restored.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import attnlens
from attnlens.capture import adapters
from attnlens.errors import CaptureError, DTypeError

transformers = pytest.importorskip("transformers")
T = transformers
IMG = 99  # image token id of the tiny decoder models
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=100, max_position_embeddings=256)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32,
              patch_size=8)
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs")


def hook_state(model: nn.Module) -> dict:
    return {f"{n}.{a}": tuple(getattr(m, a).keys()) for n, m in model.named_modules() for a in HOOK_DICTS
            if getattr(m, a, None)}


def impls(model: nn.Module) -> dict:
    return {n: m.config._attn_implementation_internal for n, m in model.named_modules()
            if hasattr(getattr(m, "config", None), "_attn_implementation_internal")}


def eager_copy(model: nn.Module) -> nn.Module:
    ref = copy.deepcopy(model)
    ref.config._attn_implementation = "eager"  # the setter propagates to the sub-configs
    for m in ref.modules():
        cfg = getattr(m, "config", None)
        if hasattr(cfg, "_attn_implementation_internal"):
            cfg._attn_implementation_internal = "eager"
    return ref


def sliced(att: torch.Tensor, rows, cols) -> torch.Tensor:
    """att[b][:, rows[b]][:, :, cols[b]] for each example, by plain loops."""
    return torch.stack([att[b][:, list(rows[b])][:, :, list(cols[b])] for b in range(att.shape[0])])


def split(ids: torch.Tensor):
    """(text positions, image positions) per example, from the image token id."""
    text = [[i for i, t in enumerate(row) if t != IMG] for row in ids.tolist()]
    image = [[i for i, t in enumerate(row) if t == IMG] for row in ids.tolist()]
    return text, image


def ids_with_image(n_image: int, batch: int = 1, seed: int = 0, before: int = 2, after: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pre = torch.randint(1, 90, (batch, before), generator=g)
    post = torch.randint(1, 90, (batch, after), generator=g)
    return torch.cat([pre, torch.full((batch, n_image), IMG), post], dim=1)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def llava():
    torch.manual_seed(0)
    cfg = T.LlavaConfig(vision_config=T.CLIPVisionConfig(**VISION), text_config=T.LlamaConfig(**TEXT),
                        image_token_id=IMG)
    model = T.LlavaForConditionalGeneration(cfg).eval()
    g = torch.Generator().manual_seed(1)
    inputs = dict(input_ids=ids_with_image(16), pixel_values=torch.randn(1, 3, 32, 32, generator=g))
    return model, inputs


@pytest.fixture(scope="module")
def vilt():
    torch.manual_seed(0)
    cfg = T.ViltConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       image_size=32, patch_size=8, vocab_size=100, max_position_embeddings=40)
    model = T.ViltModel(cfg).eval()
    g = torch.Generator().manual_seed(2)
    mask = torch.ones(2, 32, 48, dtype=torch.long)
    mask[1, :, 32:] = 0  # the second image is narrower: its right patches are padding
    inputs = dict(input_ids=torch.randint(1, 100, (2, 5), generator=g),
                  pixel_values=torch.randn(2, 3, 32, 48, generator=g), pixel_mask=mask)
    return model, inputs


def blip2_like(cls_model, cls_config, **extra):
    torch.manual_seed(0)
    cfg = cls_config(vision_config=dict(VISION), num_query_tokens=4, image_token_id=IMG,
                     qformer_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, encoder_hidden_size=32, vocab_size=100,
                                         cross_attention_frequency=1),
                     text_config=dict(model_type="opt", hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                      num_attention_heads=4, vocab_size=100, word_embed_proj_dim=32))
    model = cls_model(cfg).eval()
    g = torch.Generator().manual_seed(3)
    inputs = dict(input_ids=ids_with_image(4, before=0), pixel_values=torch.randn(1, 3, 32, 32, generator=g), **extra)
    return model, inputs


# --------------------------------------------------------------------------- decoder-only
def check_decoder(model, inputs, grid=None, method="auto"):
    sites = None if method == "auto" else adapters.llava.taps(model, method=method)
    with torch.no_grad():
        ref = eager_copy(model)(**inputs, output_attentions=True)
        plain = model(**inputs)
        before_hooks, before_impl = hook_state(model), impls(model)
        with attnlens.capture(model, sites) as rec:
            out = model(**inputs)
    assert hook_state(model) == before_hooks and impls(model) == before_impl
    if rec.maps[0].meta["method"] == "rows":  # the fused kernel computed the output: exactly the plain one
        assert torch.equal(out.logits, plain.logits)
    else:  # fused vs eager: float rounding
        torch.testing.assert_close(out.logits, plain.logits, atol=1e-5, rtol=1e-5)
    text, image = split(inputs["input_ids"])
    maps = list(rec.maps)
    assert len(maps) == len(ref.attentions) >= 2
    for layer, (m, att) in enumerate(zip(maps, ref.attentions)):
        assert m.layer == layer and m.site.endswith("self_attn/t2i")
        assert m.query.modality == "text" and m.meta["query_positions"] == text[0]
        assert m.meta["key_positions"] == image[0]
        torch.testing.assert_close(m.weights, sliced(att, text, image), atol=1e-6, rtol=1e-5)
        assert m.key.grid == grid and m.meta.get("grid") == grid
    return rec


@pytest.mark.parametrize("method", ["auto", "eager"])
def test_llava_blocks_equal_eager_output_attentions(llava, method):
    model, inputs = llava
    rec = check_decoder(model, inputs, grid=(4, 4), method=method)
    m = rec.maps[0]
    assert m.dims == ("batch", "head", "word", "patch")
    assert m.meta["method"] == {"auto": "rows", "eager": "eager-switch"}[method]
    assert m.key.transform == {"resize": (32, 32)}
    assert m.weights.untyped_storage().nbytes() == m.weights.numel() * m.weights.element_size()  # no full T x T kept


def test_llava_batch_with_different_image_positions(llava):
    model, _ = llava
    ids = torch.cat([ids_with_image(16, before=2, after=3, seed=4), ids_with_image(16, before=4, after=1, seed=5)])
    ids[0, :2] = 0  # left padding: masked keys (a boolean mask in the fused path)
    mask = (ids != 0).long()
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(2, 3, 32, 32))
    with torch.no_grad():
        ref = eager_copy(model)(**inputs, output_attentions=True)
        with attnlens.capture(model, layers=[1]) as rec:
            model(**inputs)
    text, image = split(ids)
    (m,) = rec.maps
    assert m.meta["key_positions"] == image and m.meta["query_positions"] == text
    torch.testing.assert_close(m.weights, sliced(ref.attentions[1], text, image))


def test_llava_full_block_and_positions(llava):
    model, inputs = llava
    with torch.no_grad():
        ref = eager_copy(model)(**inputs, output_attentions=True)
        with attnlens.capture(model, adapters.llava.taps(model, block="full")) as rec:
            model(**inputs)
    text, image = split(inputs["input_ids"])
    for m, att in zip(rec.maps, ref.attentions):
        torch.testing.assert_close(m.weights, att)
        assert m.meta["text_positions"] == text[0] and m.meta["image_positions"] == image[0]
        assert m.dims == ("batch", "head", "query", "key")


def test_llava_generate_one_row_per_token(llava):
    model, inputs = llava
    kw = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ref = eager_copy(model).generate(**inputs, **kw, output_attentions=True, return_dict_in_generate=True)
        with attnlens.capture(model) as rec:
            seq = model.generate(**inputs, **kw)
    torch.testing.assert_close(seq, ref.sequences)
    text, image = split(inputs["input_ids"])
    by_step = [rec.maps[i:i + 2] for i in range(0, len(rec.maps), 2)]
    assert len(by_step) == 3 == len(ref.attentions)
    n = inputs["input_ids"].shape[1]
    for step, (maps, atts) in enumerate(zip(by_step, ref.attentions)):
        for m, att in zip(maps, atts):
            if step == 0:
                torch.testing.assert_close(m.weights, sliced(att, text, image), atol=1e-6, rtol=1e-5)
            else:
                assert m.shape["word"] == 1 and m.meta["query_positions"] == [n + step - 1]
                torch.testing.assert_close(m.weights, att[:, :, :, image[0]], atol=1e-6, rtol=1e-5)


def test_llava_restores_after_exception_and_grad(llava):
    model, inputs = llava
    model(**inputs)  # transformers installs its own output-recording hooks on the first call with grad
    before_hooks, before_impl = hook_state(model), impls(model)
    with pytest.raises(RuntimeError, match="boom"):
        with attnlens.capture(model):
            model(**inputs)
            assert model.config.text_config._attn_implementation == "attnlens_rows"
            raise RuntimeError("boom")
    assert hook_state(model) == before_hooks and impls(model) == before_impl
    assert model.config.text_config._attn_implementation == "sdpa"
    with attnlens.capture(model, grad=True) as rec:  # sliced blocks stay attached to the graph
        model(**inputs)
    assert all(m.weights.requires_grad for m in rec.maps)
    full = adapters.llava.taps(model, block="full")
    with attnlens.capture(model, full, grad=True) as rec:  # the full weights are the ones the model used:
        out = model(**inputs).logits[0, -1].sum()          # gradients with respect to them exist
    (g,) = torch.autograd.grad(out, [rec.maps[0].weights])
    assert g.shape == rec.maps[0].weights.shape and g.abs().sum() > 0


def test_llava_memory_options(llava):
    model, inputs = llava
    with torch.no_grad(), attnlens.capture(model, layers=[1], heads=[0, 2], dtype="float16") as rec:
        model(**inputs)
    (m,) = rec.maps
    assert m.weights.dtype == torch.float16 and m.shape == {"batch": 1, "head": 2, "word": 5, "patch": 16}
    with pytest.raises(DTypeError, match="dtype"):
        attnlens.capture(model, dtype="int8")
    with torch.no_grad(), attnlens.capture(model, memory_budget=1, dtype="float16") as spilled:  # budget/spill
        model(**inputs)
    assert spilled.store.spilled_count == 2
    back = spilled.maps[1]
    assert back.weights.dtype == torch.float16 and back.key.grid == (4, 4)
    assert back.meta["key_positions"] == list(range(2, 18)) and back.meta["method"] == "rows"
    spilled.close()


def test_llava_next_base_grid():
    torch.manual_seed(0)
    cfg = T.LlavaNextConfig(vision_config=T.CLIPVisionConfig(**VISION), text_config=T.LlamaConfig(**TEXT),
                            image_token_id=IMG, image_grid_pinpoints=[[32, 64]])
    model = T.LlavaNextForConditionalGeneration(cfg).eval()
    inputs = dict(input_ids=ids_with_image(52), pixel_values=torch.randn(1, 3, 3, 32, 32),
                  image_sizes=torch.tensor([[32, 64]]))
    rec = check_decoder(model, inputs, grid=None)
    assert rec.maps[0].meta["base_grid"] == (4, 4)


def test_paligemma_blocks():
    torch.manual_seed(0)
    cfg = T.PaliGemmaConfig(vision_config=T.SiglipVisionConfig(**VISION), projection_dim=32,
                            text_config=T.GemmaConfig(**TEXT, head_dim=8), image_token_id=IMG)
    model = T.PaliGemmaForConditionalGeneration(cfg).eval()
    ids = ids_with_image(16, before=0)
    prefix = torch.ones_like(ids)  # the processor's token_type_ids: image + prompt attend both ways
    prefix[:, -2:] = 0             # (without them transformers' own SDPA and eager masks differ for PaliGemma)
    inputs = dict(input_ids=ids, token_type_ids=prefix, pixel_values=torch.randn(1, 3, 32, 32))
    check_decoder(model, inputs, grid=(4, 4))


def test_qwen2_vl_blocks_and_grid():
    torch.manual_seed(0)
    cfg = T.Qwen2VLConfig(vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=4, patch_size=4,
                                             spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
                          text_config=dict(TEXT, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
                          image_token_id=IMG)
    model = T.Qwen2VLForConditionalGeneration(cfg).eval()
    ids = ids_with_image(6)
    inputs = dict(input_ids=ids, mm_token_type_ids=(ids == IMG).long(), pixel_values=torch.randn(24, 3 * 2 * 4 * 4),
                  image_grid_thw=torch.tensor([[1, 4, 6]]))  # 4 x 6 patches, merged 2 x 2 -> 2 x 3 tokens
    rec = check_decoder(model, inputs, grid=(2, 3))
    assert rec.maps[0].key.transform == {"resize": (16, 24)}


# --------------------------------------------------------------------------- Q-Former
@pytest.mark.parametrize("kind", ["blip2", "instructblip"])
def test_qformer_and_language_model_blocks(kind):
    if kind == "blip2":
        model, inputs = blip2_like(T.Blip2ForConditionalGeneration, T.Blip2Config)
    else:
        model, inputs = blip2_like(T.InstructBlipForConditionalGeneration, T.InstructBlipConfig,
                                   qformer_input_ids=torch.tensor([[5, 6, 7]]))
    ref_model = eager_copy(model)
    cross_ref = []  # the Q-Former cross-attention modules' own weights, read by a plain hook on the eager copy
    for p, m in ref_model.named_modules():
        if p.endswith("crossattention.attention"):
            m.register_forward_hook(lambda mod, a, out: cross_ref.append(out[1]))
    with torch.no_grad():
        ref = ref_model(**inputs, output_attentions=True)
        plain = model(**inputs)
        before_impl = impls(model)
        with attnlens.capture(model) as rec:
            out = model(**inputs)
    assert impls(model) == before_impl
    torch.testing.assert_close(out.logits, plain.logits, atol=1e-5, rtol=1e-5)
    sites = rec.by_site()
    cross = [s for s in sites if s.endswith("/q2i")]
    assert len(cross) == 2 == len(cross_ref)
    for s, att in zip(cross, cross_ref):
        (m,) = sites[s]
        assert m.dims == ("batch", "head", "qtoken", "patch") and m.key.grid == (4, 4) and m.shape["qtoken"] == 4
        torch.testing.assert_close(m.weights, att[:, :, :4, 1:], atol=1e-6, rtol=1e-5)  # [CLS] key kept apart
    with torch.no_grad(), attnlens.capture(model, adapters.qformer.taps(model, block="full")) as full:
        model(**inputs)
    for m, att in zip(full.maps, cross_ref):  # block="full" keeps the [CLS] key
        assert m.meta["key_positions"][0] == 0 and m.meta["image_positions"][0] == 1
        torch.testing.assert_close(m.weights, att[:, :, :4], atol=1e-6, rtol=1e-5)
    text, image = split(inputs["input_ids"])
    lm = [s for s in sites if s.endswith("/t2i")]
    assert len(lm) == len(ref.language_model_outputs.attentions) == 2
    for s, att in zip(lm, ref.language_model_outputs.attentions):
        (m,) = sites[s]
        assert m.key.modality == "qformer_query" and m.meta["key_positions"] == image[0]
        torch.testing.assert_close(m.weights, sliced(att, text, image), atol=1e-6, rtol=1e-5)


def test_blip2_with_t5_gives_the_qformer_blocks_only():
    torch.manual_seed(0)  # T5 attention returns (output, position_bias, ...): its language model is not tapped
    cfg = T.Blip2Config(vision_config=dict(VISION), num_query_tokens=4, image_token_id=IMG,
                        qformer_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                            intermediate_size=64, encoder_hidden_size=32, vocab_size=100),
                        text_config=dict(model_type="t5", d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1,
                                         num_heads=4, d_kv=8, vocab_size=100))
    model = T.Blip2ForConditionalGeneration(cfg).eval()
    inputs = dict(input_ids=ids_with_image(4, before=0), pixel_values=torch.randn(1, 3, 32, 32),
                  decoder_input_ids=torch.tensor([[0, 3]]))
    with torch.no_grad(), attnlens.capture(model) as rec:
        model(**inputs)
    assert [m.site for m in rec.maps] == ["qformer.encoder.layer.0.crossattention.attention/q2i"]


# --------------------------------------------------------------------------- ViLT
def vilt_selection(model, inputs, seed):
    """ViLT's own random patch choice for the call seeded with ``seed`` (its patch_index, mask)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        _, mask, (index, (h, w)) = model.embeddings.visual_embed(inputs["pixel_values"], inputs["pixel_mask"],
                                                                 max_image_length=model.config.max_image_length)
    return index, mask[:, 1:], (h, w)


@pytest.mark.parametrize("max_len", [-1, 5])
def test_vilt_patches_land_on_their_grid_cells(vilt, max_len):
    model, inputs = vilt
    model.config.max_image_length = max_len
    try:
        index, valid, (rows, cols) = vilt_selection(model, inputs, 7)
        torch.manual_seed(7)
        with torch.no_grad():
            ref = model(**inputs, output_attentions=True)
        torch.manual_seed(7)
        with torch.no_grad(), attnlens.capture(model) as rec:
            out = model(**inputs)
    finally:
        model.config.max_image_length = 200
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state)
    assert "visual_embed" not in model.embeddings.__dict__  # the wrapper is gone
    t = inputs["input_ids"].shape[1]
    assert (rows, cols) == (4, 6)
    for m, att in zip(rec.maps, ref.attentions):
        assert m.key.grid == (4, 6) and m.dims == ("batch", "head", "word", "patch")
        expect = torch.zeros(2, 4, t, rows * cols)
        for b in range(2):  # slow reference: every kept, valid patch j to its cell (r, c)
            for j in range(index.shape[1]):
                if valid[b, j]:
                    r, c = index[b, j].tolist()
                    expect[b, :, :, r * cols + c] = att[b, :, :t, t + 1 + j]
                    assert m.meta["key_positions"][b][r * cols + c] == t + 1 + j
        torch.testing.assert_close(m.weights, expect)
    kept = int(valid[1].sum())
    assert sum(p >= 0 for p in rec.maps[0].meta["key_positions"][1]) == kept
    assert kept == (16 if max_len < 0 else 5)  # padding cells of the narrow image are never attended


def test_vilt_cells_back_to_original_pixels(vilt):
    model, inputs = vilt
    with torch.no_grad(), attnlens.capture(model, layers=[0]) as rec:
        model(**inputs)
    (m,) = rec.maps
    narrow = m.meta["transforms"][1]  # valid 32 x 32 of the 32 x 48 batch: resized from, say, a 64 x 64 image
    assert narrow == {"resize": (32, 32), "pad": (0, 0, 0, 16)}
    boxes = attnlens.capture.patch_boxes(m.key.grid, narrow, (64, 64)).boxes
    assert boxes[0].tolist() == [0.0, 0.0, 16.0, 16.0] and boxes[7].tolist() == [16.0, 16.0, 32.0, 32.0]
    assert boxes[4].tolist()[0] == boxes[4].tolist()[2] == 64.0  # a padding cell: empty box at the edge
    one = {k: v[1:] for k, v in inputs.items()}
    with torch.no_grad(), attnlens.capture(model, layers=[0]) as rec:
        model(**one)
    assert rec.maps[0].key.transform == narrow


def test_vilt_full_block(vilt):
    model, inputs = vilt
    torch.manual_seed(3)
    with torch.no_grad():
        ref = model(**inputs, output_attentions=True)
    torch.manual_seed(3)
    with torch.no_grad(), attnlens.capture(model, adapters.vilt.taps(model, block="full")) as rec:
        model(**inputs)
    for m, att in zip(rec.maps, ref.attentions):
        torch.testing.assert_close(m.weights, att)
        assert m.meta["text_positions"] == list(range(5)) and m.meta["cls_position"] == 5
        assert len(m.meta["image_positions"][0]) == 24 and len(m.meta["image_positions"][1]) == 16


# --------------------------------------------------------------------------- dual encoders, fallback
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_dual_encoders_labelled_self_attention(kind):
    torch.manual_seed(0)
    tcfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100)
    if kind == "clip":
        model = T.CLIPModel(T.CLIPConfig(text_config=tcfg, vision_config=VISION, projection_dim=16)).eval()
    else:
        model = T.SiglipModel(T.SiglipConfig(text_config=tcfg, vision_config=VISION)).eval()
    inputs = dict(input_ids=torch.tensor([[1, 2, 3, 4]]), pixel_values=torch.randn(1, 3, 32, 32))
    with torch.no_grad():
        ref = eager_copy(model)(**inputs, output_attentions=True)
        plain = model(**inputs)
        before = impls(model)
        with pytest.raises(KeyError):
            with attnlens.capture(model):
                assert set(impls(model).values()) == {"eager"}
                raise KeyError("boom")
        assert impls(model) == before and "sdpa" in before.values()
        with attnlens.capture(model) as rec:
            out = model(**inputs)
    torch.testing.assert_close(out.logits_per_image, plain.logits_per_image, atol=1e-5, rtol=1e-5)
    sites = rec.by_site()
    vis = [s for s in sites if s.startswith("vision_model")]
    txt = [s for s in sites if s.startswith("text_model")]
    assert len(vis) == 1 and len(txt) == 2
    (v,) = sites[vis[0]]
    assert (v.query.modality, v.key.modality, v.key.grid) == ("image", "image", (4, 4))
    assert v.meta.get("prefix_keys", 0) == (1 if kind == "clip" else 0)
    torch.testing.assert_close(v.weights, ref.vision_model_output.attentions[0])
    for s, att in zip(txt, ref.text_model_output.attentions):
        (m,) = sites[s]
        assert (m.query.modality, m.key.modality) == ("text", "text")
        torch.testing.assert_close(m.weights, att)


def test_llava_vision_tower_is_not_a_default_site(llava):
    model, _ = llava
    names = [n for tap in adapters.find_taps(model) for n in tap.names]
    assert names and all("language_model" in n for n in names)


def test_fallback_any_transformers_model():
    torch.manual_seed(0)
    model = T.BertModel(T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                     vocab_size=100)).eval()
    ids = torch.tensor([[1, 5, 7, 2]])
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        ref = eager_copy(model)(input_ids=ids, output_attentions=True)
        with attnlens.capture(model) as rec:
            model(input_ids=ids)
    assert model.config._attn_implementation == "sdpa"
    assert [m.site for m in rec.maps] == [f"encoder.layer.{i}.attention.self" for i in range(2)]
    for m, att in zip(rec.maps, ref.attentions):
        assert m.query.modality == m.key.modality == "unknown"
        torch.testing.assert_close(m.weights, att)


def test_llava_tokens_and_nested_captures(llava):
    model, inputs = llava

    class Tok:
        def convert_ids_to_tokens(self, ids):
            return [f"w{i}" for i in ids]

    with torch.no_grad():
        with attnlens.capture(model, adapters.llava.taps(model, tokenizer=Tok())) as outer:
            with attnlens.capture(model, layers=[0]) as inner:  # the inner one finds the rows implementation on
                model(**inputs)                                  # and switches to eager: same blocks
        assert impls(model)["model.language_model"] == "sdpa"
    text, _ = split(inputs["input_ids"])
    ids = inputs["input_ids"][0].tolist()
    assert outer.maps[0].query.tokens == tuple(f"w{ids[i]}" for i in text[0])
    assert inner.maps[0].meta["method"] == "eager-switch" and outer.maps[0].meta["method"] == "rows"
    torch.testing.assert_close(inner.maps[0].weights, outer.maps[0].weights, atol=1e-6, rtol=1e-5)


def test_vilt_restored_after_exception(vilt):
    model, inputs = vilt
    model(**inputs)
    before = hook_state(model)
    with pytest.raises(RuntimeError, match="boom"):
        with attnlens.capture(model):
            assert "visual_embed" in model.embeddings.__dict__
            raise RuntimeError("boom")
    assert hook_state(model) == before and "visual_embed" not in model.embeddings.__dict__


def test_rows_method_needs_sdpa_and_t2i(llava):
    model, inputs = llava
    with pytest.raises(CaptureError, match="method='rows' needs"):
        with attnlens.capture(model, adapters.llava.taps(model, block="full", method="rows")):
            pass
    assert impls(model)["model.language_model"] == "sdpa"


def test_block_option_is_checked(llava, vilt):
    with pytest.raises(CaptureError, match="block"):
        adapters.llava.taps(llava[0], block="t2t")
    with pytest.raises(CaptureError, match="block"):
        adapters.vilt.taps(vilt[0], block="i2t")
