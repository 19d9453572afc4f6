"""The ``vqa`` task: question-guided attention VQA (:mod:`attnlens.models.vqa`).

Datasets (``config["dataset"]``):

* ``"scenes"`` (default): the built-in scenes' question-answer pairs; regions = the scene's
  region proposals through ``RegionEncoder``; answers = ``scenes.ANSWERS``. The answer's object
  boxes are the grounding ground truth.
* ``"easy_vqa"``: the ``easy-vqa`` package's real images and questions (64 x 64, one shape each),
  downscaled to ``input_size``; regions = the cells of a ``grid`` of CNN features, with their
  cell boxes in the 64 x 64 image; the grounding ground truth is the shape's box.

Training: each batch holds ``batch_size`` images and **all** their questions (an image is
encoded once per batch); cross-entropy; Adam; checkpoint every epoch (``attnlens.train.fit``).

Evaluation: accuracy on the test split, overall and per question kind (``acc_<kind>``; the
scenes' kinds are color, shape, size, exists, count; easy-VQA's are color, shape, yes/no).

Analysis (``analysis_examples``): example ``i`` is test image ``i`` with one of its questions
that has grounding boxes (scenes: ``questions[i % n]`` or the next one with boxes; easy-VQA:
the ``i``-th question). The model has **one** query, the question vector; its weights over the
regions (recorded from the ``attend`` probe) are repeated for every token to form the
``("word", "region")`` map the study expects (``attention.meta["derived"]`` says so). The target
is the question's object phrase (the longest run of attribute / noun tokens, e.g. "green
circle") with the answer's boxes.

Faithfulness (``scorer``): the softmax probability of the model's own predicted answer (on the
full input) when only the kept regions remain, removal ``mask`` / ``zero`` / ``mean``; all rows
are scored in batched forwards of the attention + classifier on cached features.

Gradient attributions (``region_forward``): the same probability as a function of the region
(scenes) or grid-cell (easy-VQA) features the question attends over. The probability, not its
logarithm or the logit: it is the output the scorer, the leave-one-out importance and the
deletion curves measure, so all agreement rows explain one output. (Input x gradient ranks the
regions the same for the log-probability, since ``grad p = p grad log p``; integrated gradients
may not.)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import ShapeError, UnknownNameError
from ..models.vqa import VQAModel, grid_boxes, prepare_images
from ..train.checkpoint import load_checkpoint, read_config
from ..train.config import TrainConfig
from ..train.loop import cpu_threads, fit, resolve_device, set_seed
from ..types import Regions
from .base import AnalysisExample, GroundingTarget, PresetConfigs, RegionForward, ScoreFn
from ..capture import capture
from .common import check_keep, scorer_regions, site_meta, word_region_map

DATASETS = ("scenes", "easy_vqa")
EASY_VQA_SIZE = 64


@dataclass(frozen=True)
class VQAConfig(TrainConfig):
    """VQA training config.

    Attributes:
        dataset: ``"scenes"`` or ``"easy_vqa"``.
        batch_size: images per batch (with all their questions).
        n_train / n_test: scenes per split (scenes); None = the split's size.
        easy_n_train / easy_n_test: easy-VQA questions per split (the first ones); None = all.
        dim / word_dim: feature and word-embedding sizes.
        channels / pool / pixels: ``RegionEncoder`` options (scenes); ``pixels`` appends the
            boxes' mean colours (a shortcut for colour questions).
        grid / width / input_size: grid CNN options (easy-VQA): cells per side, CNN width,
            side the 64 px images are downscaled to.
        norm / temperature: attention score normalisation and softmax temperature.
        eval_every: evaluate every this many epochs (0: after the last only).
    """

    task: ClassVar[str] = "vqa"
    PRESETS: ClassVar[dict[str, dict]] = {
        "quick": dict(epochs=1, batch_size=16, n_train=48, n_test=16, easy_n_train=400, easy_n_test=100, dim=16,
                      word_dim=8, channels=(8, 16), pool=(2, 2), width=8),
        "demo": dict(epochs=12, batch_size=32, lr=2e-3, n_train=2000, n_test=200),
        "full": dict(epochs=25, batch_size=32, lr=2e-3, lr_decay_epoch=20, n_train=None, n_test=None),
    }

    dataset: str = "scenes"
    easy_n_train: int | None = None
    easy_n_test: int | None = None
    dim: int = 64
    word_dim: int = 32
    channels: tuple = (16, 32, 32)
    pool: tuple = (3, 3)
    pixels: bool = True
    grid: tuple = (4, 4)
    width: int = 32
    input_size: int = 32
    norm: str = "no_norm"
    temperature: float = 1.0
    eval_every: int = 0


# ----------------------------------------------------------------------------- data
_SPAN_WORDS: set[str] | None = None


def _span_words() -> set[str]:
    global _SPAN_WORDS
    if _SPAN_WORDS is None:
        from ..data.scenes_spec import COLORS, PLURALS, SHAPES, SIZES

        easy = {"circle", "rectangle", "triangle", "red", "green", "blue", "yellow", "teal", "gray", "black", "brown",
                "shape", "object", "objects"}
        _SPAN_WORDS = set(COLORS) | set(SHAPES) | set(SIZES) | set(PLURALS.values()) | easy
    return _SPAN_WORDS


def object_span(tokens: Sequence[str]) -> tuple[int, ...]:
    """Token indices of a question's object phrase: the last maximal run of attribute / noun
    tokens (colours, shapes, sizes, "shape", "objects"); the whole question when there is none.

    >>> object_span(["what", "size", "is", "the", "green", "circle"])
    (4, 5)
    >>> object_span(["how", "many", "blue", "objects", "are", "there"])
    (2, 3)
    """
    words = _span_words()
    runs, cur = [], []
    for i, t in enumerate(tokens):
        if t in words:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    if not runs:
        return tuple(range(len(tokens)))
    return tuple(runs[-1])


def _easy_kind(answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no"
    if answer in ("circle", "rectangle", "triangle"):
        return "shape"
    return "color"


def load_data(cfg: VQAConfig, split: str, vocab=None, answers: Sequence[str] | None = None) -> dict:
    """The split as tensors for the model.

    Returns a dict: ``images uint8 [N, 3, S, S]``, ``boxes [N, R, 4]``, ``region_mask [N, R]``,
    ``tokens long [Q, L]``, ``lengths [Q]``, ``answers long [Q]``, ``q_image long [Q]``,
    ``kinds`` (Q str), ``items`` (per question: (image index, question object)), ``vocab``,
    ``answer_names``, ``regions`` (N ``Regions``), ``raw_images`` (N uint8 [H, W, 3]).
    """
    from ..data.batching import pad_sequences
    from ..data.vocab import Vocabulary, scenes_vocabulary

    if cfg.dataset not in DATASETS:
        raise UnknownNameError("VQA dataset", cfg.dataset, DATASETS)
    if cfg.dataset == "scenes":
        n = cfg.n_train if split == "train" else cfg.n_test
        from ..data.scenes import ANSWERS, load_split

        samples = load_split(split, n, **dict(cfg.scene_options))
        vocab = vocab or scenes_vocabulary()
        answers = list(answers or ANSWERS)
        raw = [s.image for s in samples]
        images = torch.from_numpy(np.stack(raw)).permute(0, 3, 1, 2).contiguous()
        R = max(len(s.regions) for s in samples)
        boxes = torch.zeros(len(samples), R, 4)
        mask = torch.zeros(len(samples), R, dtype=torch.bool)
        for i, s in enumerate(samples):
            boxes[i, :len(s.regions)] = torch.from_numpy(np.asarray(s.regions.boxes, np.float32))
            mask[i, :len(s.regions)] = True
        items = [(i, q) for i, s in enumerate(samples) for q in s.questions]
        kinds = [q.kind for _, q in items]
        regions = [s.regions for s in samples]
        image_ids = [s.image_id for s in samples]
    else:
        from ..data.easy_vqa import get_answers, load_easy_vqa

        n = cfg.easy_n_train if split == "train" else cfg.easy_n_test
        qs = load_easy_vqa(split, n=n, progress=False)
        answers = list(answers or get_answers())
        if vocab is None:
            seen = dict.fromkeys(t for q in qs for t in q.tokens)
            vocab = Vocabulary(list(seen))
        order = list(dict.fromkeys(q.image_id for q in qs))
        pos = {iid: k for k, iid in enumerate(order)}
        first = {q.image_id: q for q in reversed(qs)}
        raw = [first[iid].image for iid in order]
        images = (prepare_images(raw, cfg.input_size) * 255).round().to(torch.uint8)
        cells = grid_boxes(tuple(cfg.grid), (EASY_VQA_SIZE, EASY_VQA_SIZE))
        boxes = torch.from_numpy(cells.astype(np.float32))[None].expand(len(order), -1, -1).contiguous()
        mask = torch.ones(len(order), len(cells), dtype=torch.bool)
        items = [(pos[q.image_id], q) for q in qs]
        kinds = [_easy_kind(q.answer) for q in qs]
        labels = tuple(f"cell {r},{c}" for r in range(cfg.grid[0]) for c in range(cfg.grid[1]))
        regions = [Regions(cells, (EASY_VQA_SIZE, EASY_VQA_SIZE), labels=labels) for _ in order]
        image_ids = [f"easy_vqa-{split}-{iid}" for iid in order]
    if not items:
        raise ShapeError(f"the {split!r} split of {cfg.dataset} has no questions (n={n})")
    lookup = {a: k for k, a in enumerate(answers)}
    missing = sorted({q.answer for _, q in items} - set(lookup))
    if missing:
        raise ShapeError(f"answers {missing} are not among the {len(answers)} answer classes")
    tokens, lengths = pad_sequences([vocab.encode(q.tokens) for _, q in items], vocab.pad_id)
    return {"images": images, "boxes": boxes, "region_mask": mask, "tokens": tokens, "lengths": lengths,
            "answers": torch.tensor([lookup[q.answer] for _, q in items]),
            "q_image": torch.tensor([i for i, _ in items]), "kinds": kinds, "items": items, "vocab": vocab,
            "answer_names": answers, "regions": regions, "raw_images": raw, "image_ids": image_ids}


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _float_images(images: torch.Tensor, dev) -> torch.Tensor:
    return images.to(dev).float().div(255.0)


def _trim(tokens, lengths):
    return tokens[:, :int(lengths.max())]


def predict(model: VQAModel, data: dict, *, images_per_batch: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted answer ids ``[Q]`` and their probabilities ``[Q]`` for every question of ``data``."""
    dev = _device_of(model)
    preds = torch.empty(len(data["answers"]), dtype=torch.long)
    probs = torch.empty(len(data["answers"]))
    n = len(data["images"])
    was = model.training
    model.eval()
    with torch.no_grad():
        for a in range(0, n, images_per_batch):
            rows = torch.nonzero((data["q_image"] >= a) & (data["q_image"] < a + images_per_batch)).flatten()
            if not len(rows):
                continue
            sl = slice(a, a + images_per_batch)
            out = model(_trim(data["tokens"][rows], data["lengths"][rows]).to(dev), data["lengths"][rows].to(dev),
                        _float_images(data["images"][sl], dev), data["boxes"][sl].to(dev),
                        data["region_mask"][sl].to(dev), image_index=(data["q_image"][rows] - a).to(dev))
            p = out.logits.softmax(-1).max(-1)
            preds[rows], probs[rows] = p.indices.cpu(), p.values.float().cpu()
    model.train(was)
    return preds, probs


