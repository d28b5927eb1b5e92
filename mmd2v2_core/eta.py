"""How long a synthetic study will take on this machine, said before it starts.

The study that made the committed report recorded, per notebook, its wall time, the part of it spent training and the
pairs it trained, with the CPU it ran on and a probe of that CPU (``reports/study_time.json``). The probe is a few
training steps of transformer blocks at the profile's student shapes on one thread, in the precision ``auto`` picks:
what one of the study's side-by-side runs does. Here the probe runs again (≈ 2 s), and each notebook not done yet is
expected to take its recorded time outside training × the probes' ratio, plus the pairs it has to train now at the
recorded training rate × the ratio, spread over the runs that train side by side here. The real profile's hours come
from ``plan.time_plan`` (each run's measured warm-up): its data and teachers are too large to scale from a record.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from .data.index import write_text_atomic
from .paths import from_root
from .precision import cpu_description, resolve_precision
from .student.blocks import Block
from .student.presets import SIZES

REFERENCE = "reports/study_time.json"  # per profile; the runner rewrites it when a whole study ends
TRAINING_LOG = "training.jsonl"  # in <run_dir>/done/: each train_all call's pairs, seconds and runs side by side
# the notebook that trains each chapter's runs first (a run another chapter already trained is only scored there)
TRAINING_NOTEBOOKS = (("02_distillation_pretraining", ("table1",)), ("04_ablation_teacher", ("teacher_ablation",)),
                      ("05_ablation_attention", ("attention_ablation", "transfer_ablation")))


def probe(size: str, seconds: float = 1.5, batch: int = 64, tokens: int = 48) -> float:
    """Pairs/s of forward, backward and AdamW steps of 3 blocks at the ``size`` student's width, heads and MLP, on
    one thread, under the precision ``optim.precision=auto`` trains in here; after ``seconds`` / 3 of untimed steps, the
    fastest of 5 windows of ``seconds`` / 5."""
    shape = SIZES[size]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(0)
        width, heads, mlp = shape["width"], shape["heads"], shape.get("mlp_ratio", 4.0)
        blocks = torch.nn.Sequential(*[Block(width, heads, mlp) for _ in range(3)])
        optimizer = torch.optim.AdamW(blocks.parameters(), lr=1e-4)
        x = torch.randn(batch, tokens, width, generator=gen)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if resolve_precision("auto") == "bf16" else nullcontext()

        def step():
            with autocast:
                loss = blocks(x).float().square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        warm = time.perf_counter()
        while time.perf_counter() - warm < seconds / 3:  # allocator and kernels warmed up, as in a run's steady state
            step()
        rates = []
        for _ in range(5):  # the fastest of 5 windows: what the CPU does when nothing else runs
            steps, began = 0, time.perf_counter()
            while time.perf_counter() - began < seconds / 5:
                step()
                steps += 1
            rates.append(steps * batch / (time.perf_counter() - began))
        return max(rates)
    finally:
        torch.set_num_threads(threads)


def training_to_do(study) -> dict[str, tuple[int, int]]:
    """Per training notebook, of the runs it trains first (a run an earlier chapter trained is only scored again):
    how many run × seed pairs have not finished, and the pairs (steps × batch) they still have to train."""
    todo, seen = {}, set()
    for notebook, chapters in TRAINING_NOTEBOOKS:
        runs = [r for chapter in chapters for r in getattr(study.profile, chapter) if r not in seen]
        seen.update(runs)
        pending = [(r, s) for r in runs for s in study.profile.seeds if not study.trained(r, s)]
        todo[notebook] = (len(pending), pairs_to_train(study, pending))
    return todo


def pairs_to_train(study, runs: list[tuple[str, int]]) -> int:
    """Steps × batch summed over (run, seed) ``runs``: the pairs their training sees."""
    cfgs = [study.config(run, seed, inputs=False) for run, seed in runs]
    return sum(cfg.optim.steps * cfg.optim.batch_size for cfg in cfgs)


def expected_seconds(study, notebooks: list[str], here: float, reference: dict) -> dict[str, float]:
    """Each of ``notebooks``' expected seconds on a machine whose probe gives ``here`` pairs/s, from a profile's
    ``reference`` record (``record_reference``): the time outside training scales with the probe; training is the
    pairs to train at one reference run's rate (its side-by-side share) × the probe ratio × the runs side by side
    here."""
    slower = reference["probe"] / here
    todo = training_to_do(study)
    expected = {}
    for name in notebooks:
        ref = reference["notebooks"][name]
        expected[name] = (ref["seconds"] - ref["training_seconds"]) * slower
        runs, pairs = todo.get(name, (0, 0))
        if pairs and ref["pairs"]:
            one_run = ref["pairs"] / ref["training_seconds"] / max(1, ref["side_by_side"]) / slower
            expected[name] += pairs / (one_run * study.side_by_side(runs))
    return expected


def eta_lines(study, notebooks: list[str], here: float | None = None) -> list[str]:
    """What a study prints before it starts: the expected time of ``notebooks`` on this machine, per notebook and in
    all, and what the estimate rests on; or why there is none. ``here``: this machine's ``probe``, if measured."""
    if not study.profile.synthetic:
        return ["[eta] the real study's training hours: mmd2v2 study --profile real --plan (a measured warm-up per run)"]
    reference = _read(from_root(REFERENCE)).get(study.profile.name)
    if not _complete(reference, notebooks):
        return [f"[eta] no recorded {study.profile.name} study in {REFERENCE} to scale from: no estimate"]
    if not notebooks:
        return []
    here = here or probe(study.profile.data_profile)  # a synthetic profile's student size is its data's
    expected = expected_seconds(study, notebooks, here, reference)
    return [f"[eta] expected on {cpu_description()}: {sum(expected.values()) / 60:.1f} min — "
            + ", ".join(f"{n[:2]} {s:.0f} s" for n, s in expected.items()),
            f"[eta] scaled from the recorded study on {reference['cpu']} (its probe {reference['probe']:.0f} pairs/s, "
            f"here {here:.0f}: {reference['probe'] / here:.2f}× its time)"]


def _read(path: Path) -> dict:
    """A study_time.json's records; an unreadable one counts as none (an estimate is not worth stopping a study)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _complete(reference, notebooks: list[str]) -> bool:
    keys = {"seconds", "training_seconds", "pairs", "side_by_side"}
    try:
        return reference["probe"] > 0 and all(keys <= set(reference["notebooks"][n]) for n in notebooks)
    except (KeyError, TypeError):
        return False


def record_reference(study, notebooks: tuple[str, ...], done_dir: Path, reports_dir: Path, here: float) -> Path:
    """After a whole study: its notebooks' records (``done/<notebook>.json``) become its profile's entry of
    ``<reports_dir>/study_time.json``, the reference a later study's estimate scales from."""
    notebooks = {n: json.loads((done_dir / f"{n}.json").read_text()) for n in notebooks}
    out = reports_dir / Path(REFERENCE).name
    record = _read(out)
    record[study.profile.name] = {
        "cpu": cpu_description(), "probe": round(here, 1),
        "notebooks": {n: {k: d.get(k, 0) for k in ("seconds", "training_seconds", "pairs", "side_by_side")}
                      for n, d in notebooks.items()}}
    write_text_atomic(out, json.dumps(record, indent=2) + "\n")
    return out
