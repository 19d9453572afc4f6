"""The ``generation`` task: text-to-image with word attention per image cell
(:mod:`attnlens.models.generate`) on the built-in scenes.

Data: each (scene, caption) pair is one example. The generator gets the caption and the
**layout of the caption's objects** (their boxes as a 0/1 map, no colours or shapes); the
target is the scene at ``image_size`` px with only those objects drawn (the other objects are
painted over with the background grey, using the scene's object map), so the caption and the
layout determine the target up to which box is which phrase.

Training: each epoch visits every training scene once with one of its ``captions_per_image``
captions drawn at random; L1 + weighted MSE pixel loss (object pixels weighted ``1 + fg_weight``), Adam,
checkpoint every epoch (``attnlens.train.fit``).

Evaluation (``evaluate``), on the test split with the rule-based detector
(:mod:`attnlens.models.scene_detector`) applied to every generated image:

* ``presence``: fraction of the caption's object phrases (colour + shape named) whose colour
  *and* shape are detected in the generated image; ``presence_color``: colour only (phrases
  that name a colour); ``presence_shape``: shape only.
* the same for two baselines of the *same* generator: ``masked_*`` (every word removed from the
  attention: the layout alone) and ``shuffled_*`` (the caption of another test scene);
* ``color_attention``: for each colour word of a caption, the mass of its word -> cell
  attention on the cells whose generated pixels are mostly that colour (detector labels,
  >= 25% of the cell); ``color_attention_uniform``: the same mass for uniform attention
  (the fraction of such cells), the chance level;
* ``mse``: pixel MSE to the target.

Analysis: example ``i`` is test scene ``i`` with caption ``i % captions_per_image``; the image
is the **generated** image (``image_size`` px), the regions are the ``grid x grid`` cells (their
pixel boxes in that image), the map is word x cell: the cell -> word weights of the ``attend``
probe transposed, each word's row renormalised over the cells (``attention.meta["derived"]``);
targets are the caption's phrases with their object boxes scaled to the generated image.

Faithfulness (``scorer``): regions are cells, and removing a cell means that cell receives no
text (its attended context is zeroed for ``mask`` / ``zero``, replaced by the mean context over
the cells for ``mean``). The score is ``-MSE`` (over all pixels and channels, in [0, 1] units)
between the image generated with only the kept cells' context and the image generated from the
full input: 0 on the full input, lower as the output moves away from the model's own
generation. ``word_scorer`` is the same score for removing **words** (``keep [M, L]``), the more
meaningful deletion for a generator.

No gradient attributions (``region_forward``): the gradient of that score at the full input is
exactly zero (it is the maximum of ``-MSE``), and a generated image has no other single output
whose attribution to the cells would be meaningful; the study's ``ig_*`` / ``ixg_*`` rows are NaN
with ``GenerationTask.region_forward_undefined`` as the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from ..errors import ShapeError, UnknownNameError
from ..models.generate import TextToImage, layout_map, word_to_cell
from ..models.scene_detector import color_labels, detect
from ..models.vqa import grid_boxes
from ..train.checkpoint import load_checkpoint, read_config
from ..train.config import TrainConfig
from ..train.loop import cpu_threads, fit, resolve_device, set_seed
from ..types import Regions
from .base import REMOVALS, AnalysisExample, GroundingTarget, PresetConfigs, ScoreFn
from ..capture import capture
from .common import check_keep, site_meta, word_region_map


@dataclass(frozen=True)
class GenerationConfig(TrainConfig):
    """Text-to-image training config.

    Attributes:
        image_size / grid: generated image side and cells per side.
        dim / word_dim / width: feature, word-embedding and decoder sizes.
        norm / temperature: attention normalisation and softmax temperature.
        fg_weight: extra MSE weight on object pixels.
        captions_per_image: captions per scene used (pairs per scene per epoch).
        n_eval: test scenes scored by the detector in ``evaluate``.
    """

    task: ClassVar[str] = "generation"
    PRESETS: ClassVar[dict[str, dict]] = {
        "quick": dict(epochs=1, batch_size=32, n_train=32, n_test=8, n_eval=8, dim=16, word_dim=8, width=8),
        "demo": dict(epochs=15, batch_size=32, lr=2e-3, n_train=2000, n_test=200, n_eval=200),
        "full": dict(epochs=40, batch_size=32, lr=2e-3, lr_decay_epoch=30, n_train=None, n_test=None, n_eval=200,
                     dim=64, width=32),
    }

    image_size: int = 32
    grid: int = 8
    dim: int = 32
    word_dim: int = 32
    width: int = 16
    norm: str = "no_norm"
    temperature: float = 1.0
    fg_weight: float = 4.0
    captions_per_image: int = 5
    n_eval: int = 200


# ----------------------------------------------------------------------------- data
def _target_image(sample, object_ids: set[int], size: int) -> np.ndarray:
    """The scene with only ``object_ids`` drawn (others painted background grey), at ``size`` px."""
    im = np.array(sample.image, copy=True)
    if sample.object_map is not None:
        others = (sample.object_map >= 0) & ~np.isin(sample.object_map, list(object_ids))
        if others.any():
            bg = (sample.object_map < 0)
            im[others] = np.median(im[bg], axis=0).astype(np.uint8) if bg.any() else 230
    if im.shape[0] != size:
        im = cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA)
    return im


def caption_objects(caption) -> list[int]:
    """Object ids named by a caption's phrases (entity ids of the scenes are object ids)."""
    return sorted({int(p.entity_id) for p in caption.phrases if p.has_box})


