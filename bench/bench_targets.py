"""Teacher targets: throughput of the embedded image teacher, and what the cache saves per training batch.

    .venv/bin/python bench/bench_targets.py [--images 2048] [--batch 256]

Uses the embedded synthetic data (generated if missing) and EfficientNet-Lite0 at 128 px, the embedded
profile's teacher. "Online" is the teacher forward that a training step would otherwise run for its
batch (images already decoded and on the device); "cache" is the lookup of the same batch's targets.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import machine, write_section

from data_prep.synth import generate
from mmd2v2_core.data.datasets import ImageSet
from mmd2v2_core.data.index import image_root, load_manifest, read_split, write_index
from mmd2v2_core.data.transforms import eval_transform
from mmd2v2_core.teachers.cache import TargetCache, build_cache
from mmd2v2_core.teachers.inspect import preprocess_of
from mmd2v2_core.teachers.registry import create_teacher
from mmd2v2_core.teachers.targets import compute_target


def subset_index(data: Path, n: int, out: Path) -> Path:
    """A prepared index holding the first n training images (same files), to keep the benchmark short."""
    manifest = load_manifest(data)
    root = image_root(data, manifest)  # the subset points at the same files, inside the same image folder
    rows = [{"image_id": r.image_id, "path": str(r.path.relative_to(root)), "captions": list(r.captions),
             "sentids": list(r.sentids)} for r in read_split(data, "train")[:n]]
    write_index(out, {"dataset": manifest["dataset"], "image_root": str(root)}, {"train": rows})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--data", type=Path, default=Path("data"))
    args = parser.parse_args()
    data = generate(args.data / "embedded", "embedded")["synth-coco"]
    teacher = create_teacher("efficientnet-lite0")
    pre = preprocess_of(teacher, 128)
    with tempfile.TemporaryDirectory() as tmp:
        index = subset_index(data, args.images, Path(tmp) / "index")
        start = time.perf_counter()
        build_cache(teacher, "pooled", index, "train", Path(tmp) / "cache", pre, batch_size=64)
        build_seconds = time.perf_counter() - start
        cache = TargetCache(Path(tmp) / "cache")
        records = read_split(index, "train")
        images = ImageSet(records, eval_transform(pre))
        batch = torch.stack([images[i]["image"] for i in range(args.batch)])
        ids = [r.image_id for r in records[: args.batch]]
        with torch.no_grad():
            compute_target(teacher(batch), "pooled")  # warm-up
            start = time.perf_counter()
            for _ in range(3):
                compute_target(teacher(batch), "pooled")
            online = (time.perf_counter() - start) / 3
        start = time.perf_counter()
        for _ in range(20):
            cache.lookup(ids)
        cached = (time.perf_counter() - start) / 20
    rows = [
        f"| build cache ({args.images:,} images, decode + resize + forward + fp16 write) | {build_seconds:.1f} s "
        f"| {args.images / build_seconds:,.0f} targets/s |",
        f"| online targets for one batch of {args.batch} (teacher forward) | {online * 1000:.0f} ms | "
        f"{args.batch / online:,.0f} targets/s |",
        f"| cached targets for one batch of {args.batch} (memory-mapped lookup) | {cached * 1000:.1f} ms | "
        f"{args.batch / cached:,.0f} targets/s |",
        f"| per-batch saving of the cache | {(online - cached) * 1000:.0f} ms | ×{online / cached:,.0f} faster |",
    ]
    print("\n".join(rows))
    write_section("targets", "\n".join([
        "## Teacher targets (`bench/bench_targets.py`)",
        "",
        f"EfficientNet-Lite0 (embedded teacher), 128 px, target kind `pooled`, fp32 on CPU; {machine()}.",
        "The end-to-end training speed-up (cached vs online targets) is measured by the trainer's benchmark.",
        "",
        "| what | time | rate |",
        "|---|---:|---:|",
        *rows,
    ]))


if __name__ == "__main__":
    main()
