"""Tests of attnlens.capture on attnlens's own attention sites (CrossAttention probes)."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules import module as torch_module

import attnlens
from attnlens.attention_map import AttentionMap
from attnlens.capture import MapStore, adapters, stitch
from attnlens.errors import CaptureError
from attnlens.models.attention import AttentionProbe, CrossAttention, ProbeRecord
from attnlens.types import Regions

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
              "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_hooks",
              "_backward_pre_hooks")
GLOBAL_DICTS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                "_global_backward_pre_hooks", "_global_forward_hooks_always_called")


def hooks_left(model: nn.Module) -> list[str]:
    return [f"{name or '<root>'}.{attr}" for name, m in model.named_modules() for attr in HOOK_DICTS
            if getattr(m, attr, None)]


def global_hooks() -> dict[str, int]:
    return {g: len(getattr(torch_module, g)) for g in GLOBAL_DICTS if hasattr(torch_module, g)}


class TwoWay(nn.Module):
    """Text-to-image and image-to-text cross attention in numbered layers."""

    def __init__(self, d=6, n_layers=2):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleDict({
                "t2i": CrossAttention("dot", d, direction="t2i", query_dim="word", key_dim="region"),
                "i2t": CrossAttention("dot", d, direction="i2t", query_dim="region", key_dim="word",
                                      query_modality="image", key_modality="text", temperature=4.0),
            }) for _ in range(n_layers))
        self.fail = False

    def forward(self, regions, words, only_t2i=False):
        outs = []
        for layer in self.layers:
            outs.append(layer["t2i"](words, regions))
            if self.fail:
                raise RuntimeError("boom inside the model")
            if not only_t2i:
                outs.append(layer["i2t"](regions, words))
        return outs


class Heads(nn.Module):
    """Calls weigh with a head axis and a layer in the meta."""

    def __init__(self):
        super().__init__()
        self.attn = CrossAttention("dot", 4, norm="no_norm", temperature=1.0)

    def forward(self, scores):
        return self.attn.weigh(scores, dims=("batch", "head", "word", "region"), meta={"layer": 7})


class Chunked(nn.Module):
    """SCAN-like all-pairs scoring in chunks, with offsets in the meta."""

    def __init__(self, d=5, chunk=(2, 3)):
        super().__init__()
        self.attn = CrossAttention("dot", d, direction="t2i", query_dim="word", key_dim="region")
        self.chunk = chunk

    def forward(self, images, captions):
        ci, cc = self.chunk
        out = torch.zeros(len(images), len(captions), captions.shape[1], images.shape[1], dtype=images.dtype)
        for i0 in range(0, len(images), ci):
            for c0 in range(0, len(captions), cc):
                s = torch.einsum("ird,cld->iclr", images[i0:i0 + ci], captions[c0:c0 + cc])
                out[i0:i0 + ci, c0:c0 + cc] = self.attn.weigh(
                    s, dims=("image", "caption", "word", "region"), meta={"image_offset": i0, "caption_offset": c0})
        return out


def inputs(seed=0, b=2, r=4, w=3, d=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, r, d, generator=g), torch.randn(b, w, d, generator=g)


# --------------------------------------------------------------------------- module is callable
def test_capture_is_callable_package():
    assert isinstance(attnlens.capture, types.ModuleType)
    assert callable(attnlens.capture)
    assert attnlens.capture.adapters is adapters
    import attnlens.capture.adapters.generic as generic  # noqa: F401  (subpackage imports)

    attn = CrossAttention("dot", 4)
    with attnlens.capture(attn) as rec:
        attn(torch.randn(1, 2, 4), torch.randn(1, 3, 4))
    with attnlens.capture.capture(attn) as rec2:
        attn(torch.randn(1, 2, 4), torch.randn(1, 3, 4))
    assert len(rec) == len(rec2) == 1


# --------------------------------------------------------------------------- known answers
def test_maps_equal_returned_weights_and_carry_metadata():
    torch.manual_seed(0)
    model = TwoWay()
    regions, words = inputs()
    with attnlens.capture(model) as rec:
        outs = model(regions, words)
    assert len(rec) == 4 and rec.sites == ["layers.0.t2i", "layers.0.i2t", "layers.1.t2i", "layers.1.i2t"]
    for amap, out in zip(rec.maps, outs):
        assert torch.equal(amap.weights, out.weights)
        assert torch.equal(amap.scores, out.scores)
    first, second = rec.maps[0], rec.maps[1]
    assert first.site == "layers.0.t2i" and first.layer == 0 and rec.maps[2].layer == 1
    assert first.dims == ("batch", "word", "region") and first.alignment == "dot" and first.direction == "t2i"
    assert (first.query.modality, first.key.modality) == ("text", "image")
    assert second.dims == ("batch", "region", "word") and second.query.modality == "image"
    assert first.meta["norm"] == "clipped_l2norm" and second.meta["temperature"] == 4.0
    assert [m.meta["call_index"] for m in rec.maps] == [0, 1, 2, 3]


def test_hand_set_scores_give_softmax_and_head_options():
    # no_norm, temperature 1: weights = softmax(scores) exactly; a head axis to select and reduce
    scores = torch.tensor([[[[0.0, np.log(3.0)], [np.log(4.0), 0.0]],
                            [[0.0, 0.0], [np.log(9.0), 0.0]]]], dtype=torch.float64)  # [1, 2 heads, 2, 2]
    expected = torch.tensor([[[[0.25, 0.75], [0.8, 0.2]], [[0.5, 0.5], [0.9, 0.1]]]], dtype=torch.float64)
    model = Heads()
    with attnlens.capture(model) as rec:
        model(scores)
    torch.testing.assert_close(rec.maps[0].weights, expected)
    assert rec.maps[0].layer == 7 and "layer" not in rec.maps[0].meta
    with attnlens.capture(model, heads=[1]) as rec:
        model(scores)
    torch.testing.assert_close(rec.maps[0].weights, expected[:, 1:])
    with attnlens.capture(model, reduce_heads="mean", keep_scores=False) as rec:
        model(scores)
    torch.testing.assert_close(rec.maps[0].weights, expected.mean(1))
    assert rec.maps[0].dims == ("batch", "word", "region") and rec.maps[0].scores is None
    with attnlens.capture(model, reduce_heads="max", queries=[1]) as rec:
        model(scores)
    torch.testing.assert_close(rec.maps[0].weights, expected.amax(1)[:, 1:])
    torch.testing.assert_close(rec.maps[0].scores, scores.amax(1)[:, 1:])
    with attnlens.capture(model, layers=[3], strict=False) as rec:
        model(scores)
    assert len(rec) == 0
    with pytest.raises(CaptureError, match="out of range"):
        with attnlens.capture(model, heads=[5]):
            model(scores)


def test_head_options_need_a_head_axis():
    model = TwoWay(n_layers=1)
    with pytest.raises(CaptureError, match="no 'head' axis"):
        with attnlens.capture(model, reduce_heads="mean"):
            model(*inputs())
    assert not hooks_left(model)
    with pytest.raises(CaptureError, match="reduce_heads"):
        attnlens.capture(model, reduce_heads="median")


def test_layers_filter_uses_module_path():
    model = TwoWay()
    with attnlens.capture(model, layers=[1]) as rec:
        model(*inputs())
    assert [m.site for m in rec.maps] == ["layers.1.t2i", "layers.1.i2t"]


# --------------------------------------------------------------------------- site filters
@pytest.mark.parametrize("sites, expected", [
    ("layers.*.t2i", ["layers.0.t2i", "layers.1.t2i"]),
    (r"layers\.1\..*", ["layers.1.t2i", "layers.1.i2t"]),
    ("layers.0.i2t", ["layers.0.i2t"]),
    ("layers.0.i2t.probe", ["layers.0.i2t"]),
    (["layers.1.i2t", "layers.0.t2i"], ["layers.1.i2t", "layers.0.t2i"]),
    (lambda name, module: module.direction == "i2t", ["layers.0.i2t", "layers.1.i2t"]),
])
def test_site_filters(sites, expected):
    model = TwoWay()
    with attnlens.capture(model, sites) as rec:
        model(*inputs())
    assert rec.sites == expected
    assert sorted({m.site for m in rec.maps}) == sorted(expected)
    by_site = rec.by_site()
    assert sorted(by_site) == sorted(expected) and all(len(v) == 1 for v in by_site.values())


def test_pattern_matching_nothing_lists_close_matches():
    model = TwoWay()
    with pytest.raises(CaptureError) as err:
        attnlens.capture(model, "layer.0.t2j")
    msg = str(err.value)
    assert "'layer.0.t2j' matches no capture site" in msg and "Close matches" in msg and "'layers.0.t2i'" in msg
    with pytest.raises(CaptureError, match="matches no capture site"):
        attnlens.capture(model, ["layers.0.t2i", "nothing_here"])
    with pytest.raises(CaptureError, match="selected no site"):
        attnlens.capture(model, lambda name, module: False)
    assert not hooks_left(model)


def test_model_without_sites_is_an_error():
    with pytest.raises(CaptureError, match="no capture site.*softmax_outputs"):
        attnlens.capture(nn.Linear(3, 3))


def test_site_that_never_fired_is_a_clear_error():
    model = TwoWay(n_layers=1)
    with pytest.raises(CaptureError, match=r"'layers.0.i2t' never produced attention weights"):
        with attnlens.capture(model, "layers.0.*"):
            model(*inputs(), only_t2i=True)
    with attnlens.capture(model, "layers.0.*", strict=False) as rec:
        model(*inputs(), only_t2i=True)
    assert rec.silent_sites == ["layers.0.i2t"] and len(rec) == 1
    # with no sites given, unused sites are allowed as long as one fired ...
    with attnlens.capture(model) as rec:
        model(*inputs(), only_t2i=True)
    assert rec.silent_sites == ["layers.0.i2t"]
    # ... but a model never run inside the block is an error
    with pytest.raises(CaptureError, match="never produced attention weights"):
        with attnlens.capture(model):
            pass
    assert not hooks_left(model)


def test_probe_not_named_probe_is_its_own_site():
    class Reg(nn.Module):
        def __init__(self):
            super().__init__()
            self.step_probe = AttentionProbe()

        def forward(self, x):
            w = torch.softmax(x, -1)
            self.step_probe(ProbeRecord(w, x, ("batch", "word", "region"), meta={"direction": "t2i"}))
            return w

    m = nn.Sequential(Reg())
    with attnlens.capture(m) as rec:
        m(torch.randn(1, 2, 3))
    assert rec.sites == ["0.step_probe"] and rec.maps[0].direction == "t2i" and rec.maps[0].layer == 0


# --------------------------------------------------------------------------- hooks never survive
def test_no_hook_survives_normal_exit_or_exception():
    torch.manual_seed(0)
    model = TwoWay()
    before = global_hooks()
    assert not hooks_left(model)
    x = inputs()
    for i in range(60):
        model.fail = i % 2 == 1
        if model.fail:
            with pytest.raises(RuntimeError, match="boom"):
                with attnlens.capture(model, "layers.*", memory_budget=0 if i % 4 == 1 else None):
                    model(*x)
        else:
            with attnlens.capture(model, reduce_heads=None) as rec:
                model(*x)
            assert len(rec) == 4
        assert not hooks_left(model), hooks_left(model)
        assert global_hooks() == before
    # an exception raised by the user's own code inside the block, and by the strict check
    with pytest.raises(KeyError):
        with attnlens.capture(model):
            raise KeyError("user")
    with pytest.raises(CaptureError):
        with attnlens.capture(model, "layers.0.t2i"):
            pass
    assert not hooks_left(model) and global_hooks() == before


def test_exception_in_capture_options_removes_hooks():
    model = TwoWay(n_layers=1)
    with pytest.raises(CaptureError, match="tokens= has 2 tokens"):
        with attnlens.capture(model, tokens=["a", "b"]):
            model(*inputs())
    assert not hooks_left(model)


# --------------------------------------------------------------------------- sides
def test_tokens_and_regions_are_attached():
    model = TwoWay(n_layers=1)
    regions_, words = inputs(b=1)
    boxes = Regions([[0, 0, 2, 2], [1, 1, 3, 3], [0, 2, 4, 4], [2, 0, 4, 2]], (4, 4), labels=list("abcd"))
    with attnlens.capture(model, tokens=["a", "red", "circle"], regions=boxes) as rec:
        model(regions_, words)
    t2i, i2t = rec.maps
    assert t2i.query.tokens == ("a", "red", "circle") and t2i.key.regions is boxes
    assert i2t.key.tokens == ("a", "red", "circle") and i2t.query.regions is boxes
    torch.testing.assert_close(t2i.sel(word="red", region="c").weights, t2i.weights[:, 1, 2])
    with pytest.raises(CaptureError, match="regions= has 2 boxes"):
        with attnlens.capture(model, regions=boxes[:2]):
            model(regions_, words)


def test_with_sides_after_selecting_one_example():
    model = TwoWay(n_layers=1)
    with attnlens.capture(model, "layers.0.t2i") as rec:
        model(*inputs())
    one = rec.maps[0].isel(batch=1).with_sides(tokens=["x", "y", "z"], grid=(2, 2), transform={"resize": (8, 8)})
    assert one.query.tokens == ("x", "y", "z") and one.key.grid == (2, 2)
    assert one.key.transform == {"resize": (8, 8)}
    with pytest.raises(Exception, match="size 3 but its side has 2 tokens"):
        rec.maps[0].with_sides(tokens=["x", "y"])


def test_region_meta_sets_grid_and_transform():
    model = TwoWay(n_layers=1)
    with attnlens.capture(model, region_meta={"grid": (2, 2), "transform": {"resize": (32, 32)}}) as rec:
        model(*inputs())
    assert rec.maps[0].key.grid == (2, 2) and rec.maps[1].query.transform == {"resize": (32, 32)}


def test_attention_map_concat():
    a = AttentionMap(torch.rand(2, 3, 4), ("batch", "word", "region"), query=None)
    b = AttentionMap(torch.rand(1, 3, 4), ("batch", "word", "region"))
    both = AttentionMap.concat([a, b], "batch")
    assert torch.equal(both.weights, torch.cat([a.weights, b.weights]))
    w = AttentionMap.concat([a.with_sides(tokens="a b c"), b.isel(batch=[0, 0]).with_sides(tokens=list("abc"))],
                            "batch")
    assert w.shape == {"batch": 4, "word": 3, "region": 4} and w.query.tokens == ("a", "b", "c")
    words = AttentionMap.concat([a.with_sides(tokens=list("abc")), a.with_sides(tokens=list("xyz"))], "word")
    assert words.query.tokens == tuple("abcxyz")
    with pytest.raises(Exception, match="differ on another axis"):
        AttentionMap.concat([a, b.isel(word=[0, 1])], "batch")


# --------------------------------------------------------------------------- chunk stitching
def test_concat_stitches_chunks_into_the_full_map():
    g = torch.Generator().manual_seed(1)
    images, captions = torch.randn(5, 4, 5, generator=g, dtype=torch.float64), \
        torch.randn(7, 3, 5, generator=g, dtype=torch.float64)
    chunked = Chunked(chunk=(2, 3))
    with attnlens.capture(chunked) as rec:
        out = chunked(images, captions)
    assert len(rec) == 3 * 3
    full = rec.concat("attn")
    assert full.shape == {"image": 5, "caption": 7, "word": 3, "region": 4} and full.meta["chunks"] == 9
    torch.testing.assert_close(full.weights, out, rtol=0, atol=0)
    # slow reference: one pair at a time
    for i in range(5):
        for c in range(7):
            s = images[i] @ captions[c].T  # [R, L]
            one = chunked.attn.weigh(s.T[None])[0]
            torch.testing.assert_close(full.weights[i, c], one, rtol=0, atol=1e-12)
    torch.testing.assert_close(full.scores, torch.einsum("ird,cld->iclr", images, captions))
    # two forward calls: overlapping chunks need forward_index
    with attnlens.capture(chunked) as rec:
        chunked(images, captions)
        chunked(images * 2, captions)
    with pytest.raises(CaptureError, match="forward_index"):
        rec.concat("attn")
    torch.testing.assert_close(rec.concat("attn", forward_index=0).weights, out, rtol=0, atol=0)
    with pytest.raises(CaptureError, match="no map recorded for site 'nope'"):
        rec.concat("nope")


def test_stitch_rejects_overlap():
    a = AttentionMap(torch.ones(2, 2, 3), ("image", "word", "region"), meta={"image_offset": 0})
    with pytest.raises(CaptureError, match="overlap"):
        stitch([a, a])


def test_scan_similarity_concat_if_available():
    scan = pytest.importorskip("attnlens.models.scan")
    g = torch.Generator().manual_seed(3)
    images = torch.nn.functional.normalize(torch.randn(5, 6, 8, generator=g, dtype=torch.float64), dim=-1)
    captions = torch.nn.functional.normalize(torch.randn(4, 5, 8, generator=g, dtype=torch.float64), dim=-1)
    lengths = torch.tensor([5, 3, 4, 2])
    chunked = scan.ScanSimilarity("t2i", chunk_size=2)
    whole = scan.ScanSimilarity("t2i", chunk_size=100)
    with attnlens.capture(chunked, "attn") as rec:
        chunked(images, captions, lengths)
    with attnlens.capture(whole, "attn") as rec_whole:
        whole(images, captions, lengths)
    assert len(rec) == 3 * 2 and len(rec_whole) == 1
    full = rec.concat("attn")
    assert full.dims == ("image", "caption", "word", "region")
    torch.testing.assert_close(full.weights, rec_whole.maps[0].weights, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- memory budget
@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_budget_spills_and_reads_back_lazily(tmp_path, fmt):
    model = TwoWay()
    x = inputs(b=3)
    with attnlens.capture(model) as ref:
        for _ in range(5):
            model(*x)
    one = ref.maps[0].weights.numel() * 4 * 2  # weights + scores, float32
    with attnlens.capture(model, memory_budget=3 * one, spill_dir=tmp_path / "spill", spill_format=fmt) as rec:
        for _ in range(5):
            model(*x)
    store = rec.store
    assert len(rec) == 20 and store.spilled_count > 0 and store.shards
    assert store.peak_bytes_in_memory <= 3 * one + one and store.bytes_in_memory <= 3 * one
    assert all(p.parent == store.spill_dir and p.parent.parent == tmp_path / "spill" and p.suffix == f".{fmt}"
               for p in store.shards)
    for a, b in zip(ref.maps, rec.maps):
        assert torch.equal(a.weights, b.weights) and torch.equal(a.scores, b.scores)
        assert (a.site, a.dims, a.layer, a.alignment, a.direction) == (b.site, b.dims, b.layer, b.alignment, b.direction)
        assert a.meta == b.meta
    assert [len(v) for v in rec.by_site().values()] == [5, 5, 5, 5]
    rec.close()
    assert not any((tmp_path / "spill").rglob(f"*.{fmt}")) and not store.spill_dir.exists()


def test_temporary_spill_dir_is_removed_on_close():
    store = MapStore(memory_budget=0)
    store.append(AttentionMap(torch.rand(2, 3), ("word", "region")))
    folder = store.spill_dir
    assert folder.exists() and store.spilled_count == 1
    assert store[0].shape == {"word": 2, "region": 3}
    store.close()
    assert not folder.exists()


def test_spilled_bfloat16_roundtrip_npz(tmp_path):
    w = torch.rand(2, 3).to(torch.bfloat16)
    store = MapStore(memory_budget=0, spill_dir=tmp_path, fmt="npz")
    store.append(AttentionMap(w, ("word", "region")))
    back = store[0].weights
    assert back.dtype == torch.bfloat16 and torch.equal(back, w)


def test_store_rejects_bad_options():
    with pytest.raises(CaptureError, match="spill format"):
        MapStore(fmt="pickle")
    with pytest.raises(CaptureError, match="memory_budget"):
        MapStore(memory_budget=-1)


def test_grad_mode_keeps_maps_in_the_graph():
    from attnlens.models import CrossAttention

    torch.manual_seed(0)
    attn = CrossAttention("general", 8)
    words, regions = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    with attnlens.capture(attn, grad=True) as rec:
        out = attn(words, regions)
    weights = rec.maps[0].weights
    assert weights.requires_grad and weights is out.weights
    (grad,) = torch.autograd.grad(out.context.sum(), [weights])
    # context = weights @ values (values = regions): d sum(context) / d w[b, q, k] = sum(values[b, k])
    expected = regions.sum(-1)[:, None, :].expand(-1, 3, -1)
    assert torch.allclose(grad, expected, atol=1e-6)
    with attnlens.capture(attn) as rec:
        attn(words, regions)
    assert not rec.maps[0].weights.requires_grad


def test_grad_mode_refuses_a_memory_budget():
    from attnlens.models import CrossAttention

    with pytest.raises(attnlens.errors.CaptureError, match="memory_budget"):
        attnlens.capture(CrossAttention("dot", 4), grad=True, memory_budget=10)
