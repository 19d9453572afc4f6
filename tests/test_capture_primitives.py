"""attnlens.capture on torch's attention primitives: nn.MultiheadAttention, nn.Transformer*Layer
(fast path included) and F.scaled_dot_product_attention inside any module.

Captured weights are compared with the slow references of ``reference_attention`` (explicit
projections, loops over batch and heads); outputs with the same call made without a capture.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.functional import scaled_dot_product_attention as aliased_sdpa

import attnlens
import reference_attention as ref
from attnlens.capture import dispatch
from attnlens.capture.primitives import mha_site
from attnlens.capture.sdpa import SDPA, sdpa_site
from attnlens.errors import CaptureError
from test_capture import global_hooks, hooks_left

ATOL = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")


def no_leftovers(model):
    assert not hooks_left(model), hooks_left(model)
    assert not dispatch.installed()
    assert torch._C._len_torch_function_stack() == 0
    assert F.scaled_dot_product_attention is SDPA and torch.nn.functional.scaled_dot_product_attention is SDPA


class Holder(nn.Module):
    """A model holding one MHA, called with the options under test."""

    def __init__(self, mha, **call):
        super().__init__()
        self.attn, self.call = mha, call

    def forward(self, q, k, v):
        return self.attn(q, k, v, **self.call)


def mha_case(batch_first, kdim=None, bias_kv=False, zero_attn=False, seed=0):
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim, add_bias_kv=bias_kv,
                                add_zero_attn=zero_attn)
    with torch.no_grad():
        mha.in_proj_bias.normal_() if mha.in_proj_bias is not None else None
        mha.out_proj.bias.normal_()
    B, L, S, kd = 2, 3, 4, kdim or 8
    shape = (lambda n, d: (B, n, d)) if batch_first else (lambda n, d: (n, B, d))
    q = torch.randn(*shape(L, 8))
    k = torch.randn(*shape(S, kd))
    return mha, q, k, torch.randn(*shape(S, kd))


MASKS = {
    "none": lambda B, H, L, S: {},
    "bool_attn": lambda B, H, L, S: {"attn_mask": torch.tensor([[False, True, False, True]] * L)},
    "float_attn_3d": lambda B, H, L, S: {"attn_mask": torch.randn(B * H, L, S)},
    "key_padding": lambda B, H, L, S: {"key_padding_mask": torch.tensor([[False] * S, [False, False, True, True]])},
    "float_both": lambda B, H, L, S: {"key_padding_mask": torch.tensor([[0.0] * S, [0.0, -1.5, float("-inf"), 0.5]]),
                                      "attn_mask": torch.randn(L, S)},
}


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("asked", [dict(need_weights=False), dict(), dict(average_attn_weights=False)])
def test_mha_weights_match_the_equations_and_outputs_are_unchanged(batch_first, mask, asked):
    mha, q, k, v = mha_case(batch_first)
    masks = MASKS[mask](2, 2, 3, 4)
    model = Holder(mha, **masks, **asked)
    expected = model(q, k, v)
    with attnlens.capture(model) as rec:
        got = model(q, k, v)
    assert torch.equal(got[0], expected[0])  # bitwise: the call itself is untouched
    assert (got[1] is None) == (expected[1] is None) and (got[1] is None or torch.equal(got[1], expected[1]))
    (amap,) = rec.maps
    assert amap.site == "attn" and amap.dims == ("batch", "head", "query", "key")
    assert amap.query.modality == "unknown" and amap.key.modality == "unknown"
    assert amap.meta["method"] == ("returned" if asked.get("average_attn_weights") is False else "recomputed")
    want = ref.mha_weights(mha, q, k, v, masks.get("key_padding_mask"), masks.get("attn_mask"))
    torch.testing.assert_close(amap.weights, want, atol=ATOL, rtol=0)
    no_leftovers(model)


@pytest.mark.parametrize("kdim, bias_kv, zero_attn", [(5, False, False), (8, True, False), (8, False, True),
                                                      (5, True, True)])
def test_mha_separate_projections_bias_kv_and_zero_attn(kdim, bias_kv, zero_attn):
    mha, q, k, v = mha_case(True, kdim=kdim, bias_kv=bias_kv, zero_attn=zero_attn)
    pad = torch.tensor([[False] * 4, [False, True, False, True]])
    model = Holder(mha, key_padding_mask=pad, need_weights=False)
    expected = model(q, k, v)[0]
    with attnlens.capture(model) as rec:
        got = model(q, k, v)[0]
    assert torch.equal(got, expected)
    w = rec.maps[0].weights
    assert w.shape[-1] == 4 + bias_kv + zero_attn
    assert rec.maps[0].meta.get("appended_keys", []) == ["bias_k"] * bias_kv + ["zero_attn"] * zero_attn
    torch.testing.assert_close(w, ref.mha_weights(mha, q, k, v, pad), atol=ATOL, rtol=0)
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), atol=ATOL, rtol=0)


def test_mha_unbatched_and_causal_calls():
    mha, q, k, v = mha_case(False)
    x = q[:, 0]  # unbatched [L, E]
    causal = nn.Transformer.generate_square_subsequent_mask(3)
    model = Holder(mha, attn_mask=causal, is_causal=True, need_weights=False)
    expected = model(x, x, x)[0]
    with attnlens.capture(model) as rec:
        got = model(x, x, x)[0]
    assert torch.equal(got, expected)
    w = rec.maps[0].weights
    assert w.shape == (1, 2, 3, 3) and torch.all(w.triu(1) == 0)
    torch.testing.assert_close(w, ref.mha_weights(mha, x, x, x, None, causal), atol=ATOL, rtol=0)


def test_mha_native_fast_path_is_kept():
    """eval + no_grad + batch_first self-attention runs torch's native MHA kernel; still captured."""
    mha, q, _, _ = mha_case(True)
    mha.eval()
    model = Holder(mha, need_weights=False)
    with torch.no_grad():
        expected = model(q, q, q)[0]
        with attnlens.capture(model, sites="attn") as rec:
            got = model(q, q, q)[0]
    assert torch.equal(got, expected)
    torch.testing.assert_close(rec.maps[0].weights, ref.mha_weights(mha, q, q, q), atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- transformer layers
def encoder(norm_first=False, seed=0, layers=2):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True, norm_first=norm_first)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=not norm_first).eval()


