"""Text-to-image generator, scene detector and generation task: shapes, attention rows, probe
capture, known answers, the detector on real scenes, scorers and seeded training."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from attnlens.data.scenes import load_split
from attnlens.errors import ShapeError, UnknownNameError
from attnlens.geometry import box_iou, box_masks
from attnlens.models.generate import TextToImage, layout_map, word_to_cell
from attnlens.models.scene_detector import classify_shape, color_labels, contains, detect
from attnlens.tasks.generation import GenerationTask, color_attention, presence


def _model(**kw) -> TextToImage:
    torch.manual_seed(0)
    return TextToImage(30, alignment=kw.pop("alignment", "general"), dim=8, word_dim=4, image_size=16, grid=4,
                       width=4, **kw)


def test_generator_shapes_and_rows():
    m = _model()
    tokens, lengths = torch.randint(1, 30, (3, 6)), torch.tensor([6, 2, 4])
    out = m(tokens, lengths, torch.zeros(3, 1, 16, 16))
    assert out.image.shape == (3, 3, 16, 16) and out.weights.shape == (3, 16, 6)
    assert float(out.image.detach().min()) >= 0 and float(out.image.detach().max()) <= 1
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(3, 16))
    assert float(out.weights.detach()[1, :, 2:].abs().sum()) == 0  # padded words get no attention


def test_probe_capture_with_a_forward_hook():
    m = _model(alignment="additive")
    seen = []
    handle = m.attend.probe.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    try:
        out = m(torch.randint(1, 30, (2, 5)), torch.tensor([5, 3]), torch.zeros(2, 1, 16, 16))
    finally:
        handle.remove()
    assert len(seen) == 1 and seen[0].dims == ("batch", "cell", "word")
    assert seen[0].meta["alignment"] == "additive" and seen[0].meta["query_modality"] == "image"
    torch.testing.assert_close(seen[0].weights, out.weights)
    assert not m.attend.probe._forward_hooks


def test_word_to_cell_against_a_loop():
    g = torch.Generator().manual_seed(1)
    w = torch.softmax(torch.randn(2, 9, 5, generator=g), -1)
    fast = word_to_cell(w)
    for b in range(2):
        for t in range(5):
            col = [float(w[b, c, t]) for c in range(9)]
            np.testing.assert_allclose(fast[b, t].numpy(), np.array(col) / sum(col), rtol=1e-6)


def test_layout_map_matches_box_masks():
    boxes = np.array([[3.2, 10.0, 20.7, 30.0], [40.0, 41.0, 64.0, 50.0]])
    for size in (64, 32):
        scaled = boxes * size / 64
        ref = box_masks(scaled, (size, size)).any(0).numpy().astype(np.float32)
        np.testing.assert_array_equal(layout_map(boxes, size, 64), ref)


@torch.no_grad()
def test_word_and_cell_removal():
    m = _model()
    tokens, lengths, layout = torch.randint(1, 30, (2, 5)), torch.tensor([5, 4]), torch.rand(2, 1, 16, 16)
    full = m(tokens, lengths, layout)
    same = m(tokens, lengths, layout, word_keep=torch.ones(2, 5, dtype=torch.bool),
             cell_keep=torch.ones(2, 16, dtype=torch.bool))
    torch.testing.assert_close(full.image, same.image)
    # a cell without text = zero context: equal to decoding with that context zeroed by hand
    keep = torch.ones(2, 16, dtype=torch.bool)
    keep[:, 5] = False
    cut = m(tokens, lengths, layout, cell_keep=keep)
    cells = m.encode_layout(layout)
    words, mask = m.encode_text(tokens, lengths)
    ctx = m.attend(cells, words, key_mask=mask).context
    ctx[:, 5] = 0
    torch.testing.assert_close(cut.image, m.decode(cells, ctx, layout))
    # masking word 2 equals attention over the other words only
    wk = torch.ones(2, 5, dtype=torch.bool)
    wk[:, 2] = False
    a = m(tokens, lengths, layout, word_keep=wk)
    assert float(a.weights.detach()[:, :, 2].abs().sum()) == 0
    torch.testing.assert_close(a.weights.sum(-1), torch.ones(2, 16))
    with pytest.raises(UnknownNameError):
        m(tokens, lengths, layout, removal="blur")
    with pytest.raises(ShapeError):
        m(tokens, lengths, torch.rand(2, 1, 8, 8))


def test_detector_on_synthetic_shapes():
    im = np.full((64, 64, 3), 232, np.uint8)
    im[5:17, 5:17] = (220, 40, 40)                                           # red square
    cv2.circle(im, (45, 14), 9, (40, 80, 220), -1)                           # blue circle
    cv2.fillPoly(im, [np.array([[12, 58], [24, 36], [36, 58]], np.int32)], (40, 160, 60))  # green triangle
    dets = detect(im)
    found = {(d.color, d.shape) for d in dets}
    assert found == {("red", "square"), ("blue", "circle"), ("green", "triangle")}
    red = next(d for d in dets if d.color == "red")
    assert red.box == (5.0, 5.0, 17.0, 17.0) and red.area == 144
    assert contains(dets, "blue") and not contains(dets, "yellow")
    labels, _, names = color_labels(im)
    assert int(labels[0, 0]) == -1 and names[labels[10, 10]] == "red"
    assert classify_shape(np.zeros((4, 4)))[0] == "unknown"
    with pytest.raises(ShapeError):
        detect(im.astype(np.float32))


def test_detector_finds_the_true_objects_of_real_scenes():
    samples = load_split("test", 40)
    n = hit = 0
    for s in samples:
        dets = detect(s.image)
        assert len(dets) == len(s.objects)
        for o in s.objects:
            n += 1
            same = [d for d in dets if d.color == o.color and d.shape == o.shape]
            iou = max((box_iou(o.box[None], np.array([d.box]))[0, 0] for d in same), default=0.0)
            hit += iou > 0.9
    assert hit == n


def test_presence_and_colour_attention_known_answers():
    samples = load_split("test", 10)
    caps = [s.captions[0] for s in samples]
    real = np.stack([s.image for s in samples])
    assert presence(real, caps)["presence_color"] == 1.0
    blank = np.full_like(real, 232)
    assert presence(blank, caps)["presence_color"] == 0.0
    # one image, caption "a red square": red in cells 0 and 1 of a 2 x 2 grid
    from attnlens.types import GroundedCaption

    cap = GroundedCaption("x", ("a", "red", "square"))
    im = np.full((1, 8, 8, 3), 232, np.uint8)
    im[0, :4, :] = (220, 40, 40)
    w = torch.zeros(1, 4, 3)
    w[0, :, 0] = 1.0             # every cell looks at "a" ...
    w[0, 0, 1], w[0, 0, 0] = 1.0, 0.0   # ... except cell 0, on "red"
    out = color_attention(im, w, [cap], grid=2)
    assert out["color_attention"] == 1.0 and out["color_attention_uniform"] == 0.5


TINY = dict(epochs=1, batch_size=16, n_train=8, n_test=4, n_eval=4, dim=8, word_dim=4, width=4, image_size=16,
            grid=4, captions_per_image=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    task = GenerationTask()
    d = tmp_path_factory.mktemp("gen") / "run"
    task.train(alignment="dot", seed=1, out_dir=d, config=TINY, progress=False)
    return task, task.load(d)


def test_same_seed_same_numbers(trained, tmp_path):
    task, model = trained
    d2 = tmp_path / "again"
    task.train(alignment="dot", seed=1, out_dir=d2, config=TINY, progress=False)
    again = task.load(d2)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    ra, rb = task.evaluate(model), task.evaluate(again)
    assert ra.keys() == rb.keys()
    for k in ra:
        assert (np.isnan(ra[k]) and np.isnan(rb[k])) or ra[k] == rb[k], k
    assert {"presence", "presence_color", "masked_presence", "shuffled_presence", "color_attention"} <= set(ra)


def test_analysis_examples_and_scorers(trained):
    task, model = trained
    ex = task.analysis_examples(model, n=3)
    for e in ex:
        L, C = len(e.tokens), len(e.regions)
        assert C == 16 and e.image.shape == (16, 16, 3) and e.image.dtype == np.uint8
        torch.testing.assert_close(e.attention.weights.sum(-1), torch.ones(L))
        assert "derived" in e.attention.meta
        for t in e.targets:   # boxes scaled to the generated image
            assert t.boxes.max() <= 16
    score = task.scorer(model, ex)
    keep = torch.ones(4, 16, dtype=torch.bool)
    keep[2:, :8] = False
    s = score(keep, torch.tensor([0, 1, 0, 1]))
    assert float(s[:2].abs().max()) < 1e-6 and bool((s[2:] <= 0).all())
    single = torch.cat([score(keep[i:i + 1], torch.tensor([[0, 1, 0, 1][i]])) for i in range(4)])
    torch.testing.assert_close(s, single, atol=1e-7, rtol=1e-5)
    words = task.word_scorer(model, ex, removal="zero")
    L = max(len(e.tokens) for e in ex)
    assert words(torch.zeros(1, L, dtype=torch.bool), torch.tensor([0])).shape == (1,)
