"""Benchmark of attnlens.explain: time per example of each method against a straightforward
implementation written from the papers, and against one forward pass.

Models (random weights from configs, float32, eval mode, one CPU thread by default):

* VisualBERT (``VisualBertForQuestionAnswering``): 6 layers, hidden 128, 4 heads, 20 words +
  144 regions (joint sequence of 164 tokens);
* LXMERT (``LxmertForQuestionAnswering``): 2 language + 2 visual + 2 cross-modality layers,
  hidden 64, 4 heads, 20 words x 144 regions;
* ViLT (``ViltForImageAndTextRetrieval``): 6 layers, hidden 128, 4 heads, 20 words + the image
  ``[CLS]`` + 144 patches (a 384 x 384 image, 32-pixel patches: a 12 x 12 grid; joint sequence of
  165 tokens), through the ``vilt`` profile (columns at the grid cells). Its reference reads each
  patch's grid cell from ViLT's own ``patch_index`` (ViLT shuffles the kept patches).

The straightforward versions (``tests/explain_reference.py``) run each example alone (batch of
one, as the authors' code does), with Python loops over the layers (and over the words in the
bi-modal rule) and 2-D matrix products; attnlens runs the batch at once: one forward, one
backward for every example, layer and word, rollout as one chain of batched products. Columns:
``ms/example`` of attnlens, ``ref ms/example`` of the reference, ``speed-up`` = ref / attnlens,
``x forward`` = attnlens / one forward pass of the same batch (no_grad), per example. Every
timing follows one warm-up call; the reference is timed once per three repeats (it is slow).

With ``--sanity`` it also runs the model-parameter randomisation check
(:func:`attnlens.explain.sanity.randomisation_check`) on the shipped, trained checkpoints of the
matching and VQA tasks (``assets/checkpoints``; 8 test examples each) and prints, per method,
the mean Spearman correlation between the trained and the re-initialised model's maps and
whether the method passes (correlation < 0.5); methods that cannot run on a model are listed with
the reason.

Usage::

    python benchmarks/bench_explain.py                 # batch 8, fastest of 3 repeats
    python benchmarks/bench_explain.py --batch 4 --repeats 5 --threads 2
    python benchmarks/bench_explain.py --sanity --skip-timing
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))

import attnlens.explain as ex  # noqa: E402
from attnlens.errors import ExplainError  # noqa: E402
import explain_reference as ref  # noqa: E402

WORDS, REGIONS = 20, 144


def visualbert(batch: int):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.VisualBertConfig(vocab_size=1000, hidden_size=128, num_attention_heads=4, num_hidden_layers=6,
                                        intermediate_size=256, visual_embedding_dim=256, max_position_embeddings=64,
                                        num_labels=10)
    model = transformers.VisualBertForQuestionAnswering(cfg).eval()
    g = torch.Generator().manual_seed(1)
    inputs = dict(input_ids=torch.randint(0, 1000, (batch, WORDS), generator=g),
                  visual_embeds=torch.randn(batch, REGIONS, 256, generator=g),
                  attention_mask=torch.ones(batch, WORDS, dtype=torch.long))
    return model, inputs


def lxmert(batch: int):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LxmertConfig(vocab_size=1000, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                                    l_layers=2, x_layers=2, r_layers=2, visual_feat_dim=256, visual_pos_dim=4,
                                    max_position_embeddings=64, num_qa_labels=10)
    model = transformers.LxmertForQuestionAnswering(cfg).eval()
    g = torch.Generator().manual_seed(2)
    inputs = dict(input_ids=torch.randint(0, 1000, (batch, WORDS), generator=g),
                  visual_feats=torch.randn(batch, REGIONS, 256, generator=g),
                  visual_pos=torch.rand(batch, REGIONS, 4, generator=g),
                  attention_mask=torch.ones(batch, WORDS, dtype=torch.long))
    return model, inputs


def vilt(batch: int):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ViltConfig(vocab_size=1000, hidden_size=128, num_attention_heads=4, num_hidden_layers=6,
                                  intermediate_size=256, image_size=384, patch_size=32, max_image_length=-1,
                                  max_position_embeddings=64)
    model = transformers.ViltForImageAndTextRetrieval(cfg).eval()
    g = torch.Generator().manual_seed(3)
    inputs = dict(input_ids=torch.randint(0, 1000, (batch, WORDS), generator=g),
                  pixel_values=torch.randn(batch, 3, 384, 384, generator=g),
                  pixel_mask=torch.ones(batch, 384, 384, dtype=torch.long))
    return model, inputs


def top(output):
    logits = getattr(output, "logits", None)
    logits = output.question_answering_score if logits is None else logits
    return logits.max(-1).values


def reference_fns(family: str, model, inputs):
    """Method -> straightforward implementation (per example, per layer, per word loops)."""
    text, image = list(range(WORDS)), list(range(WORDS, WORDS + REGIONS))
    if family == "vilt":
        patches = list(range(WORDS + 1, WORDS + 1 + REGIONS))  # after the image [CLS]

        def per_example(grad=True):
            return ref.vilt_attentions(model, inputs, top, grad=grad)

        def raw():
            return [ref.on_grid(layers[-1][0].mean(0)[text][:, patches], cells, REGIONS)
                    for layers, cells in per_example(False)]

        def rollout():
            return [ref.on_grid(ref.rollout_single_stream(layers, text, patches), cells, REGIONS)
                    for layers, cells in per_example(False)]

        def gradient_weighted():
            return [ref.on_grid(ref.chefer_single_stream(layers, text, patches), cells, REGIONS)
                    for layers, cells in per_example()]

        def attention_x_gradient():
            return [ref.on_grid(ref.attention_x_gradient_block(layers[-1], text, patches), cells, REGIONS)
                    for layers, cells in per_example()]
    elif family == "visualbert":
        def raw():
            return [layers[-1][0].mean(0)[text][:, image] for layers in ref.joint_attentions(model, inputs, top, grad=False)]

        def rollout():
            return [ref.rollout_single_stream(layers, text, image) for layers in
                    ref.joint_attentions(model, inputs, top, grad=False)]

        def gradient_weighted():
            return [ref.chefer_single_stream(layers, text, image) for layers in ref.joint_attentions(model, inputs, top)]

        def attention_x_gradient():
            return [ref.avg_heads(*layers[-1])[text][:, image] for layers in ref.joint_attentions(model, inputs, top)]
    else:
        def raw():
            return [[a.mean(0) for k, _, d, a, _ in recs if k == "cross" and d == "t2i"][-1]
                    for recs in ref.lxmert_records(model, inputs, top, grad=False)]

        def rollout():
            return [ref.rollout_lxmert(recs, WORDS, REGIONS) for recs in ref.lxmert_records(model, inputs, top, grad=False)]

        def gradient_weighted():
            return [ref.chefer_lxmert(recs, WORDS, REGIONS) for recs in ref.lxmert_records(model, inputs, top)]

        def attention_x_gradient():
            return [ref.avg_heads(*[(a, g) for k, _, d, a, g in recs if k == "cross" and d == "t2i"][-1])
                    for recs in ref.lxmert_records(model, inputs, top)]
    return {"raw": raw, "rollout": rollout, "gradient_weighted": gradient_weighted,
            "attention_x_gradient": attention_x_gradient}


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (first-call allocations, lazy imports)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)  # the machine is shared: the fastest repeat is the least disturbed one


def trained_batches(n: int = 8):
    """``(name, model, inputs)`` for shipped checkpoints (matching: SCAN t2i; VQA), ``n`` test examples."""
    from pathlib import Path

    from attnlens.tasks import get_task

    root = Path(HERE).parent / "assets" / "checkpoints"
    out = []
    for alignment in ("general", "dot"):
        ckpt = root / f"matching-{alignment}-seed0"
        if not ckpt.exists():
            continue
        task = get_task("matching")
        model = task.load(ckpt)
        from attnlens.tasks.matching import _vocab, scene_tensors

        data = scene_tensors("test", n, task._config_for(model, None), _vocab(model))
        lengths = data["lengths"][:, 0]
        inputs = dict(images=data["images"].float() / 255.0, boxes=data["boxes"], region_mask=data["region_mask"],
                      tokens=data["tokens"][:, 0, :int(lengths.max())], lengths=lengths)
        out.append((f"matching-{alignment}", model, inputs))
    ckpt = root / "vqa-general-seed0"
    if ckpt.exists():
        from attnlens.tasks.vqa import load_data

        task = get_task("vqa")
        model = task.load(ckpt)
        cfg, vocab, answers = task._config_and_vocab(model, None)
        data = load_data(cfg, "test", vocab, answers)
        q = torch.arange(min(n, len(data["tokens"])))
        lengths = data["lengths"][q]
        inputs = dict(tokens=data["tokens"][q, :int(lengths.max())], lengths=lengths,
                      images=data["images"].float() / 255.0, boxes=data["boxes"], region_mask=data["region_mask"],
                      image_index=data["q_image"][q])
        out.append(("vqa-general", model, inputs))
    return out


def sanity() -> None:
    import pandas as pd

    from attnlens.explain.sanity import randomisation_check

    pd.set_option("display.width", 160)
    pd.set_option("display.max_colwidth", 70)
    for name, model, inputs in trained_batches():
        table = randomisation_check(model, inputs, options={"integrated_gradients": {"n_steps": 16}})
        print(f"\nrandomisation check, {name} (trained checkpoint vs re-initialised copy):")
        table["error"] = table.error.str.slice(0, 60)
        print(table[["method", "spearman", "spearman_min", "spearman_max", "n_examples", "passed", "error"]]
              .to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ig-steps", type=int, default=32)
    parser.add_argument("--sanity", action="store_true", help="also run the randomisation check on shipped models")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--models", default="visualbert,lxmert,vilt", help="comma-separated: visualbert,lxmert,vilt")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.sanity:
        sanity()
    if args.skip_timing:
        return
    B = args.batch
    print(f"attnlens.explain benchmark: batch {B}, {WORDS} words x {REGIONS} regions, {args.threads} thread(s), "
          f"fastest of {args.repeats} after a warm-up; torch {torch.__version__}")
    builders = {"visualbert": visualbert, "lxmert": lxmert, "vilt": vilt}
    for family in args.models.split(","):
        if family not in builders:
            parser.error(f"--models: unknown model {family!r} (choose from {', '.join(builders)})")
        model, inputs = builders[family](B)
        with torch.no_grad():
            forward = timed(lambda: model(**inputs), 3 * args.repeats) / B
        refs = reference_fns(family, model, inputs)
        print(f"\n{family}: one forward pass {forward * 1e3:.2f} ms/example")
        print(f"{'method':<22}{'ms/example':>12}{'ref ms/example':>16}{'speed-up':>10}{'x forward':>11}")
        for method in ex.available():
            opts = {"n_steps": args.ig_steps} if method == "integrated_gradients" else {}
            try:
                ours = timed(lambda: ex.explain(model, inputs, method, target=top, **opts), args.repeats) / B
            except ExplainError as exc:  # attention_flow refuses large token counts
                print(f"{method:<22}  refused: {str(exc)[:90]}")
                continue
            line = f"{method:<22}{ours * 1e3:>12.2f}"
            if method in refs:
                if family == "vilt":  # check the figures are of the right numbers before timing them
                    got = ex.explain(model, inputs, method, target=top).weights
                    want = torch.stack(refs[method]()).to(got.dtype)
                    err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))
                    if err > 1e-3:
                        raise SystemExit(f"vilt {method}: attnlens differs from the reference (relative {err:.1e})")
                slow = timed(refs[method], max(1, args.repeats // 3)) / B
                line += f"{slow * 1e3:>16.2f}{slow / ours:>10.1f}"
            else:
                line += f"{'(captum)':>16}{'':>10}"
            print(line + f"{ours / forward:>11.1f}")
    if "visualbert" in args.models.split(","):
        small_flow(args)


def small_flow(args) -> None:
    """attention_flow is for small token counts: time it against rollout on 8 words x 16 regions."""
    model, _ = visualbert(1)
    g = torch.Generator().manual_seed(3)
    B = args.batch
    inputs = dict(input_ids=torch.randint(0, 1000, (B, 8), generator=g),
                  visual_embeds=torch.randn(B, 16, 256, generator=g), attention_mask=torch.ones(B, 8, dtype=torch.long))
    flow = timed(lambda: ex.explain(model, inputs, "attention_flow"), args.repeats) / B
    roll = timed(lambda: ex.explain(model, inputs, "rollout"), args.repeats) / B
    print(f"\nvisualbert, 8 words x 16 regions (24 tokens, 6 layers): attention_flow {flow * 1e3:.1f} ms/example, "
          f"rollout {roll * 1e3:.2f} ms/example ({flow / roll:.0f}x)")


if __name__ == "__main__":
    main()
