"""attnlens.capture on transformers models (tiny configs, random weights, no download)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import attnlens
from attnlens.capture import adapters
from attnlens.errors import CaptureError, RegistryError
from tiny_models import tiny_blip  # noqa: E402

transformers = pytest.importorskip("transformers")

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
              "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_hooks",
              "_backward_pre_hooks")


def hook_state(model: nn.Module) -> dict[str, tuple]:
    """Every module's hook dict keys (transformers may keep hooks of its own: compare to a baseline)."""
    return {f"{name}.{attr}": tuple(getattr(m, attr).keys()) for name, m in model.named_modules()
            for attr in HOOK_DICTS if getattr(m, attr, None)}


@pytest.fixture(scope="module")
def lxmert():
    torch.manual_seed(0)
    cfg = transformers.LxmertConfig(vocab_size=40, hidden_size=16, num_attention_heads=2, intermediate_size=24,
                                    l_layers=1, x_layers=2, r_layers=1, visual_feat_dim=8, visual_pos_dim=4,
                                    max_position_embeddings=16)
    model = transformers.LxmertModel(cfg).eval()
    g = torch.Generator().manual_seed(1)
    inputs = dict(input_ids=torch.randint(0, 40, (2, 5), generator=g), visual_feats=torch.randn(2, 3, 8, generator=g),
                  visual_pos=torch.rand(2, 3, 4, generator=g),
                  attention_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
                  visual_attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]))
    return model, inputs


@pytest.fixture(scope="module")
def visualbert():
    torch.manual_seed(0)
    cfg = transformers.VisualBertConfig(vocab_size=40, hidden_size=16, num_attention_heads=2, num_hidden_layers=2,
                                        intermediate_size=24, visual_embedding_dim=8, max_position_embeddings=16)
    model = transformers.VisualBertModel(cfg).eval()
    g = torch.Generator().manual_seed(2)
    inputs = dict(input_ids=torch.randint(0, 40, (2, 5), generator=g), visual_embeds=torch.randn(2, 4, 8, generator=g),
                  attention_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]))
    return model, inputs


@pytest.fixture(scope="module")
def blip():
    torch.manual_seed(0)
    model = tiny_blip(vision_layers=1)
    g = torch.Generator().manual_seed(3)
    inputs = dict(input_ids=torch.randint(3, 40, (2, 6), generator=g), pixel_values=torch.randn(2, 3, 32, 32, generator=g),
                  attention_mask=torch.tensor([[1] * 6, [1] * 4 + [0] * 2]))
    return model, inputs


# --------------------------------------------------------------------------- LXMERT
def test_lxmert_maps_equal_returned_cross_attentions(lxmert):
    model, inputs = lxmert
    with torch.no_grad():
        ref = model(**inputs, output_attentions=True)
        plain = model(**inputs)
        with attnlens.capture(model) as rec:
            out = model(**inputs)
    assert out.cross_encoder_attentions is None  # the caller did not ask; the capture stripped them again
    for name in ("language_output", "vision_output", "pooled_output"):
        assert torch.equal(getattr(out, name), getattr(plain, name))
    t2i = [m for m in rec.maps if m.direction == "t2i"]
    assert [m.site for m in t2i] == [f"encoder.x_layers.{i}.visual_attention.att/t2i" for i in range(2)]
    assert len(t2i) == len(ref.cross_encoder_attentions) == 2
    for amap, expected in zip(t2i, ref.cross_encoder_attentions):
        assert amap.dims == ("batch", "head", "word", "region") and amap.meta["method"] == "returned"
        assert torch.equal(amap.weights, expected)
        assert (amap.query.modality, amap.key.modality) == ("text", "image")
    assert [m.layer for m in t2i] == [0, 1]


