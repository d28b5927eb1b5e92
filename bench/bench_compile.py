"""``torch.compile`` on the student's training step at embedded size: eager against compiled, and what the first
compile costs with an empty cache and with the persistent one.

    .venv/bin/python bench/bench_compile.py [--steps 40]

For S-SMKE and MM-D2V2 5+1 (targets and front end cached, as in ``bench_train.py``), the bare step (forward +
backward + AdamW on one batch in memory, the study's precision) on one thread, as one of the study's side-by-side
runs has it, each in a fresh process:

* eager;
* compiled (inductor, default mode) with an empty ``TORCHINDUCTOR_CACHE_DIR``: the first step compiles;
* compiled again in a new process over the same cache directory, as the 27 runs of a study would find it after the
  first (the same shapes recur).

The batch is fixed (one batch in memory); the trainer's caption batches vary in padded length, which a compiled
model would meet with a recompile or dynamic shapes, so the steady rate here is the best a compiled trainer could do.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from bench_train import RECIPES, bare_step, prepare_subset
from common import machine, write_section

from data_prep.synth import generate
from mmd2v2_core.config import load_config
from mmd2v2_core.runs import SYNTHETIC_RUNS

MODES = ("eager", "compiled, empty cache", "compiled, warm cache")


def measure(mode: str, overrides: list[str], steps: int, cache: Path) -> dict:
    """One mode in a process of its own on one thread (a fresh interpreter: no compiled code left in memory)."""
    script = Path(__file__).resolve()
    done = subprocess.run([sys.executable, str(script), "--worker", mode, "--steps", str(steps), "--", *overrides],
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": str(cache)},
                          capture_output=True, text=True, cwd=script.parent)
    if done.returncode:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--worker", choices=MODES)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.worker:
        torch.set_num_threads(1)
        rate, _, first = bare_step(load_config("embedded", args.overrides), args.steps, args.worker != "eager")
        print(json.dumps({"pairs_per_s": rate, "first_step_s": first}))
        return
    data = generate(args.data / "embedded", "embedded")["synth-coco"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        common = prepare_subset(data, tmp)
        for label, run in RECIPES.items():
            recipe = list(next(r for r in SYNTHETIC_RUNS if r.name == run).overrides)
            cache = tmp / f"inductor-{run}"
            found = {mode: measure(mode, [*common, *recipe, f"run.out_dir={tmp / run}"], args.steps, cache)
                     for mode in MODES}
            print(label, json.dumps(found))
            eager = found["eager"]["pairs_per_s"]
            rows.append(f"| {label} | {eager:.0f} | " + " | ".join(
                f"{found[m]['pairs_per_s']:.0f} (×{found[m]['pairs_per_s'] / eager:.2f}), first step "
                f"{found[m]['first_step_s']:.1f} s" for m in MODES[1:]) + f" | {found['eager']['first_step_s']:.2f} s |")
    write_section("compile", "\n".join([
        "## `torch.compile` on the training step (`bench/bench_compile.py`)",
        "",
        f"The bare step (forward + backward + AdamW on one batch of the embedded preset in memory, the study's "
        f"precision) on one thread, as each of the study's side-by-side runs has it, {args.steps} steps after two of "
        f"warm-up, each mode in a fresh process; {machine()}. Compiled: inductor, default mode; the warm cache is the "
        "same `TORCHINDUCTOR_CACHE_DIR` a second process finds.",
        "",
        "| recipe | eager, pairs/s | compiled, empty cache, pairs/s | compiled, warm cache, pairs/s | eager first step |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ]))


if __name__ == "__main__":
    main()
