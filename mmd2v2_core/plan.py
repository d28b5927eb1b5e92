"""What a study's training will cost, and its runs as commands a cluster scheduler can run.

``time_plan`` trains each run for a few steps (its own model, teacher and batch, on this machine) and turns the
measured pairs/s into hours; ``data_mix`` counts each run's pairs per epoch by source; ``input_plan`` measures what
one dataloader worker delivers of a run's pairs (decode, crop, flip, the student's and the teacher's views,
tokenisation) and how many workers feed a device; ``memory_plan`` measures each run's step memory (``memory.py``) and
picks the per-device batch and gradient accumulation that keep the run's global batch on devices of a given size;
``write_plan`` writes ``<run_dir>/plan/plan.sh``: one torchrun line per run that has not finished, with the resolved
config each line trains beside it (its workers and accumulation included). A later ``mmd2v2 study`` finds the
finished runs in their folders and only scores them.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from pathlib import Path

import torch

from .config import load_config, source_folders
from .data.datasets import PairCollator
from .data.index import load_manifest, read_split, write_text_atomic
from .data.tokenizer import CaptionTokenizer
from .data.transforms import ImageTransformConfig
from .errors import KitError
from .memory import GIB, HEADROOM, StepMemory, fit_batch, measure_step_memory
from .paths import from_root
from .student.presets import preset_from_config
from .teachers.registry import get_spec
from .train.data import StepSampler, TrainPairs, View
from .train.loop import train

# A device's training rate when no GPU benchmark has measured one: the thesis' S-SMKE, 3.26 M pairs × 7 epochs in
# 7.3 h on 2 RTX 4090 (thesis_digest.md), ≈ 434 pairs/s per GPU.
ASSUMED_DEVICE_PAIRS_PER_S = 3.26e6 * 7 / (7.3 * 3600) / 2
BENCHMARKS = "reports/benchmarks.md"  # bench/bench_gpu_train.py writes its S-SMKE samples/s there


def device_rate() -> tuple[float, str]:
    """Pairs/s one device trains: the GPU benchmark's S-SMKE row when it has run, else the thesis' rate."""
    report = from_root(BENCHMARKS)
    row = re.search(r"^\| S-SMKE \| [\d.]+ M \| ([\d,]+) \|", report.read_text() if report.is_file() else "", re.M)
    if row:
        return float(row[1].replace(",", "")), f"S-SMKE's samples/s in {BENCHMARKS} (bench/bench_gpu_train.py)"
    return ASSUMED_DEVICE_PAIRS_PER_S, "the thesis' S-SMKE rate, 7.3 h on 2 RTX 4090 (no GPU benchmark yet)"


def _warmup_rate(study, run: str, seed: int, steps: int) -> float:
    """pairs/s of ``steps`` training steps of the run's config; the first logged step (start-up) is left out."""
    out = study.run_dir / "plan" / "warmup" / run
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(study.config_name(run), [f"data.root={study.train_data}", *study.overrides_of(run, seed),
                                               f"optim.steps={steps}", f"run.out_dir={out}", "run.resume=null",
                                               f"run.checkpoint_every={steps}", "run.log_every=1",
                                               "run.tensorboard=false"])
    train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows if r.get("kind") == "train"][1:]
    shutil.rmtree(out)  # a real-size warm-up checkpoint is a gigabyte
    return sum(rates) / len(rates)


def data_mix(study) -> list[dict]:
    """Per run: its training pairs per epoch from each source (data.root's train split, then data.sources)."""
    rows = []
    for run in study.runs:
        cfg = study.config(run, study.profile.seeds[0], inputs=False)
        folders = [Path(cfg.data.root), *source_folders(cfg.data)]
        pairs = {folder.name: load_manifest(folder)["splits"]["train"]["captions"] for folder in folders}
        rows.append({"run": run, "pairs": pairs, "epochs": cfg.optim.steps * cfg.optim.batch_size / sum(pairs.values())})
    return rows


