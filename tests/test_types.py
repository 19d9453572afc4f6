"""Types: validation, indexing, named selection on AttentionMap."""
import html

import numpy as np
import pytest
import torch

from attnlens.errors import ShapeError
from attnlens.types import AttentionMap, GroundedCaption, Phrase, Regions, Side


def test_regions_validate_and_index():
    r = Regions([[0, 0, 4, 4], [1, 1, 3, 5], [2, 2, 6, 6]], (8, 10), labels=["a", "b", "c"], scores=[0.1, 0.2, 0.3])
    sub = r[[2, 0]]
    assert isinstance(sub, Regions)
    assert sub.labels == ("c", "a")
    np.testing.assert_array_equal(sub.boxes, [[2, 2, 6, 6], [0, 0, 4, 4]])
    np.testing.assert_array_equal(sub.scores, [0.3, 0.1])
    assert r.image_size == (8, 10)
    np.testing.assert_array_equal(r.areas, [16, 8, 16])
    with pytest.raises(ValueError):  # read-only
        r.boxes[0, 0] = 5
    with pytest.raises(ShapeError, match=r"\(n, 4\)"):
        Regions([[0, 0, 1]], (4, 4))
    with pytest.raises(ShapeError, match="3 boxes but 2 labels"):
        Regions(r.boxes, (8, 10), labels=["a", "b"])
    with pytest.raises(ShapeError, match="NaN"):
        Regions([[0, 0, np.nan, 1]], (4, 4))


def test_grounded_caption_roundtrip_and_span_check():
    p = Phrase("3", ("people", "other"), 1, ("young", "man"), [[1, 2, 3, 4], [0, 0, 1, 1]])
    q = Phrase("0", ("notvisual",), 4, ("it",))
    c = GroundedCaption("img", "a young man sees it".split(), (p, q))
    assert c.phrase_for_token(2) is p and c.phrase_for_token(0) is None
    assert p.has_box and not q.has_box and q.boxes.shape == (0, 4)
    assert p.types == ("people", "other")
    with pytest.raises(ShapeError, match="does not match caption tokens"):
        GroundedCaption("img", ("a", "dog"), (p,))


def _amap():
    torch.manual_seed(0)
    w = torch.softmax(torch.randn(2, 3, 4, 5), -1)
    s = torch.randn(2, 3, 4, 5)
    regions = Regions(np.tile([[0, 0, 2, 2]], (5, 1)), (4, 4), labels=[f"r{i}" for i in range(5)])
    return AttentionMap(w, ("batch", "head", "word", "region"), scores=s,
                        query=Side("word", "text", ("a", "red", "<b>", "dog")),
                        key=Side("region", "image", regions=regions), alignment="dot", direction="t2i", site="attn")


def test_attention_map_named_selection_matches_positional():
    amap = _amap()
    assert amap.shape == {"batch": 2, "head": 3, "word": 4, "region": 5}
    dog = amap.sel(word="dog")
    assert dog.dims == ("batch", "head", "region")
    torch.testing.assert_close(dog.weights, amap.weights[:, :, 3])
    torch.testing.assert_close(dog.scores, amap.scores[:, :, 3])
    assert dog.meta["selected_word"] == "dog"
    h0 = amap.sel(head=0).mean("batch")
    torch.testing.assert_close(h0.weights, amap.weights[:, 0].mean(0))
    sub = amap.sel(word=["dog", "a"])
    assert sub.query.tokens == ("dog", "a")
    torch.testing.assert_close(sub.weights, amap.weights[:, :, [3, 0]])
    sl = amap.isel(region=slice(1, 3))
    assert sl.key.regions.labels == ("r1", "r2")
    assert sl.sel(region="r2").dims == ("batch", "head", "word")


def test_attention_map_errors_name_axes():
    amap = _amap()
    with pytest.raises(ShapeError, match="no axis 'words'"):
        amap.sel(words="dog")
    with pytest.raises(ShapeError, match="not a label"):
        amap.sel(word="cat")
    with pytest.raises(ShapeError, match="out of range"):
        amap.sel(head=7)
    with pytest.raises(ShapeError, match="name 3 axes"):
        AttentionMap(torch.zeros(2, 2), ("a", "b", "c"))
    with pytest.raises(ShapeError, match="has 2 tokens"):
        AttentionMap(torch.zeros(3, 4), ("word", "region"), query=Side("word", "text", ("a", "b")))


def test_attention_map_pandas_and_html_escape():
    amap = _amap().sel(batch=0, head=1)
    df = amap.to_pandas()
    assert len(df) == 4 * 5
    assert set(df.columns) >= {"word", "word_label", "region", "region_label", "weight", "score"}
    row = df[(df.word_label == "red") & (df.region == 2)]
    assert float(row.weight.iloc[0]) == pytest.approx(float(amap.weights[1, 2]))
    page = amap._repr_html_()
    assert "<b>" not in page.replace("<b>", "", 0) or html.escape("<b>") in page
    assert "&lt;b&gt;" in page
    assert "AttentionMap(word=4, region=5" in repr(amap)
