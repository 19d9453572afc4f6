"""attnlens.explain on attnlens' own models, known-answer models with hand-set weights, captum
attributions and the randomisation sanity check."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import attnlens.explain as ex
from attnlens.explain.registry import Context
from attnlens.explain.rollout import rollout_matrix
from attnlens.explain.sanity import randomisation_check
from attnlens.models.attention import CrossAttention
from attnlens.models.scan import ScanSimilarity

import reference_impl as scan_ref


def scan_inputs(seed=0, n=2, R=5, L=4, D=8):
    g = torch.Generator().manual_seed(seed)
    return dict(images=torch.randn(n, R, D, generator=g, dtype=torch.float64),
                captions=torch.randn(n, L, D, generator=g, dtype=torch.float64),
                lengths=torch.tensor([L] * n))


# ----------------------------------------------------------------------------- SCAN
def test_scan_t2i_raw_and_gradient_methods_match_a_reference_of_the_equations():
    sim = ScanSimilarity("t2i", agg="mean", dim=8)
    inputs = scan_inputs()
    raw = ex.explain(sim, inputs, "raw")
    gw = ex.explain(sim, inputs, "gradient_weighted")
    axg = ex.explain(sim, inputs, "attention_x_gradient")
    assert raw.shape == {"batch": 2, "word": 4, "region": 5}
    for b in range(2):
        img, cap = inputs["images"][b:b + 1], inputs["captions"][b:b + 1]
        _, attn = scan_ref.func_attention(cap, img, "clipped_l2norm", 9.0)            # [1, L, R]
        torch.testing.assert_close(raw.weights[b], attn[0])
        leaf = attn.detach().requires_grad_(True)                                      # dS/dA, A as a node
        context = torch.bmm(leaf, img)
        s = scan_ref.cosine(cap, context, dim=2).mean()
        (grad,) = torch.autograd.grad(s, leaf)
        expected = (grad * leaf).clamp(min=0)[0].detach()
        # one cross-attention step: Rhat = I, so Chefer's rule gives Abar itself
        torch.testing.assert_close(gw.weights[b], expected)
        torch.testing.assert_close(axg.weights[b], expected)


def test_scan_i2t_is_read_transposed_and_says_so():
    sim = ScanSimilarity("i2t", agg="mean", dim=8)
    inputs = scan_inputs(1)
    for method in ("raw", "rollout", "gradient_weighted"):
        amap = ex.explain(sim, inputs, method)
        assert amap.shape == {"batch": 2, "word": 4, "region": 5}, method
        assert "transposed" in amap.meta, method


def test_scan_needs_as_many_images_as_captions():
    sim = ScanSimilarity("t2i", dim=8)
    inputs = scan_inputs()
    inputs["images"] = inputs["images"][:1]
    with pytest.raises(Exception, match="diagonal"):
        ex.explain(sim, inputs, "raw")


def test_rcar_steps_are_stages_of_their_own():
    from attnlens.models.rcar import RCARSimilarity

    torch.manual_seed(0)
    sim = RCARSimilarity(8, mode="coop_rcar", steps=2, sim_dim=8).double().eval()
    inputs = scan_inputs(2)
    amap = ex.explain(sim, inputs, "gradient_weighted")
    assert amap.shape == {"batch": 2, "word": 4, "region": 5}
    assert amap.meta["n_stages"] == amap.meta["n_steps"] >= 2
    assert torch.isfinite(amap.weights).all() and amap.weights.sum() > 0
    raw_last = ex.explain(sim, inputs, "raw")
    raw_first = ex.explain(sim, inputs, "raw", layer=0)
    assert raw_last.meta["n_layers"] == amap.meta["n_steps"]
    assert not torch.allclose(raw_last.weights, raw_first.weights)


def test_vqa_gives_a_one_row_question_map_and_explains_the_answer_logit():
    from attnlens.models.vqa import VQAModel

    torch.manual_seed(0)
    model = VQAModel(20, 5, alignment="general", dim=16, grid=(2, 2), width=8).eval()
    g = torch.Generator().manual_seed(3)
    inputs = dict(tokens=torch.randint(1, 20, (3, 4), generator=g), lengths=torch.tensor([4, 2, 3]),
                  images=torch.rand(3, 3, 32, 32, generator=g))
    amap = ex.explain(model, inputs, "attention_x_gradient")
    assert amap.dims == ("batch", "question", "region") and amap.shape == {"batch": 3, "question": 1, "region": 4}
    chosen = ex.explain(model, inputs, "attention_x_gradient", target=lambda o: o.logits.max(-1).values)
    torch.testing.assert_close(amap.weights, chosen.weights)
    ig = ex.explain(model, inputs, "integrated_gradients", n_steps=16)
    assert ig.dims == ("batch", "output", "region") and ig.meta["features"] == "argument:attend@1"


def test_vqa_on_regions_input_x_gradient_of_the_attended_features():
    from attnlens.models.vqa import VQAModel

    torch.manual_seed(0)
    model = VQAModel(20, 5, alignment="general", dim=8, image="regions",
                     region_options=dict(channels=(4, 8), pool=(2, 2))).eval()
    g = torch.Generator().manual_seed(5)
    boxes = torch.tensor([[[0., 0., 8., 8.], [4., 4., 16., 16.], [0., 8., 8., 16.]]] * 2)
    inputs = dict(tokens=torch.randint(1, 20, (3, 4), generator=g), lengths=torch.tensor([4, 2, 3]),
                  images=torch.rand(2, 3, 16, 16, generator=g), boxes=boxes, image_index=torch.tensor([0, 1, 1]))
    amap = ex.explain(model, inputs, "input_x_gradient")
    assert amap.shape == {"batch": 3, "output": 1, "region": 3}
    _, q = model.question(inputs["tokens"], inputs["lengths"])
    feats, mask = model.encode_image(inputs["images"], boxes)
    feats = feats[inputs["image_index"]].detach().requires_grad_(True)
    top = model.answer(q.detach(), feats, mask[inputs["image_index"]]).logits.max(-1).values
    (grad,) = torch.autograd.grad(top.sum(), feats)
    torch.testing.assert_close(amap.weights[:, 0], (feats * grad).sum(-1).detach(), rtol=1e-4, atol=1e-6)


def test_matching_model_input_x_gradient_through_its_region_encoder():
    from attnlens.models.matching import MatchingModel

    torch.manual_seed(0)
    model = MatchingModel(20, embed_dim=8, word_dim=4, channels=(4, 8), pool=(2, 2)).eval()
    g = torch.Generator().manual_seed(4)
    boxes = torch.tensor([[[0., 0., 8., 8.], [4., 4., 16., 16.], [0., 8., 8., 16.]]] * 2)
    inputs = dict(images=torch.rand(2, 3, 16, 16, generator=g), boxes=boxes, region_mask=None,
                  tokens=torch.tensor([[3, 4, 5], [6, 7, 8]]), lengths=torch.tensor([3, 3]))
    amap = ex.explain(model, inputs, "input_x_gradient")
    feats = model.encode_images(inputs["images"], boxes).detach().requires_grad_(True)
    caps = model.encode_captions(inputs["tokens"], inputs["lengths"]).detach()
    s = torch.diagonal(model.similarity_from_features(feats, caps, inputs["lengths"]))
    (grad,) = torch.autograd.grad(s.sum(), feats)
    torch.testing.assert_close(amap.weights[:, 0], (feats * grad).sum(-1).detach(), rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- known answers
class OneRegion(nn.Module):
    """The output depends on region ``j`` only: attention over learned keys (not the regions), values
    are the regions with every other region masked out, output = sum over words of context . u."""

    def __init__(self, R=5, D=4, j=2):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.keys = nn.Parameter(torch.randn(R, D, generator=g))
        self.u = nn.Parameter(torch.ones(D))
        self.attn = CrossAttention("dot", D, norm="no_norm", temperature=1.0, query_dim="word", key_dim="region")
        self.register_buffer("only", torch.eye(R)[j])
        self.explain_features = ("input", "regions")

    def reset_parameters(self):
        nn.init.normal_(self.keys)
        nn.init.normal_(self.u)

    def forward(self, words, regions):
        keys = self.keys.expand(words.shape[0], -1, -1)
        out = self.attn(words, keys, regions * self.only[:, None])
        return (out.context @ self.u).sum(-1)


def one_region_inputs():
    g = torch.Generator().manual_seed(6)
    return dict(words=torch.randn(3, 4, 4, generator=g), regions=torch.rand(3, 5, 4, generator=g) + 0.1)


@pytest.mark.parametrize("method", ["gradient_weighted", "attention_x_gradient", "integrated_gradients",
                                    "input_x_gradient"])
def test_a_model_that_reads_one_region_gives_it_all_the_relevance(method):
    model, inputs = OneRegion(), one_region_inputs()
    amap = ex.explain(model, inputs, method)
    w = amap.weights
    others = torch.cat([w[..., :2], w[..., 3:]], dim=-1)
    assert torch.all(others.abs() <= 1e-6), method
    assert torch.all(w[..., 2] > 0) if method not in ("gradient_weighted", "attention_x_gradient") else \
        torch.all(w[..., 2].sum(-1) > 0)


def test_integrated_gradients_is_complete_on_the_linear_one_region_model():
    model, inputs = OneRegion(), one_region_inputs()
    ig = ex.explain(model, inputs, "integrated_gradients", n_steps=8)
    with torch.no_grad():
        out = model(**inputs) - model(inputs["words"], torch.zeros_like(inputs["regions"]))
    torch.testing.assert_close(ig.weights[:, 0].sum(-1), out, rtol=1e-5, atol=1e-6)


def test_gradcam_on_region_tokens_follows_its_formula():
    model, inputs = OneRegion(), one_region_inputs()
    cam = ex.explain(model, inputs, "gradcam")
    x = inputs["regions"].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(inputs["words"], x).sum(), x)
    alpha = grad.mean(1, keepdim=True)                                   # mean over the regions, per channel
    expected = torch.relu((alpha * inputs["regions"]).sum(-1))
    torch.testing.assert_close(cam.weights[:, 0], expected, rtol=1e-5, atol=1e-6)


class IdentityBlock(nn.Module):
    def forward(self, x, output_attentions=False):
        n = x.shape[1]
        w = torch.eye(n, dtype=x.dtype).expand(x.shape[0], 2, n, n) + 0 * x.sum()
        out = x + torch.tanh(w[:, 0] @ x)
        return (out, w) if output_attentions else (out,)


class IdentityNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([IdentityBlock() for _ in range(3)])
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)[0]
        return self.head(x).sum((1, 2))


def test_identity_attention_rolls_out_to_identity():
    net = IdentityNet()
    prof = ex.single_stream(net, "blocks.*", text_positions=range(0, 3), image_positions=range(3, 7))
    x = {"x": torch.randn(2, 7, 4)}
    trace = Context(net, x, None, prof).trace(grad=False)
    rolled, _ = rollout_matrix(trace)
    torch.testing.assert_close(rolled, torch.eye(7).expand(2, 7, 7))
    for method in ("rollout", "gradient_weighted", "raw"):
        amap = ex.explain(net, x, method, profile=prof)
        assert amap.shape == {"batch": 2, "word": 3, "patch": 4}
        assert torch.count_nonzero(amap.weights) == 0, method   # no token reads another


# ----------------------------------------------------------------------------- sanity check
def test_randomisation_check_reports_every_method():
    model, inputs = OneRegion(), one_region_inputs()
    table = randomisation_check(model, inputs, ["raw", "rollout", "gradient_weighted", "input_x_gradient"])
    assert table.method.tolist() == ["raw", "rollout", "gradient_weighted", "input_x_gradient"]
    assert set(table.columns) >= {"spearman", "passed", "error"}
    assert (table.error == "").all()
    assert bool(table.set_index("method").loc["gradient_weighted", "passed"])


def test_randomisation_check_reports_a_method_that_cannot_run_instead_of_hiding_it():
    sim = ScanSimilarity("t2i", dim=8, alignment="general").double()
    table = randomisation_check(sim, scan_inputs(), ["raw", "gradcam"])
    assert table.set_index("method").loc["raw", "error"] == ""
    assert table.set_index("method").loc["gradcam", "error"] == ""


@pytest.mark.parametrize("alignment", __import__("attnlens").align.available())
def test_every_alignment_function_is_explained(alignment):
    torch.manual_seed(0)
    sim = ScanSimilarity("t2i", dim=8, alignment=alignment).double()
    inputs = scan_inputs(3)
    gw = ex.explain(sim, inputs, "gradient_weighted")
    axg = ex.explain(sim, inputs, "attention_x_gradient")
    raw = ex.explain(sim, inputs, "raw")
    assert torch.isfinite(gw.weights).all() and gw.weights.min() >= 0
    torch.testing.assert_close(gw.weights, axg.weights)   # one cross-attention step: Rhat = I
    torch.testing.assert_close(raw.weights.sum(-1), torch.ones(2, 4, dtype=torch.float64))
