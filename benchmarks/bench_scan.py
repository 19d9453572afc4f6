"""Benchmark: all-pairs SCAN t2i scoring vs a per-caption loop with the reference code's structure.

Run:  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_scan.py [--images 200 --captions 1000]

Prints, from one run: the vectorised time, the loop time (timed on a subset of captions and
scaled linearly -- said in the output), their ratio, the agreement of the two on the subset,
this machine's float32 GEMM throughput and the fraction of it the scoring reaches (counting the
score GEMM's flops only), and the peak memory growth per chunk size (max RSS of a subprocess).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def l2norm(x, dim=-1, eps=1e-8):
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)


def make_data(n_images, n_captions, regions=36, words=12, dim=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    ims = l2norm(torch.randn(n_images, regions, dim, generator=g))
    caps = l2norm(torch.randn(n_captions, words, dim, generator=g))
    lengths = torch.full((n_captions,), words, dtype=torch.long)
    return ims, caps, lengths


def loop_t2i(images, captions, lengths, lambda_softmax=9.0):
    """The public code's structure: per caption, repeat it over the images, bmm, clipped_l2norm
    over words, softmax over regions, second bmm for the attended vectors, cosine, mean."""
    n_image = images.shape[0]
    sims = []
    for i in range(captions.shape[0]):
        n = int(lengths[i])
        cap = captions[i, :n].unsqueeze(0).repeat(n_image, 1, 1)
        attn = torch.bmm(images, cap.transpose(1, 2))                      # (Ni, R, n)
        attn = l2norm(F.leaky_relu(attn, 0.1), 2)
        attn = torch.softmax(attn.transpose(1, 2) * lambda_softmax, dim=2)  # (Ni, n, R)
        ctx = torch.bmm(attn, images)                                      # (Ni, n, d)
        w12 = (cap * ctx).sum(2)
        cos = w12 / (cap.norm(dim=2) * ctx.norm(dim=2)).clamp(min=1e-8)
        sims.append(cos.mean(dim=1, keepdim=True))
    return torch.cat(sims, 1)


def gemm_gflops(n=2048, reps=5):
    """(wall GFLOP/s, GFLOP per CPU-second) of a float32 n^3 matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    w, c = time.perf_counter(), time.process_time()
    for _ in range(reps):
        a @ b
    flops = 2 * n ** 3 * reps / 1e9
    return flops / (time.perf_counter() - w), flops / (time.process_time() - c)


def memory_child(chunk, n_images, n_captions):
    from attnlens.models.scan import similarity
    ims, caps, lengths = make_data(n_images, n_captions)
    similarity(ims[:2], caps[:2], lengths[:2])                             # warm up allocator/libs
    before = _reset_peak_kib()
    t = time.perf_counter()
    similarity(ims, caps, lengths, chunk_size=chunk)
    elapsed = time.perf_counter() - t
    after = _peak_kib()
    print(json.dumps({"peak_growth_mib": (after - before) / 1024, "seconds": elapsed}))


def _peak_kib():
    """Peak RSS (VmHWM) in KiB; falls back to getrusage's max RSS."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak_kib():
    """Reset the peak RSS to the current RSS (Linux clear_refs 5) and return it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _peak_kib()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--captions", type=int, default=1000)
    ap.add_argument("--loop-captions", type=int, default=25, help="captions timed in the loop (scaled up)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        ci, cc = map(int, args.child.split(","))
        memory_child((ci, cc), args.images, args.captions)
        return
    from attnlens.models.scan import similarity

    torch.manual_seed(0)
    print(f"threads: {torch.get_num_threads()}, torch {torch.__version__}")
    ims, caps, lengths = make_data(args.images, args.captions)
    R, L, D = ims.shape[1], caps.shape[1], ims.shape[2]
    similarity(ims[:8], caps[:32], lengths[:32])                         # warm-up
    loop_t2i(ims, caps[:4], lengths[:4])                                   # warm-up
    k = min(args.loop_captions, args.captions)
    gemm = [gemm_gflops()]
    vec_wall, vec_cpu, loop_wall, loop_cpu = [], [], [], []
    for _ in range(args.repeats):                                          # interleaved: fairer under load
        w, c = time.perf_counter(), time.process_time()
        S = similarity(ims, caps, lengths)
        vec_wall.append(time.perf_counter() - w)
        vec_cpu.append(time.process_time() - c)
        w, c = time.perf_counter(), time.process_time()
        S_loop = loop_t2i(ims, caps[:k], lengths[:k])
        loop_wall.append((time.perf_counter() - w) * args.captions / k)
        loop_cpu.append((time.process_time() - c) * args.captions / k)
    t_vec, t_loop = min(vec_wall), min(loop_wall)
    diff = (S[:, :k] - S_loop).abs().max().item()

    gemm.append(gemm_gflops())
    gflops = max(g[0] for g in gemm)
    gflops_cpu = max(g[1] for g in gemm)
    score_flops = 2.0 * args.images * R * args.captions * L * D
    achieved = score_flops / t_vec / 1e9
    print(f"problem: {args.images} images x {args.captions} captions, {R} regions, {L} words, d={D}, float32")
    print(f"vectorised all-pairs SCAN t2i (default chunks): {t_vec:.2f} s wall (best of {args.repeats}), "
          f"{min(vec_cpu):.2f} s CPU")
    print(f"per-caption loop, timed on {k} captions and scaled linearly to {args.captions}: {t_loop:.2f} s wall, "
          f"{min(loop_cpu):.2f} s CPU")
    print(f"speed-up: {t_loop / t_vec:.1f}x wall, {min(loop_cpu) / min(vec_cpu):.1f}x CPU time   "
          f"(max |S_vec - S_loop| on the subset: {diff:.2e})")
    print(f"float32 GEMM throughput (2048^3 matmul, best of before/after): {gflops:.1f} GFLOP/s wall, "
          f"{gflops_cpu:.1f} GFLOP per CPU-second")
    achieved_cpu = score_flops / min(vec_cpu) / 1e9
    print(f"score GEMM flops {score_flops / 1e9:.1f} GFLOP (whole pipeline timed, only the score product "
          f"counted): {achieved:.1f} GFLOP/s wall = {100 * achieved / gflops:.0f}% of the GEMM's wall rate; "
          f"{achieved_cpu:.1f} GFLOP per CPU-second = {100 * achieved_cpu / gflops_cpu:.0f}% of the GEMM's")
    n_img_mem, n_cap_mem = min(args.images, 64), min(args.captions, 128)
    print(f"peak memory growth vs chunk size ({n_img_mem} x {n_cap_mem} pairs, subprocess max RSS):")
    for chunk in ((8, 32), (16, 64), (64, 128)):
        out = subprocess.run([sys.executable, __file__, "--child", f"{chunk[0]},{chunk[1]}",
                              "--images", str(n_img_mem), "--captions", str(n_cap_mem)],
                             capture_output=True, text=True, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        pair_bytes = chunk[0] * chunk[1] * R * L * 4
        print(f"  chunk {chunk[0]:>3} x {chunk[1]:>3}: peak +{res['peak_growth_mib']:7.1f} MiB "
              f"(one [ni, nc, L, R] buffer = {pair_bytes / 2**20:.1f} MiB), {res['seconds']:.2f} s")


if __name__ == "__main__":
    main()
