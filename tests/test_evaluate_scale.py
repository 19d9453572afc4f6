"""attnlens.evaluate in shards: an interrupted run resumes from its finished shards and gives the
numbers of an uninterrupted run; VisualBERT and the explainer-option labels."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

import attnlens
from attnlens.evaluate import ModuleSpec
from attnlens.evaluate.task import SpecTask, parse_explainer

from evaluate_fixtures import FEAT_DIM, write_flickr30k

FAST = dict(settings={"steps": 4, "n_subsets": 5}, n_boot=200, gallery=1)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(64, FEAT_DIM)
        self.att = torch.nn.MultiheadAttention(FEAT_DIM, 2, batch_first=True)

    def forward(self, features, tokens):
        ctx, _ = self.att(self.emb(tokens), features, features)
        return ctx.sum((1, 2))


def test_interrupted_run_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    root = write_flickr30k(tmp_path / "f30k", n_images=4)
    model, spec = Tiny().eval(), ModuleSpec(vocab_size=64)
    whole = attnlens.evaluate(model, root, spec=spec, out=tmp_path / "A", shard_size=2, **FAST)

    original = SpecTask.example
    calls = {"n": 0}

    def dies_at_five(self, model, i):
        calls["n"] += 1
        if i == 5:
            raise KeyboardInterrupt("killed")
        return original(self, model, i)

    monkeypatch.setattr(SpecTask, "example", dies_at_five)
    with pytest.raises(KeyboardInterrupt):
        attnlens.evaluate(model, root, spec=spec, out=tmp_path / "B", shard_size=2, **FAST)
    shards = tmp_path / "B" / "units" / "module" / "raw" / "seed0" / "shards"
    assert len(list(shards.glob("*/SHARD.json"))) == 2  # items 0-3 finished, 4-5 died
    monkeypatch.setattr(SpecTask, "example", lambda self, model, i: (calls.__setitem__("n", calls["n"] + 1),
                                                                     original(self, model, i))[1])
    calls["n"] = 0
    resumed = attnlens.evaluate(model, root, spec=spec, out=tmp_path / "B", shard_size=2, **FAST)
    assert calls["n"] == 4  # only the items of the 2 unfinished shards ran again
    for f in ("metrics.csv", "metrics_long.csv", "curves.csv"):
        assert (whole.out / f).read_bytes() == (resumed.out / f).read_bytes(), f
    again = attnlens.evaluate(model, root, spec=spec, out=tmp_path / "B", shard_size=2, **FAST)
    assert again.records[0].get("already_done") is True
    pd.testing.assert_frame_equal(again.metrics, resumed.metrics)


def test_changed_weights_are_not_reused(tmp_path):
    root = write_flickr30k(tmp_path / "f30k", n_images=2)
    model, spec = Tiny().eval(), ModuleSpec(vocab_size=64)
    attnlens.evaluate(model, root, spec=spec, out=tmp_path / "A", **FAST)
    with torch.no_grad():
        model.emb.weight.mul_(3.0)
    res = attnlens.evaluate(model, root, spec=spec, out=tmp_path / "A", **FAST)
    assert not res.records[0].get("already_done")


def test_visualbert_on_region_features(tmp_path):
    transformers = pytest.importorskip("transformers")
    root = write_flickr30k(tmp_path / "f30k", n_images=2)
    torch.manual_seed(0)
    cfg = transformers.VisualBertConfig(hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                        num_hidden_layers=2, visual_embedding_dim=FEAT_DIM, vocab_size=100)
    model = transformers.VisualBertForPreTraining(cfg).eval()
    res = attnlens.evaluate(model, root, spec="visualbert", explainers=("raw", "raw:layer=0,heads=max"),
                            out=tmp_path / "out", **FAST)
    assert {"raw", "raw:layer=0,heads=max"} <= set(res.metrics["alignment"])
    assert (tmp_path / "out" / "units" / "visualbert" / "raw_layer=0_heads=max" / "seed0" / "DONE.json").is_file()


def test_parse_explainer():
    assert parse_explainer("rollout") == ("rollout", {})
    with pytest.raises(ValueError, match="key=value"):
        parse_explainer("raw:layer")


@pytest.mark.slow
def test_process_engine_gives_the_local_numbers(tmp_path):
    """Shards in 2 spawned worker processes (the task, model included, is pickled to them)."""
    from test_evaluate import tiny_lxmert

    root = write_flickr30k(tmp_path / "f30k", n_images=3)
    model = tiny_lxmert()
    local = attnlens.evaluate(model, root, spec="lxmert", out=tmp_path / "A", shard_size=2, **FAST)
    procs = attnlens.evaluate(model, root, spec="lxmert", out=tmp_path / "B", shard_size=2, engine="process",
                              workers=2, **FAST)
    for f in ("metrics.csv", "metrics_long.csv", "curves.csv"):
        assert (local.out / f).read_bytes() == (procs.out / f).read_bytes(), f
