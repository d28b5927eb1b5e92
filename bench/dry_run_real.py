"""The real study at real size on a CPU, before anyone rents a GPU: every run of the real profile, 2 steps each.

    .venv/bin/python bench/dry_run_real.py                          # all 10 runs; writes reports/benchmarks.md
    .venv/bin/python bench/dry_run_real.py --runs smke,mmd2v2_6 --no-write

It first writes (once; reused while its version matches) a fixture at the releases' true geometry in ``--root``
(default ``~/.cache/mmd2v2/dry-run-real``, outside the repository): ``tests/real_fixture.py`` at size ``real`` —
random-init checkpoints in the releases' own layouts (fairseq Data2Vec2 image with its prenet, and text with its
50,265-entry vocabulary; BEiT-v2 pt1k ``.pth`` with its 8,192 visual tokens and relative-position bias; DINO,
fine-tuned BEiT-v2 and BERT-base in a Hugging Face cache) and Karpathy indexes over 200 COCO-sized (640 px) photos.

Then each run, in its own process (peak memory is the process's), goes through the study's own code: ``Study``'s
config for the run (the real YAML, its converters, online teacher and objective) with a batch of 2, 2 steps and a
checkpoint after each; the step-2 checkpoint is then removed and training resumed from step 1 — it must end with
bit-identical weights; finally ``Study.evaluate`` scores the fixture's COCO and Flickr30K test photos (40 each).
Per run it records the time of each stage (training includes converting and loading the checkpoints), peak resident
memory, parameters loaded from the checkpoints / frozen / trainable, the checkpoint's size, and whether the
teacher's targets were finite and not constant. A converter that mis-reads a real-size file (a vocabulary, a
position table, a relative-position bias) fails the run with its error.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import machine, write_section
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_VERSION = "3"  # bump when tests/real_fixture.py changes what it writes
# What every run is given here: a CPU-sized batch and 2 steps with a checkpoint after each; bf16 where the CPU has it.
MEMORY = "memory-plan"  # the child that measures the memory plan instead of a run
DRY_RUN = ["optim.steps=2", "optim.batch_size=2", "data.num_workers=0", "optim.precision=auto",
           "run.checkpoint_every=1", "run.log_every=1", "run.tensorboard=false"]


def fixture(root: Path, size: str):
    """The real-format fixture at ``size`` under ``root``, built once (a marker names what built it)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from real_fixture import build_real_fixture

    marker = root / "fixture.json"
    wanted = {"version": FIXTURE_VERSION, "size": size}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return json.loads((root / "fixture-env.json").read_text())
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    built = build_real_fixture(root / "files", size)
    env = {**built.env, "MMD2V2_DRY_RUN_TOKENIZER": str(built.d2v2_tokenizer),
           "MMD2V2_DRY_RUN_SIZE": size, "MMD2V2_DRY_RUN_DATA": str(built.root / "prepared")}
    (root / "fixture-env.json").write_text(json.dumps(env, indent=2))
    marker.write_text(json.dumps(wanted))
    print(f"fixture ({size}) written to {root} in {time.perf_counter() - start:.0f} s", flush=True)
    return env


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def loaded_parameters(cfg) -> dict[str, int]:
    """Parameters of the run's student: in all, frozen, trainable, and loaded from the unimodal checkpoints — the
    tensors whose values differ from the same seed's random initialisation."""
    from mmd2v2_core.student.presets import student_from_config

    torch.manual_seed(0)
    student, _ = student_from_config(cfg)
    torch.manual_seed(0)
    random_init, _ = student_from_config(replace(cfg, student=replace(cfg.student, init=False)))
    fresh = dict(random_init.named_parameters())
    params = dict(student.named_parameters())
    return {"total": sum(p.numel() for p in params.values()),
            "trainable": sum(p.numel() for p in params.values() if p.requires_grad),
            "loaded": sum(p.numel() for name, p in params.items() if not torch.equal(p, fresh[name]))}