def load_pairs(cfg: GenerationConfig, split: str, *, n: int | None = None, caption_index=None,
               start: int = 0) -> dict:
    """(scene, caption) pairs as tensors.

    Returns ``tokens [P, L]``, ``lengths [P]``, ``layout float [P, 1, S, S]``,
    ``target uint8 [P, 3, S, S]``, ``captions`` (P ``GroundedCaption``), ``samples``, ``scene [P]``.
    ``caption_index=None`` takes ``captions_per_image`` captions of every scene; an int ``k``
    takes caption ``(i + k) % n_captions`` of scene ``i`` (one pair per scene). ``start``: begin at
    scene ``start`` (scenes ``start .. start + n - 1``, the same pairs as those scenes' pairs from 0).
    """
    from ..data.batching import pad_sequences
    from ..data.scenes import load_split
    from ..data.vocab import scenes_vocabulary

    vocab = scenes_vocabulary()
    n = (cfg.n_train if split == "train" else cfg.n_test) if n is None else n
    if start:
        from .common import scene_slice

        samples = scene_slice(split, start, n, **dict(cfg.scene_options))
    else:
        samples = load_split(split, n, **dict(cfg.scene_options))
    if not samples:
        raise ShapeError(f"the {split!r} split is empty (n={n}, start={start})")
    S, src = int(cfg.image_size), samples[0].image.shape[0]
    pairs = []
    for i, s in enumerate(samples):
        ks = range(min(cfg.captions_per_image, len(s.captions))) if caption_index is None else \
            [(int(start) + i + int(caption_index)) % len(s.captions)]
        pairs += [(i, k) for k in ks]
    captions = [samples[i].captions[k] for i, k in pairs]
    tokens, lengths = pad_sequences([vocab.encode(c.tokens) for c in captions], vocab.pad_id)
    layout = np.zeros((len(pairs), 1, S, S), np.float32)
    target = np.zeros((len(pairs), S, S, 3), np.uint8)
    for p, ((i, _), c) in enumerate(zip(pairs, captions)):
        ids = caption_objects(c)
        layout[p, 0] = layout_map(samples[i].boxes[ids], S, src)
        target[p] = _target_image(samples[i], set(ids), S)
    return {"tokens": tokens, "lengths": lengths, "layout": torch.from_numpy(layout),
            "target": torch.from_numpy(target).permute(0, 3, 1, 2).contiguous(), "captions": captions,
            "samples": samples, "scene": torch.tensor([i for i, _ in pairs]), "source_size": src,
            "caption_index": [k for _, k in pairs]}


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _trim(tokens, lengths):
    return tokens[:, :int(lengths.max())]


