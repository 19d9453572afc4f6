"""Padding and collation of scenes into tensors for the models.

Axes: ``B`` samples, ``R`` regions (the largest count in the batch), ``L`` tokens (the longest
text in the batch), images ``[B, 3, H, W]`` float32 in ``[0, 1]``. Padded regions have
``region_mask == False`` and a zero box; padded tokens have the vocabulary's pad id.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import DTypeError, ShapeError
from ..params import int_param
from ..types import GroundedCaption
from .vocab import Vocabulary


def pad_sequences(seqs: Sequence[Sequence[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id sequences into a ``long [B, L]`` tensor; returns ``(ids, lengths [B])``.

    >>> ids, lengths = pad_sequences([[5, 6, 7], [8]])
    >>> ids.tolist(), lengths.tolist()
    ([[5, 6, 7], [8, 0, 0]], [3, 1])
    """
    pad = int_param(pad, "pad", "pad_sequences")
    seqs = list(seqs)
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    L = int(lengths.max()) if len(seqs) else 0
    ids = torch.full((len(seqs), L), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            arr = np.asarray(list(s))
            if arr.dtype.kind not in "iu" or arr.ndim != 1:
                raise DTypeError(f"pad_sequences: sequence {i} must hold integer ids, got {list(s)[:5]!r}")
            ids[i, :len(s)] = torch.from_numpy(arr.astype(np.int64))
    return ids, lengths


@dataclass
class SceneBatch:
    """A batch of scenes with one caption each.

    Attributes:
        images: ``float32 [B, 3, H, W]`` in ``[0, 1]``.
        boxes: ``float32 [B, R, 4]`` xyxy region boxes (pixels), zero for padding.
        region_mask: ``bool [B, R]``, True for real regions.
        region_object: ``long [B, R]`` matched object id of each region, -1 for none / padding.
        tokens: ``long [B, L]`` caption ids (padded with the pad id).
        lengths: ``long [B]`` caption lengths.
        captions: the chosen caption of each sample.
        samples: the samples.
        caption_index: ``long [B]`` which caption of each sample was taken.
    """

    images: torch.Tensor
    boxes: torch.Tensor
    region_mask: torch.Tensor
    region_object: torch.Tensor
    tokens: torch.Tensor
    lengths: torch.Tensor
    captions: list
    samples: list
    caption_index: torch.Tensor

    def __len__(self) -> int:
        return len(self.samples)


@dataclass
class QuestionBatch:
    """A batch of scenes with one question each (VQA).

    Attributes:
        images, boxes, region_mask, region_object: as in :class:`SceneBatch`.
        tokens: ``long [B, L]`` question ids; lengths ``long [B]``.
        answers: ``long [B]`` index of each answer in ``answer_vocab``.
        questions: the chosen :class:`~attnlens.data.scenes.QuestionAnswer` s.
        samples: the samples.
    """

    images: torch.Tensor
    boxes: torch.Tensor
    region_mask: torch.Tensor
    region_object: torch.Tensor
    tokens: torch.Tensor
    lengths: torch.Tensor
    answers: torch.Tensor
    questions: list
    samples: list

    def __len__(self) -> int:
        return len(self.samples)


def _images_and_regions(samples):
    if not samples:
        raise ShapeError("cannot collate an empty batch")
    shapes = {s.image.shape for s in samples}
    if len(shapes) != 1:
        raise ShapeError(f"images of one batch must share a shape, got {sorted(shapes)}")
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float().div_(255.0)
    R = max(len(s.regions) for s in samples)
    boxes = torch.zeros(len(samples), R, 4, dtype=torch.float32)
    mask = torch.zeros(len(samples), R, dtype=torch.bool)
    obj = torch.full((len(samples), R), -1, dtype=torch.long)
    for i, s in enumerate(samples):
        r = len(s.regions)
        boxes[i, :r] = torch.from_numpy(np.asarray(s.regions.boxes, dtype=np.float32))
        mask[i, :r] = True
        po = getattr(s, "proposal_object", None)
        if po is not None:
            obj[i, :r] = torch.from_numpy(np.array(po, dtype=np.int64))
    return images.contiguous(), boxes, mask, obj


def _indices(index, n: int, counts: list[int], what: str) -> list[int]:
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        idx = [int(index)] * n
    elif isinstance(index, (str, bytes)) or not hasattr(index, "__iter__"):
        raise DTypeError(f"{what} must be an int or a sequence of ints, got {type(index).__name__} {index!r}")
    else:
        idx = [int_param(i, f"{what}[{k}]", "collate") for k, i in enumerate(index)]
    if len(idx) != n:
        raise ShapeError(f"{what}: got {len(idx)} indices for {n} samples")
    for i, (k, c) in enumerate(zip(idx, counts)):
        if not -c <= k < c:
            raise ShapeError(f"{what} {k} out of range for sample {i}, which has {c}")
    return [k % c for k, c in zip(idx, counts)]


def collate_scenes(samples: Sequence, vocab: Vocabulary, *,
                   caption_index: int | Sequence[int] = 0) -> SceneBatch:
    """Collate scenes and one caption of each into tensors.

    Args:
        samples: :class:`~attnlens.data.scenes.SceneSample` s (same image size).
        vocab: the vocabulary that encodes the captions.
        caption_index: which caption of every sample (an int) or of each sample (a sequence).

    >>> from attnlens.data import scenes, vocab
    >>> b = collate_scenes(scenes.generate(2), vocab.scenes_vocabulary(), caption_index=[0, 1])
    >>> b.images.shape, b.boxes.shape, b.tokens.shape[0]
    (torch.Size([2, 3, 64, 64]), torch.Size([2, 16, 4]), 2)
    """
    samples = list(samples)
    images, boxes, mask, obj = _images_and_regions(samples)
    idx = _indices(caption_index, len(samples), [len(s.captions) for s in samples], "caption_index")
    captions: list[GroundedCaption] = [s.captions[k] for s, k in zip(samples, idx)]
    tokens, lengths = pad_sequences([vocab.encode(c.tokens) for c in captions], vocab.pad_id)
    return SceneBatch(images, boxes, mask, obj, tokens, lengths, captions, samples,
                      torch.tensor(idx, dtype=torch.long))


def collate_questions(samples: Sequence, vocab: Vocabulary, *, question_index: int | Sequence[int] = 0,
                      answer_vocab: Sequence[str] | None = None) -> QuestionBatch:
    """Collate scenes and one question of each (for VQA).

    Args:
        samples: scene samples with questions.
        vocab: the vocabulary that encodes the questions.
        question_index: which question of every sample (int) or of each sample (sequence).
        answer_vocab: the answer classes (default ``scenes.ANSWERS``).

    >>> from attnlens.data import scenes, vocab
    >>> b = collate_questions(scenes.generate(2), vocab.scenes_vocabulary())
    >>> b.answers.shape, b.tokens.shape[0]
    (torch.Size([2]), 2)
    """
    from .scenes_spec import ANSWERS

    answer_vocab = list(ANSWERS if answer_vocab is None else answer_vocab)
    lookup = {a: i for i, a in enumerate(answer_vocab)}
    samples = list(samples)
    images, boxes, mask, obj = _images_and_regions(samples)
    idx = _indices(question_index, len(samples), [len(s.questions) for s in samples], "question_index")
    questions = [s.questions[k] for s, k in zip(samples, idx)]
    unknown = sorted({q.answer for q in questions} - set(lookup))
    if unknown:
        raise ShapeError(f"answers {unknown} are not among the {len(answer_vocab)} answer classes")
    tokens, lengths = pad_sequences([vocab.encode(q.tokens) for q in questions], vocab.pad_id)
    answers = torch.tensor([lookup[q.answer] for q in questions], dtype=torch.long)
    return QuestionBatch(images, boxes, mask, obj, tokens, lengths, answers, questions, samples)
