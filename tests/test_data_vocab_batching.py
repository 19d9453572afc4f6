"""Tests of the vocabulary, the tokeniser, padding and collation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from attnlens.data import scenes
from attnlens.data.batching import collate_questions, collate_scenes, pad_sequences
from attnlens.data.vocab import Vocabulary, scenes_vocabulary, simple_tokenize
from attnlens.errors import FormatError, ShapeError, UnknownNameError


def test_vocabulary_basics():
    v = Vocabulary(["red", "circle", "red", "<pad>"])
    assert v.idx2word == ["<pad>", "<unk>", "red", "circle"]
    assert v.pad_id == 0 and v.unk_id == 1 and v.start_id is None
    assert v.encode(["circle", "zebra"]) == [3, 1]
    assert v.decode(torch.tensor([3, 2, 0])) == ["circle", "red", "<pad>"]
    assert v.decode([3, 0, 1], skip_special=True) == ["circle"]
    assert "red" in v and "zebra" not in v and len(v) == 4 and v["zebra"] == 1
    with pytest.raises(UnknownNameError, match="token id"):
        v.decode([7])
    with pytest.raises(UnknownNameError):
        v.encode(["red"], add_start_end=True)
    se = Vocabulary(["a"], start_end=True)
    assert se.encode(["a"], add_start_end=True) == [2, 4, 3]


def test_from_captions_counts_and_order():
    caps = [["a", "red", "circle"], ["a", "blue", "circle"], ["a", "dog"]]
    v = Vocabulary.from_captions(caps)
    assert v.idx2word[2:] == ["a", "circle", "blue", "dog", "red"]
    assert Vocabulary.from_captions(caps, min_count=2).idx2word[2:] == ["a", "circle"]
    # GroundedCaptions work too
    s = scenes.generate(2)
    v2 = Vocabulary.from_captions([c for x in s for c in x.captions])
    assert all(t in v2 for x in s for c in x.captions for t in c.tokens)


def test_json_round_trip_is_atomic(tmp_path):
    v = scenes_vocabulary()
    p = tmp_path / "vocab.json"
    v.to_json(p)
    assert Vocabulary.from_json(p) == v
    assert [q.name for q in tmp_path.iterdir()] == ["vocab.json"]  # no temp file left behind
    (tmp_path / "bad.json").write_text('{"idx2word": ["<pad>", "<unk>",\n ]')
    with pytest.raises(FormatError, match=r"bad.json:2"):
        Vocabulary.from_json(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        Vocabulary.from_json(tmp_path / "missing.json")


def test_scan_vocabulary_keeps_ids(tmp_path):
    words = ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "runs"]
    data = {"word2idx": {w: i for i, w in enumerate(words)}, "idx2word": {str(i): w for i, w in enumerate(words)},
            "idx": len(words)}
    p = tmp_path / "f30k_precomp_vocab.json"
    p.write_text(json.dumps(data))
    v = Vocabulary.from_scan_json(p)
    assert v.idx2word == words and v.pad_id == 0 and v.unk_id == 3 and v.start_id == 1 and v.end_id == 2
    assert v.encode(["a", "cat", "runs"]) == [4, 3, 6]
    assert Vocabulary.from_json(p) == v  # detected
    data["word2idx"]["runs"] = 9
    p.write_text(json.dumps(data))
    with pytest.raises(FormatError, match="gaps"):
        Vocabulary.from_scan_json(p)
    data["word2idx"]["runs"] = 6
    data["idx2word"]["6"] = "walks"
    p.write_text(json.dumps(data))
    with pytest.raises(FormatError, match="disagrees"):
        Vocabulary.from_scan_json(p)


def test_scenes_vocabulary_covers_scenes():
    v = scenes_vocabulary()
    assert v.idx2word[:4] == ["<pad>", "<unk>", "<start>", "<end>"]
    assert v.idx2word[4:] == list(scenes.VOCABULARY)
    for s in scenes.generate(10, seed=1):
        for c in s.captions:
            assert v.unk_id not in v.encode(c.tokens)
        for q in s.questions:
            assert v.unk_id not in v.encode(q.tokens)


def test_simple_tokenize():
    assert simple_tokenize("Two men, one's hat.") == ["two", "men", ",", "one's", "hat", "."]
    assert simple_tokenize("Is there a red shape?", punctuation=False) == ["is", "there", "a", "red", "shape"]


def test_pad_sequences_against_reference():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(2, 50, size=rng.integers(0, 9)).tolist() for _ in range(12)] + [[4]]
    ids, lengths = pad_sequences(seqs, pad=0)
    L = max(len(s) for s in seqs)
    assert ids.dtype == torch.long and ids.shape == (len(seqs), L)
    for i, s in enumerate(seqs):
        assert ids[i].tolist() == s + [0] * (L - len(s)) and lengths[i] == len(s)
    ids, lengths = pad_sequences([[1, 2], []], pad=9)
    assert ids.tolist() == [[1, 2], [9, 9]] and lengths.tolist() == [2, 0]


def test_collate_scenes():
    s = scenes.generate(4, seed=2, n_regions=12) + scenes.generate(1, seed=3, n_regions=10)
    v = scenes_vocabulary()
    b = collate_scenes(s, v, caption_index=[0, 1, 2, 3, -1])
    assert b.images.shape == (5, 3, 64, 64) and b.images.dtype == torch.float32
    assert torch.equal(b.images[1], torch.from_numpy(s[1].image.astype(np.float32) / 255).permute(2, 0, 1))
    assert b.boxes.shape == (5, 12, 4) and b.region_mask.sum(1).tolist() == [12, 12, 12, 12, 10]
    assert torch.equal(b.boxes[4, 10:], torch.zeros(2, 4)) and (b.region_object[4, 10:] == -1).all()
    assert b.region_object[0].tolist() == s[0].proposal_object.tolist()
    assert np.allclose(b.boxes[2, :12].numpy(), s[2].regions.boxes)
    assert b.caption_index.tolist() == [0, 1, 2, 3, 4]
    for i, c in enumerate(b.captions):
        assert c is s[i].captions[[0, 1, 2, 3, 4][i]]
        assert v.decode(b.tokens[i, :b.lengths[i]]) == list(c.tokens)
        assert (b.tokens[i, b.lengths[i]:] == v.pad_id).all()
    assert len(b) == 5
    with pytest.raises(ShapeError, match="3 indices for 5"):
        collate_scenes(s, v, caption_index=[0, 1, 2])
    with pytest.raises(ShapeError, match="out of range"):
        collate_scenes(s, v, caption_index=5)
    with pytest.raises(ShapeError, match="share a shape"):
        collate_scenes(s[:1] + scenes.generate(1, image_size=32), v)
    with pytest.raises(ShapeError, match="empty"):
        collate_scenes([], v)


def test_collate_questions():
    s = scenes.generate(6, seed=4)
    v = scenes_vocabulary()
    b = collate_questions(s, v, question_index=1)
    assert b.answers.shape == (6,)
    for i, q in enumerate(b.questions):
        assert q is s[i].questions[1]
        assert scenes.ANSWERS[b.answers[i]] == q.answer
        assert v.decode(b.tokens[i, :b.lengths[i]]) == list(q.tokens)
    with pytest.raises(ShapeError, match="answer classes"):
        collate_questions(s, v, answer_vocab=["yes"])
