"""RCAR: all modes and directions against the per-caption reference, parameter counts, loading."""
import pytest
import torch

from attnlens.errors import CheckpointError, UnknownNameError
from attnlens.models.rcar import (AggregationRegulator, AlignmentVector, CorrespondenceRegulator,
                                  RCARSimilarity, from_reference)
from reference_impl import l2norm, rcar_reference


def _data(dtype=torch.float64, seed=0, d=16):
    g = torch.Generator().manual_seed(seed)
    ims = l2norm(torch.randn(4, 5, d, generator=g, dtype=dtype), -1)
    caps = l2norm(torch.randn(6, 7, d, generator=g, dtype=dtype), -1)
    return ims, caps, torch.tensor([7, 1, 3, 5, 2, 6])


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_the_paper():
    assert _count(AlignmentVector(256, 1024)) == 262_400
    assert _count(AggregationRegulator(256, 1024)) == 131_841
    assert _count(CorrespondenceRegulator(256, 1024)) == 689_921
    assert _count(torch.nn.Linear(256, 1)) == 257
    model = RCARSimilarity(1024, 256, mode="rcar", steps=2)
    assert _count(model) == 2 * 262_400 + 2 * 131_841 + 1 * 689_921 + 257


@pytest.mark.parametrize("mode", ["rcr", "rar", "rcar"])
@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("steps", [1, 2])
def test_matches_reference_float64(mode, direction, steps):
    torch.manual_seed(steps)
    ims, caps, lengths = _data()
    model = RCARSimilarity(16, 8, mode=mode, steps=steps, direction=direction).double().eval()
    with torch.no_grad():
        ref = rcar_reference(model, ims, caps, lengths, mode=mode, steps=steps, direction=direction,
                             smooth0=model.smooth)
        S = model(ims, caps, lengths)
        model.chunk_size = (3, 2)
        S_chunked = model(ims, caps, lengths)
    assert S.shape == (4, 6)
    assert torch.allclose(S, ref, rtol=0, atol=1e-9)
    assert torch.allclose(S_chunked, S, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["rcr", "rcar"])
def test_matches_reference_float32(mode):
    torch.manual_seed(0)
    ims, caps, lengths = _data(dtype=torch.float32, seed=5, d=32)
    model = RCARSimilarity(32, 8, mode=mode, steps=2, direction="t2i").eval()
    with torch.no_grad():
        S = model(ims, caps, lengths)
        ref = rcar_reference(model.double(), ims.double(), caps.double(), lengths, mode=mode, steps=2,
                             direction="t2i", smooth0=model.smooth)
    assert S.dtype == torch.float32
    assert torch.allclose(S.double(), ref, rtol=0, atol=1e-5)



@pytest.mark.parametrize("mode", ["rcr", "rar", "rcar"])
@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_finite_gradients_with_unequal_lengths_and_padded_regions(mode, direction):
    """Padded words (and padded regions, through image_mask) used to reach sqrt(0) in the context
    and alignment-vector l2norms: NaN gradients. The values stay those of the reference test above."""
    torch.manual_seed(3)
    ims, caps, lengths = _data()
    ims, caps = ims.clone().requires_grad_(), caps.clone().requires_grad_()
    image_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]]).bool()
    model = RCARSimilarity(16, 8, mode=mode, steps=2, direction=direction).double()
    with torch.no_grad():  # non-zero biases: a padded alignment vector is then not 0 before the norm
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    S = model(ims, caps, lengths, image_mask=image_mask)
    (S * torch.randn_like(S)).sum().backward()
    assert torch.isfinite(S).all()
    assert torch.isfinite(ims.grad).all() and torch.isfinite(caps.grad).all()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert "alv_modules.0.sim_transform_w.weight" in grads
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name
    with torch.no_grad():  # padded regions do not matter: dropping them gives the same scores
        for i in range(4):
            n = int(image_mask[i].sum())
            Si = model(ims[i:i + 1, :n], caps, lengths)
            assert torch.allclose(Si[0], S[i], rtol=0, atol=1e-12)