def accuracy(model: VQAModel, data: dict) -> dict[str, float]:
    """``accuracy`` and ``acc_<kind>`` per question kind."""
    preds, _ = predict(model, data)
    right = (preds == data["answers"]).float()
    out = {"accuracy": float(right.mean())}
    kinds = np.asarray(data["kinds"])
    for k in sorted(set(data["kinds"])):
        out[f"acc_{k}"] = float(right[torch.from_numpy(kinds == k)].mean())
    return out


# ----------------------------------------------------------------------------- the task
class VQATask(PresetConfigs):
    """VQA with question-guided attention (see the module docstring)."""

    name = "vqa"
    config_class = VQAConfig
    run_keys = PresetConfigs.run_keys + ("answer_names",)

    def build_model(self, cfg: VQAConfig, *, alignment: str, vocab_size: int, n_answers: int) -> VQAModel:
        image = "regions" if cfg.dataset == "scenes" else "grid"
        return VQAModel(vocab_size, n_answers, alignment=alignment, dim=cfg.dim, word_dim=cfg.word_dim, image=image,
                        grid=tuple(cfg.grid), width=cfg.width, norm=cfg.norm, temperature=cfg.temperature,
                        region_options=dict(channels=tuple(cfg.channels), pool=tuple(cfg.pool),
                                                    pixels=bool(cfg.pixels)))

    def train(self, *, alignment: str, seed: int, out_dir: Path, config: dict | None = None,
              device: str = "cpu", progress: bool = True, resume: bool = True) -> Path:
        """Train into the run directory ``out_dir``; resumes a run found there. Returns ``out_dir``."""
        from .. import align as _align

        alignment = _align.canonical(alignment)
        cfg = self.resolve_config(config)
        dev = resolve_device(device)
        set_seed(seed)
        train = load_data(cfg, "train")
        test = load_data(cfg, "test", train["vocab"], train["answer_names"])
        model = self.build_model(cfg, alignment=alignment, vocab_size=len(train["vocab"]),
                                 n_answers=len(train["answer_names"])).to(dev)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        n_img, bs = len(train["images"]), int(cfg.batch_size)
        by_image = [[] for _ in range(n_img)]
        for q, i in enumerate(train["q_image"].tolist()):
            by_image[i].append(q)

        def batches(epoch: int, gen: torch.Generator):
            order = torch.randperm(n_img, generator=gen)
            return [order[a:a + bs] for a in range(0, n_img, bs)]

        def loss_fn(imgs: torch.Tensor, epoch: int, net: torch.nn.Module) -> torch.Tensor:
            rows = torch.tensor([q for i in imgs.tolist() for q in by_image[i]], dtype=torch.long)
            remap = torch.full((n_img,), -1, dtype=torch.long)
            remap[imgs] = torch.arange(len(imgs))
            out = net(_trim(train["tokens"][rows], train["lengths"][rows]).to(dev), train["lengths"][rows].to(dev),
                      _float_images(train["images"][imgs], dev), train["boxes"][imgs].to(dev),
                      train["region_mask"][imgs].to(dev), image_index=remap[train["q_image"][rows]].to(dev))
            return F.cross_entropy(out.logits, train["answers"][rows].to(dev))

        def lr_at(epoch: int) -> float:
            return cfg.lr * (cfg.lr_decay if cfg.lr_decay_epoch and epoch >= cfg.lr_decay_epoch else 1.0)

        saved = {**cfg.to_dict(), "alignment": alignment, "seed": int(seed),
                 "vocabulary": list(train["vocab"].idx2word), "answer_names": list(train["answer_names"])}
        with cpu_threads(cfg.threads):  # the thread count changes the last bits: fixed for reproducibility
            fit(model, optimizer, run_dir=out_dir, config=saved, epochs=cfg.epochs, seed=seed, batches=batches,
                loss_fn=loss_fn, evaluate=lambda: accuracy(model, test), eval_every=cfg.eval_every, lr_at=lr_at,
                grad_clip=cfg.grad_clip, progress=progress, resume=resume, desc=f"vqa/{cfg.dataset}/{alignment}")
        return Path(out_dir)

    def load(self, checkpoint_dir: Path, device: str = "cpu") -> VQAModel:
        """The trained model of a run directory (strict key check; eval mode)."""
        saved = read_config(checkpoint_dir)
        if saved.get("task") != self.name:
            raise UnknownNameError("task of the checkpoint", str(saved.get("task")), [self.name])
        cfg = self.resolve_config(saved)
        model = self.build_model(cfg, alignment=saved["alignment"], vocab_size=len(saved["vocabulary"]),
                                 n_answers=len(saved["answer_names"]))
        load_checkpoint(checkpoint_dir, model)
        model.run_config = saved
        return model.to(resolve_device(device)).eval()

    # ---------------------------------------------------------------- evaluation
    def _config_and_vocab(self, model: VQAModel, config: dict | None):
        from ..data.vocab import Vocabulary

        saved = dict(getattr(model, "run_config", {}) or {})
        cfg = self.resolve_config({**saved, **dict(config or {})})
        vocab = answers = None
        if saved.get("vocabulary"):
            words = [w for w in saved["vocabulary"] if w not in ("<pad>", "<unk>", "<start>", "<end>")]
            vocab = Vocabulary(words, start_end="<start>" in saved["vocabulary"])
            answers = saved.get("answer_names")
        return cfg, vocab, answers

    def evaluate(self, model: VQAModel, split: str = "test", config: dict | None = None) -> dict[str, float]:
        """Accuracy on ``split``, overall and per question kind."""
        cfg, vocab, answers = self._config_and_vocab(model, config)
        return accuracy(model, load_data(cfg, split, vocab, answers))

    # ---------------------------------------------------------------- analysis
    def analysis_examples(self, model: VQAModel, *, n: int, split: str = "test",
                          config: dict | None = None, start: int = 0) -> Sequence[AnalysisExample]:
        """``n`` examples from image ``start`` (module docstring), one per image."""
        cfg, vocab, answers = self._config_and_vocab(model, config)
        data = load_data(cfg, split, vocab, answers)
        chosen = _pick_questions(data, int(start) + int(n))[int(start):]
        dev = _device_of(model)
        model.eval()
        out = []
        for i, q_row in chosen:
            _, q = data["items"][q_row]
            ids = data["tokens"][q_row:q_row + 1, :int(data["lengths"][q_row])]
            with torch.no_grad(), capture(model, to_cpu=False) as captured:
                res = model(ids.to(dev), data["lengths"][q_row:q_row + 1].to(dev),
                            _float_images(data["images"][i:i + 1], dev), data["boxes"][i:i + 1].to(dev),
                            data["region_mask"][i:i + 1].to(dev))
            rec = captured.maps[-1]
            name = rec.site
            w, sc = rec.weights[0, 0].float().cpu(), rec.scores[0, 0].float().cpu()
            probs = res.logits.softmax(-1)[0]
            pred = int(probs.argmax())
            L = len(q.tokens)
            meta = site_meta(rec)
            meta["derived"] = ("single query (the question vector); its weights over the regions are "
                               "repeated for every token of the question")
            amap = word_region_map(w[None].expand(L, -1).clone(), tokens=q.tokens, regions=data["regions"][i],
                                   scores=sc[None].expand(L, -1).clone(), alignment=model.attend.alignment_name,
                                   direction="q2i", site=name, meta=meta)
            span = object_span(q.tokens)
            boxes = np.asarray(q.boxes, dtype=np.float64)
            targets = (GroundingTarget(span, boxes, " ".join(q.tokens[t] for t in span), span[-1]),) if len(boxes) else ()
            out.append(AnalysisExample(
                example_id=f"{data['image_ids'][i]}/{q_row}", image=np.asarray(data["raw_images"][i]),
                regions=data["regions"][i], tokens=tuple(q.tokens), attention=amap, targets=targets,
                region_valid=data["region_mask"][i].numpy().copy(), output=float(probs[pred]),
                meta={"task": self.name, "dataset": cfg.dataset, "alignment": model.attend.alignment_name,
                      "question": " ".join(q.tokens), "answer": q.answer, "kind": data["kinds"][q_row],
                      "prediction": data["answer_names"][pred], "prediction_index": pred,
                      "correct": data["answer_names"][pred] == q.answer,
                      "question_ids": ids[0].tolist()}))
        return out

    def split_size(self, split: str = "test", config: dict | None = None) -> int:
        """Images of ``split`` (under the config's ``n_test`` / ``easy_n_test``) that have a question."""
        data = load_data(self.resolve_config(config), split)
        return len(set(data["q_image"].tolist()))

    def scorer(self, model: VQAModel, examples: Sequence[AnalysisExample], *, removal: str = "mask") -> ScoreFn:
        """``score(keep [M, R], index [M]) -> [M]``: probability of the model's own predicted answer
        (``meta["prediction_index"]``) for example ``index[m]`` with only the kept regions."""
        R = scorer_regions(examples, removal)
        cfg, _, _ = self._config_and_vocab(model, None)
        dev = _device_of(model)
        model.eval()
        with torch.no_grad():
            raw = [np.asarray(e.image) for e in examples]
            if model.image_kind == "grid":
                images = prepare_images(raw, cfg.input_size)
            else:
                images = torch.from_numpy(np.stack(raw)).permute(0, 3, 1, 2).float().div(255.0)
            boxes = torch.from_numpy(np.stack([np.asarray(e.regions.boxes, np.float32) for e in examples]))
            valid = torch.from_numpy(np.stack([np.asarray(e.region_valid, bool) for e in examples]))
            feats, valid = model.encode_image(images.to(dev), boxes.to(dev), valid.to(dev))
            ids = [torch.tensor(e.meta["question_ids"], dtype=torch.long) for e in examples]
            from ..data.batching import pad_sequences

            tokens, lengths = pad_sequences(ids, 0)
            _, q = model.question(tokens.to(dev), lengths.to(dev))
        pred = torch.tensor([int(e.meta["prediction_index"]) for e in examples], device=dev)

        def score(keep: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            keep, index = check_keep(keep, index, len(examples), R)
            out = torch.empty(len(index))
            with torch.no_grad():
                for a in range(0, len(index), 4096):
                    ix = index[a:a + 4096].to(dev)
                    res = model.answer(q[ix], feats[ix], valid[ix], keep=keep[a:a + 4096].to(dev), removal=removal)
                    out[a:a + 4096] = res.logits.softmax(-1).gather(1, pred[ix][:, None])[:, 0].float().cpu()
            return out

        return score

    def region_forward(self, model: VQAModel, example: AnalysisExample) -> RegionForward:
        """``forward(features [N, R, D]) -> [N]``: the probability of the model's own predicted
        answer (``meta["prediction_index"]``) when the question attends over ``features``
        (``inputs``: the example's region or grid-cell features, ``[1, R, D]``); ``forward(inputs)``
        is ``example.output`` (module docstring)."""
        cfg, _, _ = self._config_and_vocab(model, None)
        dev = _device_of(model)
        model.eval()
        raw = [np.asarray(example.image)]
        if model.image_kind == "grid":
            images = prepare_images(raw, cfg.input_size)
        else:
            images = torch.from_numpy(np.stack(raw)).permute(0, 3, 1, 2).float().div(255.0)
        boxes = torch.from_numpy(np.asarray(example.regions.boxes, np.float32))[None]
        valid = torch.from_numpy(np.asarray(example.region_valid, bool))[None]
        ids = torch.tensor([example.meta["question_ids"]], dtype=torch.long, device=dev)
        with torch.no_grad():
            feats, valid = model.encode_image(images.to(dev), boxes.to(dev), valid.to(dev))
            _, q = model.question(ids, torch.tensor([ids.shape[1]], device=dev))
        pred = int(example.meta["prediction_index"])

        def forward(features: torch.Tensor) -> torch.Tensor:
            if features.ndim != 3 or tuple(features.shape[1:]) != tuple(feats.shape[1:]):
                raise ShapeError(f"region_forward of {example.example_id}: features must be [N, "
                                 f"{feats.shape[1]}, {feats.shape[2]}], got {tuple(features.shape)}")
            n = len(features)
            logits = model.answer(q.expand(n, -1), features, valid.expand(n, -1)).logits
            return logits.softmax(-1)[:, pred]

        return RegionForward(forward, feats.detach(), valid[0].cpu())


def _pick_questions(data: dict, n: int) -> list[tuple[int, int]]:
    """``(image index, question row)`` for the first ``n`` images: the question
    ``i % k`` of image ``i`` or the next one (cyclically) whose answer has boxes."""
    rows_of: dict[int, list[int]] = {}
    for r, i in enumerate(data["q_image"].tolist()):
        rows_of.setdefault(i, []).append(r)
    out = []
    for i in sorted(rows_of)[:n]:
        rows = rows_of[i]
        for step in range(len(rows)):
            r = rows[(i + step) % len(rows)]
            if len(data["items"][r][1].boxes):
                break
        out.append((i, r))
    return out


def vqa_task() -> VQATask:
    return VQATask()
