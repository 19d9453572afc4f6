"""Tests of the built-in grounded scenes: ground truth checked against the pixels."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from attnlens.data import scenes
from attnlens.data.scenes import (ANSWERS, COLOR_RGB, COLORS, NUMBERS, SHAPES, SIZES, VOCABULARY, SceneConfig,
                                  generate, generate_one, load_split)
from attnlens.data.scenes_proposals import match_proposals
from attnlens.errors import ShapeError, UnknownNameError
from attnlens.types import GroundedCaption, Phrase


@pytest.fixture(scope="module")
def samples():
    return generate(60, seed=11)


def _pixels_in_box(box, shape):
    """Slow reference of the pixel-centre rule: bool [H, W] of pixels inside ``box``."""
    h, w = shape
    out = np.zeros((h, w), dtype=bool)
    for v in range(h):
        for u in range(w):
            out[v, u] = box[0] <= u + 0.5 < box[2] and box[1] <= v + 0.5 < box[3]
    return out


def _colour_mask(image, color):
    return (image == np.array(COLOR_RGB[color], dtype=np.uint8)).all(axis=-1)


def test_constants():
    assert len(SHAPES) >= 3 and len(COLORS) >= 4 and SIZES == ("small", "large")
    assert len({COLOR_RGB[c] for c in COLORS}) == len(COLORS)
    assert len(set(VOCABULARY)) == len(VOCABULARY) and set(ANSWERS) <= set(VOCABULARY)
    for c in COLORS:  # far from any grey level of the background
        rgb = np.array(COLOR_RGB[c])
        assert rgb.max() - rgb.min() > 60


def test_same_seed_identical_different_seed_differs():
    a, b = generate(8, seed=3), generate(8, seed=3)
    c = generate(8, seed=4)
    for x, y in zip(a, b):
        assert x.image.tobytes() == y.image.tobytes()
        assert [cap.tokens for cap in x.captions] == [cap.tokens for cap in y.captions]
        assert np.array_equal(x.regions.boxes, y.regions.boxes)
        assert [q.tokens for q in x.questions] == [q.tokens for q in y.questions]
    assert any(x.image.tobytes() != z.image.tobytes() for x, z in zip(a, c))
    # sample i does not depend on n, and generate_one gives the same sample
    assert generate(3, seed=3)[2].image.tobytes() == a[2].image.tobytes()
    assert generate_one(5, seed=3).image.tobytes() == a[5].image.tobytes()


def test_images(samples):
    for s in samples:
        assert s.image.dtype == np.uint8 and s.image.shape == (64, 64, 3)
        assert not s.image.flags.writeable
        assert 2 <= len(s.objects) <= 6
        assert [o.object_id for o in s.objects] == list(range(len(s.objects)))
        # (shape, colour) pairs unique in a scene
        assert len({(o.shape, o.color) for o in s.objects}) == len(s.objects)
        # object map agrees with the colours; background is grey
        for o in s.objects:
            assert (s.image[s.object_map == o.object_id] == np.array(o.rgb, np.uint8)).all()
        bg = s.image[s.object_map == -1].astype(int)
        assert (bg[:, 0] == bg[:, 1]).all() and (bg[:, 1] == bg[:, 2]).all()


def test_object_boxes_contain_their_objects_by_colour(samples):
    for s in samples[:20]:
        for o in s.objects:
            inside = _pixels_in_box(o.box, s.image_size)
            col = _colour_mask(s.image, o.color)
            own = s.object_map == o.object_id
            assert own.any() and (own <= inside).all(), "box must contain every pixel of its object"
            # by colour alone: the object's colour fills a good part of the box ...
            frac = col[inside].mean()
            assert frac >= 0.3, (o, frac)
            # ... and the box is tight: each border row/column of the box shows the colour
            r0, c0, r1, c1 = int(o.box[1]), int(o.box[0]), int(o.box[3]), int(o.box[2])
            for edge in (col[r0, c0:c1], col[r1 - 1, c0:c1], col[r0:r1, c0], col[r0:r1, c1 - 1]):
                assert edge.any()


def test_captions_are_grounded(samples):
    for s in samples:
        assert len(s.captions) == 5
        for cap in s.captions:
            assert isinstance(cap, GroundedCaption) and cap.image_id == s.image_id
            assert cap.image_size == (64, 64)
            assert set(cap.tokens) <= set(VOCABULARY)
            assert 1 <= len(cap.phrases) <= 3
            assert len({p.entity_id for p in cap.phrases}) == len(cap.phrases)  # distinct objects
            for p in cap.phrases:
                obj = s.objects[int(p.entity_id)]
                assert p.types == (obj.shape,)
                assert p.boxes.shape == (1, 4) and np.array_equal(p.boxes[0], obj.box)
                assert cap.tokens[p.first_token:p.first_token + len(p.tokens)] == p.tokens
                # the phrase's words describe its object, and no other object
                words = set(p.tokens)
                assert obj.shape in words
                assert words & set(COLORS) <= {obj.color} and words & set(SIZES) <= {obj.size}
                fits = [o for o in s.objects if o.shape in words and (words & set(COLORS) <= {o.color})
                        and (words & set(SIZES) <= {o.size})]
                assert fits == [obj]
                # the box really holds pixels of the phrase's colour
                r0, r1, c0, c1 = (int(v) for v in (p.boxes[0, 1], p.boxes[0, 3], p.boxes[0, 0], p.boxes[0, 2]))
                assert _colour_mask(s.image, obj.color)[r0:r1, c0:c1].mean() >= 0.3


def test_relations_match_geometry(samples):
    rels = {("left", "of"): (0, -1), ("right", "of"): (0, 1), ("above",): (1, -1), ("below",): (1, 1)}
    seen = 0
    for s in samples:
        for cap in s.captions:
            if len(cap.phrases) < 2:
                continue
            a, b = cap.phrases[:2]
            link = cap.tokens[a.first_token + len(a.tokens):b.first_token]
            if len(cap.phrases) == 3:  # a third object is joined by "and"
                c = cap.phrases[2]
                assert cap.tokens[b.first_token + len(b.tokens):c.first_token] == ("and",)
            if link == ("and",):
                continue
            axis, sign = rels[link]
            ca = (a.boxes[0, :2] + a.boxes[0, 2:]) / 2
            cb = (b.boxes[0, :2] + b.boxes[0, 2:]) / 2
            d = ca - cb
            assert np.sign(d[axis]) == sign and abs(d[axis]) >= abs(d[1 - axis])
            seen += 1
    assert seen > 30


def test_distractors_make_binding_matter(samples):
    shared = total = 0
    for s in samples:
        for cap in s.captions:
            for p in cap.phrases:
                obj = s.objects[int(p.entity_id)]
                total += 1
                shared += any(o is not obj and (o.color == obj.color or o.shape == obj.shape) for o in s.objects)
    assert shared / total > 0.7


def _reference_labels(props, objs):
    out = []
    for p in props:
        best, best_iou, part, part_iou = -1, 0.0, -1, -1.0
        pa = max(p[2] - p[0], 0) * max(p[3] - p[1], 0)
        for k, o in enumerate(objs):
            iw = max(min(p[2], o[2]) - max(p[0], o[0]), 0)
            ih = max(min(p[3], o[3]) - max(p[1], o[1]), 0)
            inter = iw * ih
            oa = (o[2] - o[0]) * (o[3] - o[1])
            iou = inter / (pa + oa - inter) if pa + oa - inter > 0 else 0.0
            if iou > best_iou:
                best, best_iou = k, iou
            if pa > 0 and inter >= 0.8 * pa and pa >= 0.25 * oa and iou > part_iou:
                part, part_iou = k, iou
        out.append(best if best_iou >= 0.5 else part)
    return out


def test_proposals(samples):
    kinds = set()
    for s in samples:
        R = len(s.regions)
        assert R == 16 and s.proposal_object.shape == (16,)
        assert list(s.regions.labels) == s.proposal_object.tolist()
        assert s.proposal_object.tolist() == _reference_labels(s.regions.boxes, s.boxes)
        b = s.regions.boxes
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= 64).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= 64).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        for o in s.objects:  # each object's own box is a proposal
            assert any(np.array_equal(o.box, r) for r in b)
        for r, k in zip(b, s.proposal_object):
            if k >= 0:  # matched proposals overlap their object
                o = s.objects[k].box
                inter = max(min(r[2], o[2]) - max(r[0], o[0]), 0) * max(min(r[3], o[3]) - max(r[1], o[1]), 0)
                assert inter >= 0.25 * (o[2] - o[0]) * (o[3] - o[1]) * 0.8
        kinds.update(s.proposal_kind)
        assert (s.regions.scores > 0).all() and (s.regions.scores <= 1).all()
    assert kinds == {"object", "jitter", "part", "background"}
    # not sorted: the exact boxes are shuffled among the proposals
    assert len({s.proposal_kind.index("object") for s in samples}) > 3


def test_match_proposals_known_answers():
    objs = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=float)
    props = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 4], [20, 20, 25, 30], [40, 40, 50, 50],
                      [0, 0, 2, 2]], dtype=float)
    assert match_proposals(props, objs).tolist() == [0, 0, 0, 1, -1, -1]
    assert match_proposals(props, np.zeros((0, 4))).tolist() == [-1] * 6


def _solve(question, objects):
    """Reference answers computed from the token templates."""
    t = question.tokens
    if t[:3] == ("what", "color", "is"):
        hits = [o for o in objects if o.shape == t[4]]
        return (hits[0].color if len(hits) == 1 else None), hits
    if t[:3] == ("what", "shape", "is"):
        hits = [o for o in objects if o.color == t[4]]
        return (hits[0].shape if len(hits) == 1 else None), hits
    if t[:3] == ("what", "size", "is"):
        hits = [o for o in objects if o.color == t[4] and o.shape == t[5]]
        return (hits[0].size if len(hits) == 1 else None), hits
    if t[:2] == ("is", "there"):
        hits = [o for o in objects if o.color == t[3] and o.shape == t[4]]
        return ("yes" if hits else "no"), hits
    if t[:2] == ("how", "many"):
        if t[3] == "objects":
            hits = [o for o in objects if o.color == t[2]]
        else:
            hits = [o for o in objects if o.shape + "s" == t[2]]
        return NUMBERS[len(hits)], hits
    raise AssertionError(f"unknown question {t}")


def test_questions_consistent(samples):
    answers = []
    for s in samples:
        assert 1 <= len(s.questions) <= 4
        assert len({q.tokens for q in s.questions}) == len(s.questions)
        for q in s.questions:
            assert set(q.tokens) <= set(VOCABULARY) and q.answer in ANSWERS
            expected, hits = _solve(q, s.objects)
            assert expected is not None and q.answer == expected, q
            assert list(q.object_ids) == [o.object_id for o in hits]
            assert q.boxes.shape == (len(hits), 4)
            for b, o in zip(q.boxes, hits):
                assert np.array_equal(b, o.box)
            answers.append(q.answer)
    assert {"yes", "no"} <= set(answers)
    assert len(set(answers) & set(COLORS)) >= 3 and len(set(answers) & set(SHAPES)) >= 3


def test_phrase_and_boxes_round_trip_through_types(samples):
    cap = samples[0].captions[0]
    rebuilt = GroundedCaption(cap.image_id, list(cap.tokens),
                              [Phrase(p.entity_id, p.types, p.first_token, p.tokens, p.boxes.tolist())
                               for p in cap.phrases], cap.image_size)
    assert rebuilt.tokens == cap.tokens
    for p, q in zip(rebuilt.phrases, cap.phrases):
        assert np.array_equal(p.boxes, q.boxes) and p.span == q.span and p.entity_id == q.entity_id
    sub = samples[0].regions[[0, 2]]
    assert np.array_equal(sub.boxes, samples[0].regions.boxes[[0, 2]])
    assert sub.labels == (samples[0].regions.labels[0], samples[0].regions.labels[2])


def test_options_and_occlusion():
    s = generate(20, seed=2, image_size=96, n_regions=36, max_objects=8, min_objects=4, captions_per_image=2,
                 questions_per_image=6)
    assert all(x.image.shape == (96, 96, 3) and len(x.regions) == 36 and len(x.captions) == 2 for x in s)
    assert max(len(x.objects) for x in s) >= 6 and max(len(x.questions) for x in s) == 6
    occ = generate(40, seed=5, occlusion=True, min_objects=5, max_objects=6)
    vis = np.array([o.visible for x in occ for o in x.objects])
    assert (vis > 0.3).all() and (vis <= 1).all() and (vis < 1).any()
    for x in occ:
        for a in x.objects:  # objects of one colour never touch (they would read as one blob)
            for b in x.objects[a.object_id + 1:]:
                if a.color == b.color:
                    assert min(a.box[2], b.box[2]) <= max(a.box[0], b.box[0]) or \
                        min(a.box[3], b.box[3]) <= max(a.box[1], b.box[1])
        for o in x.objects:
            assert (x.object_map == o.object_id).any()
            assert ((x.object_map == o.object_id) <= _pixels_in_box(o.box, x.image_size)).all()
    flat = generate(2, seed=0, noise=0)[0]
    bg = flat.image[flat.object_map == -1]
    assert len(np.unique(bg, axis=0)) == 1


def test_bad_options():
    with pytest.raises(UnknownNameError, match="image_sise"):
        generate(1, image_sise=64)
    with pytest.raises(ShapeError, match="n_regions"):
        generate(1, n_regions=40)
    with pytest.raises(ShapeError, match="min_objects"):
        SceneConfig(min_objects=5, max_objects=3)
    with pytest.raises(ShapeError):
        SceneConfig(image_size=10)


def test_load_split():
    a = load_split("val", 5)
    assert len(a) == 5 and a[0] is load_split("val", 5)[0]  # cached
    assert [x.image.tobytes() for x in a] == [x.image.tobytes() for x in load_split("val", 3) + a[3:]]
    t = load_split("test", 5)
    assert not any(x.image.tobytes() == y.image.tobytes() for x in a for y in t)
    assert load_split("val", 2, seed=1)[0].image.tobytes() != a[0].image.tobytes()
    assert scenes.SPLITS == {"train": 2000, "val": 200, "test": 200}
    assert len(load_split("test")) == 200
    with pytest.raises(UnknownNameError, match="valid"):
        load_split("dev")


def test_caption_sizes_follow_the_rates():
    """single_rate / triple_rate set how many objects captions name; 1.0 forces the size."""
    from attnlens.data.scenes import generate

    def sizes(**options):
        return Counter(len(c.phrases) for s in generate(60, seed=3, **options) for c in s.captions)

    assert set(sizes(single_rate=1.0, triple_rate=0.0)) == {1}
    assert set(sizes(single_rate=0.0, triple_rate=0.0)) == {2}
    three = sizes(single_rate=0.0, triple_rate=1.0, min_objects=3)
    assert set(three) == {3}
    default = sizes()
    assert default[1] < 0.12 * sum(default.values()) and default[3] > 0.3 * sum(default.values())
    with pytest.raises(ShapeError, match="single_rate"):
        generate(1, single_rate=0.6, triple_rate=0.6)


def test_match_proposals_against_loop_reference():
    """The vectorised matcher (rewritten for speed, issue #16) agrees with the rules read as a loop."""
    def ref(props, objs):
        out = []
        for p in props:
            pa = max(p[2] - p[0], 0) * max(p[3] - p[1], 0)
            ious, parts = [], []
            for o in objs:
                oa = max(o[2] - o[0], 0) * max(o[3] - o[1], 0)
                inter = max(min(p[2], o[2]) - max(p[0], o[0]), 0) * max(min(p[3], o[3]) - max(p[1], o[1]), 0)
                union = pa + oa - inter
                ious.append(inter / union if union > 0 else 0.0)
                parts.append(inter >= 0.8 * pa and pa >= 0.25 * oa and pa > 0)
            best = int(np.argmax(ious)) if ious else -1
            if ious and ious[best] >= 0.5:
                out.append(best)
            elif any(parts):
                out.append(max((i for i in range(len(objs)) if parts[i]), key=lambda i: (ious[i], -i)))
            else:
                out.append(-1)
        return out

    rng = np.random.default_rng(16)
    for _ in range(300):
        r, n = int(rng.integers(0, 12)), int(rng.integers(0, 5))
        props = rng.integers(0, 16, (r, 4)).astype(float)
        props[:, 2:] = np.maximum(props[:, 2:], props[:, :2]) + rng.integers(0, 4, (r, 2))
        objs = rng.integers(0, 16, (n, 4)).astype(float)
        objs[:, 2:] = np.maximum(objs[:, 2:], objs[:, :2]) + rng.integers(1, 4, (n, 2))
        assert match_proposals(props, objs).tolist() == (ref(props, objs) if n else [-1] * r)
