"""Overhead of capturing torch attention primitives, against the plain forward in the same run.

Three models, eval mode, interleaved repeats, medians of wall time per forward:

* ``encoder``: ``nn.TransformerEncoder`` (its fused fast path; the capture recomputes the
  weights from each layer's input, the kernel itself is untouched);
* ``encoder+grad``: the same with autograd on (regular path; ``need_weights=False`` calls,
  weights recomputed after each call);
* ``sdpa``: blocks calling ``F.scaled_dot_product_attention`` (recorded through a thread-local
  TorchFunctionMode, weights computed next to the fused call).

Wall time and process CPU time are both reported (the machine may be shared: CPU time is the
steadier of the two with one thread). Also checks that each captured forward's output equals
the plain one bitwise.

Usage::

    python benchmarks/bench_capture_primitives.py [--dim 256 --layers 4 --seq 128 --batch 8 --repeats 7]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

import attnlens  # noqa: E402


class Attn(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.out(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(2))


class SdpaNet(nn.Module):
    def __init__(self, d, heads, layers):
        super().__init__()
        self.blocks = nn.ModuleList(Attn(d, heads) for _ in range(layers))

    def forward(self, x):
        for b in self.blocks:
            x = x + b(x)
        return x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(a.dim, a.heads, 4 * a.dim, batch_first=True),
                                a.layers, enable_nested_tensor=False).eval()
    net = SdpaNet(a.dim, a.heads, a.layers).eval()
    x = torch.randn(a.batch, a.seq, a.dim)
    cases = {"encoder": (enc, torch.no_grad), "encoder+grad": (enc, torch.enable_grad), "sdpa": (net, torch.no_grad)}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, x {tuple(x.shape)}, "
          f"{a.layers} layers x {a.heads} heads")
    for name, (model, ctx) in cases.items():
        times = {"plain": [], "capture": []}
        cpu = {"plain": [], "capture": []}
        for _ in range(a.repeats):
            with ctx():
                t0, c0 = time.perf_counter(), time.process_time()
                ref = model(x)
                times["plain"].append(time.perf_counter() - t0)
                cpu["plain"].append(time.process_time() - c0)
                t0, c0 = time.perf_counter(), time.process_time()
                with attnlens.capture(model, keep_scores=False) as rec:
                    out = model(x)
                times["capture"].append(time.perf_counter() - t0)
                cpu["capture"].append(time.process_time() - c0)
            assert torch.equal(out, ref), name
            maps, method = len(rec), rec.maps[0].meta["method"]
            rec.close()
        p, c = statistics.median(times["plain"]), statistics.median(times["capture"])
        pc, cc = statistics.median(cpu["plain"]), statistics.median(cpu["capture"])
        print(f"{name:13s} wall: plain {p * 1e3:7.1f} ms, capture {c * 1e3:7.1f} ms ({100 * (c / p - 1):+5.0f}%)   "
              f"cpu: plain {pc * 1e3:7.1f} ms, capture {cc * 1e3:7.1f} ms ({100 * (cc / pc - 1):+5.0f}%)   "
              f"maps {maps} ({method}), output bitwise equal")


if __name__ == "__main__":
    main()
