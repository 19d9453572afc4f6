"""attnlens.evaluate end to end: tiny transformers models and a SCAN checkpoint on grounded data in
the real formats, to the study's report; the report's numbers recomputed from the per-example rows;
planted models whose answer is known by construction."""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import attnlens
from attnlens.errors import ShapeError, UnknownNameError
from attnlens.evaluate import EvalItem, HashTokenizer, ModuleSpec, load_data

from evaluate_fixtures import FEAT_DIM, WORDS, write_coco, write_flickr30k

transformers = pytest.importorskip("transformers")
FAST = dict(settings={"steps": 4, "n_subsets": 5}, n_boot=200, gallery=1)


def tiny_vilt():
    torch.manual_seed(0)
    cfg = transformers.ViltConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  image_size=32, patch_size=8, max_image_length=-1, vocab_size=100,
                                  max_position_embeddings=40)
    return transformers.ViltForImageAndTextRetrieval(cfg).eval()


def tiny_lxmert():
    torch.manual_seed(0)
    cfg = transformers.LxmertConfig(hidden_size=32, num_attention_heads=2, intermediate_size=64, l_layers=1,
                                    x_layers=1, r_layers=1, visual_feat_dim=FEAT_DIM, visual_pos_dim=4,
                                    vocab_size=100, num_qa_labels=3, num_object_labels=5, num_attr_labels=3)
    return transformers.LxmertForPreTraining(cfg).eval()


class Planted(nn.Module):
    """Words attend to the region whose features carry their entity slot (``scale`` large), or
    uniformly over the regions (``scale = 0``): one ``nn.MultiheadAttention`` with hand-set weights."""

    def __init__(self, scale: float = 30.0, vocab: int = 64):
        super().__init__()
        self.emb = nn.Embedding(vocab, FEAT_DIM)
        self.att = nn.MultiheadAttention(FEAT_DIM, 1, batch_first=True, bias=False)
        tok = HashTokenizer(vocab)
        with torch.no_grad():
            self.emb.weight.zero_()
            for k, w in enumerate(WORDS):
                self.emb.weight[tok.word_id(w), k] = 1.0
            eye = torch.eye(FEAT_DIM)
            self.att.in_proj_weight.copy_(torch.cat([eye * scale, eye, eye]))
            self.att.out_proj.weight.copy_(eye)

    def forward(self, features, tokens):
        ctx, _ = self.att(self.emb(tokens), features, features)
        return ctx.sum((1, 2))


def check_report(res, explainers):
    """The report's files exist and every mean of metrics.csv is the mean of the finite
    per-example values of the units' rows (recomputed here from long.csv)."""
    out = res.out
    for f in ("report.html", "report.md", "metrics.csv", "metrics_long.csv", "curves.csv"):
        assert (out / f).is_file(), f
    assert list((out / "figures").glob("*.png")) and list((out / "explorer").glob("*.html"))
    metrics = pd.read_csv(out / "metrics.csv")
    units = pd.concat([pd.read_csv(p) for p in sorted((out / "units").glob("*/*/seed0/long.csv"))], ignore_index=True)
    assert set(metrics["alignment"]) >= set(explainers) | {"baseline:uniform", "baseline:centre", "baseline:random"}
    checked = 0
    for (a, m), g in metrics[metrics["subset"] == "all"].groupby(["alignment", "metric"]):
        if a.startswith("baseline:"):
            rows = units[(units["method"] == a) & (units["metric"] == m)]
        else:
            rows = units[(units["alignment"] == a) & (units["method"] == "attention") & (units["metric"] == m)]
        v = rows["value"].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        assert int(g["n"].iloc[0]) == len(v), (a, m)
        if len(v):
            assert g["mean"].iloc[0] == pytest.approx(v.mean(), rel=1e-12, abs=1e-12), (a, m)
            checked += 1
    assert checked >= 10
    html = (out / "report.html").read_text()
    assert "pointing_game" in html
    return metrics


