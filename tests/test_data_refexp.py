"""RefCOCO-style referring expressions and answer-grounded VQA, from fixtures in the real layouts."""
from __future__ import annotations

import json
import pickle

import cv2
import numpy as np
import pytest

from attnlens.data import load_mdetr_refexp, load_refcoco, load_vqa_grounding, mask_boxes
from attnlens.data._files import MissingFileError
from attnlens.errors import FormatError
from attnlens.metrics import pointing_game


def _instances(tmp_path, **extra):
    data = {
        "images": [{"id": 1, "height": 40, "width": 60, "file_name": "COCO_train2014_000000000001.jpg"},
                   {"id": 2, "height": 30, "width": 30, "file_name": "COCO_train2014_000000000002.jpg"}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 40]},
                        {"id": 11, "image_id": 1, "category_id": 18, "bbox": [30, 10, 20, 20]},
                        {"id": 12, "image_id": 2, "category_id": 18, "bbox": [5, 5, 10, 10]}],
    }
    data.update(extra)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


REFS = [
    {"ref_id": 0, "ann_id": 11, "image_id": 1, "split": "testA", "category_id": 18,
     "sentences": [{"sent_id": 0, "tokens": ["dog", "on", "the", "right"], "raw": "Dog on the right"},
                   {"sent_id": 1, "sent": "the brown dog"}]},
    {"ref_id": 1, "ann_id": 10, "image_id": 1, "split": "val", "category_id": 1,
     "sentences": [{"sent_id": 2, "tokens": ["left", "guy"]}]},
    {"ref_id": 2, "ann_id": 12, "image_id": 2, "split": "testA", "category_id": 18,
     "sentences": [{"sent_id": 3, "raw": "\ufeffSmall Dog"}]},
]


def _refs(tmp_path, refs=REFS, name="refs(unc).json"):
    path = tmp_path / name
    path.write_text(json.dumps(refs))
    return path


def test_refcoco_links_each_sentence_to_its_referred_box(tmp_path):
    refs = load_refcoco(_refs(tmp_path), _instances(tmp_path))
    assert [r.caption.text for r in refs] == ["dog on the right", "the brown dog", "left guy", "small dog"]
    first = refs[0]
    assert first.regions.labels == ("person", "dog") and first.target == 1
    assert first.box.tolist() == [30.0, 10.0, 50.0, 30.0]
    (phrase,) = first.caption.phrases
    assert phrase.span == range(0, 4) and phrase.boxes.tolist() == [[30.0, 10.0, 50.0, 30.0]]
    assert phrase.entity_id == "11" and phrase.types == ("dog",)
    assert first.caption.image_size == (40, 60) and first.split == "testA" and first.sent_id == "0"
    # the referred box gives a known-answer pointing game: heat on it hits, heat elsewhere misses
    mask = np.zeros((1, 40, 60), bool)
    mask[0, 10:30, 30:50] = True
    heat = np.zeros((1, 40, 60))
    heat[0, 20, 40] = 1.0
    assert float(pointing_game(heat, mask)[0]) == 1.0
    heat = np.zeros((1, 40, 60))
    heat[0, 5, 5] = 1.0
    assert float(pointing_game(heat, mask)[0]) == 0.0


def test_refcoco_split_filter_and_images_dir(tmp_path):
    ins = _instances(tmp_path)
    assert [r.ref_id for r in load_refcoco(_refs(tmp_path), ins, split="testA")] == ["0", "0", "2"]
    images = tmp_path / "train2014"
    images.mkdir()
    with pytest.raises(MissingFileError, match="image 1"):
        load_refcoco(_refs(tmp_path), ins, images_dir=images)
    for name in ("COCO_train2014_000000000001.jpg", "COCO_train2014_000000000002.jpg"):
        (images / name).write_bytes(b"jpg")
    refs = load_refcoco(_refs(tmp_path), ins, images_dir=images)
    assert refs[0].image_path == images / "COCO_train2014_000000000001.jpg"


def test_refcoco_never_unpickles(tmp_path):
    pickled = tmp_path / "refs(unc).p"
    pickled.write_bytes(pickle.dumps(REFS))
    with pytest.raises(FormatError, match="pickled"):
        load_refcoco(pickled, _instances(tmp_path))
    disguised = tmp_path / "refs.json"  # a pickle under a .json name is refused by its first byte
    disguised.write_bytes(pickle.dumps(REFS))
    with pytest.raises(FormatError, match="pickled"):
        load_refcoco(disguised, _instances(tmp_path))