def test_lxmert_vision_to_language_matches_recomputed_softmax(lxmert):
    model, inputs = lxmert
    seen = []
    att = model.encoder.x_layers[1].visual_attention.att
    handle = att.register_forward_hook(lambda m, args, out: seen.append(args))  # test's own reference hook
    try:
        with torch.no_grad(), attnlens.capture(model, "*x_layers.1*i2t") as rec:
            model(**inputs)
    finally:
        handle.remove()
    hidden, context, mask = seen[1][:3]  # second call of the layer: vision queries, language keys
    h = att.num_attention_heads
    q = att.query(hidden).view(*hidden.shape[:2], h, -1).transpose(1, 2)
    k = att.key(context).view(*context.shape[:2], h, -1).transpose(1, 2)
    expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask, dim=-1)
    (amap,) = rec.maps
    assert amap.dims == ("batch", "head", "region", "word") and amap.direction == "i2t"
    torch.testing.assert_close(amap.weights, expected, rtol=0, atol=1e-6)
    # masked (padded) words of the second caption get no weight
    assert float(amap.weights[1, :, :, 3:].abs().max()) < 1e-6


def test_lxmert_user_output_attentions_kept(lxmert):
    model, inputs = lxmert
    with torch.no_grad():
        ref = model(**inputs, output_attentions=True)
        with attnlens.capture(model, "*/t2i") as rec:
            out = model(**inputs, output_attentions=True)
    for a, b, m in zip(out.cross_encoder_attentions, ref.cross_encoder_attentions, rec.maps):
        assert torch.equal(a, b) and torch.equal(m.weights, b)
    assert torch.equal(out.language_output, ref.language_output)


def test_lxmert_hooks_removed_after_exceptions(lxmert):
    model, inputs = lxmert
    baseline = hook_state(model)
    bad = dict(inputs, visual_attention_mask=torch.ones(2, 7))  # fails inside the attention, after the pre-hook
    for i in range(8):
        if i % 2:
            with pytest.raises(RuntimeError):
                with torch.no_grad(), attnlens.capture(model):
                    model(**bad)
        else:
            with torch.no_grad(), attnlens.capture(model, tokens=None) as rec:
                model(**inputs)
            assert len(rec) == 4
        assert hook_state(model) == baseline
    assert baseline == {}
    # an exception inside the hooked attention module itself, between our pre- and post-hooks
    key = model.encoder.x_layers[0].visual_attention.att.key

    def explode(module, args):
        raise RuntimeError("inside the attention")

    for _ in range(2):
        handle = key.register_forward_pre_hook(explode)
        try:
            with pytest.raises(RuntimeError, match="inside the attention"):
                with torch.no_grad(), attnlens.capture(model):
                    model(**inputs)
        finally:
            handle.remove()
        assert hook_state(model) == baseline
    with torch.no_grad(), attnlens.capture(model) as rec:
        model(**inputs)
    assert len(rec) == 4
    with torch.no_grad():
        plain = model(**inputs)
        ref = model(**inputs, output_attentions=True)
    assert plain.cross_encoder_attentions is None
    assert torch.equal(plain.language_output, ref.language_output)


def test_lxmert_tokens_and_regions_single_example(lxmert):
    model, inputs = lxmert
    one = {k: v[:1] for k, v in inputs.items()}
    regions = attnlens.Regions([[0, 0, 4, 4], [2, 2, 8, 8], [1, 0, 3, 9]], (10, 10))
    with torch.no_grad(), attnlens.capture(model, "encoder.x_layers.0.*", tokens=list("abcde"), regions=regions) as rec:
        model(**one)
    t2i, i2t = rec.maps
    assert t2i.query.tokens == tuple("abcde") and t2i.key.regions is regions and i2t.key.tokens == tuple("abcde")
    assert t2i.sel(word="c").shape == {"batch": 1, "head": 2, "region": 3}


