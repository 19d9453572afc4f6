"""SCAN encoders and safe checkpoint loading."""
import argparse
import collections
import json

import pytest
import torch

from attnlens.errors import CheckpointError, ShapeError
from attnlens.models.checkpoints import load_scan_checkpoint
from attnlens.models.encoders import GRUTextEncoder, PrecompImageEncoder


def test_image_encoder_is_fc_then_l2norm():
    torch.manual_seed(0)
    enc = PrecompImageEncoder(img_dim=6, embed_size=4)
    assert sorted(enc.state_dict()) == ["fc.bias", "fc.weight"]
    x = torch.randn(2, 3, 6)
    y = x @ enc.fc.weight.T + enc.fc.bias
    assert torch.allclose(enc(x), y / (y.norm(dim=-1, keepdim=True) + 1e-8), atol=1e-6)
    with pytest.raises(ShapeError, match="6"):
        enc(torch.randn(2, 3, 5))


def test_text_encoder_unsorted_lengths_equal_one_by_one():
    torch.manual_seed(0)
    enc = GRUTextEncoder(vocab_size=12, word_dim=5, embed_size=6).eval()
    assert {"embed.weight", "rnn.weight_ih_l0", "rnn.weight_ih_l0_reverse"} <= set(enc.state_dict())
    tokens = torch.tensor([[1, 2, 0, 0], [3, 4, 5, 6], [7, 0, 0, 0]])
    lengths = torch.tensor([2, 4, 1])
    with torch.no_grad():
        feats, out_lengths = enc(tokens, lengths)
        assert feats.shape == (3, 4, 6) and torch.equal(out_lengths, lengths)
        for b in range(3):
            n = int(lengths[b])
            x = enc.embed(tokens[b:b + 1, :n])
            h, _ = enc.rnn(x)
            h = (h[..., :6] + h[..., 6:]) / 2
            h = h / (h.norm(dim=-1, keepdim=True) + 1e-8)
            assert torch.allclose(feats[b, :n], h[0], atol=1e-6)
            assert (feats[b, n:] == 0).all()
    with pytest.raises(ShapeError):
        enc(tokens, torch.tensor([2, 5, 1]))
    with pytest.raises(ShapeError):
        enc(tokens + 20, lengths)



def test_text_encoder_padded_batch_finite_gradients_same_values():
    """Padded positions: exactly 0 and finite gradients; real positions: the reference l2norm of
    the GRU outputs, bit for bit (same operations as attention.l2norm)."""
    from attnlens.models.attention import l2norm

    torch.manual_seed(0)
    enc = GRUTextEncoder(vocab_size=12, word_dim=5, embed_size=6)
    tokens = torch.tensor([[1, 2, 0, 0, 0], [3, 4, 5, 6, 7], [7, 0, 0, 0, 0]])
    lengths = torch.tensor([2, 5, 1])
    feats, _ = enc(tokens, lengths)
    enc.no_txtnorm = True
    with torch.no_grad():
        raw, _ = enc(tokens, lengths)
    enc.no_txtnorm = False
    valid = torch.arange(5)[None] < lengths[:, None]
    assert torch.equal(feats[valid], l2norm(raw, dim=-1)[valid])
    assert (feats[~valid] == 0).all()
    (feats * torch.randn_like(feats)).sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert enc.embed.weight.grad.abs().sum() > 0

def _fake_checkpoint(path, *, vocab_size=9, opt_extra=None, extra=None):
    torch.manual_seed(1)
    img = PrecompImageEncoder(img_dim=10, embed_size=6)
    txt = GRUTextEncoder(vocab_size, word_dim=4, embed_size=6)
    opt = argparse.Namespace(img_dim=10, embed_size=6, word_dim=4, vocab_size=vocab_size, num_layers=1,
                             bi_gru=True, cross_attn="t2i", agg_func="LogSumExp", lambda_softmax=9.0,
                             lambda_lse=6.0, raw_feature_norm="clipped_l2norm", **(opt_extra or {}))
    ckpt = {"model": [img.state_dict(), txt.state_dict()], "opt": opt, "epoch": 3, "best_rsum": 400.5,
            "Eiters": 1234}
    ckpt.update(extra or {})
    torch.save(ckpt, path)
    return img, txt


def test_load_fake_scan_checkpoint(tmp_path):
    path = tmp_path / "model_best.pth.tar"
    img, txt = _fake_checkpoint(path)
    words = ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "on", "the", "grass"]
    vocab_path = tmp_path / "f30k_precomp_vocab.json"
    vocab_path.write_text(json.dumps({"word2idx": {w: i for i, w in enumerate(words)},
                                      "idx2word": {str(i): w for i, w in enumerate(words)}, "idx": 9}))
    img2, txt2, opt, vocab = load_scan_checkpoint(path, vocab_path)
    assert opt["cross_attn"] == "t2i" and opt["_epoch"] == 3 and opt["_Eiters"] == 1234
    assert len(vocab) == 9 and vocab["dog"] == 5
    for a, b in ((img, img2), (txt, txt2)):
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k])
    assert not img2.training and not txt2.training
    x = torch.randn(1, 2, 10)
    assert torch.allclose(img2(x), img.eval()(x))
    assert load_scan_checkpoint(path)[3] is None


class Payload:
    """A class a malicious file could pickle: unpickling it would call ``marker.append``."""

    def __reduce__(self):
        return (_MARKER.append, ("unpickled!",))


_MARKER: list = []


def test_refuses_non_allow_listed_objects(tmp_path):
    path = tmp_path / "evil.pth"
    _fake_checkpoint(path, extra={"payload": Payload()})
    with pytest.raises(CheckpointError, match="weights_only"):
        load_scan_checkpoint(path)
    assert _MARKER == []                             # nothing ran
    path2 = tmp_path / "evil2.pth"
    _fake_checkpoint(path2, extra={"obj": collections.UserDict({"a": 1})})
    with pytest.raises(CheckpointError):
        load_scan_checkpoint(path2)


def test_mismatched_keys_and_sizes_are_named(tmp_path):
    path = tmp_path / "bad.pth"
    img = PrecompImageEncoder(10, 6).state_dict()
    txt = GRUTextEncoder(9, 4, 6).state_dict()
    txt["rnn.extra_weight"] = torch.zeros(1)
    torch.save({"model": [img, txt], "opt": argparse.Namespace(embed_size=6)}, path)
    with pytest.raises(CheckpointError, match="rnn.extra_weight"):
        load_scan_checkpoint(path)
    path2 = tmp_path / "bad2.pth"
    _fake_checkpoint(path2, opt_extra={})
    ck = torch.load(path2, weights_only=False)
    ck["opt"].embed_size = 8
    torch.save(ck, path2)
    with pytest.raises(CheckpointError, match="embed_size"):
        load_scan_checkpoint(path2)
    with pytest.raises(CheckpointError, match="no such"):
        load_scan_checkpoint(tmp_path / "missing.pth")
    torch.save({"state": 1}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="model"):
        load_scan_checkpoint(tmp_path / "x.pth")