def generate_all(model: TextToImage, data: dict, *, tokens=None, lengths=None, word_keep=None,
                 batch_size: int = 256) -> tuple[np.ndarray, torch.Tensor]:
    """Generated images ``uint8 [P, S, S, 3]`` and cell -> word weights ``[P, C, L]``."""
    tokens = data["tokens"] if tokens is None else tokens
    lengths = data["lengths"] if lengths is None else lengths
    dev = _device_of(model)
    images, weights = [], []
    with torch.no_grad():
        for a in range(0, len(tokens), batch_size):
            sl = slice(a, a + batch_size)
            t = tokens[sl][:, :int(lengths[sl].max())]
            wk = None if word_keep is None else word_keep[sl][:, :t.shape[1]].to(dev)
            out = model(t.to(dev), lengths[sl].to(dev), data["layout"][sl].to(dev), word_keep=wk)
            images.append((out.image * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu())
            w = torch.zeros(len(t), out.weights.shape[1], tokens.shape[1])
            w[:, :, :t.shape[1]] = out.weights.float().cpu()
            weights.append(w)
    return torch.cat(images).numpy(), torch.cat(weights)


def presence(images: np.ndarray, captions) -> dict[str, float]:
    """Object presence rates of generated ``images [P, S, S, 3]`` for their ``captions``."""
    from ..data.scenes_spec import COLORS, SHAPES

    both = col = shp = 0
    n_both = n_col = n_shp = 0
    for im, c in zip(images, captions):
        dets = detect(im)
        for p in c.phrases:
            color = next((t for t in p.tokens if t in COLORS), None)
            shape = next((t for t in p.tokens if t in SHAPES), None)
            if color is not None:
                n_col += 1
                col += any(d.color == color for d in dets)
            if shape is not None:
                n_shp += 1
                shp += any(d.shape == shape for d in dets)
            if color is not None and shape is not None:
                n_both += 1
                both += any(d.color == color and d.shape == shape for d in dets)
    rate = lambda k, m: float(k / m) if m else float("nan")  # noqa: E731
    return {"presence": rate(both, n_both), "presence_color": rate(col, n_col), "presence_shape": rate(shp, n_shp)}


def color_attention(images: np.ndarray, weights: torch.Tensor, captions, grid: int,
                    min_fraction: float = 0.25) -> dict[str, float]:
    """Mean attention mass of colour words on the cells generated in their colour, and the
    uniform-attention chance level (the fraction of such cells)."""
    from ..data.scenes_spec import COLORS

    masses, chance = [], []
    for im, w, c in zip(images, weights, captions):
        labels, _, names = color_labels(im)
        S = im.shape[0]
        cell = S // grid
        frac = np.stack([(labels == k).reshape(grid, cell, grid, cell).mean((1, 3)).reshape(-1)
                         for k in range(len(names))])  # [colours, cells]
        L = len(c.tokens)
        w2c = word_to_cell(w[:, :L]).numpy()  # [L, cells]
        for t, tok in enumerate(c.tokens):
            if tok in COLORS:
                on = frac[names.index(tok)] >= min_fraction
                if on.any():
                    masses.append(float(w2c[t][on].sum()))
                    chance.append(float(on.mean()))
    if not masses:
        return {"color_attention": float("nan"), "color_attention_uniform": float("nan")}
    return {"color_attention": float(np.mean(masses)), "color_attention_uniform": float(np.mean(chance))}


# ----------------------------------------------------------------------------- the task
class GenerationTask(PresetConfigs):
    """Text-to-image on the scenes (see the module docstring)."""

    name = "generation"
    config_class = GenerationConfig
    #: No ``region_forward`` (:mod:`attnlens.tasks.base`): the reason the study gives in its
    #: gradient-agreement rows.
    region_forward_undefined = ("undefined for generation: its scored output, -MSE to its own full-input "
                                "generation, has an exactly zero gradient at the full input, and an image has "
                                "no other single output to attribute")

    def build_model(self, cfg: GenerationConfig, *, alignment: str, vocab_size: int) -> TextToImage:
        return TextToImage(vocab_size, alignment=alignment, dim=cfg.dim, word_dim=cfg.word_dim,
                           image_size=cfg.image_size, grid=cfg.grid, width=cfg.width, norm=cfg.norm,
                           temperature=cfg.temperature)

    def train(self, *, alignment: str, seed: int, out_dir: Path, config: dict | None = None,
              device: str = "cpu", progress: bool = True, resume: bool = True) -> Path:
        """Train into the run directory ``out_dir``; resumes a run found there. Returns ``out_dir``."""
        from .. import align as _align
        from ..data.vocab import scenes_vocabulary

        alignment = _align.canonical(alignment)
        cfg = self.resolve_config(config)
        dev = resolve_device(device)
        vocab = scenes_vocabulary()
        set_seed(seed)
        model = self.build_model(cfg, alignment=alignment, vocab_size=len(vocab)).to(dev)
        train = load_pairs(cfg, "train")
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        bs, n_scenes = int(cfg.batch_size), len(train["samples"])
        counts = torch.bincount(train["scene"], minlength=n_scenes)
        first = torch.cumsum(counts, 0) - counts  # pairs of a scene are consecutive

        def batches(epoch: int, gen: torch.Generator):
            # every scene once per epoch, with one of its captions drawn at random
            order = torch.randperm(n_scenes, generator=gen)
            pick = first[order] + (torch.rand(n_scenes, generator=gen) * counts[order]).long()
            return [pick[a:a + bs] for a in range(0, n_scenes, bs)]

        def loss_fn(idx: torch.Tensor, epoch: int, net: torch.nn.Module) -> torch.Tensor:
            lengths = train["lengths"][idx]
            layout = train["layout"][idx].to(dev)
            out = net(_trim(train["tokens"][idx], lengths).to(dev), lengths.to(dev), layout)
            target = train["target"][idx].to(dev).float() / 255.0
            weight = 1.0 + cfg.fg_weight * layout
            return (weight * (out.image - target) ** 2).mean() + F.l1_loss(out.image, target)

        def lr_at(epoch: int) -> float:
            return cfg.lr * (cfg.lr_decay if cfg.lr_decay_epoch and epoch >= cfg.lr_decay_epoch else 1.0)

        saved = {**cfg.to_dict(), "alignment": alignment, "seed": int(seed), "vocabulary": list(vocab.idx2word)}
        with cpu_threads(cfg.threads):  # the thread count changes the last bits: fixed for reproducibility
            fit(model, optimizer, run_dir=out_dir, config=saved, epochs=cfg.epochs, seed=seed, batches=batches,
                loss_fn=loss_fn, evaluate=lambda: self._mse(model, cfg), lr_at=lr_at, grad_clip=cfg.grad_clip,
                progress=progress, resume=resume, desc=f"generation/{alignment}")
        return Path(out_dir)

    def load(self, checkpoint_dir: Path, device: str = "cpu") -> TextToImage:
        saved = read_config(checkpoint_dir)
        if saved.get("task") != self.name:
            raise UnknownNameError("task of the checkpoint", str(saved.get("task")), [self.name])
        cfg = self.resolve_config(saved)
        model = self.build_model(cfg, alignment=saved["alignment"], vocab_size=len(saved["vocabulary"]))
        load_checkpoint(checkpoint_dir, model)
        model.run_config = saved
        return model.to(resolve_device(device)).eval()

    def _cfg(self, model, config) -> GenerationConfig:
        return self.resolve_config({**dict(getattr(model, "run_config", {}) or {}), **dict(config or {})})

    def _mse(self, model, cfg) -> dict[str, float]:
        data = load_pairs(cfg, "test", n=cfg.n_eval, caption_index=0)
        images, _ = generate_all(model, data)
        target = data["target"].permute(0, 2, 3, 1).numpy()
        return {"mse": float(((images.astype(np.float64) - target) / 255.0).__pow__(2).mean())}

    def evaluate(self, model: TextToImage, split: str = "test", config: dict | None = None) -> dict[str, float]:
        """Presence rates vs the masked and shuffled baselines, colour attention, MSE (module docstring)."""
        cfg = self._cfg(model, config)
        model.eval()
        data = load_pairs(cfg, split, n=cfg.n_eval, caption_index=0)
        images, weights = generate_all(model, data)
        out = presence(images, data["captions"])
        out.update(color_attention(images, weights, data["captions"], cfg.grid))
        target = data["target"].permute(0, 2, 3, 1).numpy()
        out["mse"] = float((((images.astype(np.float64) - target) / 255.0) ** 2).mean())
        masked, _ = generate_all(model, data, word_keep=torch.zeros_like(data["tokens"], dtype=torch.bool))
        out.update({f"masked_{k}": v for k, v in presence(masked, data["captions"]).items()})
        perm = torch.roll(torch.arange(len(data["tokens"])), 1)
        shuffled, _ = generate_all(model, data, tokens=data["tokens"][perm], lengths=data["lengths"][perm])
        out.update({f"shuffled_{k}": v for k, v in presence(shuffled, data["captions"]).items()})
        return out

    # ---------------------------------------------------------------- analysis
    def analysis_examples(self, model: TextToImage, *, n: int, split: str = "test",
                          config: dict | None = None, start: int = 0) -> Sequence[AnalysisExample]:
        """``n`` examples from scene ``start`` (module docstring)."""
        cfg = self._cfg(model, config)
        data = load_pairs(cfg, split, n=n, caption_index=0, start=start)
        dev = _device_of(model)
        S, g = int(cfg.image_size), int(cfg.grid)
        scale = S / float(data["source_size"])
        cells = grid_boxes((g, g), (S, S))
        labels = tuple(f"cell {r},{c}" for r in range(g) for c in range(g))
        regions = Regions(cells, (S, S), labels=labels)
        model.eval()
        out = []
        for p, caption in enumerate(data["captions"]):
            L = int(data["lengths"][p])
            with torch.no_grad(), capture(model, to_cpu=False) as captured:
                res = model(data["tokens"][p:p + 1, :L].to(dev), data["lengths"][p:p + 1].to(dev),
                            data["layout"][p:p + 1].to(dev))
            rec = captured.maps[-1]
            name = rec.site
            w = word_to_cell(rec.weights[0].float().cpu())  # [L, C]
            meta = site_meta(rec)
            meta["derived"] = ("cell -> word attention (each cell over the words) transposed, each word's row "
                               "renormalised over the cells")
            amap = word_region_map(w, tokens=caption.tokens, regions=regions, alignment=model.attend.alignment_name,
                                   direction="i2t", site=name, meta=meta)
            targets = tuple(GroundingTarget(tuple(ph.span), np.asarray(ph.boxes, np.float64) * scale, ph.text,
                                            ph.span[-1]) for ph in caption.phrases if ph.has_box)
            image = (res.image[0] * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            sample = data["samples"][int(data["scene"][p])]
            out.append(AnalysisExample(
                example_id=f"{sample.image_id}/{data['caption_index'][p]}", image=image, regions=regions,
                tokens=tuple(caption.tokens), attention=amap, targets=targets,
                region_valid=np.ones(len(regions), dtype=bool), output=0.0,
                meta={"task": self.name, "alignment": model.attend.alignment_name, "caption": caption.text,
                      "layout": data["layout"][p, 0].numpy().copy(), "caption_ids": data["tokens"][p, :L].tolist(),
                      "score": "-MSE to the full-input generation"}))
        return out

    def split_size(self, split: str = "test", config: dict | None = None) -> int:
        """Scenes of ``split``: the config's ``n_test`` / ``n_train``, else the split's size."""
        from ..data.scenes import SPLITS

        if split not in SPLITS:
            raise UnknownNameError("split", split, SPLITS)
        cfg = self.resolve_config(config)
        n = cfg.n_train if split == "train" else cfg.n_test
        return int(n) if n else SPLITS[split]

    def _prepare(self, model, examples):
        if not examples:
            raise ShapeError("scorer needs at least one example")
        dev = _device_of(model)
        from ..data.batching import pad_sequences

        tokens, lengths = pad_sequences([torch.tensor(e.meta["caption_ids"]) for e in examples], 0)
        layout = torch.from_numpy(np.stack([e.meta["layout"] for e in examples]))[:, None]
        model.eval()
        with torch.no_grad():
            full = model(tokens.to(dev), lengths.to(dev), layout.to(dev)).image
        return dev, tokens, lengths, layout, full

    def _score_fn(self, model, examples, removal, what: str) -> ScoreFn:
        if removal not in REMOVALS:
            raise UnknownNameError("removal", removal, REMOVALS)
        dev, tokens, lengths, layout, full = self._prepare(model, examples)
        n_keys = len(examples[0].regions) if what == "cell" else tokens.shape[1]

        def score(keep: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            keep, index = check_keep(keep, index, len(examples), n_keys)
            out = torch.empty(len(index))
            with torch.no_grad():
                for a in range(0, len(index), 512):
                    ix, kp = index[a:a + 512], keep[a:a + 512].to(dev)
                    kw = dict(cell_keep=kp) if what == "cell" else dict(word_keep=kp)
                    img = model(tokens[ix].to(dev), lengths[ix].to(dev), layout[ix].to(dev), removal=removal, **kw).image
                    out[a:a + 512] = -((img - full[ix.to(dev)]) ** 2).flatten(1).mean(1).float().cpu()
            return out

        return score

    def scorer(self, model: TextToImage, examples: Sequence[AnalysisExample], *, removal: str = "mask") -> ScoreFn:
        """``score(keep [M, C], index [M]) -> [M]``: ``-MSE`` to the full-input generation with only
        the kept cells receiving text (module docstring)."""
        return self._score_fn(model, examples, removal, "cell")

    def word_scorer(self, model: TextToImage, examples: Sequence[AnalysisExample], *,
                    removal: str = "mask") -> ScoreFn:
        """``score(keep [M, L], index [M]) -> [M]`` with words removed (``L`` = the longest caption)."""
        return self._score_fn(model, examples, removal, "word")


def generation_task() -> GenerationTask:
    return GenerationTask()
