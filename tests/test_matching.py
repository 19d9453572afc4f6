"""The matching model and the "matching" task: training determinism, resume, analysis maps that
are the model's own weights, faithfulness scorers, bad names."""
import numpy as np
import pytest
import torch

import attnlens.tasks.training as T
from attnlens.errors import CheckpointError, ShapeError, UnknownNameError
from attnlens.models.matching import MatchingModel
from attnlens.tasks import available_tasks, get_task
from attnlens.tasks.base import AnalysisExample
from attnlens.train import checkpoint as ckpt
from attnlens.train import loop

TINY = dict(epochs=2, batch_size=8, lr=5e-3, n_train=16, n_test=4, embed_dim=16, word_dim=8, channels=(4,),
            strides=(4,), pool=(2, 2), warmup_epochs=1, eval_every=1)


def _model(**kw):
    torch.manual_seed(0)
    return MatchingModel(60, embed_dim=16, word_dim=8, channels=(4,), strides=(4,), pool=(2, 2), **kw).eval()


def _inputs(n=3, R=5, L=4):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(n, 3, 32, 32, generator=g)
    xy = torch.rand(n, R, 2, generator=g) * 20
    boxes = torch.cat([xy, xy + 4 + torch.rand(n, R, 2, generator=g) * 8], -1)
    tokens = torch.randint(2, 60, (n, L), generator=g)
    lengths = torch.tensor([L, 2, 3][:n])
    for i in range(1, n):
        tokens[i, int(lengths[i]):] = 0
    return images, boxes, torch.ones(n, R, dtype=torch.bool), tokens, lengths


@pytest.mark.parametrize("kw", [{}, {"direction": "i2t", "agg": "lse"}, {"alignment": "general"},
                                {"rcar": {"mode": "coop_rcar", "steps": 2}},
                                {"rcar": {"mode": "coop_rcar", "steps": 2}, "alignment": "additive"}])
def test_forward_equals_encode_then_score(kw):
    m = _model(**kw)
    images, boxes, mask, tokens, lengths = _inputs()
    with torch.no_grad():
        S = m(images, boxes, mask, tokens, lengths)
        img, cap = m.encode_images(images, boxes, mask), m.encode_captions(tokens, lengths)
        S2 = m.similarity_from_features(img, cap, lengths, mask)
    assert S.shape == (3, 3) and torch.isfinite(S).all()
    torch.testing.assert_close(S, S2)
    assert torch.equal(cap[1, 2:], torch.zeros(2, 16))
    torch.testing.assert_close(cap[1, :2].norm(dim=-1), torch.ones(2))


def test_padded_captions_give_finite_gradients():
    m = _model().train()
    images, boxes, mask, tokens, lengths = _inputs()
    S = m(images, boxes, mask, tokens, lengths)
    (S - S.diagonal()[:, None]).clamp(min=0).sum().backward()
    for name, p in m.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


def test_scan_t2i_by_hand():
    """The SCAN similarity of one pair recomputed from the features with plain loops."""
    m = _model()
    images, boxes, mask, tokens, lengths = _inputs(1, R=4, L=3)
    with torch.no_grad():
        v, e = m.encode_images(images, boxes)[0].double(), m.encode_captions(tokens, lengths)[0].double()
        s = m.similarity_from_features(v[None].float(), e[None].float(), lengths)[0, 0]
    raw = e @ v.T                                               # [L, R]
    clipped = torch.nn.functional.leaky_relu(raw, 0.1)
    normed = clipped / (clipped.pow(2).sum(0, keepdim=True).sqrt() + 1e-8)   # over words
    a = torch.softmax(9.0 * normed, dim=1)                       # over regions
    rel = []
    for w in range(3):
        c = (a[w][:, None] * v).sum(0)
        rel.append(float(e[w] @ c / max(float(e[w].norm() * c.norm()), 1e-8)))
    assert float(s) == pytest.approx(np.mean(rel), abs=1e-5)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    run_dir = T.run("matching", alignment="dot", seed=0, out_dir=out, config=TINY, preset="quick", progress=False)
    return run_dir


def test_same_seed_same_numbers(tiny_run, tmp_path):
    again = T.run("matching", alignment="dot", seed=0, out_dir=tmp_path, config=TINY, preset="quick",
                  progress=False)
    h1 = [{k: v for k, v in h.items() if k != "seconds"} for h in T.read_state(tiny_run)["history"]]
    h2 = [{k: v for k, v in h.items() if k != "seconds"} for h in T.read_state(again)["history"]]
    assert h1 == h2 and "t2i_r1" in h1[-1] and "rsum" in h1[-1]
    other = T.run("matching", alignment="dot", seed=1, out_dir=tmp_path, config=TINY, preset="quick",
                  progress=False)
    h3 = [{k: v for k, v in h.items() if k != "seconds"} for h in T.read_state(other)["history"]]
    assert h3 != h1
    assert again.name == "matching-dot-seed0" and other.name == "matching-dot-seed1"