@pytest.mark.parametrize("file_name", ["../secret.jpg", "/etc/passwd", ""])
def test_refcoco_image_names_stay_inside_the_images_folder(tmp_path, file_name):
    images = tmp_path / "imgs"
    images.mkdir()
    ins = _instances(tmp_path, images=[{"id": 1, "height": 40, "width": 60, "file_name": file_name},
                                       {"id": 2, "height": 30, "width": 30, "file_name": "b.jpg"}])
    with pytest.raises(FormatError, match="file_name"):
        load_refcoco(_refs(tmp_path), ins, images_dir=images)


@pytest.mark.parametrize("refs, match", [
    ([{"ref_id": 0, "ann_id": 99, "sentences": [{"tokens": ["x"]}]}], "ann_id 99"),
    ([{"ref_id": 0, "ann_id": 11, "image_id": 2, "sentences": [{"tokens": ["x"]}]}], "image_id 2 differs"),
    ([{"ref_id": 0, "ann_id": 11, "sentences": [{"tokens": []}]}], r"refs\[0\].sentences\[0\]"),
    ([{"ref_id": 0, "ann_id": 11, "sentences": [None]}], r"refs\[0\].sentences\[0\]"),
    ([{"ref_id": 0, "sentences": []}], "no field 'ann_id'"),
    ({"refs": []}, "JSON list"),
])
def test_refcoco_malformed_refs_name_the_element(tmp_path, refs, match):
    with pytest.raises(FormatError, match=match):
        load_refcoco(_refs(tmp_path, refs), _instances(tmp_path))


@pytest.mark.parametrize("bbox", [[0, 0, -5, 5], [0, 0, 0, 5], [0, 0, float("nan"), 1], "1,2,3,4", [1, 2, 3]])
def test_refcoco_invalid_boxes_are_rejected(tmp_path, bbox):
    ins = _instances(tmp_path, annotations=[{"id": 11, "image_id": 1, "category_id": 18, "bbox": bbox}])
    with pytest.raises(FormatError, match=r"annotations\[0\].bbox"):
        load_refcoco(_refs(tmp_path, REFS[:1]), ins)


@pytest.mark.parametrize("size", [{"height": 0, "width": 5}, {"height": 2.5, "width": 5}, {"height": "4", "width": 5}])
def test_refcoco_invalid_image_sizes_are_rejected(tmp_path, size):
    ins = _instances(tmp_path, images=[{"id": 1, "file_name": "a.jpg", **size},
                                       {"id": 2, "height": 30, "width": 30, "file_name": "b.jpg"}])
    with pytest.raises(FormatError, match=r"images\[0\]"):
        load_refcoco(_refs(tmp_path), ins)


def test_refcoco_bad_json_names_the_line(tmp_path):
    path = tmp_path / "refs.json"
    path.write_text('[\n{"ref_id": 0,,}\n]')
    with pytest.raises(FormatError, match=r"refs.json:2"):
        load_refcoco(path, _instances(tmp_path))


def _mdetr(tmp_path, images, annotations):
    path = tmp_path / "final_refcoco_testA.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": []}))
    return path


def test_mdetr_tokens_positive_selects_the_phrase_words(tmp_path):
    path = _mdetr(tmp_path, [
        {"id": 0, "original_id": 1, "file_name": "a.jpg", "height": 40, "width": 60,
         "caption": "The dog, on the Right", "ref_id": 5, "sentence_id": 7},
        {"id": 1, "original_id": 1, "file_name": "a.jpg", "height": 40, "width": 60, "caption": "left guy"},
    ], [
        {"id": 3, "image_id": 0, "bbox": [30, 10, 20, 20], "category_id": 18, "tokens_positive": [[4, 7]]},
        {"id": 4, "image_id": 1, "bbox": [0, 0, 20, 40], "category_id": 1, "tokens_positive": []},
    ])
    first, second = load_mdetr_refexp(path)
    assert first.caption.tokens == ("the", "dog", ",", "on", "the", "right")
    assert first.caption.phrases[0].tokens == ("dog",) and first.caption.phrases[0].first_token == 1
    assert first.box.tolist() == [30.0, 10.0, 50.0, 30.0] and first.caption.image_id == "1"
    assert (first.ref_id, first.sent_id) == ("5", "7")
    assert second.caption.phrases[0].tokens == ("left", "guy")  # no span: the whole expression


