"""A test double of the Task protocol (attnlens.tasks.base) whose right answer is known.

Each scene has R = 6 regions, one per object class, with one-hot class features; the caption is
"the <class>" and the word embedding of a class name is its one-hot vector. With ``dot`` (and
``general``, whose W is set to the identity) the class word attends to its own region, so the
grounding is perfect by construction; ``additive`` keeps a seeded random init and grounds worse.
The scored output is the mean cosine between each word and its attended context
(``region_forward``: the same output as a function of the region features).
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attnlens.attention_map import AttentionMap, Side
from attnlens.models import CrossAttention
from attnlens.tasks.base import AnalysisExample, GroundingTarget
from attnlens.types import Regions

CLASSES = ("red", "green", "blue", "square", "circle", "star")
R, D, H, W = 6, 6, 48, 72
BOXES = np.array([[(i % 3) * 24, (i // 3) * 24, (i % 3) * 24 + 24, (i // 3) * 24 + 24] for i in range(R)], float)


class FakeModel(nn.Module):
    def __init__(self, alignment: str, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.attn = CrossAttention(alignment, D, norm="softmax", temperature=8.0)
        lin = getattr(self.attn.alignment, "linear", None)
        if lin is not None:  # general: W = I, so it equals dot exactly
            with torch.no_grad():
                lin.weight.copy_(torch.eye(D))
                if lin.bias is not None:
                    lin.bias.zero_()
        self.unit_features = True

    def forward(self, words, regions, key_mask=None):
        return self.attn(words, regions, key_mask=key_mask)


def _scene(split: str, i: int):
    rng = np.random.default_rng([zlib.crc32(split.encode()) % 1000, i])  # stable across processes
    perm = rng.permutation(R)  # region r shows class perm[r]
    target = int(rng.integers(R))  # the caption names class `target`
    feats = np.eye(D)[perm]
    img = np.zeros((H, W, 3), np.uint8)
    for r in range(R):
        x0, y0, x1, y1 = BOXES[r].astype(int)
        img[y0 + 2:y1 - 2, x0 + 2:x1 - 2] = (40 * perm[r] % 255, 80, 200 - 30 * perm[r])
    return img, feats.astype(np.float32), target, int(np.where(perm == target)[0][0])


def _words(target: int) -> np.ndarray:
    w = np.zeros((2, D), np.float32)
    w[0] = 1.0 / np.sqrt(D)  # "the": equal to every class
    w[1, target] = 1.0
    return w


class FakeTask:
    name = "fake"
    calls: dict = {"train": [], "evaluate": []}

    def __init__(self, fail_on: tuple = ()):
        self.fail_on = set(fail_on)

    def default_config(self, preset: str) -> dict:
        return {"preset": preset, "n_eval": 12}

    def train(self, *, alignment, seed, out_dir, config=None, device="cpu", progress=True):
        FakeTask.calls["train"].append((alignment, seed))
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model = FakeModel(alignment, seed)
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / "model.safetensors"))
        (out_dir / "config.json").write_text(json.dumps({"alignment": alignment, "seed": seed, **(config or {})}))
        return out_dir

    def load(self, checkpoint_dir, device="cpu"):
        from safetensors.torch import load_file

        cfg = json.loads((Path(checkpoint_dir) / "config.json").read_text())
        model = FakeModel(cfg["alignment"], cfg["seed"])
        model.load_state_dict(load_file(str(Path(checkpoint_dir) / "model.safetensors")))
        model.alignment_name = cfg["alignment"]
        return model

    def evaluate(self, model, split="test", config=None):
        FakeTask.calls["evaluate"].append(model.alignment_name)
        if model.alignment_name in self.fail_on:
            raise RuntimeError(f"injected failure for {model.alignment_name}")
        hits = []
        for i in range(int((config or {}).get("n_eval", 12))):
            _, feats, target, region = _scene(split, i)
            w = model(torch.as_tensor(_words(target))[None], torch.as_tensor(feats)[None]).weights[0]
            hits.append(int(w[1].argmax()) == region)
        return {"accuracy": float(np.mean(hits))}

    def split_size(self, split="test", config=None):
        return int((config or {}).get("n_eval", 12))

    def analysis_examples(self, model, *, n, split="test", config=None, start=0):
        out = []
        for i in range(start, start + n):
            img, feats, target, region = _scene(split, i)
            res = model(torch.as_tensor(_words(target))[None], torch.as_tensor(feats)[None])
            regions = Regions(BOXES, image_size=(H, W))
            amap = AttentionMap(res.weights[0].detach(), ("word", "region"),
                                query=Side("word", "text", ("the", CLASSES[target])),
                                key=Side("region", "image", regions=regions), alignment=model.alignment_name)
            tg = GroundingTarget(tokens=(1,), boxes=BOXES[region][None], label=CLASSES[target], head=1)
            out.append(AnalysisExample(f"img{i}/0", img, regions, ("the", CLASSES[target]), amap, (tg,),
                                       np.ones(R, bool), float(self._sim(model, feats[None], target)[0]),
                                       {"alignment": model.alignment_name, "feats": None}))
        return out

    def _sim(self, model, feats, target, keep=None):
        words = torch.as_tensor(np.stack([_words(t) for t in np.atleast_1d(target)]))
        f = torch.as_tensor(feats)
        res = model(words, f, key_mask=None if keep is None else keep)
        return torch.nn.functional.cosine_similarity(res.context, words, dim=-1).mean(-1).detach()

    def region_forward(self, model, example):
        """The scorer's output (mean word-context cosine) as a function of the region features."""
        from attnlens.tasks.base import RegionForward

        _, feats, target, _ = _scene("test", int(example.example_id.split("/")[0][3:]))
        words = torch.as_tensor(_words(target))[None]

        def forward(f):
            w = words.expand(len(f), -1, -1)
            return torch.nn.functional.cosine_similarity(model(w, f).context, w, dim=-1).mean(-1)

        return RegionForward(forward, torch.as_tensor(feats)[None], torch.ones(R, dtype=torch.bool))

    def scorer(self, model, examples, *, removal="mask"):
        index = [int(e.example_id.split("/")[0][3:]) for e in examples]  # "img<i>/0": scene i
        cache = [(_scene("test", i)[1], _scene("test", i)[2]) for i in index]
        feats = np.stack([c[0] for c in cache])
        targets = np.array([c[1] for c in cache])

        def score(keep, index):
            idx = index.numpy()
            k = keep.clone()
            empty = ~k.any(1)
            k[empty] = True  # nothing kept: fall back to all, then zero the output below
            out = self._sim(model, feats[idx], targets[idx], keep=k).double()
            return torch.where(empty, torch.zeros_like(out), out)

        return score