def layer_inputs(enc, src, **kw):
    """The input of each encoder layer, from a plain (slow-path) run."""
    seen = []
    handles = [lay.register_forward_pre_hook(lambda m, a, kws: seen.append(a[0] if a else kws["src"]),
                                             with_kwargs=True) for lay in enc.layers]
    torch.backends.mha.set_fastpath_enabled(False)  # no packing into nested tensors
    try:
        with torch.no_grad():
            enc(src, **kw)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("padding", [False, True])
def test_encoder_fast_path_is_captured_and_untouched(norm_first, padding):
    enc = encoder(norm_first)
    src = torch.randn(2, 5, 8)
    kw = {"src_key_padding_mask": torch.tensor([[False] * 5, [False] * 3 + [True] * 2])} if padding else {}
    with torch.no_grad():
        expected = enc(src, **kw)
        with attnlens.capture(enc) as rec:
            got = enc(src, **kw)
    assert torch.equal(got, expected)  # bitwise: the fused kernel still ran
    assert rec.sites == ["layers.0.self_attn", "layers.1.self_attn"]
    assert [m.meta["method"] for m in rec.maps] == ["fast-path-recomputed"] * 2
    assert [m.layer for m in rec.maps] == [0, 1] and all(m.meta["attention"] == "self" for m in rec.maps)
    inputs = layer_inputs(enc, src, **kw)
    valid = torch.ones(2, 5, dtype=torch.bool) if not padding else ~kw["src_key_padding_mask"]
    for lay, x, amap in zip(enc.layers, inputs, rec.maps):
        a = lay.norm1(x) if norm_first else x
        want = ref.mha_weights(lay.self_attn, a, a, a, kw.get("src_key_padding_mask"))
        assert amap.weights.shape == want.shape == (2, 2, 5, 5)
        rows = valid[:, None, :, None]  # padded queries: zero rows in the packed (nested) fast path
        torch.testing.assert_close(amap.weights * rows, want * rows, atol=ATOL, rtol=0)
        if padding and not norm_first:
            assert torch.all(amap.weights[1, :, 3:] == 0) and torch.all(amap.weights[1, :, :, 3:] == 0)
    no_leftovers(enc)


