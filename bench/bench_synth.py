"""Time the synthetic dataset generator at each profile's scale (target: embedded < 60 s on 2 cores).

    .venv/bin/python bench/bench_synth.py
"""

from __future__ import annotations

import tempfile
import time

from common import machine, write_section

from data_prep.synth import PROFILES, generate


def main() -> None:
    rows = []
    for profile in ("smoke", "embedded"):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            generate(tmp, profile, seed=0)
            seconds = time.perf_counter() - start
        scale = PROFILES[profile]
        images = sum(n for d in ("synth-coco", "synth-flickr") for n in scale[d].values())
        rows.append(f"| {profile} | {images:,} | {scale['image_size']} px | {seconds:.1f} s | {images / seconds:,.0f} |")
        print(rows[-1])
    write_section("synth", "\n".join([
        "## Synthetic dataset generation (`bench/bench_synth.py`)",
        "",
        f"Both domains, rendering + JPEG + Karpathy JSON + index; {machine()}. Target: embedded < 60 s.",
        "",
        "| profile | images | size | wall time | images/s |",
        "|---|---:|---|---:|---:|",
        *rows,
    ]))


if __name__ == "__main__":
    main()
