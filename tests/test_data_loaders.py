"""COCO, precomputed (SCAN layout) and easy-VQA loaders on small fixtures."""
from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest

from attnlens.data import load_coco, load_easy_vqa, load_precomputed
from attnlens.data._files import MissingFileError
from attnlens.data.easy_vqa import get_answers, shape_box
from attnlens.errors import FormatError, MissingDependencyError, ShapeError, UnknownNameError


# --------------------------------------------------------------------------- COCO
def coco_files(tmp_path):
    images = [{"id": 42, "file_name": "000000000042.jpg", "width": 640, "height": 480},
              {"id": 7, "file_name": "000000000007.jpg", "width": 100, "height": 50}]
    captions = {"info": {}, "licenses": [], "images": images, "annotations": [
        {"id": 1, "image_id": 42, "caption": "A dog sits next to two Teddy Bears."},
        {"id": 2, "image_id": 42, "caption": "A person with a dog"},
        {"id": 3, "image_id": 7, "caption": "An empty room."}]}
    instances = {"images": images, "categories": [
        {"id": 18, "name": "dog", "supercategory": "animal"},
        {"id": 88, "name": "teddy bear", "supercategory": "indoor"},
        {"id": 1, "name": "person", "supercategory": "person"}], "annotations": [
        {"id": 10, "image_id": 42, "category_id": 18, "bbox": [10.0, 20.0, 30.5, 40.0], "iscrowd": 0, "area": 1},
        {"id": 11, "image_id": 42, "category_id": 88, "bbox": [100, 100, 50, 60], "iscrowd": 0, "area": 1},
        {"id": 12, "image_id": 42, "category_id": 88, "bbox": [600, 400, 80, 100], "iscrowd": 0, "area": 1},
        {"id": 13, "image_id": 42, "category_id": 1, "bbox": [0, 0, 640, 480], "iscrowd": 1, "area": 1}]}
    cp, ip = tmp_path / "captions_val2017.json", tmp_path / "instances_val2017.json"
    cp.write_text(json.dumps(captions))
    ip.write_text(json.dumps(instances))
    return cp, ip, captions, instances


def test_coco_boxes_labels_and_links(tmp_path):
    cp, ip, *_ = coco_files(tmp_path)
    with pytest.warns(UserWarning, match="clipped"):
        recs = load_coco(cp, ip)
    assert len(recs) == 3 and [r.caption_id for r in recs] == [1, 2, 3]
    r = recs[0]
    assert r.image_id == "42" and r.image_size == (480, 640) and r.file_name == "000000000042.jpg"
    # xywh -> xyxy; the crowd box is dropped; the box past the border is clipped
    assert r.regions.boxes.tolist() == [[10.0, 20.0, 40.5, 60.0], [100, 100, 150, 160], [600, 400, 640, 480]]
    assert r.regions.labels == ("dog", "teddy bear", "teddy bear")
    assert r.tokens == ("a", "dog", "sits", "next", "to", "two", "teddy", "bears", ".")
    ph = {p.entity_id: p for p in r.phrases}
    assert ph["18"].tokens == ("dog",) and ph["18"].first_token == 1 and ph["18"].types == ("animal",)
    assert ph["88"].tokens == ("teddy", "bears") and ph["88"].boxes.shape == (2, 4)
    # "person" is only a crowd box here -> dropped -> not linked
    assert [p.entity_id for p in recs[1].phrases] == ["18"]
    assert len(recs[2].regions) == 0 and recs[2].phrases == ()
    with pytest.warns(UserWarning):
        crowd = load_coco(cp, ip, include_crowd=True, link_categories=False)
    assert len(crowd[0].regions) == 4 and crowd[1].phrases == ()