def test_encoder_layer_alone_fast_path_with_mask():
    torch.manual_seed(1)
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True).eval()
    src, mask = torch.randn(2, 4, 8), torch.tensor([[False, True, False, False]] * 4)
    with torch.no_grad():
        expected = layer(src, src_mask=mask)
        with attnlens.capture(layer, sites="self_attn") as rec:
            got = layer(src, src_mask=mask)
    assert torch.equal(got, expected) and rec.maps[0].meta["method"] == "fast-path-recomputed"
    torch.testing.assert_close(rec.maps[0].weights, ref.mha_weights(layer.self_attn, src, src, src, None, mask),
                               atol=ATOL, rtol=0)
    assert rec.maps[0].meta["forward_index"] == 0
    no_leftovers(layer)


def test_decoder_self_and_cross_attention():
    torch.manual_seed(2)
    dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(8, 2, 16, batch_first=True), 2).eval()
    tgt, memory = torch.randn(2, 4, 8), torch.randn(2, 6, 8)
    causal = nn.Transformer.generate_square_subsequent_mask(4)
    mpad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    kw = dict(tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=mpad)
    with torch.no_grad():
        expected = dec(tgt, memory, **kw)
        with attnlens.capture(dec) as rec:
            got = dec(tgt, memory, **kw)
    assert torch.equal(got, expected)
    assert rec.sites == ["layers.0.self_attn", "layers.0.multihead_attn", "layers.1.self_attn",
                         "layers.1.multihead_attn"]
    assert [m.meta["attention"] for m in rec.maps] == ["self", "cross"] * 2
    # layer 0: self-attention of tgt; cross attention of norm1(tgt + sa) over memory
    lay = dec.layers[0]
    torch.testing.assert_close(rec.maps[0].weights, ref.mha_weights(lay.self_attn, tgt, tgt, tgt, None, causal),
                               atol=ATOL, rtol=0)
    with torch.no_grad():
        x = lay.norm1(tgt + lay._sa_block(tgt, causal, None, True))
    torch.testing.assert_close(rec.maps[1].weights, ref.mha_weights(lay.multihead_attn, x, memory, memory, mpad),
                               atol=ATOL, rtol=0)
    assert rec.maps[1].shape == {"batch": 2, "head": 2, "query": 4, "key": 6}
    no_leftovers(dec)


def test_site_selection_by_path_layers_and_factory_modalities():
    enc = encoder()
    src = torch.randn(1, 3, 8)
    with torch.no_grad(), attnlens.capture(enc, sites="layers.1.self_attn") as rec:
        enc(src)
    assert [m.site for m in rec.maps] == ["layers.1.self_attn"] and rec.maps[0].layer == 1
    with torch.no_grad(), attnlens.capture(enc, layers=[0]) as rec:
        enc(src)
    assert [m.layer for m in rec.maps] == [0]
    tap = mha_site(enc, "layers.0.self_attn", query_modality="image", key_modality="image", direction="i2i")
    with torch.no_grad(), attnlens.capture(enc, tap, heads=[1], queries=[0]) as rec:
        enc(src)
    amap = rec.maps[0]
    assert (amap.query.modality, amap.key.modality, amap.direction) == ("image", "image", "i2i")
    assert amap.shape == {"batch": 1, "head": 1, "query": 1, "key": 3}
    with pytest.raises(CaptureError, match="not an nn.MultiheadAttention"):
        mha_site(enc, "layers.0.linear1")
    with torch.no_grad(), attnlens.capture(enc, "layers.0.self_attn", tokens="a red dog") as rec:
        enc(src)  # unknown-modality sides take the tokens they fit
    assert rec.maps[0].sel(query="red").shape == {"batch": 1, "head": 2, "key": 3}


