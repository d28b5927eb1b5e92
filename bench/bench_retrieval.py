"""Time and peak memory of the retrieval metric at MSCOCO-5K size (5,000 images × 25,010 captions, D=768).

    .venv/bin/python bench/bench_retrieval.py [--device cuda]

Peak extra memory on CPU is the process's peak resident set minus its resident set just before the call.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from common import machine, write_section

from mmd2v2_core.eval.retrieval import recall_at_k

N_IMAGES, N_CAPTIONS, DIM = 5000, 25010, 768


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    counts = np.full(N_IMAGES, 5)
    counts[:10] = 6  # COCO 5K has 25,010 captions: a few images have six or seven
    t2i = torch.from_numpy(np.repeat(np.arange(N_IMAGES), counts))
    image = torch.from_numpy(rng.standard_normal((N_IMAGES, DIM), dtype=np.float32)).to(args.device)
    noise = torch.from_numpy(rng.standard_normal((len(t2i), DIM), dtype=np.float32)).to(args.device)
    text = image[t2i.to(args.device)] + 12.0 * noise
    before = rss_mib()
    times = []
    for _ in range(args.repeats):
        if args.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        metrics = recall_at_k(image, text, t2i.to(args.device))
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20 - (image.numel() + text.numel()) * 4 / 2**20
        where = torch.cuda.get_device_name()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
        where = machine()
    row = (f"| {args.device} | {N_IMAGES:,} × {len(t2i):,}, D={DIM} | {np.median(times):.2f} s "
           f"(min {min(times):.2f}) | {peak:.0f} MiB | i2t R@1 {metrics['i2t_r1']:.2f}, t2i R@1 {metrics['t2i_r1']:.2f} |")
    print(row)
    write_section(f"retrieval-{args.device}", "\n".join([
        f"## Retrieval metric at COCO-5K size, {args.device} (`bench/bench_retrieval.py`)",
        "",
        f"{where}; median of {args.repeats} runs; both directions, R@1/5/10, exact ranks. Target: ≤ 1.5 s on "
        "2 CPU cores, peak extra memory well under 1 GB.",
        "",
        "| device | size | time | peak extra memory | sanity |",
        "|---|---|---:|---:|---|",
        row,
    ]))


if __name__ == "__main__":
    main()
