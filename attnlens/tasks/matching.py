"""The ``matching`` task: SCAN / SCAN+RCAR image-text matching on the built-in scenes.

Training: each epoch visits every training scene once, with one of its captions drawn by the
epoch's generator; a batch of ``B`` scenes gives a square ``[B, B]`` similarity matrix and the
VSE++ hinge loss (margin 0.2), summed over all violating negatives for the first
``warmup_epochs`` epochs and over the hardest negatives (``max_violation``) afterwards; Adam.

Evaluation: the test split in SCAN's 5-captions-per-image protocol (caption ``k`` belongs to
image ``k // 5``); R@1/5/10 in percent for both directions and rsum
(:func:`attnlens.models.retrieval.recall_metrics`): ``t2i_r1`` is text-to-image retrieval
(a caption retrieves its image), ``i2t_r1`` image-to-text retrieval.

Analysis: example ``i`` is test scene ``i`` with its caption ``i % captions_per_image``. The map
is the similarity module's own attention recorded from its probe while it scores that pair
(the last word x region record for RCAR, whose final attention uses the learned regulators).
For an image-to-text model the region -> word weights are transposed and each word's row is
renormalised over the regions (``attention.meta["derived"]`` says so).

Gradient attributions (``region_forward``): the similarity of the example's image and caption as
a function of the image's encoded region features (``encode_images``, the features the
similarity attends over). Read zero-baseline integrated gradients with care here: the relevance
is a cosine with the attended context, which does not change when the context is scaled, so the
similarity jumps to 0 only at the all-zero image. Completeness fails (the attributions sum to
``f(x) - lim f(a x)`` as ``a -> 0``, not ``f(x) - f(0)``), and the path integrand has a ``1 / a``
part near the baseline (summing to 0 over the regions), so the attributions grow with the number
of steps. Where the attention is scale invariant too (SCAN with ``dot``, ``scaled_dot``,
``cosine`` or ``general`` scores, clipped-l2-normalised over the words), ``f(a x) = f(x)``:
input x gradient sums to 0 over the regions and integrated gradients is input x gradient times
a constant of the quadrature, with the same ranks; with ``additive``, ``biased_general`` or
``activated_general`` scores its ranks drift slowly with the steps (mean Kendall tau against 256
steps on the demo models: 0.98-0.99 at 64 steps).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import CaptureError, ShapeError, UnknownNameError
from ..models.matching import MatchingModel
from ..models.retrieval import contrastive_loss, recall_metrics
from ..train.checkpoint import has_checkpoint, load_checkpoint, read_config, read_state
from ..train.config import MatchingConfig
from ..train.loop import cpu_threads, fit, resolve_device, set_seed
from .base import AnalysisExample, PresetConfigs, RegionForward, ScoreFn
from ..capture import capture
from .common import (caption_targets, check_keep, region_word_to_word_region, remove_regions, site_meta,
                     scorer_regions, word_region_map)


# ----------------------------------------------------------------------------- data
def scene_tensors(split: str, n: int | None, cfg: MatchingConfig, vocab) -> dict:
    """The split as tensors: ``images uint8 [N, 3, H, W]``, ``boxes [N, R, 4]``,
    ``region_mask [N, R]``, ``tokens long [N, K, L]``, ``lengths [N, K]`` (K captions each)."""
    from ..data.batching import collate_scenes
    from ..data.scenes import load_split

    samples = load_split(split, n, **dict(cfg.scene_options))
    if not samples:
        raise ShapeError(f"the {split!r} split is empty (n={n})")
    K = int(cfg.captions_per_image)
    have = min(len(s.captions) for s in samples)
    if have < K:
        raise ShapeError(f"captions_per_image={K} but some {split!r} scenes have only {have} captions")
    batches = [collate_scenes(samples, vocab, caption_index=k) for k in range(K)]
    L = max(int(b.lengths.max()) for b in batches)
    tokens = torch.full((len(samples), K, L), int(vocab.pad_id), dtype=torch.long)
    for k, b in enumerate(batches):
        tokens[:, k, :b.tokens.shape[1]] = b.tokens
    first = batches[0]
    return {"images": (first.images * 255).round().to(torch.uint8), "boxes": first.boxes,
            "region_mask": first.region_mask, "tokens": tokens,
            "lengths": torch.stack([b.lengths for b in batches], dim=1), "samples": samples}


def _vocab(model: torch.nn.Module | None = None):
    """The vocabulary a loaded model was trained with, else the scenes' vocabulary."""
    if model is not None and getattr(model, "vocab", None) is not None:
        return model.vocab
    from ..data.vocab import scenes_vocabulary

    return scenes_vocabulary()


