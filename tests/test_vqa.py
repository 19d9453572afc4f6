"""VQA model and task: shapes, attention rows, probe capture, a known-answer model with hand-set
weights, removal modes, the scorer, and seeded training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlens.errors import DTypeError, ShapeError, UnknownNameError
from attnlens.models.vqa import VQAModel, grid_boxes, prepare_images
from attnlens.tasks.vqa import VQATask, object_span


def _identity_model(D: int = 6) -> VQAModel:
    """A VQA model whose classifier outputs the attended vector: answer k = region k's content.

    With one-hot region features ``v_j = 5 e_j`` and a question vector ``q = 5 e_k``, dot
    attention peaks on region k, so the predicted answer must be k."""
    m = VQAModel(10, D, alignment="general", dim=D, grid=(2, 3), alignment_options={"init": "identity"})
    with torch.no_grad():
        first, second = m.classifier[0], m.classifier[2]
        first.weight.zero_(), first.bias.zero_(), second.weight.zero_(), second.bias.zero_()
        first.weight[:D, D:2 * D] = torch.eye(D)      # hidden = context (the [q, c, q*c] input's c part)
        second.weight[:, :D] = torch.eye(D)           # logits = hidden
    return m.eval()


def test_shapes_and_rows_sum_to_one():
    torch.manual_seed(0)
    m = VQAModel(20, 7, alignment="additive", dim=16, grid=(4, 4))
    tokens, lengths = torch.randint(1, 20, (5, 6)), torch.tensor([6, 3, 1, 4, 2])
    out = m(tokens, lengths, torch.rand(2, 3, 32, 32), image_index=torch.tensor([0, 1, 1, 0, 1]))
    assert out.logits.shape == (5, 7) and out.weights.shape == (5, 16)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(5))


def test_region_encoder_variant_masks_padded_regions():
    torch.manual_seed(0)
    m = VQAModel(20, 5, alignment="dot", dim=8, image="regions", region_options=dict(channels=(4, 8), pool=(2, 2)))
    boxes = torch.tensor([[[0, 0, 8, 8], [8, 8, 16, 16], [0, 0, 16, 16]]] * 2, dtype=torch.float32)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    out = m(torch.randint(1, 20, (2, 4)), torch.tensor([4, 2]), torch.rand(2, 3, 16, 16), boxes, mask)
    assert out.weights[0, 2] == 0
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(2))


def test_probe_capture_with_a_forward_hook():
    torch.manual_seed(0)
    m = VQAModel(20, 5, alignment="general", dim=8, grid=(2, 2))
    seen = []
    handle = m.attend.probe.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    try:
        out = m(torch.randint(1, 20, (3, 4)), torch.tensor([4, 4, 2]), torch.rand(3, 3, 32, 32))
    finally:
        handle.remove()
    assert len(seen) == 1
    rec = seen[0]
    assert rec.dims == ("batch", "question", "region") and rec.meta["alignment"] == "general"
    torch.testing.assert_close(rec.weights[:, 0], out.weights)
    assert not m.attend.probe._forward_hooks


def test_known_answer_attention_and_prediction():
    D = 6
    m = _identity_model(D)
    feats = 5 * torch.eye(D)[None].repeat(D, 1, 1)          # example k: region j = 5 e_j
    q = 5 * torch.eye(D)                                    # example k asks about region k
    out = m.answer(q, feats, torch.ones(D, D, dtype=torch.bool))
    assert out.weights.argmax(-1).tolist() == list(range(D))
    assert out.logits.argmax(-1).tolist() == list(range(D))
    # reference: softmax over regions of the dot scores, by hand
    ref = torch.softmax(torch.einsum("bd,brd->br", q, feats), -1)
    torch.testing.assert_close(out.weights, ref)


@pytest.mark.parametrize("removal", ["mask", "zero", "mean"])
def test_removing_the_grounded_region_changes_the_answer(removal):
    D = 6
    m = _identity_model(D)
    feats = 5 * torch.eye(D)[None].repeat(D, 1, 1)
    q = 5 * torch.eye(D)
    valid = torch.ones(D, D, dtype=torch.bool)
    keep = ~torch.eye(D, dtype=torch.bool)                  # drop each example's own region
    full = m.answer(q, feats, valid).logits.softmax(-1).diagonal()
    cut = m.answer(q, feats, valid, keep=keep, removal=removal).logits.softmax(-1).diagonal()
    assert bool((cut < full - 0.05).all())
    other = m.answer(q, feats, valid, keep=torch.roll(keep, 1, 1), removal=removal).logits.softmax(-1).diagonal()
    assert bool((other > cut).all())   # removing another region hurts less


def test_mean_removal_matches_a_hand_computation():
    D = 4
    m = _identity_model(D)
    feats = torch.randn(1, 3, D)
    keep = torch.tensor([[True, False, True]])
    ref_feats = feats.clone()
    ref_feats[0, 1] = feats[0].mean(0)
    q = torch.randn(1, D)
    a = m.answer(q, feats, torch.ones(1, 3, dtype=torch.bool), keep=keep, removal="mean")
    b = m.answer(q, ref_feats, torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(a.logits, b.logits)


def test_bad_inputs():
    m = VQAModel(10, 3, alignment="dot", dim=4, grid=(2, 2))
    with pytest.raises(UnknownNameError, match="removal"):
        m.answer(torch.randn(1, 4), torch.randn(1, 4, 4), torch.ones(1, 4, dtype=torch.bool),
                 keep=torch.ones(1, 4, dtype=torch.bool), removal="blur")
    with pytest.raises(ShapeError, match="keep"):
        m.answer(torch.randn(1, 4), torch.randn(1, 4, 4), torch.ones(1, 4, dtype=torch.bool),
                 keep=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ShapeError, match="image_index"):
        m(torch.randint(1, 10, (3, 2)), torch.tensor([2, 2, 2]), torch.rand(2, 3, 32, 32))
    with pytest.raises(UnknownNameError, match="alignment"):
        VQAModel(10, 3, alignment="dott")
    with pytest.raises(ShapeError, match="uint8"):
        prepare_images(np.zeros((1, 8, 8, 3), np.float32), 4)


def test_grid_boxes_tile_the_image():
    b = grid_boxes((4, 4), (64, 64))
    assert b.shape == (16, 4) and ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).sum() == 64 * 64


def test_object_span():
    assert object_span(["is", "there", "a", "small", "red", "circle"]) == (3, 4, 5)
    assert object_span(["does", "the", "image", "not", "contain", "a", "teal", "shape"]) == (6, 7)
    assert object_span(["why"]) == (0,)


TINY = dict(epochs=1, batch_size=8, n_train=12, n_test=6, dim=8, word_dim=4, channels=(4, 8), pool=(2, 2))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    task = VQATask()
    d = tmp_path_factory.mktemp("vqa") / "run"
    task.train(alignment="general", seed=3, out_dir=d, config=TINY, progress=False)
    return task, task.load(d), d


def test_same_seed_same_numbers(trained, tmp_path):
    task, model, _ = trained
    d2 = tmp_path / "again"
    task.train(alignment="general", seed=3, out_dir=d2, config=TINY, progress=False)
    again = task.load(d2)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert task.evaluate(model) == task.evaluate(again)


def test_analysis_examples_and_scorer(trained):
    task, model, _ = trained
    ex = task.analysis_examples(model, n=3)
    assert len(ex) == 3
    for e in ex:
        L, R = len(e.tokens), len(e.regions)
        assert e.attention.dims == ("word", "region") and tuple(e.attention.weights.shape) == (L, R)
        torch.testing.assert_close(e.attention.weights.sum(-1), torch.ones(L))
        assert "derived" in e.attention.meta
        assert all(t.boxes.shape[1] == 4 and t.head in t.tokens for t in e.targets)
    R = len(ex[0].regions)
    score = task.scorer(model, ex, removal="mask")
    full = score(torch.ones(3, R, dtype=torch.bool), torch.arange(3))
    np.testing.assert_allclose(full.numpy(), [e.output for e in ex], rtol=1e-5)
    # batched rows equal rows scored one at a time
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(7, R, generator=g) > 0.5
    index = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    batched = score(keep, index)
    single = torch.cat([score(keep[i:i + 1], index[i:i + 1]) for i in range(7)])
    torch.testing.assert_close(batched, single)
    with pytest.raises(DTypeError):
        score(keep.int(), index)
    with pytest.raises(UnknownNameError):
        task.scorer(model, ex, removal="blur")


def test_load_rejects_another_task(trained, tmp_path):
    from attnlens.tasks.generation import GenerationTask

    task, _, d = trained
    with pytest.raises(UnknownNameError, match="vqa"):
        GenerationTask().load(d)


def test_capture_command_reads_the_data_the_checkpoint_was_trained_on(tmp_path):
    """`attnlens capture` on an easy-VQA checkpoint captures easy-VQA questions, not scenes
    (the run's config.json says which data; the preset only fills what it lacks)."""
    import json

    from attnlens.cli import main

    pytest.importorskip("easy_vqa")
    task = VQATask()
    run = tmp_path / "run"
    task.train(alignment="dot", seed=0, out_dir=run, progress=False,
               config={**TINY, "dataset": "easy_vqa", "easy_n_train": 40, "easy_n_test": 60, "grid": (2, 2),
                       "width": 4})
    out = tmp_path / "maps"
    assert main(["capture", "--task", "vqa", "--checkpoint", str(run), "--n", "2", "--out", str(out), "--quiet"]) == 0
    ids = [e["example_id"] for e in json.loads((out / "examples.json").read_text())]
    assert len(ids) == 2 and all(i.startswith("easy_vqa-test-") for i in ids), ids