def test_mdetr_span_outside_the_caption_is_an_error(tmp_path):
    path = _mdetr(tmp_path, [{"id": 0, "file_name": "a.jpg", "height": 4, "width": 4, "caption": "cat"}],
                  [{"id": 1, "image_id": 0, "bbox": [0, 0, 2, 2], "tokens_positive": [[0, 9]]}])
    with pytest.raises(FormatError, match="tokens_positive"):
        load_mdetr_refexp(path)


def _grounding(tmp_path, records):
    path = tmp_path / "val_grounding.json"
    path.write_text(json.dumps(records))
    return path


def test_vqa_grounding_reads_png_masks(tmp_path):
    masks = tmp_path / "binary_masks_png" / "val"
    masks.mkdir(parents=True)
    mask = np.zeros((20, 30), np.uint8)
    mask[2:6, 3:9] = 255
    mask[12:20, 20:30] = 255
    cv2.imwrite(str(masks / "VizWiz_val_00000001.png"), mask)
    path = _grounding(tmp_path, {"VizWiz_val_00000001.jpg": {
        "question": "What is in this can?", "height": 20, "width": 30,
        "answers": [{"answer": "corn", "answer_confidence": "yes"}, {"answer": "soup"}, {"answer": "corn"}]}})
    (item,) = load_vqa_grounding(path, masks_dir=masks)
    assert item.answer == "corn" and item.answers == ("corn", "soup", "corn")
    assert item.mask.shape == (20, 30) and int(item.mask.sum()) == 4 * 6 + 8 * 10
    assert item.mask_boxes.tolist() == [[20.0, 12.0, 30.0, 20.0], [3.0, 2.0, 9.0, 6.0]]
    assert item.question.phrases[0].boxes.tolist() == item.mask_boxes.tolist()
    assert not item.mask.flags.writeable
    heat = np.zeros((1, 20, 30))
    heat[0, 15, 25] = 1.0
    assert float(pointing_game(heat, item.mask[None])[0]) == 1.0


def test_vqa_grounding_list_records_and_polygons(tmp_path):
    path = _grounding(tmp_path, [{"image": "a.jpg", "question": "Which way?", "most_common_answer": "left",
                                  "answers": ["left"], "height": 10, "width": 10,
                                  "answer_grounding": [[1, 1], [4, 1], [4, 4], [1, 4]]}])
    (item,) = load_vqa_grounding(path)
    assert item.answer == "left" and item.mask_boxes.tolist() == [[1.0, 1.0, 5.0, 5.0]]
    assert int(item.mask.sum()) == 16


@pytest.mark.parametrize("records, match", [
    ({"../x.jpg": {"question": "q?", "height": 4, "width": 4, "answer_grounding": [[0, 0], [1, 0], [1, 1]]}},
     "plain file name"),
    ({"a.jpg": {"question": None}}, "question"),
    ({"a.jpg": {"question": "q?", "height": 4, "width": 4, "answer_grounding": [[0, 0], [1, 0]]}}, ">= 3 points"),
    ({"a.jpg": {"question": "q?", "height": 4, "width": 4,
                "answer_grounding": [[0, 0], [1, float("nan")], [1, 1]]}}, r"answer_grounding\[1\]"),
    ({"a.jpg": {"question": "q?", "answer_grounding": [[0, 0], [1, 0], [1, 1]]}}, "height/width"),
    ({"a.jpg": {"question": "q?", "height": 4, "width": 4, "answers": [3],
                "answer_grounding": [[0, 0], [1, 0], [1, 1]]}}, r"answers\[0\]"),
    ("not records", "JSON object"),
])
def test_vqa_grounding_malformed_records_name_the_record(tmp_path, records, match):
    with pytest.raises(FormatError, match=match):
        load_vqa_grounding(_grounding(tmp_path, records))


def test_vqa_grounding_mask_of_another_size_is_an_error(tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    cv2.imwrite(str(masks / "a.png"), np.zeros((5, 5), np.uint8))
    (masks / "b.png").write_text("not a png")
    path = _grounding(tmp_path, {"a.jpg": {"question": "q?", "height": 4, "width": 4}})
    with pytest.raises(FormatError, match="5x5"):
        load_vqa_grounding(path, masks_dir=masks)
    path = _grounding(tmp_path, {"b.jpg": {"question": "q?"}})
    with pytest.raises(FormatError, match="readable PNG"):
        load_vqa_grounding(path, masks_dir=masks)


def test_mask_boxes_of_an_empty_mask():
    assert mask_boxes(np.zeros((3, 3), bool)).shape == (0, 4)
