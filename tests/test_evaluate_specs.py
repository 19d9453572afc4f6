"""Ready specs: BLIP on pixels with every explainer, ViLT with its own image processor (patch
cells mapped back through the processor's resize and pad), the spec registry."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import attnlens
from attnlens.errors import RegistryError
from attnlens.evaluate import EvalItem
from attnlens.evaluate.specs.pixels import BlipSpec, ViltSpec
from attnlens.evaluate.task import SpecTask

from evaluate_fixtures import write_flickr30k
from tiny_models import tiny_blip  # noqa: E402

transformers = pytest.importorskip("transformers")


def test_blip_itm_with_explainers(tmp_path):
    torch.manual_seed(0)
    model = tiny_blip(vision_layers=2)
    root = write_flickr30k(tmp_path / "f30k", n_images=1)
    res = attnlens.evaluate(model, root, spec="blip", explainers=("raw", "gradient_weighted"), out=tmp_path / "out",
                            settings={"steps": 4, "n_subsets": 5}, n_boot=200, gallery=1)
    pg = res.metrics.query("metric == 'pointing_game'").set_index("alignment")
    assert pg.loc["raw", "n"] == pg.loc["gradient_weighted", "n"] == 3
    # the scored output is the ITM match logit of the example
    item = attnlens.evaluate.load_data(root)[0]
    spec = BlipSpec()
    with torch.no_grad():
        logit = model(**spec.inputs(model, item)).itm_score[0, 1]
    ex = attnlens.study.units.load_examples(tmp_path / "out" / "units" / "blip" / "raw" / "seed0")[0]
    assert ex["output"] == pytest.approx(float(logit), abs=1e-6)


def test_vilt_with_its_image_processor_maps_cells_to_the_original_image():
    torch.manual_seed(0)
    cfg = transformers.ViltConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                  image_size=32, patch_size=8, max_image_length=-1, vocab_size=100,
                                  max_position_embeddings=40)
    model = transformers.ViltForImageAndTextRetrieval(cfg).eval()
    proc = SimpleNamespace(image_processor=transformers.ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=8))
    img = np.random.default_rng(0).integers(0, 255, (30, 70, 3), dtype=np.uint8)
    item = EvalItem("i/0", ("a", "dog"), (), (30, 70), image=img)
    spec = ViltSpec(processor=proc)
    inputs = spec.inputs(model, item)
    regions = spec.regions(model, item, inputs)
    rows, cols = inputs["pixel_values"].shape[-2] // 8, inputs["pixel_values"].shape[-1] // 8
    assert len(regions) == rows * cols
    b = regions.boxes
    area = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    assert area.sum() == pytest.approx(30 * 70, rel=1e-6)  # the kept cells tile the original image
    assert b[:, 2].max() == pytest.approx(70) and b[:, 3].max() == pytest.approx(30)
    ex = SpecTask(spec, [item], "raw", model=model).example(model, 0)
    assert ex.attention.weights.shape == (2, rows * cols)


def test_spec_registry():
    assert {"blip", "lxmert", "module", "scan", "vilt", "visualbert"} <= set(attnlens.evaluate.available_specs())
    with pytest.raises(RegistryError):
        attnlens.evaluate.register_spec("vilt", ViltSpec)


def test_rcar_on_precomputed_features(tmp_path):
    from attnlens.evaluate.specs.scan import PrecomputedScan
    from attnlens.models.rcar import RCARSimilarity

    from evaluate_fixtures import FEAT_DIM

    root = write_flickr30k(tmp_path / "f30k", n_images=2)
    torch.manual_seed(0)
    model = PrecomputedScan(vocab_size=40, img_dim=FEAT_DIM, embed_size=8, word_dim=8,
                            sim=RCARSimilarity(8, 4, mode="rcar", steps=2)).eval()
    res = attnlens.evaluate(model, root, spec="scan", explainers=("raw", "rollout"), out=tmp_path / "out",
                            settings={"steps": 4, "n_subsets": 5, "gradient_agreement": ("input_x_gradient",)},
                            n_boot=200, gallery=1)
    m = res.metrics.set_index(["alignment", "metric"])
    assert m.loc[("raw", "pointing_game"), "n"] == 6
    assert np.isfinite(m.loc[("raw", "ixg_kendall_tau"), "mean"])  # gradient agreement through feature_forward


def tiny_llava():
    T = transformers
    torch.manual_seed(0)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                vocab_size=100, max_position_embeddings=256)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32,
                  patch_size=8)
    cfg = T.LlavaConfig(vision_config=T.CLIPVisionConfig(**vision), text_config=T.LlamaConfig(**text),
                        image_token_id=99)
    return T.LlavaForConditionalGeneration(cfg).eval()


def test_llava_describing_and_answering(tmp_path):
    from attnlens.evaluate.specs.llava import LlavaSpec

    model = tiny_llava()
    root = write_flickr30k(tmp_path / "f30k", n_images=2)
    res = attnlens.evaluate(model, root, spec="llava", explainers=("raw:layer=0",), out=tmp_path / "out",
                            settings={"steps": 4, "n_subsets": 5}, n_boot=200, gallery=1)
    assert res.metrics.query("metric == 'pointing_game' and alignment == 'raw:layer=0'")["n"].iloc[0] == 6
    # the scored output: mean log-probability of the answer's tokens after the question (teacher forcing),
    # recomputed here token by token
    img = np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    item = EvalItem("q/0", ("what", "is", "it"), (), (40, 40), image=img, meta={"answer": "a dog"})
    spec = LlavaSpec()
    inputs = spec.inputs(model, item)
    ids = inputs["input_ids"][0].tolist()
    assert ids[1:17] == [99] * 16 and len(ids) == 1 + 16 + 3 + 2
    with torch.no_grad():
        logits = model(**inputs).logits[0].float()
    expected = np.mean([float(torch.log_softmax(logits[p - 1], -1)[ids[p]]) for p in (len(ids) - 2, len(ids) - 1)])
    assert float(spec.score(model, inputs, item)[0]) == pytest.approx(expected, abs=1e-5)
    w = spec.attention(model, item, inputs, "raw")  # text rows (BOS, 3 words, 2 answer words) x 16 image tokens
    assert w.shape == (6, 16)
    assert spec.word_positions(model, item, inputs) == [[1], [2], [3]]


def test_clip_similarity_raw_and_rollout(tmp_path):
    from attnlens.evaluate.specs.clip import ClipSpec, rollout_row

    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=100, max_position_embeddings=32),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8), projection_dim=8)
    model = transformers.CLIPModel(cfg).eval()
    root = write_flickr30k(tmp_path / "f30k", n_images=2)
    res = attnlens.evaluate(model, root, spec="clip", explainers=("raw", "rollout"), out=tmp_path / "out",
                            settings={"steps": 4, "n_subsets": 5}, n_boot=200, gallery=1)
    assert set(res.metrics.query("metric == 'pointing_game'")["alignment"]) >= {"raw", "rollout"}
    # raw: the [CLS] row over the patches of the last layer, from the model's own attentions
    item = attnlens.evaluate.load_data(root)[0]
    spec = ClipSpec()
    inputs = spec.inputs(model, item)
    eager = transformers.CLIPModel(cfg).eval()
    eager.load_state_dict(model.state_dict())
    eager.config._attn_implementation = "eager"
    for m in eager.modules():
        if hasattr(getattr(m, "config", None), "_attn_implementation_internal"):
            m.config._attn_implementation_internal = "eager"
    with torch.no_grad():
        att = eager.vision_model(pixel_values=inputs["pixel_values"], output_attentions=True).attentions
    torch.testing.assert_close(spec.attention(model, item, inputs, "raw")[0], att[-1][0].mean(0)[0, 1:],
                               atol=1e-6, rtol=1e-5)
    # rollout against the loops of the definition
    a = [x[0].mean(0).double() for x in att]
    joint = [[float(i == j) for j in range(17)] for i in range(17)]
    for layer in a:
        h = (0.5 * layer + 0.5 * torch.eye(17, dtype=torch.float64)).tolist()
        h = [[v / sum(row) for v in row] for row in h]
        joint = [[sum(h[i][k] * joint[k][j] for k in range(17)) for j in range(17)] for i in range(17)]
    torch.testing.assert_close(rollout_row(a, 0), torch.tensor(joint[0], dtype=torch.float64))


def test_refcoco_through_evaluate(tmp_path):
    import json

    import cv2

    root = tmp_path / "refcoco"
    (root / "images").mkdir(parents=True)
    images = [{"id": 1, "height": 40, "width": 60, "file_name": "a.jpg"}, {"id": 2, "height": 30, "width": 30,
                                                                           "file_name": "b.jpg"}]
    for im in images:
        cv2.imwrite(str(root / "images" / im["file_name"]), np.zeros((im["height"], im["width"], 3), np.uint8))
    (root / "instances.json").write_text(json.dumps({
        "images": images, "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 40]},
                        {"id": 11, "image_id": 1, "category_id": 18, "bbox": [30, 10, 20, 20]},
                        {"id": 12, "image_id": 2, "category_id": 18, "bbox": [5, 5, 10, 10]}]}))
    (root / "refs(unc).json").write_text(json.dumps([
        {"ref_id": 0, "ann_id": 11, "image_id": 1, "split": "testA", "category_id": 18,
         "sentences": [{"sent_id": 0, "tokens": ["dog", "on", "the", "right"]}]},
        {"ref_id": 2, "ann_id": 12, "image_id": 2, "split": "testA", "category_id": 18,
         "sentences": [{"sent_id": 3, "raw": "small dog"}]}]))
    items = attnlens.evaluate.load_data(root)
    assert [it.item_id for it in items] == ["1/0", "2/0"]
    assert items[0].targets[0].boxes.tolist() == [[30.0, 10.0, 50.0, 30.0]]
    assert items[0].targets[0].tokens == (0, 1, 2, 3)
    torch.manual_seed(0)
    cfg = transformers.ViltConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                  image_size=32, patch_size=8, max_image_length=-1, vocab_size=100,
                                  max_position_embeddings=40)
    res = attnlens.evaluate(transformers.ViltForImageAndTextRetrieval(cfg).eval(), root, spec="vilt",
                            out=tmp_path / "out", settings={"steps": 4, "n_subsets": 5}, n_boot=200, gallery=1)
    assert res.metrics.query("metric == 'pointing_game' and alignment == 'raw'")["n"].iloc[0] == 2


def test_shipped_matching_checkpoint_is_the_built_in_task(tmp_path):
    """One path: on the built-in scenes, evaluate's maps, outputs and removal scores of a shipped
    SCAN checkpoint are those of the study's matching task."""
    from pathlib import Path

    from attnlens.data.scenes import load_split
    from attnlens.evaluate.specs.matching import MatchingSpec
    from attnlens.tasks import get_task

    ckpt = Path(__file__).resolve().parents[1] / "assets" / "checkpoints" / "matching-general-seed0"
    task = get_task("matching")
    model = task.load(ckpt)
    builtin = task.analysis_examples(model, n=2, split="test")
    items = {it.item_id: i for i, it in enumerate(attnlens.evaluate.as_items(load_split("test", 2)))}
    spec_task = SpecTask(MatchingSpec(), attnlens.evaluate.as_items(load_split("test", 2)), "raw", model=model)
    keep = torch.rand(4, len(builtin[0].regions), generator=torch.Generator().manual_seed(0)) > 0.5
    for b in builtin:
        e = spec_task.example(model, items[b.example_id])
        torch.testing.assert_close(e.attention.weights, b.attention.weights, atol=1e-6, rtol=1e-5)
        assert e.output == pytest.approx(b.output, abs=1e-7)
        zero = torch.zeros(4, dtype=torch.long)
        for removal in ("mask", "zero", "mean"):
            torch.testing.assert_close(spec_task.scorer(model, [e], removal=removal)(keep, zero),
                                       task.scorer(model, [b], removal=removal)(keep, zero))
    data = attnlens.evaluate.as_items(load_split("test", 1))
    res = attnlens.evaluate(model, data, spec="matching", explainers=("raw", "gradient_weighted"), out=tmp_path / "o",
                            settings={"steps": 4, "n_subsets": 5}, n_boot=200, gallery=1)
    assert res.metrics.query("metric == 'pointing_game' and alignment == 'raw'")["n"].iloc[0] > 0
    from attnlens.evaluate.cli_load import load_model

    loaded, spec = load_model(str(ckpt))  # what attnlens evaluate --model assets/checkpoints/matching-... loads
    assert spec.name == "matching" and type(loaded).__name__ == "MatchingModel"