def test_coco_errors(tmp_path):
    cp, ip, captions, instances = coco_files(tmp_path)
    with pytest.raises(MissingFileError, match="nope.json"):
        load_coco(tmp_path / "nope.json", ip)
    (tmp_path / "images").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(MissingFileError, match="000000000042.jpg"):
            load_coco(cp, ip, images_dir=tmp_path / "images")
        (tmp_path / "images" / "000000000042.jpg").write_bytes(b"x")
        (tmp_path / "images" / "000000000007.jpg").write_bytes(b"x")
        assert load_coco(cp, ip, images_dir=tmp_path / "images")[0].image_path.name == "000000000042.jpg"
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [\n{"id": 1,}]}')
    with pytest.raises(FormatError, match=r"bad.json:2"):
        load_coco(bad, ip)
    del instances["annotations"][1]["bbox"]
    ip.write_text(json.dumps(instances))
    with pytest.raises(FormatError, match=r"annotations\[1\] lacks 'bbox'"):
        load_coco(cp, ip)
    (tmp_path / "fresh").mkdir()
    cp2, ip2, captions2, _ = coco_files(tmp_path / "fresh")
    captions2["annotations"][2]["image_id"] = 99
    cp2.write_text(json.dumps(captions2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FormatError, match=r"annotations\[2\] refers to image 99"):
            load_coco(cp2, ip2)


def test_coco_missing_dependency(tmp_path, monkeypatch):
    cp, ip, *_ = coco_files(tmp_path)
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(MissingDependencyError, match=r"attnlens\[coco\]"):
        load_coco(cp, ip)


# --------------------------------------------------------------------------- precomputed
def write_precomp(root, n=4, r=36, d=16, boxes=True, ids=True):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((n, r, d)).astype(np.float32)
    np.save(root / "dev_ims.npy", feats)
    caps = [f"Image {i} caption {k}, with a Dog." for i in range(n) for k in range(5)]
    (root / "dev_caps.txt").write_text("\n".join(caps) + "\n")
    if boxes:
        b = rng.uniform(0, 100, (n, r, 4))   # valid xyxy boxes (x1 <= x2, y1 <= y2)
        np.save(root / "dev_boxes.npy", np.concatenate([np.minimum(b[..., :2], b[..., 2:]),
                                                        np.maximum(b[..., :2], b[..., 2:])], axis=-1))
    if ids:
        (root / "dev_ids.txt").write_text("\n".join(f"img{i}" for i in range(n)) + "\n")
    return feats


def test_precomputed_memmap_and_items(tmp_path):
    feats = write_precomp(tmp_path)
    ds = load_precomputed(tmp_path, "dev")
    assert isinstance(ds.images, np.memmap) and isinstance(ds.boxes, np.memmap)
    assert not ds.images.flags.writeable
    assert len(ds) == 4 and ds.captions_per_image == 5 and len(ds.captions) == 20
    assert ds.n_regions == 36 and ds.feature_dim == 16
    item = ds[2]
    assert isinstance(item.features, np.memmap) and np.array_equal(item.features, feats[2])
    assert item.image_id == "img2" and item.boxes.shape == (36, 4)
    assert item.captions[1] == ("image", "2", "caption", "1", ",", "with", "a", "dog", ".")
    assert ds.caption_image(13) == 2 and ds[-1].index == 3
    assert [it.index for it in ds] == [0, 1, 2, 3]
    with pytest.raises(ShapeError, match="out of range"):
        ds[4]
    raw = load_precomputed(tmp_path, "dev", lowercase=False)
    assert raw.captions[0][:2] == ["Image", "0"]


def test_precomputed_optional_files_and_errors(tmp_path):
    write_precomp(tmp_path, boxes=False, ids=False)
    ds = load_precomputed(tmp_path, "dev")
    assert ds.boxes is None and ds[0].boxes is None and ds[1].image_id == "1"
    with pytest.raises(MissingFileError, match="test_ims.npy"):
        load_precomputed(tmp_path, "test")
    (tmp_path / "dev_caps.txt").write_text("one\ntwo\nthree\n" * 3)
    with pytest.raises(FormatError, match="9 captions do not divide evenly among 4"):
        load_precomputed(tmp_path, "dev")
    write_precomp(tmp_path)
    np.save(tmp_path / "dev_boxes.npy", np.zeros((4, 10, 4)))
    with pytest.raises(FormatError, match=r"dev_boxes.npy.*\(4, 36, 4\)"):
        load_precomputed(tmp_path, "dev")
    (tmp_path / "dev_ims.npy").write_bytes(b"not an array")
    with pytest.raises(FormatError, match="dev_ims.npy"):
        load_precomputed(tmp_path, "dev")


# --------------------------------------------------------------------------- easy-VQA
def test_easy_vqa_boxes_from_pixels():
    items = load_easy_vqa("test", n=60)
    assert len(items) == 60
    answers = set(get_answers())
    shared = {}
    for it in items:
        assert it.image.dtype == np.uint8 and it.image.shape == (64, 64, 3) and not it.image.flags.writeable
        assert it.answer in answers and it.tokens and it.tokens[-1] != "?"
        assert it.boxes.shape == (1, 4)
        shared.setdefault(it.image_id, it.image)
        assert it.image is shared[it.image_id]  # one array per image
        x1, y1, x2, y2 = it.box.astype(int)
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64 and (x2 - x1) * (y2 - y1) < 0.9 * 64 * 64
        img = it.image.astype(int)
        bg = img[0, 0]
        outside = np.ones((64, 64), bool)
        outside[y1:y2, x1:x2] = False
        assert (np.abs(img[outside] - bg) <= 40).all()  # nothing but background outside the box
        inside = (np.abs(img[y1:y2, x1:x2] - bg) > 40).any(-1)
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()  # tight


def test_shape_box_known_answer_and_errors(monkeypatch):
    img = np.full((10, 12, 3), 230, np.uint8)
    img[3:6, 2:9] = (0, 0, 255)
    img[6, 5] = (225, 230, 235)  # mild noise stays background
    assert shape_box(img).tolist() == [2.0, 3.0, 9.0, 6.0]
    assert shape_box(np.full((4, 4, 3), 9, np.uint8)).tolist() == [0.0, 0.0, 4.0, 4.0]
    with pytest.raises(UnknownNameError, match="valid"):
        load_easy_vqa("val")
    monkeypatch.setitem(sys.modules, "easy_vqa", None)
    with pytest.raises(MissingDependencyError, match=r"attnlens\[easyvqa\]"):
        load_easy_vqa("test", n=1)
