"""Datasets: the built-in grounded scenes and loaders for real formats.

* :mod:`attnlens.data.scenes` - the built-in grounded scenes (default dataset).
* :func:`load_flickr30k_entities` - Flickr30K Entities sentences + annotations.
* :func:`load_coco` - COCO captions + instances (needs ``pycocotools``, extra ``coco``).
* :func:`load_precomputed` - precomputed region features in SCAN's layout (memory-mapped).
* :func:`load_easy_vqa` - easy-VQA from the ``easy-vqa`` package (extra ``easyvqa``).
* :func:`load_refcoco`, :func:`load_mdetr_refexp` - RefCOCO/RefCOCO+/RefCOCOg referring expressions (JSON).
* :func:`load_vqa_grounding` - VQA with answer-grounding masks (VizWiz-VQA-Grounding layout).
* :class:`Vocabulary`, :func:`pad_sequences`, :func:`collate_scenes` - text ids and batching.
"""
from __future__ import annotations

from . import scenes
from .batching import QuestionBatch, SceneBatch, collate_questions, collate_scenes, pad_sequences
from .coco import CocoCaption, load_coco
from .easy_vqa import EasyVQAItem, load_easy_vqa
from .flickr30k_entities import load_flickr30k_entities, parse_annotation, parse_sentences
from .refcoco import ReferringExpression, load_mdetr_refexp, load_refcoco
from .vqa_grounding import GroundedAnswer, load_vqa_grounding, mask_boxes
from .precomputed import PrecomputedItem, PrecomputedSplit, load_precomputed
from .scenes import SceneConfig, SceneSample, load_split
from .vocab import Vocabulary, scenes_vocabulary, simple_tokenize, word_spans

__all__ = [
    "scenes", "SceneConfig", "SceneSample", "load_split",
    "Vocabulary", "scenes_vocabulary", "simple_tokenize",
    "pad_sequences", "collate_scenes", "collate_questions", "SceneBatch", "QuestionBatch",
    "load_flickr30k_entities", "parse_sentences", "parse_annotation",
    "load_coco", "CocoCaption", "load_precomputed", "PrecomputedSplit", "PrecomputedItem",
    "load_easy_vqa", "EasyVQAItem", "load_refcoco", "load_mdetr_refexp", "ReferringExpression",
    "load_vqa_grounding", "GroundedAnswer", "mask_boxes", "word_spans",
]