@pytest.mark.parametrize("alignment", ["cosine", "general", "biased_general", "activated_general", "additive"])
@pytest.mark.parametrize("mode", ["rcr", "rar", "rcar"])
@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_pluggable_alignment_matches_per_caption_reference(alignment, mode, direction):
    """Any alignment function scores the channel-weighted query against the context; the
    vectorised pairs (broadcast over images x captions, in chunks) equal the per-caption loop that
    calls the alignment's own batched forward on each pair."""
    torch.manual_seed(3)
    ims, caps, lengths = _data()
    model = RCARSimilarity(16, 8, mode=mode, steps=2, direction=direction, alignment=alignment).double().eval()
    with torch.no_grad():
        for p in model.attn.alignment.parameters():  # away from the defaults' symmetric init
            p.add_(0.1 * torch.randn_like(p))
        ref = rcar_reference(model, ims, caps, lengths, mode=mode, steps=2, direction=direction,
                             smooth0=model.smooth, align=model.attn.alignment)
        S = model(ims, caps, lengths)
        model.chunk_size = (3, 2)
        S_chunked = model(ims, caps, lengths)
    assert model.attn.alignment_name == alignment
    assert torch.allclose(S, ref, rtol=0, atol=1e-9)
    assert torch.allclose(S_chunked, S, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["rcr", "rar", "rcar"])
@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_general_with_identity_weight_equals_dot(mode, direction):
    torch.manual_seed(4)
    ims, caps, lengths = _data()
    dot = RCARSimilarity(16, 8, mode=mode, steps=2, direction=direction).double().eval()
    general = RCARSimilarity(16, 8, mode=mode, steps=2, direction=direction, alignment="general",
                             alignment_options={"init": "identity"}).double().eval()
    missing = general.load_state_dict(dot.state_dict(), strict=False)
    assert missing.missing_keys == ["attn.alignment.linear.weight"] and not missing.unexpected_keys
    with torch.no_grad():
        assert torch.allclose(general(ims, caps, lengths), dot(ims, caps, lengths), rtol=0, atol=1e-12)


def test_attention_captured_and_rows_sum_to_one():
    ims, caps, lengths = _data()
    model = RCARSimilarity(16, 8, mode="rcar", steps=2).double().eval()
    recs = []
    h = model.attn.probe.register_forward_hook(lambda m, a, out: recs.append(out))
    try:
        with torch.no_grad():
            model(ims, caps, lengths)
    finally:
        h.remove()
    assert len(recs) == 2                                # one per alignment step
    for r in recs:
        assert r.dims == ("image", "caption", "word", "region")
        valid = (torch.arange(7)[None] < lengths[:, None])
        assert torch.allclose(r.weights.sum(-1)[:, valid], torch.ones(1, dtype=torch.float64))
        assert (r.weights[:, ~valid] == 0).all()


def test_from_reference_with_prefix_and_errors():
    src = RCARSimilarity(16, 8, mode="rcar", steps=3, direction="i2t").double().eval()
    sd = {"sim_enc." + k: v for k, v in src.state_dict().items()}
    sd["img_enc.fc.weight"] = torch.zeros(2, 2)
    model = from_reference(sd, mode="rcar", direction="i2t").double()
    assert (model.embed_dim, model.sim_dim, model.steps) == (16, 8, 3)
    ims, caps, lengths = _data()
    with torch.no_grad():
        assert torch.equal(model(ims, caps, lengths), src(ims, caps, lengths))
    with pytest.raises(CheckpointError, match="rcr_modules.1"):
        from_reference(sd, mode="rcar", steps=2, direction="i2t")
    with pytest.raises(CheckpointError, match="alv_modules"):
        from_reference({"sim_eval_w.weight": torch.zeros(1, 8)}, mode="rar")
    with pytest.raises(UnknownNameError):
        from_reference(sd, mode="both")


def test_load_rcar_checkpoint_file(tmp_path):
    import argparse

    from attnlens.models.checkpoints import load_rcar_checkpoint

    src = RCARSimilarity(16, 8, mode="rcr", steps=2, direction="t2i", smooth=7.0).eval()
    model = {"sim_enc." + k: v for k, v in src.state_dict().items()}
    model["img_enc.fc.weight"] = torch.zeros(16, 4)
    opt = argparse.Namespace(regulator="only_rcr", rcr_step=2, attn_type="t2i", t2i_smooth=7.0, i2t_smooth=3.0)
    torch.save({"model": model, "opt": opt, "epoch": 1, "best_rsum": 0.0, "Eiters": 5}, tmp_path / "rcar.pth")
    sim, opt2 = load_rcar_checkpoint(tmp_path / "rcar.pth")
    assert sim.mode == "rcr" and sim.steps == 2 and sim.smooth == 7.0
    assert "img_enc.fc.weight" in opt2["_encoder_state"] and opt2["_Eiters"] == 5
    ims, caps, lengths = _data(dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(sim(ims, caps, lengths), src(ims, caps, lengths))
