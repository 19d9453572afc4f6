"""SCAN similarity, loss and recall metrics against slow references and known answers."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from attnlens import align
from attnlens.errors import DTypeError, NonFiniteError, ShapeError, UnknownNameError
from attnlens.models.retrieval import coco_1k, contrastive_loss, ranks, recall_metrics
from attnlens.models.scan import ScanSimilarity, similarity
from reference_impl import contrastive_loss_loop, l2norm, xattn_score_i2t, xattn_score_t2i

NORMS = ["clipped_l2norm", "l2norm", "softmax", "clipped", "no_norm", "l1norm", "clipped_l1norm"]
AGGS = ["mean", "lse", "max", "sum"]


def _data(ni=5, r=7, nc=9, L=6, d=16, dtype=torch.float64, seed=0, unit=True):
    g = torch.Generator().manual_seed(seed)
    ims = torch.randn(ni, r, d, generator=g, dtype=dtype)
    caps = torch.randn(nc, L, d, generator=g, dtype=dtype)
    lengths = torch.randint(1, L + 1, (nc,), generator=g)
    lengths[0], lengths[-1] = L, 1                           # unsorted, with a one-word caption
    if unit:
        ims, caps = l2norm(ims, -1), l2norm(caps, -1)
    return ims, caps, lengths


def _reference(ims, caps, lengths, direction, **kw):
    fn = xattn_score_t2i if direction == "t2i" else xattn_score_i2t
    defaults = {"t2i": (9.0, 6.0), "i2t": (4.0, 5.0)}[direction]
    kw.setdefault("lambda_softmax", defaults[0])
    kw.setdefault("lambda_lse", defaults[1])
    return fn(ims, caps, lengths, **kw)


CASES = [(n, a) for n in NORMS for a in ("mean", "lse")] + [("clipped_l2norm", "max"), ("clipped_l2norm", "sum"),
                                                          ("softmax", "max"), ("no_norm", "sum")]


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("norm,agg", CASES)
def test_matches_per_caption_reference_float64(direction, agg, norm):
    ims, caps, lengths = _data()
    S = similarity(ims, caps, lengths, direction=direction, agg=agg, norm=norm)
    ref = _reference(ims, caps, lengths, direction, norm=norm, agg=agg)
    assert S.dtype == torch.float64 and S.shape == (5, 9)
    assert torch.allclose(S, ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("agg", ["mean", "lse"])
def test_matches_reference_float32(direction, agg):
    ims, caps, lengths = _data(dtype=torch.float32, d=64, seed=1)
    S = similarity(ims, caps, lengths, direction=direction, agg=agg)
    assert S.dtype == torch.float32
    ref = _reference(ims.double(), caps.double(), lengths, direction, agg=agg)
    assert torch.allclose(S.double(), ref, rtol=0, atol=1e-5)
    ref32 = _reference(ims, caps, lengths, direction, agg=agg)
    assert torch.allclose(S, ref32, rtol=0, atol=1e-5)


def test_non_unit_features_and_custom_lambdas():
    ims, caps, lengths = _data(unit=False, seed=2)
    for direction in ("t2i", "i2t"):
        S = similarity(ims, caps, lengths, direction=direction, agg="lse", lambda_softmax=3.0, lambda_lse=20.0)
        ref = _reference(ims, caps, lengths, direction, agg="lse", lambda_softmax=3.0, lambda_lse=20.0)
        assert torch.allclose(S, ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_chunked_equals_unchunked_bit_for_bit(direction):
    # 11 images x 37 captions spans several fixed GEMM tiles (8 x 32)
    ims, caps, lengths = _data(ni=11, nc=37, seed=3)
    full = similarity(ims, caps, lengths, direction=direction, agg="lse", chunk_size=(100, 100))
    for chunk in [(2, 3), (11, 1), (1, 37), (5, 16), (8, 32), (3, 33)]:
        assert torch.equal(similarity(ims, caps, lengths, direction=direction, agg="lse", chunk_size=chunk), full)
    # pair by pair (1 x 1 chunks, and the memory bound forcing them) across tile boundaries
    for sub in ((slice(0, 10), slice(0, 3)), (slice(0, 2), slice(0, 34))):
        part = similarity(ims[sub[0]], caps[sub[1]], lengths[sub[1]], direction=direction, agg="lse")
        one = similarity(ims[sub[0]], caps[sub[1]], lengths[sub[1]], direction=direction, agg="lse", chunk_size=1)
        assert torch.equal(one, part)
    tiny = ScanSimilarity(direction, "lse", max_chunk_bytes=1)(ims[:9], caps[:3], lengths[:3])
    assert torch.equal(tiny, similarity(ims[:9], caps[:3], lengths[:3], direction=direction, agg="lse"))


def test_pair_by_pair_agrees_with_all_pairs():
    ims, caps, lengths = _data(ni=3, nc=4, seed=4)
    S = similarity(ims, caps, lengths)
    for i in range(3):
        for c in range(4):
            s = similarity(ims[i:i + 1], caps[c:c + 1], lengths[c:c + 1])
            assert torch.allclose(s[0, 0], S[i, c], rtol=0, atol=1e-14)


def test_one_image_one_word():
    ims, caps, lengths = _data(ni=1, nc=1, L=1)
    for direction in ("t2i", "i2t"):
        S = similarity(ims, caps, lengths, direction=direction, agg="lse")
        assert S.shape == (1, 1)
        assert torch.allclose(S, _reference(ims, caps, lengths, direction, agg="lse"), atol=1e-12)
    # one word: the attended vector is the word's best-weighted region mix; i2t attends to the word itself
    S = similarity(ims, caps, lengths, direction="i2t", agg="mean")
    assert torch.allclose(S, (ims[0] @ caps[0, 0]).mean().reshape(1, 1), atol=1e-12)


@pytest.mark.parametrize("name,opts", [("general", {}), ("general", {"orientation": "kWq"}),
                                       ("biased_general", {}), ("activated_general", {"activation": "relu"})])
def test_identity_general_equals_dot_in_scan(name, opts):
    ims, caps, lengths = _data(unit=False)
    dot = similarity(ims, caps, lengths)
    fn = align.create(name, 16, init="identity", **opts).double()
    if name == "activated_general":   # relu(s) != s: compare with the reference using the same function
        ref = _reference(ims, caps, lengths, "t2i", score_fn=fn)
        assert torch.allclose(similarity(ims, caps, lengths, alignment=fn), ref, atol=1e-9)
    else:
        assert torch.equal(similarity(ims, caps, lengths, alignment=fn), dot)


def test_dot_scaled_dot_cosine_coincide_under_clipped_l2norm():
    """Why: clipped_l2norm = LeakyReLU then division by the norm over the words. LeakyReLU is
    positively homogeneous, so scaled_dot's constant 1/sqrt(d) cancels in that division (up to
    the 1e-8 eps added to the norm); on l2-normalised features cosine = dot exactly up to the
    1e-8 clamp. The relevance cosine uses the raw vectors in all three cases. The eps matters
    where a region's scores over the words are tiny (one-word captions), hence the looser bound
    for scaled_dot."""
    ims, caps, lengths = _data()
    dot = similarity(ims, caps, lengths)
    assert torch.allclose(similarity(ims, caps, lengths, alignment="cosine"), dot, rtol=0, atol=1e-9)
    assert torch.allclose(similarity(ims, caps, lengths, alignment="scaled_dot"), dot, rtol=0, atol=1e-3)
    long = lengths.clamp(min=4)                      # no near-zero word norms: eps effect ~1e-7
    assert torch.allclose(similarity(ims, caps, long, alignment="scaled_dot"), similarity(ims, caps, long),
                          rtol=0, atol=1e-6)
    # without a scale-invariant norm they differ: the comparison is meaningful only under clipped_l2norm
    a = similarity(ims, caps, lengths, norm="clipped")
    b = similarity(ims, caps, lengths, norm="clipped", alignment="scaled_dot")
    assert not torch.allclose(a, b, atol=1e-2)


def test_general_alignment_matches_reference_with_same_scores():
    ims, caps, lengths = _data(unit=False)
    torch.manual_seed(0)
    fn = align.create("biased_general", 16).double()
    for direction in ("t2i", "i2t"):
        S = similarity(ims, caps, lengths, direction=direction, alignment=fn)
        ref = _reference(ims, caps, lengths, direction, score_fn=fn)
        assert torch.allclose(S, ref, atol=1e-9)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_attention_is_captured_with_named_axes(direction):
    ims, caps, lengths = _data(ni=3, nc=5)
    sim = ScanSimilarity(direction, "mean", chunk_size=(2, 3))
    records = []
    handle = sim.attn.probe.register_forward_hook(lambda m, a, out: records.append(out))
    try:
        sim(ims, caps, lengths)
    finally:
        handle.remove()
    assert len(records) == 4
    offsets = sorted((r.meta["image_offset"], r.meta["caption_offset"]) for r in records)
    assert offsets == [(0, 0), (0, 3), (2, 0), (2, 3)]
    expected = ("image", "caption", "word", "region") if direction == "t2i" else ("image", "caption", "region", "word")
    for rec in records:
        assert rec.dims == expected
        w, c0 = rec.weights, rec.meta["caption_offset"]
        wmask = torch.arange(6)[None] < lengths[c0:c0 + w.shape[1], None]
        if direction == "t2i":
            assert torch.allclose(w.sum(-1)[:, wmask], torch.ones(1, dtype=w.dtype))
            assert (w[:, ~wmask] == 0).all()
        else:
            assert torch.allclose(w.sum(-1), torch.ones(1, dtype=w.dtype))
            assert (w.permute(0, 1, 3, 2)[:, ~wmask] == 0).all()


def test_image_mask_equals_truncated_images():
    ims, caps, lengths = _data(ni=1)
    mask = torch.zeros(1, 7, dtype=torch.bool)
    mask[0, :4] = True
    junk = ims.clone()
    junk[0, 4:] = float("nan")                       # padding may hold anything
    for direction in ("t2i", "i2t"):
        S = similarity(junk, caps, lengths, direction=direction, image_mask=mask)
        ref = _reference(ims[:, :4], caps, lengths, direction)
        assert torch.allclose(S, ref, atol=1e-12)


def test_gradients_flow_and_match_reference():
    ims, caps, lengths = _data(ni=2, nc=3)
    a, b = ims.clone().requires_grad_(), caps.clone().requires_grad_()
    similarity(a, b, lengths, agg="lse", chunk_size=1).sum().backward()
    a2, b2 = ims.clone().requires_grad_(), caps.clone().requires_grad_()
    _reference(a2, b2, lengths, "t2i", agg="lse").sum().backward()
    assert torch.allclose(a.grad, a2.grad, atol=1e-9) and torch.allclose(b.grad, b2.grad, atol=1e-9)


def test_bad_inputs_raise_typed_errors_naming_shapes():
    ims, caps, lengths = _data()
    with pytest.raises(ShapeError, match=r"\(5, 7, 16\).*\(9, 6, 8\)"):
        similarity(ims, caps[..., :8], lengths)
    with pytest.raises(ShapeError, match="padded length"):
        similarity(ims, caps, lengths + 1)
    with pytest.raises(ShapeError, match="zero-length"):
        similarity(ims, caps, lengths * 0)
    with pytest.raises(ShapeError, match=r"\[Nc\]"):
        similarity(ims, caps, lengths[:3])
    with pytest.raises(DTypeError, match="float32"):
        similarity(ims, caps.float(), lengths)
    with pytest.raises(DTypeError):
        similarity(ims, caps, lengths.double() + 0.5)
    with pytest.raises(ShapeError):
        similarity(ims[0], caps, lengths)
    bad = ims.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(NonFiniteError):
        similarity(bad, caps, lengths)
    bad = caps.clone()
    bad[0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteError):
        similarity(ims, bad, lengths)
    bad = caps.clone()
    bad[-1, 3] = float("nan")                        # padding of the one-word caption: allowed
    assert torch.allclose(similarity(ims, bad, lengths), similarity(ims, caps, lengths))
    with pytest.raises(UnknownNameError):
        similarity(ims, caps, lengths, agg="median")
    with pytest.raises(UnknownNameError):
        similarity(ims, caps, lengths, direction="both")
    with pytest.raises(ShapeError):
        ScanSimilarity("t2i", alignment="general")   # needs dim


@settings(max_examples=10, deadline=None)
@given(ni=st.integers(1, 4), nc=st.integers(1, 5), r=st.integers(1, 5), L=st.integers(1, 5),
       direction=st.sampled_from(["t2i", "i2t"]), agg=st.sampled_from(AGGS), seed=st.integers(0, 1000))
def test_random_shapes_match_reference(ni, nc, r, L, direction, agg, seed):
    g = torch.Generator().manual_seed(seed)
    ims = l2norm(torch.randn(ni, r, 8, generator=g, dtype=torch.float64), -1)
    caps = l2norm(torch.randn(nc, L, 8, generator=g, dtype=torch.float64), -1)
    lengths = torch.randint(1, L + 1, (nc,), generator=g)
    S = similarity(ims, caps, lengths, direction=direction, agg=agg, chunk_size=(2, 2))
    assert torch.allclose(S, _reference(ims, caps, lengths, direction, agg=agg), rtol=0, atol=1e-9)


# ------------------------------------------------------------------------- loss and metrics
@pytest.mark.parametrize("max_violation", [False, True])
def test_contrastive_loss_matches_loop(max_violation):
    g = torch.Generator().manual_seed(0)
    S = torch.randn(6, 6, generator=g, dtype=torch.float64)
    got = contrastive_loss(S, margin=0.2, max_violation=max_violation)
    assert abs(got.item() - contrastive_loss_loop(S, 0.2, max_violation)) < 1e-12


def test_contrastive_loss_known_answer_and_errors():
    S = torch.tensor([[1.0, 0.9, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 1.0]])
    # caption costs: row 0: 0.2 + 0.9 - 1 = 0.1; image costs: column 1: 0.1; column 0: 0.2+0.5-1<0
    assert torch.isclose(contrastive_loss(S), torch.tensor(0.2))
    assert torch.isclose(contrastive_loss(S, max_violation=True), torch.tensor(0.2))
    with pytest.raises(ShapeError):
        contrastive_loss(torch.zeros(2, 3))


def test_recall_metrics_known_ranks():
    # 2 images, 5 captions each; image 0's best own caption ranks 0; image 1's best ranks 2
    S = np.zeros((2, 10))
    S[0] = [9, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    S[1] = [8, 7, 0, 0, 0, 6, 5, 5, 5, 5]
    i2t, t2i = ranks(S)
    assert i2t.tolist() == [0, 2]
    # caption 0: image 0 scores 9 > 8 -> rank 0; caption 1: 1 < 7 -> rank 1; captions 2-4: tie 1 vs 0 -> 0
    # captions 5-9 (image 1): 6/5 > 0 -> rank 0
    assert t2i.tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    m = recall_metrics(S)
    assert m["i2t_r1"] == 50.0 and m["i2t_r5"] == 100.0 and m["i2t_medr"] == 2.0 and m["i2t_meanr"] == 2.0
    assert m["t2i_r1"] == 90.0 and m["t2i_r5"] == 100.0 and m["t2i_meanr"] == 1.1
    assert m["rsum"] == 50 + 100 + 100 + 90 + 100 + 100


def test_ties_count_against_the_positive():
    m = recall_metrics(np.zeros((3, 15)))
    assert m["i2t_r1"] == 0.0 and m["t2i_r1"] == 0.0


def test_coco_1k_is_mean_over_folds():
    g = np.random.default_rng(0)
    S = g.normal(size=(10, 50))
    folds = [recall_metrics(S[f * 2:(f + 1) * 2, f * 10:(f + 1) * 10]) for f in range(5)]
    got = coco_1k(S, folds=5)
    assert got["rsum"] == pytest.approx(np.mean([f["rsum"] for f in folds]))
    with pytest.raises(ShapeError):
        coco_1k(S[:9, :45], folds=5)
    with pytest.raises(ShapeError):
        recall_metrics(S[:, :49])