def _trim(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return tokens[:, :int(lengths.max())]


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def encode_split(model: MatchingModel, data: dict, *, batch_size: int = 200) -> tuple[torch.Tensor, ...]:
    """Region features ``[N, R, D]``, caption features ``[N * K, L, D]`` (caption ``c`` of image
    ``c // K``) and lengths ``[N * K]``."""
    dev = _device_of(model)
    feats = []
    for a in range(0, len(data["images"]), batch_size):
        feats.append(model.encode_images(data["images"][a:a + batch_size].to(dev).float() / 255.0,
                                         data["boxes"][a:a + batch_size].to(dev),
                                         data["region_mask"][a:a + batch_size].to(dev)))
    n, K, L = data["tokens"].shape
    tokens, lengths = data["tokens"].reshape(n * K, L), data["lengths"].reshape(n * K)
    caps = []
    for a in range(0, n * K, batch_size * K):
        caps.append(model.encode_captions(tokens[a:a + batch_size * K].to(dev), lengths[a:a + batch_size * K].to(dev)))
    return torch.cat(feats), torch.cat(caps), lengths.to(dev)


def _alignment_options(cfg: MatchingConfig, alignment: str) -> dict:
    """The config's extra options for ``alignment`` (keys may be aliases, e.g. ``concat``)."""
    from .. import align as _align

    opts = {_align.canonical(k): dict(v) for k, v in dict(cfg.alignment_options).items()}
    return opts.get(_align.canonical(alignment), {})


# ----------------------------------------------------------------------------- the task
class MatchingTask(PresetConfigs):
    """SCAN / SCAN+RCAR matching on the scenes (see the module docstring)."""

    name = "matching"
    config_class = MatchingConfig

    def build_model(self, cfg: MatchingConfig, *, alignment: str, vocab_size: int) -> MatchingModel:
        return MatchingModel(vocab_size, embed_dim=cfg.embed_dim, word_dim=cfg.word_dim, alignment=alignment,
                             direction=cfg.direction, agg=cfg.agg, lambda_softmax=cfg.lambda_softmax,
                             lambda_lse=cfg.lambda_lse, norm=cfg.norm, rcar=cfg.rcar, channels=tuple(cfg.channels),
                             pool=tuple(cfg.pool), sampling_ratio=cfg.sampling_ratio, strides=tuple(cfg.strides),
                             pixels=cfg.pixels, alignment_options=_alignment_options(cfg, alignment))

    # ---------------------------------------------------------------- train / load
    def train(self, *, alignment: str, seed: int, out_dir: Path, config: dict | None = None,
              device: str = "cpu", progress: bool = True, resume: bool = True) -> Path:
        """Train into ``out_dir`` (the run directory itself); returns it. Resumes a run found there."""
        from .. import align as _align

        alignment = _align.canonical(alignment)
        cfg = self.resolve_config(config)
        dev = resolve_device(device)
        vocab = _vocab()
        saved = {**cfg.to_dict(), "alignment": alignment, "seed": int(seed), "vocabulary": list(vocab.idx2word)}
        if resume and has_checkpoint(out_dir) and read_config(out_dir) == saved \
                and int(read_state(out_dir).get("epoch", 0)) >= cfg.epochs:
            return Path(out_dir)  # finished: nothing to do
        set_seed(seed)
        model = self.build_model(cfg, alignment=alignment, vocab_size=len(vocab)).to(dev)
        train = scene_tensors("train", cfg.n_train, cfg, vocab)
        test = scene_tensors("test", cfg.n_test, cfg, vocab)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        n, K, _ = train["tokens"].shape
        bs = int(cfg.batch_size)

        def batches(epoch: int, gen: torch.Generator):
            order = torch.randperm(n, generator=gen)
            which = torch.randint(K, (n,), generator=gen)
            return [(order[a:a + bs], which[order[a:a + bs]]) for a in range(0, n, bs)]

        def loss_fn(batch, epoch: int, net: torch.nn.Module) -> torch.Tensor:
            idx, k = batch  # under torchrun: this rank's shard, so hardest negatives come from it alone
            tokens, lengths = train["tokens"][idx, k], train["lengths"][idx, k]
            S = net(train["images"][idx].to(dev).float() / 255.0, train["boxes"][idx].to(dev),
                    train["region_mask"][idx].to(dev), _trim(tokens, lengths).to(dev), lengths.to(dev))
            return contrastive_loss(S, margin=cfg.margin, max_violation=cfg.max_violation and epoch >= cfg.warmup_epochs)

        def lr_at(epoch: int) -> float:
            decayed = cfg.lr_decay_epoch and epoch >= cfg.lr_decay_epoch
            return cfg.lr * (cfg.lr_decay if decayed else 1.0)

        with cpu_threads(cfg.threads):
            fit(model, optimizer, run_dir=out_dir, config=saved, epochs=cfg.epochs, seed=seed, batches=batches,
                loss_fn=loss_fn, evaluate=lambda: self._evaluate_data(model, test, cfg),
                eval_every=cfg.eval_every, lr_at=lr_at, grad_clip=cfg.grad_clip, progress=progress,
                resume=resume, desc=f"matching/{alignment}")
        return Path(out_dir)

    def load(self, checkpoint_dir: Path, device: str = "cpu") -> MatchingModel:
        """The trained model of a run directory (strict; eval mode)."""
        saved = read_config(checkpoint_dir)
        if saved.get("task") != self.name:
            raise UnknownNameError("task of the checkpoint", str(saved.get("task")), [self.name])
        # runs saved before ``alignment_options`` existed used every alignment's defaults
        cfg = self.resolve_config({"alignment_options": {}, **saved})
        vocab_words = saved.get("vocabulary")
        vocab_size = len(vocab_words) if vocab_words else len(_vocab())
        model = self.build_model(cfg, alignment=saved["alignment"], vocab_size=vocab_size)
        load_checkpoint(checkpoint_dir, model)
        model.run_config = saved
        if vocab_words:
            from ..data.vocab import Vocabulary

            model.vocab = Vocabulary(vocab_words)
        return model.to(resolve_device(device)).eval()

    # ---------------------------------------------------------------- evaluation
    def _evaluate_data(self, model: MatchingModel, data: dict, cfg: MatchingConfig) -> dict[str, float]:
        was = model.training
        model.eval()
        with torch.no_grad():
            img, cap, lengths = encode_split(model, data)
            S = model.similarity_from_features(img, cap, lengths, data["region_mask"].to(img.device))
        model.train(was)
        return recall_metrics(S, captions_per_image=data["tokens"].shape[1])

    def evaluate(self, model: MatchingModel, split: str = "test", config: dict | None = None) -> dict[str, float]:
        """R@1/5/10 (percent), medr, meanr of both directions and rsum on ``split``."""
        cfg = self._config_for(model, config)
        n = cfg.n_test if split == "test" else None
        with cpu_threads(cfg.threads):
            return self._evaluate_data(model, scene_tensors(split, n, cfg, _vocab(model)), cfg)

    def _config_for(self, model: MatchingModel, config: dict | None) -> MatchingConfig:
        base = dict(getattr(model, "run_config", {}) or {})
        base.update(dict(config or {}))
        return self.resolve_config(base)

    # ---------------------------------------------------------------- analysis
    def analysis_examples(self, model: MatchingModel, *, n: int, split: str = "test",
                          config: dict | None = None, start: int = 0) -> Sequence[AnalysisExample]:
        """``n`` examples from ``start``: scene ``i`` of ``split`` with caption ``i % captions_per_image``."""
        cfg = self._config_for(model, config)
        vocab = _vocab(model)
        from .common import scene_slice

        samples = scene_slice(split, start, n, **dict(cfg.scene_options))
        dev = _device_of(model)
        model.eval()
        K = int(cfg.captions_per_image)
        out = []
        for i, sample in enumerate(samples, start=int(start)):
            k = i % min(K, len(sample.captions))
            caption = sample.captions[k]
            ids = torch.tensor([vocab.encode(caption.tokens)], dtype=torch.long, device=dev)
            lengths = torch.tensor([ids.shape[1]], device=dev)
            image = torch.from_numpy(np.array(sample.image)).permute(2, 0, 1)[None].float().div(255.0)
            boxes = torch.from_numpy(np.asarray(sample.regions.boxes, dtype=np.float32))[None]
            valid = torch.ones(1, len(sample.regions), dtype=torch.bool)
            with torch.no_grad():
                img = model.encode_images(image.to(dev), boxes.to(dev), valid.to(dev))
                cap = model.encode_captions(ids, lengths)
                with capture(model.sim, to_cpu=False) as rec:
                    s = model.similarity_from_features(img, cap, lengths, valid.to(dev))
                weights, scores, meta = self._pair_map(rec.maps)
            amap = word_region_map(weights, tokens=caption.tokens, regions=sample.regions, scores=scores,
                                   alignment=model.alignment_name, direction=model.direction,
                                   site=meta.pop("site"), meta=meta)
            out.append(AnalysisExample(
                example_id=f"{sample.image_id}/{k}", image=sample.image, regions=sample.regions,
                tokens=tuple(caption.tokens), attention=amap,
                targets=caption_targets(caption, n_tokens=len(caption.tokens)),
                region_valid=np.ones(len(sample.regions), dtype=bool), output=float(s[0, 0]),
                meta={"alignment": model.alignment_name, "direction": model.direction, "task": self.name,
                      "image_id": sample.image_id, "caption_index": k, "caption": caption.text,
                      "rcar": model.hparams["rcar"]}))
        return out

    def split_size(self, split: str = "test", config: dict | None = None) -> int:
        """Scenes of ``split``: ``n_test`` for the test split when set, else the split's size."""
        from ..data.scenes import SPLITS

        if split not in SPLITS:
            raise UnknownNameError("split", split, SPLITS)
        cfg = self.resolve_config(config)
        return int(cfg.n_test) if split == "test" and cfg.n_test else SPLITS[split]

    @staticmethod
    def _pair_map(maps):
        """``([L, R] word -> region weights, raw scores or None, meta)`` from one pair's captured maps."""
        chosen = None
        for rec in maps:
            if "word" in rec.dims and "region" in rec.dims:
                chosen = rec  # keep the last one (RCAR: the final attention)
        if chosen is None:
            raise CaptureError(f"the similarity module recorded no word/region attention "
                               f"(maps: {[m.dims for m in maps]})")
        rec = chosen
        w, sc = rec.weights, rec.scores
        index = []
        for d, size in zip(rec.dims, w.shape):
            if d in ("word", "region"):
                index.append(slice(None))
            elif size == 1:
                index.append(0)
            else:
                raise CaptureError(f"expected one image-caption pair, got a record of shape {tuple(w.shape)} "
                                   f"with dims {rec.dims}")
        w = w[tuple(index)].detach().float().cpu()
        sc = None if sc is None else sc[tuple(index)].detach().float().cpu()
        dims = [d for d in rec.dims if d in ("word", "region")]
        meta = {"site": f"sim.{rec.site}", "record_dims": tuple(rec.dims), **site_meta(rec)}
        if dims == ["word", "region"]:
            return w, sc, meta
        meta["derived"] = ("image-to-text attention (regions over words) transposed, each word's row "
                           "renormalised over the regions")
        return region_word_to_word_region(w), None, meta

    def scorer(self, model: MatchingModel, examples: Sequence[AnalysisExample], *,
               removal: str = "mask") -> ScoreFn:
        """``score(keep [M, R], index [M]) -> [M]``: the similarity of example ``index[m]``'s image,
        with only the kept regions, and its caption (see the module docstring of
        :mod:`attnlens.tasks.common` for the removal modes). A row that keeps no region is scored
        on an all-zero image (the model's output when nothing is left to attend to)."""
        R = scorer_regions(examples, removal)
        vocab = _vocab(model)
        dev = _device_of(model)
        model.eval()
        with torch.no_grad():
            images = torch.stack([torch.from_numpy(np.array(e.image)).permute(2, 0, 1) for e in examples])
            boxes = torch.from_numpy(np.stack([np.asarray(e.regions.boxes, dtype=np.float32) for e in examples]))
            valid = torch.from_numpy(np.stack([np.asarray(e.region_valid, dtype=bool) for e in examples]))
            feats = model.encode_images(images.float().div(255.0).to(dev), boxes.to(dev), valid.to(dev))
            caps = []
            for e in examples:
                ids = torch.tensor([vocab.encode(e.tokens)], dtype=torch.long, device=dev)
                caps.append((model.encode_captions(ids, torch.tensor([ids.shape[1]], device=dev)), ids.shape[1]))
        valid = valid.to(dev)

        def score(keep: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            keep, index = check_keep(keep, index, len(examples), R)
            out = torch.empty(len(index), dtype=feats.dtype)
            with torch.no_grad():
                for e in torch.unique(index).tolist():
                    rows = torch.nonzero(index == e).flatten()
                    f = feats[e][None].expand(len(rows), -1, -1)
                    kv = keep[rows].to(dev)
                    v = valid[e][None].expand(len(rows), -1)
                    f, mask = remove_regions(f, kv, v, removal)
                    empty = ~(kv & v).any(-1)
                    if bool(empty.any()):  # nothing kept: the all-zero image
                        f = torch.where(empty[:, None, None], torch.zeros_like(f), f)
                        mask = torch.where(empty[:, None], v, mask)
                    cap, length = caps[e]
                    s = model.similarity_from_features(f, cap, torch.tensor([length], device=dev), mask)
                    out[rows] = s[:, 0].float().cpu()
            return out

        return score

    def region_forward(self, model: MatchingModel, example: AnalysisExample) -> RegionForward:
        """``forward(features [N, R, D]) -> [N]``: the similarity of the example's caption with its
        image whose encoded region features are ``features`` (``inputs``: the image's own,
        ``[1, R, D]``); ``forward(inputs)`` is ``example.output`` (module docstring)."""
        vocab = _vocab(model)
        dev = _device_of(model)
        model.eval()
        image = torch.from_numpy(np.array(example.image)).permute(2, 0, 1)[None].float().div(255.0)
        boxes = torch.from_numpy(np.asarray(example.regions.boxes, dtype=np.float32))[None]
        valid = torch.from_numpy(np.asarray(example.region_valid, dtype=bool))[None].to(dev)
        ids = torch.tensor([vocab.encode(example.tokens)], dtype=torch.long, device=dev)
        lengths = torch.tensor([ids.shape[1]], device=dev)
        with torch.no_grad():
            feats = model.encode_images(image.to(dev), boxes.to(dev), valid)
            cap = model.encode_captions(ids, lengths)

        def forward(features: torch.Tensor) -> torch.Tensor:
            if features.ndim != 3 or tuple(features.shape[1:]) != tuple(feats.shape[1:]):
                raise ShapeError(f"region_forward of {example.example_id}: features must be [N, "
                                 f"{feats.shape[1]}, {feats.shape[2]}], got {tuple(features.shape)}")
            mask = valid.expand(len(features), -1)
            return model.similarity_from_features(features, cap, lengths, mask)[:, 0]

        return RegionForward(forward, feats.detach(), valid[0].cpu())


def matching_task() -> MatchingTask:
    return MatchingTask()
