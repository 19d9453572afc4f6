"""Benchmarks of attnlens.capture.

1. Bounded memory: a stream of batches whose maps add up to far more than the memory budget,
   captured in a fresh subprocess each time, with and without a budget; prints the peak RSS
   (``resource.getrusage``; VmHWM from /proc too) of both and the bytes spilled.
2. Overhead: forward of a SCAN model (``ScanSimilarity``; images x captions, 36 regions,
   12 words) without capture and with capture of its one attention site, in the same run,
   interleaved repeats; prints medians and the overhead in percent (target <= 5% with
   ``to_cpu=True, keep_scores=False``; ``keep_scores=True`` is reported too), in wall and in
   process CPU time (the machine may be shared), and the time spent inside the capture hook.

Usage::

    python benchmarks/bench_capture.py                  # 128 x 128, d = 1024
    python benchmarks/bench_capture.py --dim 256 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

import attnlens  # noqa: E402
from attnlens.models.scan import ScanSimilarity  # noqa: E402


def overhead(n: int, regions: int, words: int, dim: int, repeats: int, threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(n, regions, dim, generator=g), dim=-1)
    captions = torch.nn.functional.normalize(torch.randn(n, words, dim, generator=g), dim=-1)
    lengths = torch.randint(3, words + 1, (n,), generator=g)
    lengths[0] = words
    model = ScanSimilarity("t2i", "lse").eval()
    variants = {
        "plain": None,
        "capture(keep_scores=False)": dict(keep_scores=False, to_cpu=True),
        "capture(keep_scores=True)": dict(keep_scores=True, to_cpu=True),
    }
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    hook_time: dict[str, list[float]] = {k: [] for k in variants if k != "plain"}
    faults: dict[str, list[int]] = {k: [] for k in variants}

    def run(name, instrument=False):
        options = variants[name]
        t0, c0 = time.perf_counter(), time.process_time()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        with torch.no_grad():
            if options is None:
                model(images, captions, lengths)
            else:
                cap = attnlens.capture(model, "attn", **options)
                spent = [0.0]
                if instrument:  # time spent inside the capture hook itself
                    emit = cap._emit

                    def timed(site, record):
                        h0 = time.perf_counter()
                        emit(site, record)
                        spent[0] += time.perf_counter() - h0

                    cap._emit = timed
                with cap as rec:
                    model(images, captions, lengths)
                assert len(rec) > 0
                if instrument:
                    hook_time[name].append(spent[0])
        faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        return time.perf_counter() - t0, time.process_time() - c0

    for name in variants:  # warm-up
        run(name)
    for r in range(repeats):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            w, c = run(name)
            wall[name].append(w)
            cpu[name].append(c)
    for name in hook_time:
        for _ in range(3):
            run(name, instrument=True)
    chunks = model.chunks_for(n, n, regions, words, 4)
    n_chunks = -(-n // chunks[0]) * -(-n // chunks[1])
    print(f"== overhead: ScanSimilarity t2i, {n} images x {n} captions, {regions} regions, {words} words, d={dim}, "
          f"{n_chunks} chunks of {chunks}, {torch.get_num_threads()} torch threads, {repeats} interleaved repeats")
    for label, table in (("wall", wall), ("cpu (process_time)", cpu)):
        base = table["plain"]
        print(f"-- {label}")
        for name, ts in table.items():
            line = f"{name:28s} median {statistics.median(ts) * 1e3:9.1f} ms  min {min(ts) * 1e3:9.1f} ms"
            if name != "plain":
                paired = statistics.median(t / p for t, p in zip(ts, base))  # same round, adjacent runs
                line += (f"  overhead {100 * (min(ts) / min(base) - 1):+6.2f}% (min/min), "
                         f"{100 * (paired - 1):+6.2f}% (median of paired ratios)")
            print(line)
    print("minor page faults per forward (median): " + ", ".join(
        f"{name} {statistics.median(v):.0f}" for name, v in faults.items()))
    base = min(cpu["plain"])
    for name, ts in hook_time.items():
        print(f"time inside the capture hook, {name}: {statistics.median(ts) * 1e3:.2f} ms per forward "
              f"= {100 * statistics.median(ts) / base:.3f}% of the plain forward's min cpu time")


def vm_hwm() -> int | None:
    """Peak resident set of this process image (KiB) from /proc (Linux), else None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def child(batches: int, n: int, budget: int | None) -> None:
    """Capture a stream of batches; print peak RSS and store figures as JSON."""
    g = torch.Generator().manual_seed(0)
    model = ScanSimilarity("t2i", "mean", chunk_size=n).eval()
    images = torch.nn.functional.normalize(torch.randn(n, 36, 64, generator=g), dim=-1)
    captions = torch.nn.functional.normalize(torch.randn(n, 12, 64, generator=g), dim=-1)
    lengths = torch.full((n,), 12)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad(), attnlens.capture(model, "attn", memory_budget=budget) as rec:
        for _ in range(batches):
            model(images, captions, lengths)
    one = rec.maps[len(rec) - 1]
    total = len(rec) * (one.weights.numel() * one.weights.element_size() * 2)
    # read everything back once (lazily, one map at a time)
    checksum = sum(float(rec.maps[i].weights[0, 0, 0, 0]) for i in range(len(rec)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"vm_hwm_kib": vm_hwm(), "maps": len(rec), "total_map_bytes": total, "spilled": rec.store.spilled_count,
                      "shards": len(rec.store.shards), "peak_in_memory_bytes": rec.store.peak_bytes_in_memory,
                      "rss_before_kib": base_rss, "peak_rss_kib": peak, "checksum": checksum}))
    rec.close()


def bounded(batches: int, n: int, budget: int) -> None:
    print(f"== bounded memory: {batches} batches of {n} x {n} pairs (36 regions, 12 words), keep_scores=True, "
          f"budget {budget / 2**20:.0f} MiB")
    runs = (("no budget", None, batches), (f"budget {budget / 2**20:.0f} MiB", budget, batches),
            (f"budget, {2 * batches} batches", budget, 2 * batches))
    for label, b, nb in runs:
        cmd = [sys.executable, __file__, "--child", str(nb), str(n), "none" if b is None else str(b)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"{label:22s} maps {r['maps']:4d}  map bytes {r['total_map_bytes'] / 2**20:8.1f} MiB  "
              f"spilled {r['spilled']:4d} in {r['shards']:3d} shards  peak held {r['peak_in_memory_bytes'] / 2**20:7.1f} MiB  "
              f"RSS before {r['rss_before_kib'] / 1024:7.1f} MiB  peak RSS {r['peak_rss_kib'] / 1024:7.1f} MiB"
              + ("" if r["vm_hwm_kib"] is None else f"  (VmHWM {r['vm_hwm_kib'] / 1024:7.1f} MiB)"))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        batches, n, budget = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
        child(batches, n, None if budget == "none" else int(budget))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=128, help="images and captions")
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batches", type=int, default=120, help="batches in the bounded-memory stream")
    p.add_argument("--batch-pairs", type=int, default=48, help="images = captions per streamed batch")
    p.add_argument("--budget-mib", type=float, default=32)
    p.add_argument("--skip-overhead", action="store_true")
    args = p.parse_args()
    # the memory part first: Linux carries a parent's ru_maxrss over into its children
    bounded(args.batches, args.batch_pairs, int(args.budget_mib * 2**20))
    if not args.skip_overhead:
        overhead(args.n, 36, 12, args.dim, args.repeats, args.threads)


if __name__ == "__main__":
    main()
