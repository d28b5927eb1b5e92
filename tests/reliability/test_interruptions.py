"""Interruptions: SIGKILL mid-way through target caching, training, a checkpoint save and a papermill
study, then the same command again: it must finish with nothing lost and nothing duplicated. Ctrl-C
(SIGINT to the whole process group, as a terminal sends it) ends with one line and exit status 130;
in training it first saves, and says how to resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from mmd2v2_core.cli import main
from mmd2v2_core.errors import DataError, KitError
from mmd2v2_core.lock import LOCK_FILE, folder_lock
from mmd2v2_core.study import NOTEBOOKS
from mmd2v2_core.teachers.cache import TargetCache

KILL_AT = Path(__file__).with_name("kill_at.py")
REPO = Path(__file__).resolve().parents[2]


def killed(seen, target: str, nth: int, mode: str, *args) -> None:
    """Run `mmd2v2 ARGS` in a child process that SIGKILLs itself at the chosen moment."""
    proc = subprocess.run([sys.executable, KILL_AT, target, str(nth), mode, "--", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "MMD2V2_PROGRESS": "off"}, timeout=600)
    assert proc.returncode == -signal.SIGKILL, f"not killed (exit {proc.returncode}): {proc.stderr[-2000:]}"
    seen(f"killed at call {nth} of {target} ({mode})")


def interrupted(seen, target: str, nth: int, presses: int, *args) -> subprocess.CompletedProcess:
    """Run `mmd2v2 ARGS` in a session of its own and press Ctrl-C ``presses`` times at the chosen moment."""
    proc = subprocess.run([sys.executable, KILL_AT, target, str(nth), f"ctrl-c:{presses}", "--", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "MMD2V2_PROGRESS": "off"},
                          timeout=600, start_new_session=True)
    seen(f"Ctrl-C ×{presses} at call {nth} of {target}")
    seen(f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not one error line: {proc.stderr!r}"
    return lines[0]


def _targets(data, out):
    return ["targets", "--teacher", "efficientnet-lite0", "--tiny", "--kind", "pooled", "--image-size", "32",
            "--data", data, "--out", out, "--shard-size", "48", "--batch-size", "16"]


def test_sigkill_during_target_caching(smoke_source, tmp_path, cli, seen):
    """Killed while shard 1 was half on disk: the cache refuses to be used, the rerun computes only the
    missing shards, and the result equals an uninterrupted build byte for byte."""
    data, cache, reference = smoke_source["synth-coco"], tmp_path / "cache", tmp_path / "reference"
    assert main(list(map(str, _targets(data, reference)))) == 0
    killed(seen, "numpy:save", 3, "half-written:0", *_targets(data, cache))  # save 1 is ids.npy, 2 shard 0, 3 shard 1
    assert (cache / "shard_00000.npy").is_file() and not (cache / "shard_00001.npy").exists()
    assert list(cache.glob(".shard_00001.tmp*.npy")), "the kill did not land mid-write"
    with pytest.raises(DataError, match="shard_00001.npy"):
        TargetCache(cache)
    out = cli(*_targets(data, cache))
    assert out.code == 0
    n_shards = json.loads((cache / "meta.json").read_text())["shards"]
    assert f"computed shards {list(range(1, n_shards))}, reused [0]" in out.out
    for s in range(n_shards):
        name = f"shard_{s:05d}.npy"
        assert np.array_equal(np.load(cache / name), np.load(reference / name)), name
    assert not list(cache.glob(".*tmp*")), "half-written files left behind"


def _train_args(data, out, *extra):
    return ["train", "--config", "smoke", f"data.root={data}", f"run.out_dir={out}", "optim.steps=8",
            "run.checkpoint_every=3", "run.val_every=4", "run.log_every=1", "run.resume=latest", *extra]


def _assert_same_run(run: Path, reference: Path) -> None:
    final = "checkpoints/step_0000008/model.safetensors"
    a, b = load_file(run / final), load_file(reference / final)
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a), "weights differ"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    counts = Counter((r["step"], r["kind"]) for r in rows if r["kind"] != "init")
    assert max(counts.values()) == 1, f"logged twice: {[k for k, n in counts.items() if n > 1]}"
    ref_rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert set(counts) == {(r["step"], r["kind"]) for r in ref_rows if r["kind"] != "init"}, "steps missing"
    assert not list((run / "checkpoints").glob(".*tmp*")), "half-written checkpoint left behind"


@pytest.fixture(scope="module")
def reference_run(smoke_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(_train_args(smoke_source["synth-coco"], out)) == 0
    return out


def test_sigkill_during_training(smoke_source, reference_run, tmp_path, cli, seen):
    """Killed at optimiser step 6 (last checkpoint: step 4): the rerun resumes there and ends with the same
    weights as an uninterrupted run; every step is logged exactly once."""
    run = tmp_path / "run"
    killed(seen, "torch.optim:AdamW.step", 6, "before", *_train_args(smoke_source["synth-coco"], run))
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000004"
    assert cli(*_train_args(smoke_source["synth-coco"], run)).code == 0
    _assert_same_run(run, reference_run)


def test_sigkill_during_checkpoint_save(smoke_source, reference_run, tmp_path, cli, seen):
    """Killed while the step-4 checkpoint's state.pt was half written: `latest` still names step 3, the
    rerun resumes from it, and the half checkpoint is cleaned away."""
    run = tmp_path / "run"
    killed(seen, "torch:save", 2, "half-written:1", *_train_args(smoke_source["synth-coco"], run))
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000003"
    assert list((run / "checkpoints").glob(".step_0000004.tmp*")), "the kill did not land mid-save"
    assert cli(*_train_args(smoke_source["synth-coco"], run)).code == 0
    _assert_same_run(run, reference_run)


# Where each notebook of the smoke study is killed, as a share of its own time in the uninterrupted study (after its
# start line; the default is a quarter in); 01 at its start, before its caches exist (a study killed there once could
# never restart).
KILL_INTO_NOTEBOOK = {"01_teacher_targets": 0.0}


def _descendants(pid: int) -> set[int]:
    """The processes started by ``pid``, at any depth (Linux /proc): the runner's notebook kernel among them."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while listed
            continue
        parents.setdefault(int(fields[1]), set()).add(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        children = parents.get(todo.pop(), set()) - found
        found |= children
        todo.extend(children)
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (an exited process no one has reaped yet is a zombie: state Z)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _released(folder: Path, orphans: set[int], timeout: float = 60) -> None:
    """Wait until the killed runner's ``orphans`` have exited and nothing holds the study folder. The kernel runs in
    a session of its own (jupyter_client), so a kill of the runner's process group leaves it; it notices its parent
    is gone within a second (ipykernel's parent poller) and exits, and its lock goes with it. Until it has exited it
    may take the lock again between two stages, so a free lock alone does not say the folder is free."""
    deadline = time.monotonic() + timeout
    while any(_running(pid) for pid in orphans):
        assert time.monotonic() < deadline, f"the killed study's kernel {orphans} still runs {timeout:.0f} s after the kill"
        time.sleep(0.1)
    while True:
        try:
            with folder_lock(folder, "the test", "wait"):
                return
        except KitError:
            assert time.monotonic() < deadline, f"{folder} still held {timeout:.0f} s after the kill"
            time.sleep(0.1)


def _tables(reports: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((reports / "tables").glob("*.csv"))}


def test_a_study_killed_in_every_notebook_restarts_and_ends_as_an_uninterrupted_one(smoke_study, tmp_path, seen):
    """The runner's process group SIGKILLed once in each of the 7 notebooks (its kernel exits with it), each time in a
    new `mmd2v2 study` on the same folder, which starts without any clean-up of the lock; a last one finishes, its log holding the study's lines only. Its tables
    equal the uninterrupted smoke study's, its results are the same, and every training step is logged once."""
    reference, _ = smoke_study
    seconds = {p.stem: json.loads(p.read_text())["seconds"] for p in (reference / "run" / "done").glob("*.json")}
    run_dir, reports = tmp_path / "study", tmp_path / "reports"
    args = ["study", "--profile", "smoke", "--run-dir", run_dir, "--reports", reports]
    for name in NOTEBOOKS:
        log = tmp_path / f"killed-in-{name}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "mmd2v2_core.cli", *map(str, args)], cwd=REPO,
                                    start_new_session=True, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, "MMD2V2_PROGRESS": "off"})
        deadline, began = time.monotonic() + 600, None
        while proc.poll() is None and time.monotonic() < deadline:
            if began is None and f"[study] {name} …" in log.read_text():
                began = time.monotonic()
            if began is not None and time.monotonic() - began >= KILL_INTO_NOTEBOOK.get(name, 0.25) * seconds[name]:
                break
            time.sleep(0.05)
        assert proc.poll() is None and began is not None and not (run_dir / "done" / f"{name}.json").exists(), \
            f"not killed during {name}: {log.read_text()[-2000:]}"
        orphans = _descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert (run_dir / LOCK_FILE).is_file()  # the lock's record stays; the lock goes with its processes
        _released(run_dir, orphans)  # no clean-up: the next study starts as soon as the orphaned kernel has exited
        if name == "01_teacher_targets":
            assert not list((run_dir / "cache").rglob("meta.json")), "killed after a cache was made"
        seen(f"killed runner and kernel {time.monotonic() - began:.1f} s into {name}")

    out = subprocess.run([sys.executable, "-m", "mmd2v2_core.cli", *map(str, args)], cwd=REPO, capture_output=True,
                         text=True, timeout=900, env={**os.environ, "MMD2V2_PROGRESS": "off"})
    log = out.stdout + out.stderr  # what a terminal shows, its notebook kernel included
    assert out.returncode == 0, log[-6000:]
    seen("the eighth `mmd2v2 study` finished: exit 0")
    assert "[study] 06_embeddings_and_browser done in" in log
    # the study's lines only: no Jupyter machinery (ipykernel's unencrypted-TCP warning)
    assert not [line for line in log.splitlines() if "IPKernelApp" in line or "without encryption" in line], log
    assert sorted(p.stem for p in (run_dir / "done").glob("*.json")) == sorted(NOTEBOOKS)
    assert _tables(reports) == _tables(reference / "reports") and len(_tables(reports)) >= 5
    results = {p.relative_to(run_dir / "results") for p in (run_dir / "results").rglob("*.json")}
    assert results == {p.relative_to(reference / "run" / "results") for p in (reference / "run" / "results").rglob(
        "*.json")} and len(results) >= 2 * 13
    for metrics in (run_dir / "runs").rglob("metrics.jsonl"):
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        counts = Counter((r["step"], r["kind"]) for r in rows if r["kind"] != "init")
        assert max(counts.values()) == 1, f"{metrics}: logged twice"
    report = (reports / "report.md").read_text()
    assert "Not run" not in report and "| MM-D2V2 7_2 (5+2) |" in report


