"""Alignment registry: known answers (W = I, b = 0 gives dot), pairwise == batched, registry rules."""
import math

import pytest
import torch

from attnlens import align
from attnlens.errors import DTypeError, RegistryError, ShapeError, UnknownNameError

GENERAL = [("general", {}), ("general", {"orientation": "kWq"}), ("biased_general", {}),
           ("biased_general", {"orientation": "kWq"}), ("bilinear", {})]


def _qk(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 4, 6, generator=g, dtype=dtype), torch.randn(3, 5, 6, generator=g, dtype=dtype)


@pytest.mark.parametrize("name,opts", GENERAL)
def test_identity_general_equals_dot_exactly(name, opts):
    q, k = _qk()
    fn = align.create(name, 6, init="identity", **opts).double()
    dot = align.create("dot", 6)(q, k)
    assert torch.equal(fn(q, k), dot)
    assert torch.equal(fn.pairwise(q, k), align.create("dot", 6).pairwise(q, k))


def test_dot_is_query_key_product_known_answer():
    q = torch.tensor([[[1.0, 2.0]]])
    k = torch.tensor([[[3.0, 4.0], [0.0, 1.0]]])
    assert align.create("dot", 2)(q, k).tolist() == [[[11.0, 2.0]]]
    assert torch.allclose(align.create("scaled_dot", 2)(q, k), torch.tensor([[[11.0, 2.0]]]) / math.sqrt(2))
    cos = align.create("cosine", 2)(q, k)
    assert torch.allclose(cos, torch.tensor([[[11 / (5 * math.sqrt(5)), 2 / math.sqrt(5)]]]))


def test_activated_general_applies_activation_to_biased_score():
    q, k = _qk()
    fn = align.create("activated_general", 6, activation="relu", init="identity").double()
    with torch.no_grad():
        fn.linear.bias.fill_(0.5)
    expect = torch.relu(q @ (k + 0.5).transpose(1, 2))
    assert torch.allclose(fn(q, k), expect, atol=1e-12)


def test_general_orientation_axes():
    """qWk = q . (W k) and kWq = k . (W q): a non-symmetric W tells the axes apart."""
    q, k = _qk()
    W = torch.arange(36, dtype=torch.float64).reshape(6, 6) / 36
    a = align.create("general", 6).double()
    b = align.create("general", 6, orientation="kWq").double()
    with torch.no_grad():
        a.linear.weight.copy_(W)
        b.linear.weight.copy_(W)
    assert torch.allclose(a(q, k), torch.einsum("bqd,de,bke->bqk", q, W, k))
    assert torch.allclose(b(q, k), torch.einsum("bke,ed,bqd->bqk", k, W, q))
    assert a(q, k).shape == (3, 4, 5) and b(q, k).shape == (3, 4, 5)


@pytest.mark.parametrize("name", ["dot", "scaled_dot", "cosine", "general", "biased_general",
                                  "activated_general", "additive", "concat"])
def test_pairwise_equals_per_pair_calls(name):
    torch.manual_seed(1)
    fn = align.create(name, 6).double()
    q = torch.randn(2, 3, 6, dtype=torch.float64)
    k = torch.randn(4, 5, 6, dtype=torch.float64)
    P = fn.pairwise(q, k)
    assert P.shape == (2, 4, 3, 5)
    for i in range(2):
        for j in range(4):
            assert torch.allclose(P[i, j], fn(q[i:i + 1], k[j:j + 1])[0], atol=1e-12)


def test_cosine_equals_dot_on_unit_vectors():
    q, k = _qk()
    q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    assert torch.allclose(align.create("cosine", 6)(q, k), align.create("dot", 6)(q, k), atol=1e-12)


def test_registry_rules():
    assert {"dot", "scaled_dot", "cosine", "general", "biased_general", "activated_general", "additive",
            "concat"} <= set(align.available())
    assert align.canonical("concat") == "additive"
    with pytest.raises(UnknownNameError, match="valid"):
        align.create("dott", 4)
    with pytest.raises(RegistryError):
        align.register("dot", lambda dim: None)
    name = "test_neg_dot"
    align.register(name, lambda dim, **o: align.Bilinear(dim, name=name, weight=False, scale=-1.0), overwrite=True)
    q, k = _qk()
    assert torch.equal(align.create(name, 6)(q, k), -align.create("dot", 6)(q, k))


def test_bad_inputs():
    fn = align.create("dot", 6)
    q, k = _qk()
    with pytest.raises(ShapeError, match=r"\(3, 4, 6\)"):
        fn(q, k[:, :, :5])
    with pytest.raises(ShapeError):
        fn(q, k[:2])
    with pytest.raises(DTypeError):
        fn(q, k.float())
    with pytest.raises(ShapeError):
        align.create("general", 6, key_dim=4, init="identity")


def test_equivalent_groups_states_why():
    groups = align.equivalent_groups(["dot", "scaled_dot", "cosine", "general"], norm="softmax")
    assert groups == [["dot", "cosine"], ["scaled_dot"], ["general"]]