def test_interrupted_matching_run_resumes_identically(tiny_run, tmp_path, monkeypatch):
    real = loop.save_checkpoint

    def die_after_first(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", die_after_first)
    with pytest.raises(KeyboardInterrupt):
        T.run("matching", alignment="dot", seed=0, out_dir=tmp_path, config=TINY, preset="quick", progress=False)
    monkeypatch.setattr(loop, "save_checkpoint", real)
    resumed = T.run("matching", alignment="dot", seed=0, out_dir=tmp_path, config=TINY, preset="quick",
                    progress=False)
    drop = lambda hs: [{k: v for k, v in h.items() if k != "seconds"} for h in hs]  # noqa: E731
    assert drop(T.read_state(resumed)["history"]) == drop(T.read_state(tiny_run)["history"])
    task = get_task("matching")
    a, b = task.load(tiny_run), task.load(resumed)
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k


def test_load_evaluate_and_mismatch(tiny_run):
    task = get_task("matching")
    model = task.load(tiny_run)
    metrics = task.evaluate(model)
    assert metrics == pytest.approx({k: v for k, v in T.read_state(tiny_run)["history"][-1].items()
                                     if k not in ("epoch", "loss", "seconds")})
    other = _model()
    with pytest.raises(CheckpointError, match="image_encoder.fc.weight|text_encoder.embed.weight"):
        ckpt.load_checkpoint(tiny_run, other)
    with pytest.raises(CheckpointError, match=r"sim\.attn\.alignment\.linear\.weight"):
        ckpt.load_checkpoint(tiny_run, task.build_model(task.resolve_config(TINY), alignment="general",
                                                        vocab_size=model.hparams["vocab_size"]))


def _attention_by_hand(model, ex):
    """The word x region weights recomputed through the model's own attention module."""
    from attnlens.data.vocab import scenes_vocabulary

    ids = torch.tensor([scenes_vocabulary().encode(ex.tokens)])
    with torch.no_grad():
        img = model.encode_images(torch.from_numpy(np.array(ex.image)).permute(2, 0, 1)[None].float() / 255,
                                  torch.from_numpy(np.asarray(ex.regions.boxes, dtype=np.float32))[None])
        cap = model.encode_captions(ids, torch.tensor([ids.shape[1]]))
        attn = model.sim.attn
        if model.direction == "t2i":
            return attn.weigh(attn.alignment(cap, img))[0]
        return attn.weigh(attn.alignment(img, cap))[0]


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_analysis_examples_use_the_models_weights(tiny_run, direction):
    task = get_task("matching")
    cfg = task.resolve_config(TINY).replace(direction=direction)
    torch.manual_seed(3)
    model = task.build_model(cfg, alignment="general", vocab_size=len(__import__(
        "attnlens.data.vocab", fromlist=["x"]).scenes_vocabulary())).eval()
    examples = task.analysis_examples(model, n=3, config=cfg.to_dict())
    assert len(examples) == 3 and all(isinstance(e, AnalysisExample) for e in examples)
    for i, ex in enumerate(examples):
        amap = ex.attention
        assert amap.dims == ("word", "region") and amap.weights.shape == (len(ex.tokens), len(ex.regions))
        torch.testing.assert_close(amap.weights.sum(-1), torch.ones(len(ex.tokens)))
        by_hand = _attention_by_hand(model, ex)
        if direction == "t2i":
            torch.testing.assert_close(amap.weights, by_hand)
            assert "derived" not in amap.meta
        else:
            w = by_hand.T / by_hand.T.sum(-1, keepdim=True)
            torch.testing.assert_close(amap.weights, w)
            assert "transposed" in amap.meta["derived"]
        assert ex.example_id.endswith(f"/{i % 5}") and ex.targets
        for t in ex.targets:
            assert t.head == t.tokens[-1] and ex.tokens[t.head] in ("circle", "square", "triangle", "star")
            assert t.boxes.shape[1] == 4 and t.label == " ".join(ex.tokens[j] for j in t.tokens)


def test_scorer_removal_modes(tiny_run):
    task = get_task("matching")
    model = task.load(tiny_run)
    examples = task.analysis_examples(model, n=3)
    R = len(examples[0].regions)
    full = torch.ones(3, R, dtype=torch.bool)
    idx = torch.arange(3)
    outputs = torch.tensor([e.output for e in examples])
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(6, R, generator=g) > 0.5
    keep[5] = False
    index = torch.tensor([2, 0, 1, 2, 0, 1])
    from attnlens.data.vocab import scenes_vocabulary

    def by_hand(m, removal):
        ex = examples[int(index[m])]
        ids = torch.tensor([scenes_vocabulary().encode(ex.tokens)])
        with torch.no_grad():
            img = model.encode_images(torch.from_numpy(np.array(ex.image)).permute(2, 0, 1)[None].float()
                                      / 255, torch.from_numpy(np.asarray(ex.regions.boxes, dtype=np.float32))[None])
            cap = model.encode_captions(ids, torch.tensor([ids.shape[1]]))
            k = keep[m]
            if not k.any():
                return model.similarity_from_features(torch.zeros_like(img), cap, torch.tensor([ids.shape[1]]))[0, 0]
            if removal == "mask":
                return model.similarity_from_features(img, cap, torch.tensor([ids.shape[1]]), k[None])[0, 0]
            if removal == "zero":
                return model.similarity_from_features(img * k[None, :, None], cap, torch.tensor([ids.shape[1]]))[0, 0]
            mean = img.mean(1, keepdim=True)
            f = torch.where(k[None, :, None], img, mean)
            return model.similarity_from_features(f, cap, torch.tensor([ids.shape[1]]))[0, 0]

    for removal in ("mask", "zero", "mean"):
        score = task.scorer(model, examples, removal=removal)
        torch.testing.assert_close(score(full, idx), outputs, rtol=1e-5, atol=1e-6)
        got = score(keep, index)
        assert got.shape == (6,)
        for m in range(6):
            assert float(got[m]) == pytest.approx(float(by_hand(m, removal)), abs=1e-5), (removal, m)
    score = task.scorer(model, examples)
    with pytest.raises(ShapeError, match=r"\[M, R\]"):
        score(torch.ones(2, R + 1, dtype=torch.bool), torch.tensor([0, 1]))
    with pytest.raises(ShapeError, match="index values"):
        score(torch.ones(1, R, dtype=torch.bool), torch.tensor([3]))
    with pytest.raises(UnknownNameError, match="mask, mean, zero"):
        task.scorer(model, examples, removal="blur")


def test_unknown_names_list_the_valid_ones(tmp_path):
    with pytest.raises(UnknownNameError, match="matching"):
        T.run("matchng", alignment="dot", out_dir=tmp_path)
    with pytest.raises(UnknownNameError, match="scaled_dot") as info:
        T.run("matching", alignment="dott", out_dir=tmp_path)
    assert "general" in str(info.value)
    with pytest.raises(UnknownNameError, match="epochs"):
        T.run("matching", alignment="dot", out_dir=tmp_path, config={"epochz": 1}, preset="quick")
    with pytest.raises(UnknownNameError, match="demo"):
        T.run("matching", alignment="dot", out_dir=tmp_path, preset="tiny")
    assert "matching" in available_tasks()
    assert not any(tmp_path.iterdir())  # nothing was written


def test_command_line_prints_metrics_per_alignment(tiny_run, capsys):
    import json

    from attnlens.train.__main__ import main

    tiny_json = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()})
    main(["--task", "matching", "--alignment", "dot", "--preset", "quick", "--config", tiny_json,
          "--out", str(tiny_run.parent), "--no-progress"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["alignment"] == "dot" and row["t2i_r1"] == T.read_state(tiny_run)["history"][-1]["t2i_r1"]


def test_alignment_options_apply_per_alignment_name():
    """The demo preset gives ``additive`` (alias ``concat``) a hidden size of 16 and leaves the
    other alignments alone; matching trains on the default scenes."""
    from attnlens.train.config import MatchingConfig

    task = get_task("matching")
    cfg = MatchingConfig.preset("demo").replace(embed_dim=32, word_dim=8, channels=(4,), strides=(4,))
    assert cfg.scene_options == {}
    additive = task.build_model(cfg, alignment="additive", vocab_size=30)
    assert additive.sim.attn.alignment.w_query.weight.shape == (16, 32) and additive.hparams["alignment_options"]
    cfg = cfg.replace(alignment_options={"concat": {"hidden": 4}})
    assert task.build_model(cfg, alignment="additive", vocab_size=30).sim.attn.alignment.v.weight.shape == (1, 4)
    assert task.build_model(cfg, alignment="general", vocab_size=30).hparams["alignment_options"] == {}


def test_runs_saved_without_alignment_options_load_with_defaults(tmp_path):
    """A run saved before ``alignment_options`` existed (additive at hidden = embed_dim) still loads."""
    import json

    task = get_task("matching")
    run = T.run("matching", alignment="additive", out_dir=tmp_path, preset="quick",
                config={**TINY, "epochs": 1, "embed_dim": 24, "alignment_options": {}}, progress=False)
    cfg_file = next(f for f in run.iterdir() if f.suffix == ".json" and "alignment_options" in f.read_text())
    saved = json.loads(cfg_file.read_text())
    del saved["alignment_options"]
    cfg_file.write_text(json.dumps(saved))
    model = task.load(run)
    assert model.sim.attn.alignment.v.weight.shape == (1, 24)
