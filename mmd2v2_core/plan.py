"""What a study's training will cost, and its runs as commands a cluster scheduler can run.

``time_plan`` trains each run for a few steps (its own model, teacher and batch, on this machine) and turns the
measured pairs/s into hours; ``write_plan`` writes ``<run_dir>/plan/plan.sh``: one torchrun line per run that has not
finished, with the resolved config each line trains beside it. A later ``mmd2v2 study`` finds the finished runs in
their folders and only scores them.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .config import load_config
from .data.index import write_text_atomic
from .train.loop import train


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


def write_plan(study, nproc_per_node: int = 1, warmup_steps: int = 0) -> Path:
    """``plan/plan.sh``; with ``warmup_steps`` > 0 each line is preceded by its expected hours."""
    hours = {(r["run"], r["seed"]): r["hours"] for r in time_plan(study, warmup_steps, nproc_per_node)} \
        if warmup_steps else {}
    lines = ["#!/usr/bin/env bash",
             f"# mmd2v2 study plan · profile {study.profile.name} · {study.run_dir}",
             "# One torchrun line per training run not finished yet (finished runs are never redone; a rerun line",
             "# resumes from the run's last checkpoint). On a cluster, each line is a job: set NNODES, NODE_RANK,",
             "# MASTER_ADDR, MASTER_PORT and NPROC_PER_NODE as the scheduler gives them. A rank that dies stops the",
             "# others within COLLECTIVE_TIMEOUT seconds, and torchrun restarts them all from the last checkpoint",
             "# (MAX_RESTARTS times at most). Afterwards:",
             f"#   mmd2v2 study --profile {study.profile.name} --run-dir {study.run_dir} --data {study.data_dir}",
             "set -e"]
    for run in study.runs:
        for seed in study.profile.seeds:
            if study.trained(run, seed):
                continue
            cfg = study.config(run, seed)
            cost = f" ≈ {hours[run, seed]:.1f} h on {nproc_per_node} process(es)" if hours else ""
            lines.append(f"# {run} seed {seed}: {cfg.optim.steps:,} steps × {cfg.optim.batch_size}{cost}")
            lines.append(" ".join(study.launch_command(run, seed, nproc_per_node, cluster=True)))
    path = study.run_dir / "plan" / "plan.sh"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
