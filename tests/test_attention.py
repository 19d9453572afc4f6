"""CrossAttention: axes of normalisation and softmax, masks, probes, temperature and scaling."""
import pytest
import torch
import torch.nn.functional as F

from attnlens.errors import ShapeError, UnknownNameError
from attnlens.models.attention import NORMS, CrossAttention, l2norm, length_mask, normalize_scores


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, 8, generator=g, dtype=torch.float64),
            torch.randn(2, 6, 8, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("norm", NORMS)
def test_rows_sum_to_one_over_keys_and_padding_is_zero(norm):
    q, k = _data()
    qmask = length_mask(torch.tensor([4, 2]), 4)
    kmask = length_mask(torch.tensor([6, 3]), 6)
    out = CrossAttention("dot", 8, norm=norm)(q, k, query_mask=qmask, key_mask=kmask)
    w = out.weights
    assert torch.allclose(w.sum(-1)[qmask], torch.ones(6, dtype=w.dtype), atol=1e-12)
    assert (w[~qmask] == 0).all()
    assert (w.transpose(1, 2)[~kmask] == 0).all()
    assert (w >= 0).all()


def test_clipped_l2norm_normalises_over_the_query_axis():
    """SCAN t2i: for each region (key), the scores across the words (queries) are l2-normalised."""
    q, k = _data()
    attn = CrossAttention("dot", 8, norm="clipped_l2norm", temperature=9.0)
    w = attn(q, k).weights
    s = torch.bmm(q, k.transpose(1, 2))                       # [B, words, regions]
    s = F.leaky_relu(s, 0.1)
    s = s / (s.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-8)  # over words
    assert torch.allclose(w, torch.softmax(9.0 * s, dim=2), atol=1e-12)
    # the wrong axis gives a different answer (what Cao et al.'s variants got wrong)
    s_wrong = F.leaky_relu(torch.bmm(q, k.transpose(1, 2)), 0.1)
    s_wrong = s_wrong / (s_wrong.pow(2).sum(dim=2, keepdim=True).sqrt() + 1e-8)
    assert not torch.allclose(w, torch.softmax(9.0 * s_wrong, dim=2), atol=1e-3)


def test_l1_variants_divide_by_abs_sum():
    s = torch.tensor([[[1.0, -2.0], [3.0, 4.0]]], dtype=torch.float64)
    out = normalize_scores(s, "l1norm", dim=-2)
    assert torch.allclose(out, s / (s.abs().sum(-2, keepdim=True) + 1e-8))
    clipped = normalize_scores(s, "clipped_l1norm", dim=-2)
    c = F.leaky_relu(s, 0.1)
    assert torch.allclose(clipped, c / (c.abs().sum(-2, keepdim=True) + 1e-8))


def test_probe_sees_weights_scores_and_dims():
    q, k = _data()
    attn = CrossAttention("dot", 8, direction="t2i", query_dim="word", key_dim="region")
    seen = []
    handle = attn.probe.register_forward_hook(lambda mod, args, out: seen.append(out))
    try:
        out = attn(q, k)
    finally:
        handle.remove()
    assert len(seen) == 1
    rec = seen[0]
    assert rec.dims == ("batch", "word", "region")
    assert torch.equal(rec.weights, out.weights) and torch.equal(rec.scores, out.scores)
    assert rec.meta["direction"] == "t2i" and rec.meta["alignment"] == "dot"


def test_query_scale_temperature_and_normalized_context():
    q, k = _data()
    scale = torch.rand(2, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    temp = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], dtype=torch.float64)
    attn = CrossAttention("dot", 8, normalize_context=True)
    out = attn(q, k, query_scale=scale, temperature=temp)
    s = F.leaky_relu(torch.bmm(q * scale, k.transpose(1, 2)), 0.1)
    s = l2norm(s, dim=1)
    w = torch.softmax(s * temp[..., None], dim=2)
    assert torch.allclose(out.weights, w, atol=1e-12)
    assert torch.allclose(out.context, l2norm(torch.bmm(w, k), dim=-1), atol=1e-12)


def test_bad_names_and_lengths():
    with pytest.raises(UnknownNameError):
        CrossAttention("dot", 8, norm="l3norm")
    with pytest.raises(ShapeError):
        length_mask(torch.tensor([0, 2]), 4)
    with pytest.raises(ShapeError):
        length_mask(torch.tensor([5]), 4)
