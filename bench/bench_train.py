"""Training throughput at embedded size: the trainer as it was (a reference commit) against today's, in one run.

    .venv/bin/python bench/bench_train.py [--steps 60] [--reference 1d71c70]

For S-SMKE and MM-D2V2 5+1 (the embedded study's recipes, targets and front end cached, on a 2,048-image subset of
the synthetic train split):

* the **reference trainer**: the kit at ``--reference`` (checked out into a temporary git worktree and run in its
  own process) with its own embedded preset — batch 64, fp32, PyTorch's fused attention kernel, captions tokenised
  every step, cache rows gathered one pair at a time;
* the **current trainer** with the current embedded preset (its batch, ``optim.precision=auto``);
* the current trainer's **bare step**: the same model, objective and optimiser on one batch already in memory —
  what the trainer's data, logging and bookkeeping add is the difference;
* achieved GFLOP/s (FLOPs of one step counted by ``torch.utils.flop_counter``) against this machine's measured
  matmul peak in fp32 and bf16, and against the matmul rate at the student's own shapes (``[B·T, 128] × [128, 128]``
  and the MLP's ``[B·T, 128] × [128, 256]``, ``[B·T, 256] × [256, 128]``) on one thread: what one of the study's
  side-by-side runs has;
* both cores busy: one run on every thread against one run per core side by side (each on one thread), in pairs/s
  summed over the runs, as ``Study.train_all`` chooses between them.

Also the time to score one checkpoint on both test sets as the study does it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_targets import subset_index
from common import machine, write_section
from torch.utils.flop_counter import FlopCounterMode

from data_prep.synth import generate
from mmd2v2_core.config import load_config
from mmd2v2_core.data.index import read_split
from mmd2v2_core.data.tokenizer import CaptionTokenizer
from mmd2v2_core.eval.embed import evaluate_retrieval, student_inputs
from mmd2v2_core.precision import resolve_precision
from mmd2v2_core.runs import SYNTHETIC_RUNS
from mmd2v2_core.student.frontend_cache import CachedFrontEnd
from mmd2v2_core.student.presets import SIZES, preset_from_config, student_from_config
from mmd2v2_core.teachers.cache import TargetCache, build_cache
from mmd2v2_core.teachers.inspect import preprocess_of
from mmd2v2_core.teachers.registry import create_teacher
from mmd2v2_core.train.checkpoint import find_checkpoint, load_trained_student
from mmd2v2_core.train.data import CachedPairs
from mmd2v2_core.train.loop import train
from mmd2v2_core.teachers.whitening import TargetWhitening
from mmd2v2_core.train.objective import Objective, Trainable

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"S-SMKE": "smke", "MM-D2V2 5+1": "mmd2v2_6"}
REFERENCE_TRAIN = """
import sys
from mmd2v2_core.config import load_config
from mmd2v2_core.train.loop import train
train(load_config("embedded", sys.argv[1:]))
"""


def trainer_rate(metrics: Path) -> float:
    rates = [json.loads(l)["samples_per_s"] for l in metrics.read_text().splitlines() if '"kind": "train"' in l]
    return sum(rates[1:]) / len(rates[1:])  # the first window includes start-up


def matmul_peak(dtype: torch.dtype, m: int = 4096, k: int = 4096, n: int = 4096, repeats: int = 5) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9


def student_matmul_rate(dtype: torch.dtype, width: int, hidden: int, rows: int, repeats: int = 50) -> float:
    """GFLOP/s of the student's three matmul shapes (attention projections, MLP in, MLP out) on this thread count."""
    shapes = [(rows, width, width), (rows, width, hidden), (rows, hidden, width)]
    mats = [(torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)) for m, k, n in shapes]
    for a, b in mats:
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        for a, b in mats:
            a @ b
    return 2 * repeats * sum(m * k * n for m, k, n in shapes) / (time.perf_counter() - start) / 1e9


