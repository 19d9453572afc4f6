"""The unit-feature check of the study (``model_info.max_feature_norm_deviation``): the attention
sites report the norm deviation of the features entering their alignment function in the
capture's records, SCAN's all-pairs path included; no model method is replaced, and without a
capture nothing is computed."""
from __future__ import annotations

import math

import pytest
import torch

import attnlens.models.attention as A
from attnlens.models import CrossAttention
from attnlens.models.scan import ScanSimilarity
from attnlens.study.units import _feature_norms, _model_info


def deviation_reference(*tensors) -> float:
    """max | ||x|| - 1 | over the rows with a norm above 1e-6, by loops."""
    best = -1.0
    for t in tensors:
        for row in t.reshape(-1, t.shape[-1]).tolist():
            n = math.sqrt(sum(v * v for v in row))
            if n > 1e-6:
                best = max(best, abs(n - 1))
    return best


def _methods(module) -> set[str]:
    return {k for k, v in vars(module).items() if callable(v) and not isinstance(v, torch.nn.Module)}


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("alignment", ["dot", "general"])
def test_scan_all_pairs_reports_the_features_it_aligns(direction, alignment):
    torch.manual_seed(0)
    model = ScanSimilarity(direction, alignment=alignment, dim=8, chunk_size=(2, 2), lambda_softmax=4.0)
    images, captions = torch.randn(5, 4, 8) * 0.7, torch.randn(3, 6, 8) * 1.3
    lengths = torch.tensor([6, 4, 2])
    padded = captions.clone()
    for c, n in enumerate(lengths.tolist()):
        padded[c, n:] = 0.0  # SCAN zeroes padded words before aligning; zero rows are ignored
    before = {id(m): _methods(m) for m in model.modules()}
    record: list[float] = []
    with _feature_norms(model, record):
        S = model(images, captions, lengths)
        assert {id(m): _methods(m) for m in model.modules()} == before  # nothing shadowed on an instance
    assert model.attn.probe._forward_hooks == {} and not model.attn.observed()
    assert record and max(record) == pytest.approx(deviation_reference(images, padded), rel=1e-6)
    info = _model_info(model, record)
    assert info["max_feature_norm_deviation"] == max(record) and info["unit_features"] is False
    torch.testing.assert_close(S, model(images, captions, lengths))  # same scores outside the capture


def test_unit_features_are_recognised_and_hooks_go_on_error():
    attn = CrossAttention("dot", 6, norm="softmax")
    q = torch.nn.functional.normalize(torch.randn(2, 3, 6), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(2, 5, 6), dim=-1)
    k[1, 4] = 0.0  # a padded key: ignored
    record: list[float] = []
    with _feature_norms(attn, record):
        attn(q, k)
    assert len(record) == 1 and record[0] < 1e-6 and _model_info(attn, record)["unit_features"] is True
    with pytest.raises(RuntimeError, match="boom"):
        with _feature_norms(attn, []):
            raise RuntimeError("boom")
    assert attn.probe._forward_hooks == {}


def test_nothing_is_measured_without_a_capture(monkeypatch):
    calls = []
    real = A.feature_norm_deviation
    monkeypatch.setattr(A, "feature_norm_deviation", lambda *x: calls.append(1) or real(*x))
    model = ScanSimilarity("t2i", alignment="dot", dim=4, chunk_size=(1, 1))
    model(torch.randn(3, 2, 4), torch.randn(2, 3, 4), torch.tensor([3, 2]))
    CrossAttention("dot", 4)(torch.randn(1, 2, 4), torch.randn(1, 3, 4))
    assert calls == []
    with _feature_norms(model, []):
        model(torch.randn(3, 2, 4), torch.randn(2, 3, 4), torch.tensor([3, 2]))
    assert len(calls) == 1  # once per forward, not once per chunk (6 chunks here)