# --------------------------------------------------------------------------- VisualBERT
def test_visualbert_blocks_equal_returned_attentions(visualbert):
    model, inputs = visualbert
    t = inputs["input_ids"].shape[1]
    baseline = hook_state(model)
    with torch.no_grad():
        ref = model(**inputs, output_attentions=True)
        plain = model(**inputs)
        with attnlens.capture(model) as rec:
            out = model(**inputs)
    assert hook_state(model) == baseline
    assert out.attentions is None and torch.equal(out.last_hidden_state, plain.last_hidden_state)
    sites = rec.by_site()
    assert sorted(sites) == sorted(f"encoder.layer.{i}.attention.self/{d}" for i in range(2) for d in ("t2i", "i2t"))
    for i, full in enumerate(ref.attentions):
        (t2i,) = sites[f"encoder.layer.{i}.attention.self/t2i"]
        (i2t,) = sites[f"encoder.layer.{i}.attention.self/i2t"]
        assert t2i.dims == ("batch", "head", "word", "region") and i2t.dims == ("batch", "head", "region", "word")
        assert torch.equal(t2i.weights, full[:, :, :t, t:]) and torch.equal(i2t.weights, full[:, :, t:, :t])
        assert t2i.meta["text_length"] == t and t2i.layer == i and t2i.meta["method"] == "returned"
    # a block holds part of each row's mass: rows of the whole matrix sum to 1
    full = ref.attentions[0]
    torch.testing.assert_close(full.sum(-1), torch.ones(full.shape[:-1]))


def test_visualbert_hooks_removed_after_exception(visualbert):
    model, inputs = visualbert
    baseline = hook_state(model)
    bad = dict(inputs, attention_mask=torch.ones(2, 3))
    for _ in range(5):
        with pytest.raises(Exception):
            with torch.no_grad(), attnlens.capture(model, "*/t2i"):
                model(**bad)
        assert hook_state(model) == baseline


# --------------------------------------------------------------------------- BLIP
def test_blip_text_to_patch_cross_attention_every_layer(blip):
    model, inputs = blip
    with torch.no_grad():
        plain = model(**inputs)
        with attnlens.capture(model) as rec:
            out = model(**inputs)
    assert torch.equal(out.itm_score, plain.itm_score)
    assert rec.sites == [f"text_encoder.encoder.layer.{i}.crossattention.self" for i in range(2)]
    assert len(rec) == 2
    for i, amap in enumerate(rec.maps):
        assert amap.dims == ("batch", "head", "word", "patch") and amap.layer == i
        assert amap.shape == {"batch": 2, "head": 2, "word": 6, "patch": 1 + 16}
        torch.testing.assert_close(amap.weights.sum(-1), torch.ones(2, 2, 6))
        assert amap.key.grid == (4, 4) and amap.meta["prefix_keys"] == 1 and amap.meta["cls_index"] == 0
        assert (amap.query.modality, amap.key.modality, amap.direction) == ("text", "image", "t2i")
    # reference: the text encoder asked directly for its cross attentions
    with torch.no_grad():
        image_embeds = model.vision_model(pixel_values=inputs["pixel_values"]).last_hidden_state
        ref = model.text_encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                 encoder_hidden_states=image_embeds,
                                 encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long),
                                 output_attentions=True)
    assert len(ref.cross_attentions) == 2
    for amap, expected in zip(rec.maps, ref.cross_attentions):
        assert torch.equal(amap.weights, expected)


def test_blip_drop_cls_and_region_meta(blip):
    model, inputs = blip
    transform = {"resize": (32, 32)}
    with torch.no_grad(), attnlens.capture(model, adapters.blip.taps(model, drop_cls=True),
                                           region_meta={"transform": transform}) as rec:
        model(**inputs)
    amap = rec.maps[0]
    assert amap.shape["patch"] == 16 and amap.meta["dropped_prefix_keys"] == 1
    assert amap.key.grid == (4, 4) and amap.key.transform == transform
    assert float(amap.weights.sum(-1).max()) < 1.0
    boxes = attnlens.capture.patch_boxes(amap.key.grid, amap.key.transform, (64, 128))
    one = amap.isel(batch=0).with_sides(regions=boxes)
    assert one.key.regions.labels[5] == "r1c1" and one.key.regions.boxes[5].tolist() == [32.0, 16.0, 64.0, 32.0]