def test_vilt_on_flickr30k_entities(tmp_path):
    root = write_flickr30k(tmp_path / "f30k", n_images=3)
    res = attnlens.evaluate(tiny_vilt(), root, spec="vilt", explainers=("raw", "raw:layer=0"), out=tmp_path / "out",
                            **FAST)
    metrics = check_report(res, ["raw", "raw:layer=0"])
    pg = metrics[(metrics["metric"] == "pointing_game") & (metrics["alignment"] == "raw:layer=0")]
    assert int(pg["n"].iloc[0]) == 9  # 3 images x (2 + 1) boxed phrases
    # the patch cells tile the original image: boxes mapped back through the resize
    ex = attnlens.study.units.load_examples(tmp_path / "out" / "units" / "vilt" / "raw" / "seed0")[0]
    boxes = np.asarray(ex["boxes"])
    assert boxes.shape == (16, 4) and boxes[:, 2].max() == 64 and boxes[:, 3].max() == 48
    assert np.prod(boxes[:, 2:] - boxes[:, :2], axis=1).sum() == pytest.approx(64 * 48)


def test_lxmert_on_flickr30k_entities_with_paired_tests(tmp_path):
    root = write_flickr30k(tmp_path / "f30k", n_images=3)
    res = attnlens.evaluate(tiny_lxmert(), root, spec="lxmert", explainers=("raw", "rollout"), out=tmp_path / "out",
                            **FAST)
    metrics = check_report(res, ["raw", "rollout"])
    pm = metrics[(metrics["metric"] == "relevance_mass_accuracy") & metrics["alignment"].isin(["raw", "rollout"])]
    assert pm["is_best"].sum() >= 1 and (pm["is_best"] | pm["p_vs_best"].notna()).all()


def _scan_layout(tmp_path):
    """SCAN-layout features (``test_ims.npy``, ``test_boxes.npy``, ``test_caps.txt``, ``test_ids.txt``)
    with Flickr30K-Entities groundings of the same captions."""
    root = write_flickr30k(tmp_path / "scan", n_images=3, images=False)
    caps = attnlens.data.load_flickr30k_entities(root, lowercase=True)
    ids = list(dict.fromkeys(c.image_id for c in caps))
    feats = [np.load(root / "features" / f"{i}.npz") for i in ids]
    np.save(root / "test_ims.npy", np.stack([f["features"] for f in feats]))
    np.save(root / "test_boxes.npy", np.stack([f["boxes"] for f in feats]))
    (root / "test_caps.txt").write_text("\n".join(" ".join(c.tokens) for c in caps) + "\n")
    (root / "test_ids.txt").write_text("\n".join(ids) + "\n")
    import shutil

    shutil.rmtree(root / "features")
    return root


def test_scan_checkpoint_on_precomputed_features(tmp_path):
    from attnlens.cli import main
    from attnlens.evaluate.specs.scan import PrecomputedScan

    root = _scan_layout(tmp_path)
    torch.manual_seed(0)
    m = PrecomputedScan(vocab_size=40, img_dim=FEAT_DIM, embed_size=8, word_dim=8)
    ckpt = tmp_path / "model_best.pth.tar"  # the public SCAN layout, read with weights_only=True
    torch.save({"model": [m.image_encoder.state_dict(), m.text_encoder.state_dict()], "epoch": 3,
                "opt": argparse.Namespace(embed_size=8, img_dim=FEAT_DIM, word_dim=8, cross_attn="t2i",
                                          lambda_softmax=9.0, agg_func="Mean")}, ckpt)
    out = tmp_path / "out"
    assert main(["evaluate", "--model", str(ckpt), "--data", str(root), "--out", str(out), "--quiet",
                 "--explainers", "raw,gradient_weighted", "--shard-size", "2"]) == 0
    res = attnlens.evaluate.EvaluateResult(out, pd.read_csv(out / "metrics.csv"), pd.read_csv(out / "metrics_long.csv"))
    metrics = check_report(res, ["raw", "gradient_weighted"])
    assert set(metrics["task"]) == {"scan"}