def test_ctrl_c_during_training_saves_and_says_how_to_resume(smoke_source, reference_run, tmp_path, cli, seen):
    """Ctrl-C at optimiser step 6, DataLoader workers included: the step finishes and is saved, one line says how
    to continue, exit 130; the rerun ends with the same weights as an uninterrupted run."""
    run = tmp_path / "run"
    proc = interrupted(seen, "torch.optim:AdamW.step", 6, 1, *_train_args(smoke_source["synth-coco"], run,
                                                                         "data.num_workers=2"))
    assert proc.returncode == 130
    line = _one_error_line(proc)
    assert "interrupted at step 6" in line and "step_0000006" in line and "run the same command" in line
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000006"
    assert cli(*_train_args(smoke_source["synth-coco"], run)).code == 0
    _assert_same_run(run, reference_run)


def test_second_ctrl_c_stops_at_once(smoke_source, tmp_path, seen):
    """Ctrl-C twice at step 4: no waiting for a save; exit 130 with one line; the step-3 checkpoint stays the
    latest and nothing half-written is left."""
    run = tmp_path / "run"
    proc = interrupted(seen, "torch.optim:AdamW.step", 4, 2, *_train_args(smoke_source["synth-coco"], run))
    assert proc.returncode == 130 and _one_error_line(proc) == "error: interrupted (Ctrl-C)"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000003"
    assert not list((run / "checkpoints").glob(".*tmp*"))


def test_ctrl_c_while_indexing(smoke_source, tmp_path, seen):
    """Ctrl-C as `data karpathy` starts writing the index: exit 130 with one line, and no manifest."""
    data = smoke_source["synth-coco"]
    proc = interrupted(seen, "data_prep.karpathy:write_index", 1, 1, "data", "karpathy", "--json",
                       data / "dataset_synth-coco.json", "--images", data / "images", "--out", tmp_path / "idx",
                       "--verify", "exists")
    assert proc.returncode == 130 and _one_error_line(proc) == "error: interrupted (Ctrl-C)"
    assert not (tmp_path / "idx" / "manifest.json").exists()