def test_blip_without_itm_head_is_a_clear_error(blip):
    model, inputs = blip
    baseline = hook_state(model)
    with pytest.raises(CaptureError, match="never produced attention weights"):
        with torch.no_grad(), attnlens.capture(model, "*crossattention*"):
            model(**inputs, use_itm_head=False)
    assert hook_state(model) == baseline


# --------------------------------------------------------------------------- generic
def test_softmax_outputs_records_a_chosen_module():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k = nn.Linear(4, 4), nn.Linear(4, 4)
            self.softmax = nn.Softmax(dim=-1)

        def forward(self, words, regions):
            return self.softmax(self.q(words) @ self.k(regions).transpose(-1, -2))

    torch.manual_seed(0)
    toy = Toy()
    words, regions = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    site = adapters.softmax_outputs(toy, "softmax", dims=("batch", "word", "region"), direction="t2i")
    with attnlens.capture(toy, site, tokens=None) as rec:
        out = toy(words, regions)
    (amap,) = rec.maps
    assert torch.equal(amap.weights, out) and amap.site == "softmax" and amap.direction == "t2i"
    assert amap.meta["method"] == "output" and amap.dims == ("batch", "word", "region")
    with pytest.raises(CaptureError, match="no module 'softmx'.*'softmax'"):
        adapters.softmax_outputs(toy, "softmx")
    bad = adapters.softmax_outputs(toy, "softmax", dims=("word", "region"))
    with pytest.raises(CaptureError, match="name 2 axes"):
        with attnlens.capture(toy, bad):
            toy(words, regions)
    assert hook_state(toy) == {}


def test_adapter_registry():
    assert adapters.available() == ["blip", "dual", "llava", "lxmert", "qformer", "vilt", "visualbert"]
    with pytest.raises(RegistryError):
        adapters.register("blip", adapters.blip.find_taps)
    adapters.register("blip", adapters.blip.find_taps, overwrite=True)
    assert adapters.available() == ["blip", "dual", "llava", "lxmert", "qformer", "vilt", "visualbert"]


def test_nested_captures_of_one_model(lxmert):
    model, inputs = lxmert
    with torch.no_grad():
        ref = model(**inputs, output_attentions=True)
        with attnlens.capture(model) as outer:
            with attnlens.capture(model, "*x_layers.1*/t2i") as inner:
                out = model(**inputs)
            model(**inputs)
    assert out.cross_encoder_attentions is None
    assert len(inner) == 1 and len(outer) == 8
    assert torch.equal(inner.maps[0].weights, ref.cross_encoder_attentions[1])
    assert torch.equal(outer.maps[2].weights, ref.cross_encoder_attentions[1])
    assert hook_state(model) == {}


def test_attention_outputs_switches_fused_attention_to_eager():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_attention_heads=2, num_hidden_layers=2,
                                  intermediate_size=24, max_position_embeddings=16)
    model = transformers.BertModel(cfg).eval()
    model.set_attn_implementation("sdpa")
    ids = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        model(input_ids=ids)  # transformers may install its own hooks on a first call
        baseline = hook_state(model)
        site = adapters.attention_outputs(model, "encoder.layer.1.attention.self")
        with attnlens.capture(model, site) as rec:
            model(input_ids=ids)
        assert model.config._attn_implementation == "sdpa" and hook_state(model) == baseline
        model.set_attn_implementation("eager")
        ref = model(input_ids=ids, output_attentions=True)
        model.set_attn_implementation("sdpa")
    (amap,) = rec.maps
    assert amap.meta["method"] == "eager-switch" and amap.dims == ("batch", "head", "query", "key")
    assert torch.equal(amap.weights, ref.attentions[1])
    # already eager: nothing to switch
    model.set_attn_implementation("eager")
    with torch.no_grad(), attnlens.capture(model, adapters.attention_outputs(model, "encoder.layer.0.attention.self")) as rec:
        model(input_ids=ids)
    assert rec.maps[0].meta["method"] == "returned"