def run_current(overrides: list[str], threads: int) -> subprocess.Popen:
    """Today's trainer in a process of its own on ``threads`` threads, as ``Study.train_all`` launches a run."""
    return subprocess.Popen([sys.executable, "-c", REFERENCE_TRAIN, *overrides], cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def side_by_side(common: list[str], recipe: list[str], steps: int, out: Path) -> tuple[float, list[float]]:
    """(pairs/s of one run on every core, pairs/s of each of one-run-per-core side by side)."""
    cores = torch.get_num_threads()
    rates = []
    for jobs, threads in ((1, cores), (cores, 1)):
        runs = [out / f"{jobs}x{threads}-{i}" for i in range(jobs)]
        procs = [run_current([*common, *recipe, f"run.out_dir={r}", f"optim.steps={steps}"], threads) for r in runs]
        for proc in procs:
            if proc.wait():
                raise SystemExit(f"side-by-side run failed:\n{proc.stderr.read()[-3000:]}")
        rates.append([trainer_rate(r / "metrics.jsonl") for r in runs])
    return rates[0][0], rates[1]


def run_reference(worktree: Path, overrides: list[str]) -> None:
    """Train with the reference commit's code: its package first on the path, in its own process."""
    env = {**os.environ, "PYTHONPATH": str(worktree)}
    done = subprocess.run([sys.executable, "-c", REFERENCE_TRAIN, *overrides], cwd=worktree, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"reference trainer failed:\n{done.stderr[-3000:]}")


def prepare_subset(data: Path, tmp: Path) -> list[str]:
    """A 2,048-image subset of the train split with its teacher targets and front end cached (4 views, as notebook
    01 makes them) → the overrides that train on it without validating or saving."""
    index = subset_index(data, 2048, tmp / "index")
    # the val split of the subset index is its train split: validation is not what is measured here
    (tmp / "index" / "val.jsonl").write_text((tmp / "index" / "train.jsonl").read_text())
    manifest = json.loads((tmp / "index" / "manifest.json").read_text())
    manifest["splits"]["val"] = manifest["splits"]["train"]
    (tmp / "index" / "manifest.json").write_text(json.dumps(manifest))
    teacher = create_teacher("efficientnet-lite0")
    build_cache(teacher, "pooled", index, "train", tmp / "cache", preprocess_of(teacher, 64), batch_size=64)
    common = [f"data.root={index}", "run.val_every=100000", "run.checkpoint_every=100000", "run.log_every=5",
              "run.tensorboard=false", "data.num_workers=0", f"teacher.cache={tmp / 'cache'}",
              f"student.frontend_cache={tmp / 'frontend'}"]
    train(load_config("embedded", [*common, f"run.out_dir={tmp / 'warm'}", "optim.steps=1"]))
    return common


def bare_step(cfg, steps: int, compiled: bool = False) -> tuple[float, float, float]:
    """(pairs/s, GFLOP per step, seconds of the first step) of forward + backward + AdamW on one batch in memory, as
    the trainer computes it; ``compiled``: the model under ``torch.compile`` (inductor), its first step compiling."""
    device = torch.device("cpu")
    precision = resolve_precision(cfg.optim.precision, device)
    targets = TargetCache(cfg.teacher.cache) if cfg.teacher.name != "none" else None
    dim, whitening = (targets.dim if targets else 0), None
    if targets is not None and cfg.teacher.whiten:  # MM-D2V2: its CLS regresses the target whitened to its width
        dim = preset_from_config(cfg.student).config.width
        whitening = TargetWhitening.fit(torch.nn.functional.layer_norm(targets.all(), (targets.dim,)), dim)
    torch.manual_seed(cfg.optim.seed)
    student, _ = student_from_config(cfg, kd_dim=dim)
    model = Trainable(student, Objective(cfg, dim))
    source = CachedFrontEnd(student, cfg.student.frontend_cache)
    views = [source.cache(cfg.data.root, "train", v) for v in range(1 + cfg.data.rendering_views)]
    tokenizer = CaptionTokenizer(cfg.data.tokenizer, max_length=student.cfg.max_text_len)
    pairs = CachedPairs(read_split(cfg.data.root, "train"), views, student.image_embed.token_dim, tokenizer)
    batch = pairs.batch([(0, i, i) for i in range(cfg.optim.batch_size)])
    target = None
    if targets is not None:
        target = torch.nn.functional.layer_norm(targets.lookup(batch["image_id"].tolist()), (targets.dim,))
        target = whitening(target) if whitening is not None else target
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    forward = torch.compile(model) if compiled else model

    def step(net):
        with autocast:
            loss = net(batch["images"], batch["input_ids"], batch["attention_mask"], target)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step(model)
    start = time.perf_counter()
    step(forward)
    first = time.perf_counter() - start
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        step(forward)
    return cfg.optim.batch_size * steps / (time.perf_counter() - start), counter.get_total_flops() / 1e9, first


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--reference", default="1d71c70", help="the commit whose trainer is 'as it was'")
    args = parser.parse_args()
    domains = generate(args.data / "embedded", "embedded")
    data = domains["synth-coco"]
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print("matmul peak GFLOP/s:", {k: round(v) for k, v in peaks.items()})
    cores = torch.get_num_threads()
    width, hidden = SIZES["embedded"]["width"], int(SIZES["embedded"]["width"] * SIZES["embedded"]["mlp_ratio"])
    torch.set_num_threads(1)
    # rows = a batch of 64 pairs × 17 image tokens (16 + CLS) or ≈ 20 caption tokens: the image side's count
    at_shapes = {k: student_matmul_rate(d, width, hidden, 64 * 17) for k, d in (("fp32", torch.float32),
                                                                                ("bf16", torch.bfloat16))}
    torch.set_num_threads(cores)
    print("matmul GFLOP/s at the student's shapes, one thread:", {k: round(v) for k, v in at_shapes.items()})
    rows, split = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        worktree = tmp / "reference"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.reference],
                       check=True, capture_output=True)
        try:
            common = prepare_subset(data, tmp)
            for label, run in RECIPES.items():
                recipe = list(next(r for r in SYNTHETIC_RUNS if r.name == run).overrides)
                out = tmp / f"{run}-reference"
                run_reference(worktree, [*common, *recipe, f"run.out_dir={out}", f"optim.steps={args.steps}"])
                reference = trainer_rate(out / "metrics.jsonl")
                cfg = load_config("embedded", [*common, *recipe, f"run.out_dir={tmp / run}",
                                               f"optim.steps={args.steps}"])
                train(cfg)
                current = trainer_rate(tmp / run / "metrics.jsonl")
                bare, gflop, _ = bare_step(cfg, args.steps // 2)
                precision = resolve_precision(cfg.optim.precision, torch.device("cpu"))
                rows.append((label, reference, current, bare, gflop / cfg.optim.batch_size, cfg.optim.batch_size,
                             precision))
                print(label, f"reference {reference:.0f}, current {current:.0f}, bare {bare:.0f} pairs/s")
                alone, beside = side_by_side(common, recipe, args.steps, tmp / "side-by-side" / run)
                split.append((label, alone, beside))
                print(label, f"one run on {cores} threads {alone:.0f} pairs/s; {cores} runs on one thread each "
                             f"{' + '.join(f'{r:.0f}' for r in beside)} pairs/s")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                           capture_output=True)

        scored, _ = load_trained_student(find_checkpoint(tmp / "smke", "latest"))
        images, tokenizer = student_inputs(scored, cfg.data.tokenizer, tmp / "frontend")
        for domain in domains.values():  # the test splits' front end, built once before the clock (notebook 01)
            images.cache(domain, "test")
        score_seconds = []
        for _ in range(2):
            start = time.perf_counter()
            for domain in domains.values():
                evaluate_retrieval(scored, domain, "test", images, tokenizer, batch_size=512, precision="bf16")
            score_seconds.append(time.perf_counter() - start)
        print("scoring one checkpoint: first {:.1f} s, then {:.1f} s".format(*score_seconds))

    table, shares = [], []
    for (label, reference, current, bare, mflop, batch, precision), (_, alone, beside) in zip(rows, split):
        achieved = current * mflop
        table.append(f"| {label} | {reference:.0f} | {current:.0f} (batch {batch}, {precision}) | "
                     f"×{current / reference:.2f} | {bare:.0f} | {100 * (bare / current - 1):.0f} % | "
                     f"{mflop * 1e3:.0f} | {achieved:.0f} ({100 * achieved / peaks[precision]:.0f} % of {precision} peak) |")
        one_thread = beside[0] * mflop  # a side-by-side run's rate against the matmul rate one thread has
        shares.append(f"| {label} | {alone:.0f} | {' + '.join(f'{r:.0f}' for r in beside)} = {sum(beside):.0f} | "
                      f"×{sum(beside) / alone:.2f} | {one_thread:.1f} | {at_shapes[precision]:.1f} ({precision}) | "
                      f"{100 * one_thread / at_shapes[precision]:.0f} % |")
    write_section("train", "\n".join([
        "## Training throughput, embedded size (`bench/bench_train.py`)",
        "",
        f"The embedded study's recipes with targets and front end cached, {args.steps} steps each, on a 2,048-image "
        f"subset of the synthetic train split; {machine()}. Reference: the trainer at commit `{args.reference}` with "
        "its own embedded preset (batch 64, fp32, fused attention kernel, captions tokenised every step, cache rows "
        "gathered per pair), run in the same benchmark. Current: today's trainer and embedded preset. Bare step: "
        "today's model, objective and AdamW on one batch already in memory. FLOPs per pair counted by "
        f"`torch.utils.flop_counter` on one step. Measured matmul peak of this machine (4096³): fp32 "
        f"{peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s.",
        "",
        "| recipe | reference trainer, pairs/s | current trainer, pairs/s | speed-up | bare step, pairs/s | "
        "trainer overhead over the bare step | MFLOP per pair | achieved GFLOP/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *table,
        "",
        "Targets: current ≥ 3× the reference for S-SMKE; trainer overhead ≤ 10 %.",
        "",
        f"Both cores busy: one run on {cores} threads against {cores} runs side by side on one thread each (the "
        f"study's choice, `Study.train_all`), {args.steps} steps each, pairs/s from each run's log; and one "
        "side-by-side run's achieved GFLOP/s against the matmul rate one thread reaches at the student's own shapes "
        f"(width {width}, MLP {hidden}, {64 * 17:,} rows; projections, MLP in and out). Machines with more cores were "
        "not measured (none lent): the study trains min(runs left, threads, memory / 3 GiB) side by side.",
        "",
        "| recipe | one run, pairs/s | runs side by side, pairs/s | gain | a side-by-side run, GFLOP/s | "
        "matmul at the student's shapes, 1 thread, GFLOP/s | share |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *shares,
        "",
        f"Scoring one checkpoint on both test sets (synth-coco 5K + synth-flickr 1K: 6,000 images, 30,020 captions; "
        f"cached front end, bf16): {score_seconds[0]:.1f} s for the first checkpoint of a process (it tokenises the "
        f"captions), {score_seconds[1]:.1f} s for each next one.",
    ]))


if __name__ == "__main__":
    main()
