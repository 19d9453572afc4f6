"""Issue #16: loaders on malformed files either reject them with a typed error naming the file and
the line/element, or return records that satisfy the types' contracts (never a silent bad record)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnlens.data import load_coco, load_flickr30k_entities, load_precomputed
from attnlens.data.vocab import Vocabulary, simple_tokenize
from attnlens.errors import AttnlensError, DTypeError, FormatError
from attnlens.types import GroundedCaption, Phrase, Regions

FAST = settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
JSON_VALUES = [None, 0, -1, 0.5, 2.5, 1e400, "x", "", [], [1, 2], {}, {"a": 1}, True, 640, 480, "\ufeff"]


def typed(fn, *args, **kw):
    try:
        return True, fn(*args, **kw)
    except AttnlensError as exc:
        assert isinstance(exc, (ValueError, TypeError, KeyError)), type(exc)
        return False, exc


def check_caption(c: GroundedCaption):
    assert c.tokens and all(isinstance(t, str) and t.strip().strip("\ufeff") for t in c.tokens)
    if c.image_size is not None:
        assert all(isinstance(v, int) and v > 0 for v in c.image_size)
    for p in c.phrases:
        assert np.isfinite(p.boxes).all() and (p.boxes[:, 2:] >= p.boxes[:, :2]).all()


# --------------------------------------------------------------------------- COCO
@FAST
@given(st.sampled_from(["caption", "id", "image_id", "height", "width", "bbox", "bbox_item", "category_id",
                        "category_name", "file_name"]),
       st.sampled_from(JSON_VALUES))
def test_coco_malformed_fields(tmp_path_factory, field, value):
    pytest.importorskip("pycocotools")
    d = tmp_path_factory.mktemp("coco")
    img = {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}
    cap = {"id": 5, "image_id": 1, "caption": "A dog on a mat"}
    ann = {"id": 9, "image_id": 1, "category_id": 3, "bbox": [1.0, 2.0, 10.0, 10.0], "iscrowd": 0}
    cat = {"id": 3, "name": "dog", "supercategory": "animal"}
    target = {"caption": cap, "id": cap, "image_id": cap, "height": img, "width": img, "bbox": ann,
              "category_id": ann, "category_name": cat, "file_name": img}.get(field)
    if field == "bbox_item":
        ann["bbox"] = [1.0, value, 10.0, 10.0]
    else:
        target[{"category_name": "name"}.get(field, field)] = value
    (d / "images").mkdir()
    (d / "images" / "a.jpg").write_bytes(b"x")
    cp, ip = d / "captions.json", d / "instances.json"
    cp.write_text(json.dumps({"images": [img], "annotations": [cap]}))
    ip.write_text(json.dumps({"images": [img], "annotations": [ann], "categories": [cat]}))
    ok, out = typed(load_coco, cp, ip, images_dir=d / "images")
    if not ok:
        from attnlens.data._files import MissingFileError

        named = "captions.json" in str(out) or "instances.json" in str(out)
        assert isinstance(out, FormatError) and (named or isinstance(out, MissingFileError)), out
        return
    for rec in out:
        check_caption(rec.caption)
        assert len(rec.regions.boxes) == 0 or (rec.regions.boxes[:, 2:] >= rec.regions.boxes[:, :2]).all()
        assert rec.image_path is None or rec.image_path.parent == (d / "images").resolve()


def test_coco_null_caption_and_inverted_box(tmp_path):
    pytest.importorskip("pycocotools")
    img = {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}
    cp, ip = tmp_path / "c.json", tmp_path / "i.json"
    cp.write_text(json.dumps({"images": [img], "annotations": [{"id": 5, "image_id": 1, "caption": None}]}))
    ip.write_text(json.dumps({"images": [img], "annotations": [], "categories": []}))
    with pytest.raises(FormatError, match=r"c.json.*annotations\[0\].caption"):
        load_coco(cp, ip)
    cp.write_text(json.dumps({"images": [img], "annotations": [{"id": 5, "image_id": 1, "caption": "a dog"}]}))
    ip.write_text(json.dumps({"images": [img], "categories": [{"id": 3, "name": "dog"}], "annotations": [
        {"id": 9, "image_id": 1, "category_id": 3, "bbox": [10.0, 2.0, -5.0, 3.0]}]}))
    with pytest.raises(FormatError, match=r"i.json.*annotation 9.*inverted"):
        load_coco(cp, ip)
    img["width"] = 64.5
    ip.write_text(json.dumps({"images": [img], "categories": [], "annotations": []}))
    cp.write_text(json.dumps({"images": [img], "annotations": [{"id": 5, "image_id": 1, "caption": "a dog"}]}))
    with pytest.raises(FormatError, match="width 64.5"):
        load_coco(cp, ip)


# --------------------------------------------------------------------------- Flickr30K Entities
XML_VALUES = ["", "0", "-3", "2.5", "nan", "inf", "1e9", "abc", "10", "500"]


@FAST
@given(st.sampled_from(["width", "height", "xmin", "ymin", "xmax", "ymax", "name"]), st.sampled_from(XML_VALUES),
       st.sampled_from(["[/EN#5/animals A dog] runs .", "\ufeff[/EN#5/animals A dog] runs .", "[/EN#5/animals A dog",
                        "[/EN#x/animals A dog] .", "[/EN#5/animals ] ."]))
def test_flickr_malformed_fields(tmp_path_factory, tag, value, sentence):
    d = tmp_path_factory.mktemp("f30k")
    (d / "Sentences").mkdir()
    (d / "Annotations").mkdir()
    fields = {"width": "100", "height": "80", "xmin": "1", "ymin": "2", "xmax": "40", "ymax": "50", "name": "5"}
    fields[tag] = value
    (d / "Sentences" / "1.txt").write_text(sentence + "\n", encoding="utf-8")
    (d / "Annotations" / "1.xml").write_text(
        "<annotation><size><width>{width}</width><height>{height}</height></size><object><name>{name}</name>"
        "<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>"
        "</object></annotation>".format(**fields))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok, out = typed(load_flickr30k_entities, d)
    if not ok:
        assert isinstance(out, FormatError) and ("1.xml" in str(out) or "1.txt" in str(out)), out
        return
    for c in out:
        check_caption(c)
        assert "\ufeff" not in "".join(c.tokens)


# --------------------------------------------------------------------------- precomputed (SCAN layout)
ARRAYS = {
    "float": lambda: np.zeros((2, 3, 4), np.float32),
    "nan": lambda: np.full((2, 3, 4), np.nan, np.float32),
    "inf": lambda: np.array([[[0, 1, np.inf, 0]] * 3] * 2, np.float64),
    "complex": lambda: np.zeros((2, 3, 4), np.complex64),
    "string": lambda: np.full((2, 3, 4), "a"),
    "bool": lambda: np.zeros((2, 3, 4), bool),
    "structured": lambda: np.zeros((2, 3, 4), dtype=[("a", "f4")]),
    "2d": lambda: np.zeros((2, 3), np.float32),
}


@pytest.mark.parametrize("kind", sorted(ARRAYS))
@pytest.mark.parametrize("as_boxes", [False, True])
def test_precomputed_arrays_of_every_kind(tmp_path, kind, as_boxes):
    feats = ARRAYS[kind]() if not as_boxes else np.zeros((2, 3, 4), np.float32)
    np.save(tmp_path / "t_ims.npy", feats)
    (tmp_path / "t_caps.txt").write_text("a dog\nA cat\n")
    if as_boxes:
        b = ARRAYS[kind]()
        np.save(tmp_path / "t_boxes.npy", b)
    ok, out = typed(load_precomputed, tmp_path, "t")
    if kind == "float" or (as_boxes and kind == "bool" and False):
        assert ok
        assert np.isfinite(np.asarray(out.images)).all()
    else:
        assert not ok and isinstance(out, FormatError), out
        assert ("t_boxes.npy" if as_boxes else "t_ims.npy") in str(out)


def test_precomputed_other_files(tmp_path):
    np.save(tmp_path / "t_ims.npy", np.zeros((2, 3, 4), np.float32))
    (tmp_path / "t_caps.txt").write_text("a dog\n\nA cat\n.\n")
    with pytest.raises(FormatError, match=r"t_caps.txt:2"):
        load_precomputed(tmp_path, "t")
    (tmp_path / "t_caps.txt").write_text("\ufeffa dog\nA cat\n")
    assert load_precomputed(tmp_path, "t").captions[0] == ["a", "dog"]     # BOM is not a token
    np.savez(tmp_path / "u_ims.npy", a=np.zeros(3))                         # an archive under the .npy name
    (tmp_path / "u_caps.txt").write_text("a\n")
    with pytest.raises(FormatError, match="u_ims.npy"):
        load_precomputed(tmp_path, "u")
    b = np.zeros((2, 3, 4))
    b[1, 2] = [5, 5, 1, 1]
    np.save(tmp_path / "t_boxes.npy", b)
    with pytest.raises(FormatError, match=r"t_boxes.npy.*\[1, 2\].*inverted"):
        load_precomputed(tmp_path, "t")


# --------------------------------------------------------------------------- vocabulary, types
@FAST
@given(st.lists(st.sampled_from(JSON_VALUES + ["dog", "<pad>", "<unk>"]), max_size=6))
def test_vocab_json_malformed(tmp_path_factory, words):
    d = tmp_path_factory.mktemp("v")
    p = d / "v.json"
    p.write_text(json.dumps({"idx2word": ["<pad>", "<unk>", *words]}))
    ok, out = typed(Vocabulary.from_json, p)
    if ok:
        assert all(isinstance(w, str) and w.strip() for w in out.idx2word)
    else:
        assert isinstance(out, FormatError) and "v.json" in str(out)
    p.write_text(json.dumps({"word2idx": {w if isinstance(w, str) else "w": i for i, w in enumerate(words)},
                             "idx": words[0] if words else 0}))
    ok, out = typed(Vocabulary.from_json, p)
    assert ok or (isinstance(out, FormatError) and "v.json" in str(out))


def test_tokens_bom_null_and_types():
    assert simple_tokenize("\ufeffA dog") == ["a", "dog"]
    with pytest.raises(DTypeError):
        simple_tokenize(None)
    with pytest.raises(DTypeError):
        Vocabulary(["dog", None])
    with pytest.raises(DTypeError):
        Vocabulary(["a"]).encode("dog")
    with pytest.raises(DTypeError):
        Vocabulary(["a"]).decode([1.5])
    with pytest.raises(DTypeError):
        GroundedCaption("i", ("a", None))
    with pytest.raises(AttnlensError):
        GroundedCaption("i", ("\ufeff", "dog"))
    with pytest.raises(DTypeError):
        GroundedCaption("i", "a dog")                       # a string is not a token list
    with pytest.raises(AttnlensError):
        Regions([[4, 0, 1, 2]], (8, 8))                     # inverted
    with pytest.raises(AttnlensError):
        Regions([[0, 0, 1, 2]], (8.5, 8))                   # fractional size
    with pytest.raises(AttnlensError):
        Regions([["a", 0, 1, 2]], (8, 8))
    with pytest.raises(AttnlensError):
        Phrase("1", ("t",), 0, ("dog",), [[0, 0, math.nan, 1]])


# --------------------------------------------------------------------------- checkpoints and configs
def test_checkpoint_files_of_another_kind(tmp_path):
    import torch

    from attnlens.errors import CheckpointError
    from attnlens.models.checkpoints import load_rcar_checkpoint, load_scan_checkpoint, safe_load
    from attnlens.train.checkpoint import load_checkpoint, read_state, save_checkpoint

    for i, payload in enumerate([b"", b"not a checkpoint", b"PK\x03\x04garbage", bytes(range(256)) * 4]):
        p = tmp_path / f"bad{i}.pth"
        p.write_bytes(payload)
        with pytest.raises(CheckpointError, match=f"bad{i}.pth"):
            safe_load(p)
    p = tmp_path / "odd.pth"
    torch.save({"model": [{"fc.weight": "x"}, {"embed.weight": 3}], "opt": None}, p)
    with pytest.raises(CheckpointError, match="not named tensors"):
        load_scan_checkpoint(p)
    torch.save({"model": {"sim_enc.x": torch.zeros(1)}, "opt": [1, 2]}, p)
    with pytest.raises(CheckpointError, match="'opt'"):
        load_rcar_checkpoint(p)
    torch.save({"model": {"sim_enc.x": torch.zeros(1)}, "opt": {"regulator": "coop_rcar", "rcar_step": "two"}}, p)
    with pytest.raises(CheckpointError, match="steps"):
        load_rcar_checkpoint(p)
    # a run directory with broken files
    net = torch.nn.Linear(2, 2)
    run = save_checkpoint(tmp_path / "run", net, config={"task": "x"}, epoch=1)
    (run / "state.json").write_text("[1, 2]")
    with pytest.raises(FormatError, match=r"state.json.*object"):
        read_state(run)
    (run / "state.json").write_text('{"epoch": "one"}')
    with pytest.raises(FormatError, match=r"state.json.*'epoch'"):
        load_checkpoint(run, net)
    (run / "state.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(FormatError, match="UTF-8"):
        read_state(run)
    (run / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(run, net)


@pytest.mark.parametrize("text", ["[1]", '{"epochs": 0}', '{"epochs": "3"}', '{"lr": -1}', '{"nope": 1}',
                                  '{"lr": 1e999}', '{"scene_options": [1]}', "\ufeff{}", "{"])
def test_config_files_malformed(tmp_path, text):
    from attnlens.train.config import MatchingConfig

    p = tmp_path / "c.json"
    p.write_text(text, encoding="utf-8")
    ok, out = typed(MatchingConfig.load, p)
    if text == "\ufeff{}":
        assert ok and out == MatchingConfig()
    else:
        assert not ok and isinstance(out, FormatError) and "c.json" in str(out), out
    with pytest.raises(FormatError):
        MatchingConfig.load(tmp_path / "missing.json")
