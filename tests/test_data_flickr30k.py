"""Flickr30K Entities loader on fixtures written in the exact distributed format."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from attnlens.data import load_flickr30k_entities
from attnlens.data._files import MissingFileError
from attnlens.data.flickr30k_entities import parse_annotation, parse_sentence
from attnlens.errors import FormatError
from attnlens.geometry import union_box

SENTENCES_1 = """\
[/EN#1/people A man] in [/EN#3/clothing a red shirt] and [/EN#2/people/other his child] play in [/EN#7/scene the park] .
[/EN#1/people/other Two people] , one holding [/EN#0/notvisual something] , stand near [/EN#9/other a fence] .
[/EN#4/bodyparts A hand] reaches for [/EN#5/animals the dogs] .
[/EN#1/people A man] smiles .
[/EN#12/other An object] that is not annotated .
"""

ANNOTATION_1 = """\
<annotation>
\t<filename>1000092795.jpg</filename>
\t<size>
\t\t<width>500</width>
\t\t<height>375</height>
\t\t<depth>3</depth>
\t</size>
\t<object>
\t\t<name>1</name>
\t\t<name>2</name>
\t\t<bndbox>
\t\t\t<xmin>1</xmin>
\t\t\t<ymin>1</ymin>
\t\t\t<xmax>100</xmax>
\t\t\t<ymax>200</ymax>
\t\t</bndbox>
\t</object>
\t<object>
\t\t<name>3</name>
\t\t<bndbox>
\t\t\t<xmin>20</xmin>
\t\t\t<ymin>50</ymin>
\t\t\t<xmax>80</xmax>
\t\t\t<ymax>120</ymax>
\t\t</bndbox>
\t</object>
\t<object>
\t\t<name>5</name>
\t\t<bndbox>
\t\t\t<xmin>300</xmin>
\t\t\t<ymin>200</ymin>
\t\t\t<xmax>350</xmax>
\t\t\t<ymax>260</ymax>
\t\t</bndbox>
\t</object>
\t<object>
\t\t<name>5</name>
\t\t<bndbox>
\t\t\t<xmin>400</xmin>
\t\t\t<ymin>300</ymin>
\t\t\t<xmax>520</xmax>
\t\t\t<ymax>375</ymax>
\t\t</bndbox>
\t</object>
\t<object>
\t\t<name>7</name>
\t\t<nobndbox>1</nobndbox>
\t\t<scene>1</scene>
\t</object>
\t<object>
\t\t<name>9</name>
\t\t<nobndbox>1</nobndbox>
\t\t<scene>0</scene>
\t</object>
\t<object>
\t\t<name>4</name>
\t\t<nobndbox>1</nobndbox>
\t</object>
</annotation>
"""

SENTENCES_2 = "[/EN#8/animals A brown dog] runs on [/EN#6/scene the grass] .\n"
ANNOTATION_2 = """<annotation><filename>22.jpg</filename><size><width>64</width><height>48</height>
<depth>3</depth></size><object><name>8</name><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>5</xmax><ymax>6</ymax>
</bndbox></object><object><name>6</name><nobndbox>1</nobndbox><scene>1</scene></object></annotation>
"""


def write_dataset(root, images=True):
    (root / "Sentences").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "Sentences" / "1000092795.txt").write_text(SENTENCES_1)
    (root / "Annotations" / "1000092795.xml").write_text(ANNOTATION_1)
    (root / "Sentences" / "22.txt").write_text(SENTENCES_2)
    (root / "Annotations" / "22.xml").write_text(ANNOTATION_2)
    (root / "train.txt").write_text("1000092795\n")
    (root / "test.txt").write_text("22\n\n")
    if images:
        (root / "flickr30k-images").mkdir()
        (root / "flickr30k-images" / "22.jpg").write_bytes(b"\xff\xd8")
    return root


def load_quietly(root, **kw):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        caps = load_flickr30k_entities(root, **kw)
    return caps, w


def test_load_all_and_awkward_parts(tmp_path):
    root = write_dataset(tmp_path)
    caps, w = load_quietly(root)
    assert len(caps) == 6
    assert [c.image_id for c in caps] == ["22"] + ["1000092795"] * 5  # numeric order of ids
    c0 = caps[1]
    assert c0.image_size == (375, 500)
    assert c0.tokens[:3] == ("A", "man", "in") and c0.tokens[-1] == "."
    ph = {p.entity_id: p for p in c0.phrases}
    # one box shared by entities 1 and 2; 1-based inclusive -> half-open
    assert ph["1"].boxes.tolist() == [[0.0, 0.0, 100.0, 200.0]] and ph["2"].boxes.tolist() == ph["1"].boxes.tolist()
    assert ph["2"].types == ("people", "other") and ph["2"].tokens == ("his", "child")
    assert ph["3"].boxes.tolist() == [[19.0, 49.0, 80.0, 120.0]]
    assert ph["7"].types == ("scene",) and not ph["7"].has_box
    for p in c0.phrases:
        assert c0.tokens[p.first_token:p.first_token + len(p.tokens)] == p.tokens
    c1 = caps[2]
    assert [p.entity_id for p in c1.phrases] == ["1", "0", "9"]
    assert c1.phrases[1].types == ("notvisual",) and not c1.phrases[1].has_box
    assert not c1.phrases[2].has_box  # <nobndbox>1 with <scene>0
    assert c1.phrases[0].types == ("people", "other")
    dogs = caps[3].phrases[1]
    assert dogs.entity_id == "5" and dogs.boxes.shape == (2, 4)
    # the second box ran past the 500 px wide image: clipped, with a warning naming the file
    assert dogs.boxes.tolist() == [[299.0, 199.0, 350.0, 260.0], [399.0, 299.0, 500.0, 375.0]]
    assert union_box(dogs.boxes).tolist() == [299.0, 199.0, 500.0, 375.0]
    assert any("1000092795.xml" in str(x.message) and "clipped" in str(x.message) for x in w)
    hand = caps[3].phrases[0]
    assert hand.entity_id == "4" and hand.types == ("bodyparts",) and not hand.has_box  # <nobndbox>1 only
    assert caps[4].phrases[0].boxes.tolist() == [[0.0, 0.0, 100.0, 200.0]]
    assert caps[5].phrases[0].entity_id == "12" and not caps[5].phrases[0].has_box  # absent from the XML
    dog = caps[0].phrases[0]
    assert dog.boxes.tolist() == [[4.0, 5.0, 5.0, 6.0]]  # a one-pixel VOC box is one pixel wide


def test_splits_lowercase_and_images(tmp_path):
    root = write_dataset(tmp_path)
    caps, _ = load_quietly(root, split="test", lowercase=True, check_images=True)
    assert len(caps) == 1 and caps[0].tokens[:3] == ("a", "brown", "dog")
    assert caps[0].phrases[0].tokens == ("a", "brown", "dog")
    train, _ = load_quietly(root, split="train")
    assert {c.image_id for c in train} == {"1000092795"} and len(train) == 5
    with pytest.raises(MissingFileError, match="1000092795.jpg"):
        load_quietly(root, split="train", check_images=True)
    with pytest.raises(MissingFileError, match="val.txt"):
        load_flickr30k_entities(root, split="val")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_flickr30k_entities(tmp_path / "nowhere")


def test_missing_annotation_file(tmp_path):
    root = write_dataset(tmp_path)
    (root / "Annotations" / "22.xml").unlink()
    with pytest.raises(MissingFileError, match=r"Annotations/22.xml"):
        load_quietly(root)


@pytest.mark.parametrize("line, where", [
    ("[/EN#1/people A man walks .", "column 1"),
    ("A man] walks .", "column 6"),
    ("[/EN#x/people A man] walks .", "malformed entity tag"),
    ("[/EN#3 A man] walks .", "malformed entity tag"),
    ("[/EN#1/people A [/EN#2/other b] c] .", "unbalanced"),
    ("[/EN#1/people ] walks", "no words"),
])
def test_malformed_markup_names_file_and_line(tmp_path, line, where):
    root = write_dataset(tmp_path)
    (root / "Sentences" / "22.txt").write_text("[/EN#8/animals A dog] runs .\n" + line + "\n")
    with pytest.raises(FormatError) as exc:
        load_quietly(root)
    msg = str(exc.value)
    assert "22.txt:2" in msg and where in msg, msg
    assert exc.value.line == 2


@pytest.mark.parametrize("xml, where", [
    (ANNOTATION_2.replace("<xmin>5</xmin>", "<xmin>five</xmin>"), "object[0]/bndbox/xmin"),
    (ANNOTATION_2.replace("<ymax>6</ymax>", ""), "<ymax> in element object[0]/bndbox"),
    (ANNOTATION_2.replace("<name>8</name>", ""), "object[0] has no"),
    (ANNOTATION_2.replace("<name>8</name>", "<name>dog</name>"), "object[0]/name"),
    (ANNOTATION_2.replace("<xmax>5</xmax>", "<xmax>2</xmax>"), "object[0]/bndbox has max < min"),
    (ANNOTATION_2.replace("<scene>1</scene>", "<scene>yes</scene>"), "object[1]/scene"),
    (ANNOTATION_2.replace("<width>64</width>", "<width></width>"), "<width> in element size"),
])
def test_malformed_xml_names_file_and_element(tmp_path, xml, where):
    root = write_dataset(tmp_path)
    (root / "Annotations" / "22.xml").write_text(xml)
    with pytest.raises(FormatError) as exc:
        load_quietly(root)
    assert "22.xml" in str(exc.value) and where in str(exc.value), str(exc.value)


def test_invalid_xml_and_missing_size(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation>\n<size><width>3</width>\n</annotation>\n")
    with pytest.raises(FormatError, match=r"bad.xml:3: invalid XML"):
        parse_annotation(bad)
    nosize = tmp_path / "nosize.xml"
    nosize.write_text("<annotation><object><name>1</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax>"
                      "<ymax>4</ymax></bndbox></object></annotation>")
    with pytest.raises(FormatError, match="<size>"):
        parse_annotation(nosize)
    ann = parse_annotation(nosize, image_size=(10, 20))
    assert ann.image_size == (10, 20) and ann.boxes["1"].tolist() == [[0.0, 0.0, 4.0, 4.0]]


def test_parse_sentence_reference():
    toks, ents = parse_sentence("  [/EN#10/people/other Two  young men] sit by [/EN#0/notvisual it]  .  ")
    assert toks == ["Two", "young", "men", "sit", "by", "it", "."]
    assert ents == [("10", ("people", "other"), 0, ("Two", "young", "men")), ("0", ("notvisual",), 5, ("it",))]
    assert np.array_equal(parse_sentence("no phrases here")[0], ["no", "phrases", "here"])


def test_crlf_and_non_utf8(tmp_path):
    root = write_dataset(tmp_path)
    (root / "Sentences" / "22.txt").write_bytes(b"[/EN#8/animals A dog] runs .\r\n\r\n[/EN#6/scene The grass] .\r\n")
    caps, _ = load_quietly(root, split="test")
    assert [c.tokens for c in caps] == [("A", "dog", "runs", "."), ("The", "grass", ".")]
    (root / "Sentences" / "22.txt").write_bytes(b"[/EN#8/animals A d\xe9g] runs .\n")
    with pytest.raises(FormatError, match="22.txt: not UTF-8"):
        load_quietly(root, split="test")
