"""Benchmark: capturing a decoder-only vision-language model (tiny LLaVA, random weights).

One run prints, side by side:

1. **Stored bytes** of the attention kept after one forward: the sliced capture
   (``attnlens.capture(model)``: text rows x image columns of every layer), the same in
   float16 (``dtype="float16"``), the full capture (``adapters.llava.taps(model, block="full")``)
   and ``output_attentions=True`` (every layer's full ``T x T``), with the ratios to the last.
2. **Peak memory** of a forward that keeps each variant's attention, each in a fresh
   subprocess: the peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` after two
   warm-up plain forwards) minus the RSS before the forward (Linux only).
3. **Time**: the plain forward (the model's fused SDPA attention), the same model with eager
   attention and no capture, the captured forward (eager attention switched on for the
   capture, slicing in the hook) and the ``output_attentions=True`` forward (eager),
   interleaved repeats, medians and ratios to the plain forward.

Usage::

    python benchmarks/bench_capture_lvlm.py                    # 576 image tokens (24 x 24), 8 layers
    python benchmarks/bench_capture_lvlm.py --grid 16 --layers 4 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

import attnlens  # noqa: E402
from attnlens.capture import adapters  # noqa: E402

IMAGE_TOKEN = 999
VARIANTS = ("plain", "eager", "sliced", "sliced_fp16", "full_capture", "output_attentions")
STORED = VARIANTS[2:]


def build(grid: int, layers: int, text: int):
    import transformers as T

    torch.manual_seed(0)
    patch = 4
    vision = T.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                image_size=grid * patch, patch_size=patch)
    lm = T.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=8,
                       num_key_value_heads=8, vocab_size=1000, max_position_embeddings=grid * grid + text + 16)
    model = T.LlavaForConditionalGeneration(T.LlavaConfig(vision_config=vision, text_config=lm,
                                                          image_token_id=IMAGE_TOKEN)).eval()
    g = torch.Generator().manual_seed(1)
    half = text // 2
    ids = torch.cat([torch.randint(1, 900, (1, half), generator=g), torch.full((1, grid * grid), IMAGE_TOKEN),
                     torch.randint(1, 900, (1, text - half), generator=g)], dim=1)
    return model, dict(input_ids=ids, pixel_values=torch.randn(1, 3, grid * patch, grid * patch, generator=g))


def run_variant(name: str, model, inputs):
    """One forward of ``name``; returns (output, what it keeps, stored bytes)."""
    with torch.no_grad():
        if name == "plain":
            return model(**inputs), None, 0
        if name == "eager":  # eager attention, no capture: what the switch alone costs
            model.set_attn_implementation("eager")
            try:
                return model(**inputs), None, 0
            finally:
                model.set_attn_implementation("sdpa")
        if name == "output_attentions":  # what a user does without attnlens: eager attention, every layer's T x T
            fused = model.config.text_config._attn_implementation
            model.set_attn_implementation("eager")
            try:
                out = model(**inputs, output_attentions=True)
            finally:
                model.set_attn_implementation(fused)
            kept = out.attentions
            return out, kept, sum(a.numel() * a.element_size() for a in kept)
        options = {"sliced": {}, "sliced_fp16": {"dtype": "float16"}}.get(name)
        sites = adapters.llava.taps(model, block="full") if name == "full_capture" else None
        with attnlens.capture(model, sites, **(options or {})) as rec:
            out = model(**inputs)
        return out, rec, rec.store.bytes_in_memory


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(args) -> None:
    torch.set_num_threads(args.threads)
    model, inputs = build(args.grid, args.layers, args.text)
    run_variant("plain", model, inputs)  # warm-up: the plain forward's own peak is in the baseline
    run_variant("plain", model, inputs)
    base = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
        f.write("5")
    out, kept, stored = run_variant(args.child, model, inputs)
    peak = _rss_kib("VmHWM")
    print(json.dumps({"variant": args.child, "peak_increase_kib": peak - base, "stored": stored}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", type=int, default=24, help="image grid side (image tokens = grid ** 2)")
    p.add_argument("--layers", type=int, default=8, help="language-model layers")
    p.add_argument("--text", type=int, default=32, help="text tokens around the image")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    torch.set_num_threads(args.threads)
    model, inputs = build(args.grid, args.layers, args.text)
    seq = inputs["input_ids"].shape[1]
    print(f"tiny LLaVA: {args.layers} LM layers x 8 heads, sequence {seq} = {args.text} text + "
          f"{args.grid ** 2} image tokens ({args.grid} x {args.grid}); {args.threads} thread(s), "
          f"{os.cpu_count()} CPUs visible; attention implementation {model.config.text_config._attn_implementation}")

    # 1. stored bytes, and a check that the sliced maps are the full ones' blocks
    stored = {}
    for name in STORED:
        out, kept, stored[name] = run_variant(name, model, inputs)
    full = stored["output_attentions"]
    print("\nstored attention after one forward:")
    for name in STORED:
        print(f"  {name:18s} {stored[name]:>12,d} B   {stored[name] / full:7.4f} x output_attentions")

    # 2. peak memory, one fresh process per variant
    print("\npeak RSS increase over a warmed-up plain forward (fresh process each):")
    peaks = {}
    for name in VARIANTS:
        cmd = [sys.executable, __file__, "--child", name, "--grid", str(args.grid), "--layers", str(args.layers),
               "--text", str(args.text), "--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        peaks[name] = json.loads(res.stdout.strip().splitlines()[-1])["peak_increase_kib"]
    for name in VARIANTS:
        ratio = peaks[name] / peaks["output_attentions"] if peaks["output_attentions"] else float("nan")
        print(f"  {name:18s} {peaks[name] / 1024:9.1f} MiB   {ratio:7.4f} x output_attentions")

    # 3. time, interleaved repeats
    timed = ("plain", "eager", "sliced", "output_attentions")
    times: dict[str, list[float]] = {k: [] for k in timed}
    for name in timed:
        run_variant(name, model, inputs)
    for _ in range(args.repeats):
        for name in timed:
            t0 = time.perf_counter()
            run_variant(name, model, inputs)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nforward time, median of {args.repeats} interleaved repeats:")
    for name in timed:
        print(f"  {name:18s} {med[name] * 1e3:8.1f} ms   {med[name] / med['plain']:6.2f} x plain (fused SDPA)")


if __name__ == "__main__":
    main()