# --------------------------------------------------------------------------- scaled_dot_product_attention
class SdpaAttn(nn.Module):
    """Hand-written attention: projections, then F.scaled_dot_product_attention."""

    def __init__(self, d=8, heads=4, kv_heads=None, alias=False):
        super().__init__()
        self.heads, self.kv_heads, self.alias = heads, kv_heads or heads, alias
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * (d // heads) * self.kv_heads)
        self.out = nn.Linear(d, d)
        self.options: dict = {}

    def qkv(self, x):
        B, T, d = x.shape
        q = self.q(x).view(B, T, self.heads, d // self.heads).transpose(1, 2)
        k, v = self.kv(x).view(B, T, 2, self.kv_heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x):
        q, k, v = self.qkv(x)
        fn = aliased_sdpa if self.alias else F.scaled_dot_product_attention
        y = fn(q, k, v, **self.options)
        return self.out(y.transpose(1, 2).flatten(2))


class Block(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.attn = SdpaAttn(**kw)
        self.mlp = nn.Linear(8, 8)

    def forward(self, x):
        return self.mlp(x + self.attn(x))


class Net(nn.Module):
    def __init__(self, n=2, **kw):
        super().__init__()
        self.blocks = nn.ModuleList(Block(**kw) for _ in range(n))

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


T = 5
SDPA_CASES = {
    "plain": (dict(), dict()),
    "causal": (dict(), dict(is_causal=True)),
    "bool_mask": (dict(), dict(attn_mask=torch.rand(T, T, generator=torch.Generator().manual_seed(3)) > 0.3)),
    "float_mask_scale": (dict(), dict(attn_mask=torch.randn(2, 1, T, T), scale=0.7)),
    "gqa": (dict(heads=4, kv_heads=2), dict(enable_gqa=True, is_causal=True)),
    "alias_dropout": (dict(alias=True), dict(dropout_p=0.0, attn_mask=torch.tensor([[True] * (T - 1) + [False]]))),
}


@pytest.mark.parametrize("case", list(SDPA_CASES))
def test_sdpa_weights_match_the_equations_and_outputs_are_unchanged(case):
    init, options = SDPA_CASES[case]
    torch.manual_seed(4)
    net = Net(**init)
    for b in net.blocks:
        b.attn.options = options
    x = torch.randn(2, T, 8)
    expected = net(x)
    with attnlens.capture(net) as rec:
        got = net(x)
    assert torch.equal(got, expected)
    assert rec.sites == ["blocks.0.attn", "blocks.1.attn"] and [m.layer for m in rec.maps] == [0, 1]
    h = x
    for blk, amap in zip(net.blocks, rec.maps):
        with torch.no_grad():
            q, k, _ = blk.attn.qkv(h)
        want = ref.sdpa_weights(q, k, options.get("attn_mask"), options.get("is_causal", False),
                                options.get("scale"), options.get("enable_gqa", False))
        assert amap.meta["method"] == "sdpa" and amap.dims == ("batch", "head", "query", "key")
        torch.testing.assert_close(amap.weights, want, atol=ATOL, rtol=0)
        with torch.no_grad():
            h = blk(h)
    no_leftovers(net)


def test_sdpa_call_is_recorded_under_the_innermost_module():
    class Outer(nn.Module):  # calls SDPA itself and through a child
        def __init__(self):
            super().__init__()
            self.inner = SdpaAttn()

        def forward(self, x):
            q = x[:, None]
            return F.scaled_dot_product_attention(q, q, q)[:, 0] + self.inner(x)

    net = nn.Sequential(Outer())
    x = torch.randn(1, 3, 8)
    with attnlens.capture(net) as rec:
        net(x)
    assert [m.site for m in rec.maps] == ["0", "0.inner"]
    assert rec.maps[0].shape == {"batch": 1, "head": 1, "query": 3, "key": 3}
    with attnlens.capture(net, sites="0.inner") as rec:
        net(x)
    assert [m.site for m in rec.maps] == ["0.inner"]


def test_module_hidden_from_the_scan_is_captured_by_path():
    class Hidden(nn.Module):
        def __init__(self):
            super().__init__()
            self.fn = getattr(F, "scaled_dot_product_" + "attention")

        def forward(self, x):
            q = x[:, None]
            return self.fn(q, q, q, is_causal=True)

    net = nn.Sequential(nn.Linear(4, 4), Hidden())
    with pytest.raises(CaptureError, match="has no capture site"):
        attnlens.capture(net)
    x = torch.randn(2, 3, 4)
    with attnlens.capture(net, sites="1") as rec:
        net(x)
    assert rec.maps[0].site == "1" and torch.all(rec.maps[0].weights.triu(1) == 0)
    with pytest.raises(CaptureError, match="never produced attention.*own forward"):  # makes no SDPA call
        with attnlens.capture(net, sites="0"):
            net(x)
    no_leftovers(net)


def test_sdpa_site_factory_and_root_module():
    attn = SdpaAttn()
    x = torch.randn(1, 4, 8)
    with attnlens.capture(attn) as rec:  # the model itself calls SDPA
        attn(x)
    assert rec.sites == ["SdpaAttn"] and rec.maps[0].layer is None
    tap = sdpa_site(attn, "", query_modality="text", key_modality="image", direction="t2i")
    with attnlens.capture(attn, tap, tokens=["a", "b", "c", "d"]) as rec:
        attn(x)
    amap = rec.maps[0]
    assert amap.query.tokens == ("a", "b", "c", "d") and amap.key.modality == "image" and amap.direction == "t2i"


# --------------------------------------------------------------------------- grad mode
def test_grad_mode_mha_weights_are_the_forward_s_own():
    mha, q, k, v = mha_case(True, seed=5)
    pad = torch.tensor([[False] * 4, [False, False, True, False]])
    for asked in (dict(need_weights=False), dict(), dict(average_attn_weights=False)):
        model = Holder(mha, key_padding_mask=pad, **asked)
        expected = model(q, k, v)
        with attnlens.capture(model, grad=True) as rec:
            out, returned = model(q, k, v)
        w = rec.maps[0].weights
        assert w.requires_grad and w.shape == (2, 2, 3, 4)
        torch.testing.assert_close(out, expected[0], atol=1e-6, rtol=1e-5)  # explicit path vs fused
        if asked.get("need_weights", True) is False:
            assert returned is None
        elif asked.get("average_attn_weights", True):
            assert torch.equal(returned, w.mean(dim=1))
            torch.testing.assert_close(returned, expected[1], atol=1e-6, rtol=1e-5)
        else:
            assert returned is w
        r = torch.randn_like(out)
        (g,) = torch.autograd.grad((out * r).sum(), [w])
        leaf = w.detach().clone().requires_grad_()
        (g_ref,) = torch.autograd.grad((ref.mha_output_from_weights(mha, leaf, q, k, v) * r).sum(), [leaf])
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)
    no_leftovers(model)


@pytest.mark.parametrize("init, options", [(dict(heads=2), dict(is_causal=True)),
                                           (dict(heads=4, kv_heads=2), dict(enable_gqa=True, scale=0.3))])
def test_grad_mode_sdpa_weights_are_in_the_graph(init, options):
    torch.manual_seed(6)
    net = Net(n=1, **init)
    net.blocks[0].attn.options = options
    x = torch.randn(2, T, 8)
    expected = net(x)
    with attnlens.capture(net, grad=True) as rec:
        out = net(x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    w = rec.maps[0].weights
    assert w.requires_grad
    (g,) = torch.autograd.grad(out.sum(), [w])
    attn = net.blocks[0].attn
    q, k, v = attn.qkv(x)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    torch.testing.assert_close(w, ref.sdpa_weights(q, k, None, options.get("is_causal", False), options.get("scale"),
                                                   options.get("enable_gqa", False)), atol=ATOL, rtol=0)
    leaf = w.detach().clone().requires_grad_()
    y = net.blocks[0].mlp(x + attn.out((leaf @ v).transpose(1, 2).flatten(2)))
    (g_ref,) = torch.autograd.grad(y.sum(), [leaf])
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-5)
    # finite differences through the model's parameters agree with autograd through the capture
    p = attn.q.bias
    (gp,) = torch.autograd.grad(net(x).sum(), [p])
    eps = 1e-3
    with torch.no_grad():
        p[0] += eps
        up = net(x).sum()
        p[0] -= 2 * eps
        down = net(x).sum()
        p[0] += eps
    assert abs(float((up - down) / (2 * eps)) - float(gp[0])) < 1e-2
    no_leftovers(net)


def test_grad_mode_encoder_layer_records_graph_weights():
    enc = encoder(layers=1)
    src = torch.randn(2, 4, 8)
    with attnlens.capture(enc, grad=True) as rec:
        out = enc(src)
    w = rec.maps[0].weights
    assert w.requires_grad and rec.maps[0].meta["method"] == "explicit"
    (g,) = torch.autograd.grad(out.sum(), [w])
    assert g.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(out, enc(src), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- nothing survives
class Boom(Exception):
    pass


def test_nothing_survives_exit_or_exception():
    enc, net = encoder(), Net()
    before = global_hooks()
    for grad in (False, True):
        for model, x in ((enc, torch.randn(1, 3, 8)), (net, torch.randn(1, 3, 8))):
            with attnlens.capture(model, grad=grad):
                model(x)
            no_leftovers(model)
            target = model.layers[0].linear1 if model is enc else model.blocks[0].attn.out
            handle = target.register_forward_hook(lambda *a: (_ for _ in ()).throw(Boom()))
            try:
                with pytest.raises(Boom):
                    with attnlens.capture(model, grad=grad):
                        model(x)
            finally:
                handle.remove()
            no_leftovers(model)
            with pytest.raises(KeyboardInterrupt):  # skips torch's always-call hooks
                with attnlens.capture(model, grad=grad):
                    h = target.register_forward_hook(lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
                    try:
                        model(x)
                    finally:
                        h.remove()
            no_leftovers(model)
    assert global_hooks() == before


@pytest.mark.parametrize("batch_first, kdim, bias_kv, zero_attn, mask", [
    (False, None, False, False, "float_attn_3d"), (True, 5, True, True, "key_padding"),
    (False, 5, False, True, "float_both"), (True, None, True, False, "bool_attn")])
def test_grad_mode_mha_matches_the_equations(batch_first, kdim, bias_kv, zero_attn, mask):
    mha, q, k, v = mha_case(batch_first, kdim=kdim, bias_kv=bias_kv, zero_attn=zero_attn, seed=7)
    masks = MASKS[mask](2, 2, 3, 4)
    model = Holder(mha, need_weights=False, **masks)
    expected = model(q, k, v)[0]
    with attnlens.capture(model, grad=True) as rec:
        out = model(q, k, v)[0]
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    w = rec.maps[0].weights
    torch.testing.assert_close(w, ref.mha_weights(mha, q, k, v, masks.get("key_padding_mask"), masks.get("attn_mask")),
                               atol=ATOL, rtol=0)
    r = torch.randn_like(out)
    (g,) = torch.autograd.grad((out * r).sum(), [w])
    leaf = w.detach().clone().requires_grad_()
    y = ref.mha_output_from_weights(mha, leaf, q, k, v)
    (g_ref,) = torch.autograd.grad((y * (r if batch_first else r.transpose(0, 1))).sum(), [leaf])
    torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)