def test_planted_model_points_at_the_box(tmp_path):
    root = write_flickr30k(tmp_path / "f30k", n_images=3)
    res = attnlens.evaluate(Planted(), root, spec=ModuleSpec(vocab_size=64), out=tmp_path / "out", **FAST)
    m = res.metrics.set_index(["alignment", "metric"])["mean"]
    assert m[("raw", "pointing_game")] == 1.0
    assert m[("raw", "relevance_mass_accuracy")] > 0.99


def test_planted_uniform_model_is_the_uniform_baseline(tmp_path):
    root = write_flickr30k(tmp_path / "f30k", n_images=3, grid=(4, 4))
    res = attnlens.evaluate(Planted(scale=0.0), root, spec=ModuleSpec(vocab_size=64), out=tmp_path / "out", **FAST)
    long = res.long
    for metric in ("pointing_game", "relevance_mass_accuracy", "mask_auroc"):
        own = long[(long["alignment"] == "raw") & (long["metric"] == metric)].set_index(["example_id", "target"])
        base = long[(long["alignment"] == "baseline:uniform") & (long["metric"] == metric)].set_index(
            ["example_id", "target"])
        assert len(own) == len(base) == 9
        np.testing.assert_allclose(own["value"].sort_index(), base["value"].sort_index(), atol=1e-9)


def test_coco_format_through_evaluate(tmp_path):
    root = write_coco(tmp_path / "coco", n_images=3)
    items = load_data(root)
    assert len(items) == 3 and all(it.image is not None and it.targets for it in items)
    res = attnlens.evaluate(tiny_vilt(), items, spec="vilt", out=tmp_path / "out", **FAST)
    check_report(res, ["raw"])


def test_bad_input_errors(tmp_path):
    root = write_flickr30k(tmp_path / "f30k", n_images=2)
    with pytest.raises(UnknownNameError, match="model spec"):
        attnlens.evaluate(tiny_vilt(), root, spec="nope", out=tmp_path / "o")
    with pytest.raises(UnknownNameError, match="explainer of spec 'vilt'"):
        attnlens.evaluate(tiny_vilt(), root, spec="vilt", explainers=("integrated_gradients",), out=tmp_path / "o")
    with pytest.raises(ShapeError, match="at least 2"):
        attnlens.evaluate(tiny_vilt(), load_data(root)[:1], spec="vilt", out=tmp_path / "o")
    with pytest.raises(ShapeError, match="region features"):
        item = EvalItem("x/0", ("a", "dog"), (), (8, 8), image=np.zeros((8, 8, 3), np.uint8))
        attnlens.evaluate.get_spec("lxmert").inputs(tiny_lxmert(), item)


def test_cli_on_a_saved_model_and_coco(tmp_path):
    """What external checks run: a saved tiny transformers model, a COCO-format folder."""
    from attnlens.cli import main

    tiny_vilt().save_pretrained(tmp_path / "vilt")
    root = write_coco(tmp_path / "coco", n_images=3)
    out = tmp_path / "out"
    assert main(["evaluate", "--model", str(tmp_path / "vilt"), "--data", str(root), "--out", str(out), "--quiet"]) == 0
    metrics = pd.read_csv(out / "metrics.csv")
    assert "<html" in (out / "report.html").read_text().lower()
    assert {"raw", "baseline:uniform"} <= set(metrics["alignment"]) and (metrics["task"] == "vilt").all()
    # a region-feature model on data without features: one line, exit code 1
    tiny_lxmert().save_pretrained(tmp_path / "lxmert")
    assert main(["evaluate", "--model", str(tmp_path / "lxmert"), "--data", str(root), "--out", str(out)]) == 1