def dry_run(run: str) -> dict:
    """One run, in this process (started by ``main`` with the fixture's environment, in its folder)."""
    from mmd2v2_core.study import Study
    from mmd2v2_core.train.checkpoint import LATEST, checkpoint_root
    from mmd2v2_core.train.loop import train

    size = os.environ["MMD2V2_DRY_RUN_SIZE"]
    overrides = [*DRY_RUN, *(["student.size=tiny", "optim.batch_size=4"] if size == "tiny" else [])]
    study = Study("real", Path.cwd() / "study", overrides, log=lambda line: None,
                  data_dir=os.environ["MMD2V2_DRY_RUN_DATA"],
                  run_overrides={run: [f"data.tokenizer={os.environ['MMD2V2_DRY_RUN_TOKENIZER']}"]}
                  if study_config(run) == "real_mmd2v2" else None)
    cfg = study.config(run, 0)
    shutil.rmtree(cfg.run.out_dir, ignore_errors=True)
    shutil.rmtree(study.run_dir / "results" / run, ignore_errors=True)
    times, start = {}, time.perf_counter()
    train(cfg)
    times["train"] = time.perf_counter() - start
    ckpts = checkpoint_root(cfg.run.out_dir)
    final = _weights(ckpts / "step_0000002")
    rows = [json.loads(line) for line in (Path(cfg.run.out_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("kind") == "train"]

    # resume: back to step 1, as a run killed before its second checkpoint would be
    shutil.rmtree(ckpts / "step_0000002")
    (ckpts / LATEST).write_text("step_0000001\n")
    start = time.perf_counter()
    train(cfg)
    times["resume"] = time.perf_counter() - start
    resumed = _weights(ckpts / "step_0000002")
    identical = final.keys() == resumed.keys() and all(torch.equal(final[k], resumed[k]) for k in final)

    start = time.perf_counter()
    results = study.evaluate(run, 0)
    times["score"] = time.perf_counter() - start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the count below builds 2 students
    checkpoint_bytes = sum(p.stat().st_size for p in (ckpts / "step_0000002").iterdir())
    shutil.rmtree(cfg.run.out_dir)  # a real-size run folder holds gigabytes
    return {"run": run, "config": study_config(run), "teacher": cfg.teacher.name, "times": times,
            "peak_rss_gib": peak_rss / 2**30, "parameters": loaded_parameters(cfg), "checkpoint_gib": checkpoint_bytes / 2**30,
            "losses": [s["loss"] for s in steps], "target_std": [s.get("target_std") for s in steps],
            "resume_identical": identical,
            "scored": {r["dataset"]: r["metrics"]["mean"] for r in results}}


def memory_tables() -> str:
    """The memory plan of the real study (``plan.memory_plan``) for 24- and 80-GiB devices, 1 and 2 processes (at
    the tests' size: of the tiny students, and a batch the tiny fixture holds)."""
    from mmd2v2_core.plan import memory_markdown, memory_plan
    from mmd2v2_core.study import Study

    tiny = ["student.size=tiny", "optim.batch_size=8"] if os.environ["MMD2V2_DRY_RUN_SIZE"] == "tiny" else []
    study = Study("real", Path.cwd() / "study", ["data.num_workers=0", *tiny], log=lambda line: None,
                  data_dir=os.environ["MMD2V2_DRY_RUN_DATA"],
                  run_overrides={r: [f"data.tokenizer={os.environ['MMD2V2_DRY_RUN_TOKENIZER']}"]
                                 for r in study_runs("real_mmd2v2")})
    return "\n\n".join(memory_markdown(memory_plan(study, gib, nproc)) for gib, nproc in ((24, 1), (24, 2), (80, 1)))


def study_runs(config: str) -> list[str]:
    from mmd2v2_core.profiles import PROFILES

    return [run for run in PROFILES["real"].run if study_config(run) == config]


def study_config(run: str) -> str:
    from mmd2v2_core.profiles import PROFILES

    profile = PROFILES["real"]
    return profile.run[run].config or profile.train_config


def check(result: dict) -> list[str]:
    """What a dry run must show: finite losses, a teacher whose targets vary (where it has one), an exact resume,
    and weights loaded from the unimodal checkpoints."""
    problems = []
    if not all(isinstance(x, float) and x == x and abs(x) != float("inf") for x in result["losses"]):
        problems.append(f"loss not finite: {result['losses']}")
    stds = [s for s in result["target_std"] if s is not None]
    if result["teacher"] != "none" and not (stds and all(0 < s < float("inf") for s in stds)):
        problems.append(f"teacher targets constant or not finite (std over the batch: {result['target_std']})")
    if not result["resume_identical"]:
        problems.append("resuming from step 1 did not give the uninterrupted run's weights")
    if result["parameters"]["loaded"] == 0:
        problems.append("no parameter was loaded from the unimodal checkpoints")
    return problems


def markdown(results: list[dict], size: str, total_s: float) -> str:
    lines = ["## The real study at real size, 2 steps per run on CPU (`bench/dry_run_real.py`)", "",
             f"{machine()}. Every run of the real profile through `Study` on a fixture at the releases' true geometry "
             f"(size `{size}`: random-init checkpoints in their own layouts, converted and loaded; 200 photos at 640 px), "
             f"batch 2, precision auto; then resumed from its step-1 checkpoint (weights must equal the uninterrupted "
             f"run's) and scored on the fixture's test photos. {len(results)} runs in {total_s / 60:.1f} min.", "",
             "| run | teacher | load + 2 steps s | resume s | score s | peak RSS GiB | params M (loaded / "
             "trainable / all) | checkpoint GiB | target std | resume identical |",
             "|---|---|---:|---:|---:|---:|---|---:|---|---|"]
    for r in results:
        t, p = r["times"], r["parameters"]
        std = ", ".join(f"{s:.3g}" for s in r["target_std"] if s is not None) or "-"
        lines.append(f"| {r['run']} | {r['teacher']} | {t['train']:.0f} | {t['resume']:.0f} | "
                     f"{t['score']:.0f} | {r['peak_rss_gib']:.1f} | {p['loaded'] / 1e6:.1f} / {p['trainable'] / 1e6:.1f}"
                     f" / {p['total'] / 1e6:.1f} | {r['checkpoint_gib']:.2f} | {std} | "
                     f"{'yes' if r['resume_identical'] else '**no**'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path.home() / ".cache" / "mmd2v2" / "dry-run-real")
    parser.add_argument("--size", choices=("real", "tiny"), default="real",
                        help="tiny: the tests' width-32 fixture (a check of this script in seconds)")
    parser.add_argument("--runs", default=None, help="comma-separated runs of the real profile (default: all)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave reports/benchmarks.md alone")
    parser.add_argument("--memory-only", action="store_true", help="only the memory plan (no run is trained)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child: run this one and print its JSON
    args = parser.parse_args()
    if args.one:
        print("DRY-RUN " + json.dumps(memory_tables() if args.one == MEMORY else dry_run(args.one)), flush=True)
        return

    from mmd2v2_core.profiles import PROFILES

    runs = args.runs.split(",") if args.runs else list(PROFILES["real"].run)
    unknown = [r for r in runs if r not in PROFILES["real"].run]
    if unknown:
        sys.exit(f"error: unknown run {unknown[0]!r}; the real profile's runs: {', '.join(PROFILES['real'].run)}")
    root = args.root.expanduser() / args.size
    env = fixture(root, args.size)
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", MEMORY], cwd=root / "files",
                          env={**os.environ, **env}, capture_output=True, text=True)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("DRY-RUN ")), None)
    if done.returncode != 0 or line is None:
        sys.exit("memory plan failed:\n" + "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:]))
    tables = json.loads(line[len("DRY-RUN "):])
    print(tables, flush=True)
    if not args.no_write:
        write_section(f"memory_plan_{args.size}", "\n".join([
            "## Memory plan of the real study (`mmd2v2 study --profile real --plan --gpu-memory GIB`)", "",
            f"{machine()}. Each run's step memory measured on the dry run's fixture (size `{args.size}`), from its "
            "own model, objective and teacher; the per-device batch and accumulation that keep its global batch.", "",
            tables]))
    if args.memory_only:
        return
    results, failed, start = [], [], time.perf_counter()
    for run in runs:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", run], cwd=root / "files",
                              env={**os.environ, **env}, capture_output=True, text=True)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("DRY-RUN ")), None)
        if done.returncode != 0 or line is None:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
            failed.append(f"{run}: exited with {done.returncode}\n{tail}")
            print(f"{run}: FAILED\n{tail}", flush=True)
            continue
        result = json.loads(line[len("DRY-RUN "):])
        problems = check(result)
        failed += [f"{run}: {p}" for p in problems]
        results.append(result)
        print(f"{run}: {sum(result['times'].values()):.0f} s, peak {result['peak_rss_gib']:.1f} GiB, "
              f"{result['parameters']['loaded'] / 1e6:.1f} M parameters loaded"
              + (f" — {'; '.join(problems)}" if problems else " — ok"), flush=True)
    total = time.perf_counter() - start
    if results and not failed and not args.no_write:  # a failed dry run leaves the last good table alone
        write_section(f"dry_run_{args.size}", markdown(results, args.size, total))
    if failed:
        sys.exit("dry run failed:\n" + "\n".join(failed))


if __name__ == "__main__":
    main()