def mix_markdown(rows: list[dict]) -> str:
    lines = ["Training data: pairs per epoch from each source (`data.sources`; the report labels a run without them "
             "COCO only).", "", "| run | pairs per epoch by source | in all | epochs |", "|---|---|---:|---:|"]
    for r in rows:
        mix = " + ".join(f"{name} {n:,}" for name, n in r["pairs"].items())
        lines.append(f"| {r['run']} | {mix} | {sum(r['pairs'].values()):,} | {r['epochs']:.1f} |")
    return "\n".join(lines)


def input_rate(cfg, pairs: int = 64) -> float:
    """pairs/s one dataloader worker (this process) delivers for a training config, on its own data: each pair
    decoded, cropped and flipped, resized into the student's view and the online teacher's, its caption tokenised."""
    records = read_split(cfg.data.root, cfg.data.train_split)
    records += [r for source in source_folders(cfg.data) for r in read_split(source, "train")]
    student = preset_from_config(cfg.student).config
    view = ImageTransformConfig(size=student.image_size)
    teacher = None
    if cfg.teacher.name != "none" and not cfg.teacher.cache:  # an online teacher gets its own view of the crop
        spec = get_spec(cfg.teacher.name)
        teacher = View(cfg.teacher.image_size or spec.image_size, spec.mean, spec.std)
    dataset = TrainPairs(records, cfg.data.crop_scale, cfg.data.hflip, View(view.size, view.mean, view.std), teacher,
                         cfg.optim.seed)
    collate = PairCollator(CaptionTokenizer(cfg.data.tokenizer, max_length=student.max_text_len))
    batch = min(16, len(dataset))
    batches = list(StepSampler(len(dataset), batch, max(1, pairs // batch), cfg.optim.seed))
    collate([dataset[key] for key in batches[0]])  # warm-up: first decode, tokenizer load
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        start = time.perf_counter()
        for keys in batches:
            collate([dataset[key] for key in keys])
        return len(batches) * batch / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def workers_needed(device_pairs_per_s: float, worker_pairs_per_s: float) -> int:
    """Dataloader workers per device that deliver ``device_pairs_per_s`` (rounded up)."""
    return math.ceil(device_pairs_per_s / worker_pairs_per_s)


def input_plan(study) -> list[dict]:
    """Per run: pairs/s per dataloader worker on its own data (measured once per run config, cached in
    plan/input.json) and the workers per device that feed ``device_rate``."""
    cache_file = study.run_dir / "plan" / "input.json"
    cached = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    rate, _ = device_rate()
    rows = []
    for run in study.runs:
        cfg = study.config(run, study.profile.seeds[0])
        key = f"{run}/{Path(cfg.run.out_dir).name}"
        if key not in cached:
            cached[key] = input_rate(cfg)
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(cache_file, json.dumps(cached, indent=2) + "\n")
        rows.append({"run": run, "worker_pairs_per_s": cached[key], "device_pairs_per_s": rate,
                     "workers": workers_needed(rate, cached[key])})
    return rows


def input_markdown(rows: list[dict]) -> str:
    _, source = device_rate()
    lines = [f"Input pipeline: dataloader workers per device to feed {rows[0]['device_pairs_per_s']:.0f} pairs/s "
             f"({source}); pairs/s per worker measured on this machine, one thread, on each run's own data.", "",
             "| run | pairs/s per worker | workers per device |", "|---|---:|---:|"]
    lines += [f"| {r['run']} | {r['worker_pairs_per_s']:.0f} | {r['workers']} |" for r in rows]
    return "\n".join(lines)


def time_plan(study, warmup_steps: int = 5, nproc_per_node: int = 1) -> list[dict]:
    """Per run and seed: steps, pairs, the measured rate and the expected hours (``nproc_per_node`` processes
    assumed to scale linearly: an upper bound on the speed-up). Rates are cached by run key in plan/rates.json."""
    cache_file = study.run_dir / "plan" / "rates.json"
    rates = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    rows = []
    for run in study.runs:
        for seed in study.profile.seeds:
            cfg = study.config(run, seed)
            key = f"{run}/{Path(cfg.run.out_dir).name}/{study.device}"
            if key not in rates:
                start = time.perf_counter()
                rates[key] = _warmup_rate(study, run, seed, max(3, warmup_steps))
                study.log(f"[plan] {run} seed {seed} · warm-up {time.perf_counter() - start:.0f} s · "
                          f"{rates[key]:.1f} pairs/s")
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(cache_file, json.dumps(rates, indent=2) + "\n")
            pairs = cfg.optim.steps * cfg.optim.batch_size
            rows.append({"run": run, "seed": seed, "steps": cfg.optim.steps, "batch": cfg.optim.batch_size,
                         "pairs": pairs, "pairs_per_s": rates[key], "processes": nproc_per_node,
                         "hours": pairs / (rates[key] * nproc_per_node) / 3600, "done": study.trained(run, seed)})
    return rows


def plan_markdown(rows: list[dict], device: str) -> str:
    lines = [f"| run | seed | steps × batch | pairs | pairs/s (warm-up, {device}) | processes | hours | finished |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['seed']} | {r['steps']:,} × {r['batch']} | {r['pairs']:,} | "
                     f"{r['pairs_per_s']:.1f} | {r['processes']} | {r['hours']:.2f} | {'yes' if r['done'] else 'no'} |")
    todo = [r for r in rows if not r["done"]]
    lines.append(f"\nStill to train: {len(todo)} of {len(rows)} runs, {sum(r['hours'] for r in todo):.1f} h in all "
                 f"(all runs: {sum(r['hours'] for r in rows):.1f} h).")
    return "\n".join(lines)


def memory_plan(study, device_gib: float, nproc_per_node: int = 1) -> list[dict]:
    """Per run: its step memory (measured once per run config, cached in plan/memory.json), the largest per-device
    batch on a ``device_gib`` device, and the micro-batch × accumulation that keep its global batch on
    ``nproc_per_node`` processes. Raises when a run does not fit at all."""
    cache_file = study.run_dir / "plan" / "memory.json"
    cached = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    rows = []
    for run in study.runs:
        cfg = study.config(run, study.profile.seeds[0])
        key = f"{run}/{Path(cfg.run.out_dir).name}/{nproc_per_node}"
        if key not in cached:
            start = time.perf_counter()
            cached[key] = measure_step_memory(cfg, nproc_per_node).as_dict()
            study.log(f"[plan] {run} · step memory measured in {time.perf_counter() - start:.0f} s")
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(cache_file, json.dumps(cached, indent=2) + "\n")
        memory = StepMemory(**cached[key])
        fit = fit_batch(memory, device_gib, cfg.optim.batch_size, nproc_per_node)
        if fit["accum"] is None:
            raise KitError(f"run {run}: its global batch of {cfg.optim.batch_size} does not fit {nproc_per_node} "
                           f"process(es) of {device_gib:g} GiB: {memory.static / GIB:.1f} GiB before the first pair, "
                           f"{memory.per_sample / 2**20:.0f} MiB per pair, {HEADROOM:.0%} of the device usable "
                           f"(largest batch per device: {fit['largest_batch']}); use larger devices or more processes, "
                           f"or -p optim.batch_size=… (another recipe)")
        rows.append({"run": run, "global_batch": cfg.optim.batch_size, "processes": nproc_per_node,
                     "device_gib": device_gib, **fit, "memory": memory})
    return rows


def memory_markdown(rows: list[dict]) -> str:
    first = rows[0]
    lines = [f"Memory plan: devices of {first['device_gib']:g} GiB ({HEADROOM:.0%} usable), {first['processes']} "
             f"process(es); step memory measured on this machine's CPU (bf16 autocast, fused attention).", "",
             "| run | weights GiB | grads + AdamW GiB | MiB per pair | largest batch per device | global batch | "
             "per device × accumulation × processes | GiB per device |", "|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        m = r["memory"]
        lines.append(f"| {r['run']} | {m.weights / GIB:.2f} | {m.optimizer / GIB:.2f} | {m.per_sample / 2**20:.0f} | "
                     f"{r['largest_batch']:,} | {r['global_batch']} | {r['micro_batch']} × {r['accum']} × "
                     f"{r['processes']} | {r['gib']:.1f} |")
    if any(r["accum"] > 1 for r in rows):
        lines.append("\nWith accumulation, a contrastive term's negatives are one micro-batch's (× processes), not the "
                     "global batch's.")
    return "\n".join(lines)


def write_plan(study, nproc_per_node: int = 1, warmup_steps: int = 0, device_gib: float | None = None) -> Path:
    """``plan/plan.sh``; each run with the dataloader workers its input plan needs; with ``warmup_steps`` > 0 each
    line is preceded by its expected hours; with ``device_gib`` each run trains with the gradient accumulation its
    memory plan needs on devices of that size."""
    # timed before the workers and accumulation join the overrides: they change the run keys, not the rate, and the
    # warm-ups `--plan` has just measured are cached under the keys without them
    hours = {(r["run"], r["seed"]): r["hours"] for r in time_plan(study, warmup_steps, nproc_per_node)} \
        if warmup_steps else {}
    fits = {r["run"]: r for r in memory_plan(study, device_gib, nproc_per_node)} if device_gib else {}
    # the workers the input plan asks for, unless the user chose (-p data.num_workers=…)
    feeds = {} if any(o.startswith("data.num_workers=") for o in study.overrides) else \
        {r["run"]: r for r in input_plan(study)}
    for run in study.runs:
        study.run_overrides.setdefault(run, []).extend(
            [*([f"data.num_workers={feeds[run]['workers']}"] if feeds else []),
             *([f"optim.accum={fits[run]['accum']}"] if fits else [])])
    lines = ["#!/usr/bin/env bash",
             f"# mmd2v2 study plan · profile {study.profile.name} · {study.run_dir}",
             "# One torchrun line per training run not finished yet (finished runs are never redone; a rerun line",
             "# resumes from the run's last checkpoint). On a cluster, each line is a job: set NNODES, NODE_RANK,",
             "# MASTER_ADDR, MASTER_PORT and NPROC_PER_NODE as the scheduler gives them. A rank that dies stops the",
             "# others within COLLECTIVE_TIMEOUT seconds, and torchrun restarts them all from the last checkpoint",
             "# (MAX_RESTARTS times at most). Afterwards, to score every run and write the report:",
             f"#   mmd2v2 study --profile {study.profile.name} --run-dir {study.run_dir} --data {study.data_dir}"
             + "".join(f" {flag} {folder}" for flag, folder in (("--imagenet", study.imagenet_dir),
                                                                ("--sugarcrepe", study.sugarcrepe_dir)) if folder),
             f"# It scores retrieval on {', '.join(study.test_sets)}" + "".join(
                 f"; {what} on {folder}" for what, folder in (("zero-shot ImageNet-1k", study.imagenet_dir),
                                                             ("SugarCrepe's binding", study.sugarcrepe_dir)) if folder),
             "set -e"]
    for run in study.runs:
        for seed in study.profile.seeds:
            if study.trained(run, seed):
                continue
            cfg = study.config(run, seed)
            cost = f" ≈ {hours[run, seed]:.1f} h on {nproc_per_node} process(es)" if hours else ""
            fit = fits.get(run)
            memory = (f" ({fit['micro_batch']} per device × {fit['accum']} accumulation on {nproc_per_node} "
                      f"process(es), {fit['gib']:.1f} of {device_gib:g} GiB)") if fit else ""
            lines.append(f"# {run} seed {seed}: {cfg.optim.steps:,} steps × {cfg.optim.batch_size}{memory}, "
                         f"{cfg.data.num_workers} dataloader workers per process{cost}")
            lines.append(" ".join(study.launch_command(run, seed, nproc_per_node, cluster=True)))
    path = study.run_dir / "plan" / "plan.sh"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