# ----------------------------------------------------------------------------- Ray failure test
DIE_MARKER_ENV, RUN_LOG_ENV = "ATTNLENS_TEST_DIE_MARKER", "ATTNLENS_TEST_RUN_LOG"


class DieOnceTask(FakeTask):
    """FakeTask whose first unit to reach its analysis kills its own process (``os._exit(1)``,
    no cleanup runs), for the Ray retry test. Which process dies is decided by the atomic creation
    of the file ``$ATTNLENS_TEST_DIE_MARKER``; every unit run (every ``evaluate``, in any process)
    appends a line to ``$ATTNLENS_TEST_RUN_LOG``."""

    def evaluate(self, model, split="test", config=None):
        import os

        with open(os.environ[RUN_LOG_ENV], "a") as fh:
            fh.write(f"{model.alignment_name} {os.getpid()}\n")
        return super().evaluate(model, split=split, config=config)

    def analysis_examples(self, model, *, n, split="test", config=None, **kwargs):
        import os

        try:
            fd = os.open(os.environ[DIE_MARKER_ENV], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().analysis_examples(model, n=n, split=split, config=config, **kwargs)
        os.write(fd, f"{model.alignment_name} {os.getpid()}".encode())
        os.close(fd)
        os._exit(1)


def register_die_once() -> None:
    """Ray worker setup hook (``runtime_env={"worker_process_setup_hook": "fake_task.register_die_once"}``)."""
    from attnlens.tasks.base import register_task

    register_task("fake", DieOnceTask, overwrite=True)
