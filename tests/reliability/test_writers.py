"""Writers: two commands writing one folder at once — a study, a training run, a target cache. The second ends at
once with one line naming the folder and the process that holds it (exit 2), having written nothing; the first
finishes as if alone. The lock dies with its holder: after a SIGKILL the next command starts without clean-up.
Readers (a finished checkpoint scored beside a training run) are not held up."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmd2v2_core.errors import KitError
from mmd2v2_core.lock import LOCK_FILE
from mmd2v2_core.profiles import PROFILES
from mmd2v2_core.study import Study

from .conftest import assert_clear_error
from .test_interruptions import KILL_AT, REPO, _one_error_line

ENV = {**os.environ, "MMD2V2_PROGRESS": "off"}


def _mmd2v2(log: Path, *args, **kw) -> subprocess.Popen:
    """`mmd2v2 ARGS` in the background, its output in ``log`` (a pipe nobody reads would stall it)."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "mmd2v2_core.cli", *map(str, args)], cwd=REPO, env=ENV,
                                stdout=out, stderr=subprocess.STDOUT, **kw)


def _paused(target: str, nth: int, seconds: int, *args) -> subprocess.Popen:
    """`mmd2v2 ARGS` that stops for ``seconds`` at the nth call of ``target``, holding its folder meanwhile."""
    return subprocess.Popen([sys.executable, KILL_AT, target, str(nth), f"pause:{seconds}", "--", *map(str, args)],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _holding(folder: Path, proc: subprocess.Popen, timeout: float = 300) -> dict:
    """Wait until ``proc`` holds ``folder`` (its lock file names it); the holder's record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the first writer ended early (exit {proc.returncode})"
        try:
            record = json.loads((folder / LOCK_FILE).read_text() or "{}")
        except (FileNotFoundError, json.JSONDecodeError):
            record = {}
        if record.get("pid") == proc.pid:
            return record
        time.sleep(0.05)
    raise AssertionError(f"{folder} was never locked by pid {proc.pid}")


def _second(seen, *args) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mmd2v2_core.cli", *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - start
    seen(f"second writer: exit {done.returncode} after {seconds:.1f} s: {done.stderr.strip()}")
    return done, seconds


def _metrics(run_dir: Path) -> dict:
    """Every result file's metrics; a binding result holds one entry per test set."""
    def metrics(result):
        return [r["metrics"] for r in result] if isinstance(result, list) else result["metrics"]

    return {str(p.relative_to(run_dir)): metrics(json.loads(p.read_text()))
            for p in (run_dir / "results").rglob("*.json") if p.parent.name != "transfer"}


def test_two_studies_on_one_folder(smoke_study, tmp_path, seen):
    """`mmd2v2 study` twice on one --run-dir (make study, and the same notebooks started again): the second ends in
    under 5 s with one line naming the folder, `mmd2v2 study`, its pid and start time, exit 2, no reports folder made;
    a notebook's own Study is refused the same way; the first finishes with the results of an undisturbed study. The
    first redoes notebook 03 of a copy of the session's smoke study with one run's training and its scores undone, so
    it trains and scores while the second knocks."""
    reference, _ = smoke_study
    run_dir = shutil.copytree(reference / "run", tmp_path / "study", ignore=shutil.ignore_patterns(LOCK_FILE))
    for scored in ("cca", "cca_frozen", "cca_frozen_views", "unaligned", *PROFILES["smoke"].table1):  # notebook 03's
        shutil.rmtree(run_dir / "results" / scored, ignore_errors=True)
    shutil.rmtree(next((run_dir / "runs" / "mmd2v2_7_2").glob("seed0-*")))
    (run_dir / "done" / "03_retrieval_eval.json").unlink()
    first = _mmd2v2(tmp_path / "first.log", "study", "--profile", "smoke", "--run-dir", run_dir, "--reports",
                    tmp_path / "reports", start_new_session=True)
    try:
        holder = _holding(run_dir, first)
        done, seconds = _second(seen, "study", "--profile", "smoke", "--run-dir", run_dir, "--reports",
                                tmp_path / "second-reports")
        line = _one_error_line(done)
        since = time.strftime("%H:%M", time.localtime(holder["since"]))
        assert done.returncode == 2 and seconds < 5, (done.returncode, seconds)
        assert line == (f"error: {run_dir} is in use by mmd2v2 study (pid {first.pid}, since {since}); wait for it "
                        "or pass another --run-dir")
        assert not (tmp_path / "second-reports").exists()
        with pytest.raises(KitError, match=f"is in use by mmd2v2 study \\(pid {first.pid}") as refused:
            Study("smoke", run_dir).evaluate("smke", 0)  # a notebook run in JupyterLab beside it: a stage to compute
        seen(f"a notebook's Study beside it: {refused.value}")
        assert first.wait(timeout=900) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:  # runner and kernel
            os.killpg(first.pid, signal.SIGKILL)
    assert "[run] mmd2v2_7_2 seed 0 · start" in (tmp_path / "first.log").read_text()
    disturbed, undisturbed = _metrics(run_dir), _metrics(reference / "run")
    assert len(disturbed) == 26 + 12 and disturbed == undisturbed  # test results; binding of 10 runs and 2 baselines
    seen(f"first study: exit 0, its {len(disturbed)} results equal an undisturbed study's")


def _train(data, out, *extra):
    return ["train", "--config", "smoke", f"data.root={data}", f"run.out_dir={out}", "optim.steps=6",
            "run.checkpoint_every=2", "run.val_every=100", "run.val_at_start=false", "data.num_workers=0", *extra]


def test_two_training_runs_on_one_folder_and_a_reader(smoke_source, tmp_path, seen):
    """`mmd2v2 train` into a run folder another training run writes: exit 2 naming it; scoring that run's finished
    checkpoint beside it (a reader) works."""
    data, out = smoke_source["synth-coco"], tmp_path / "run"
    first = _paused("torch.optim:AdamW.step", 3, 60, *_train(data, out))  # busy at step 3, step 2 saved
    try:
        _holding(out, first)
        deadline = time.monotonic() + 300
        while not (out / "checkpoints" / "step_0000002").is_dir():
            assert first.poll() is None and time.monotonic() < deadline, "the first run ended or stalled before step 2"
            time.sleep(0.05)
        done, seconds = _second(seen, *_train(data, out))
        line = _one_error_line(done)
        assert done.returncode == 2 and seconds < 5  # refused by the lock, taken before torch is imported
        assert line.startswith(f"error: {out} is in use by mmd2v2 train (pid {first.pid}, since ")
        assert line.endswith("wait for it or pass another run.out_dir")
        reader = subprocess.run([sys.executable, "-m", "mmd2v2_core.cli", "eval", "retrieval", "--checkpoint",
                                 out / "checkpoints" / "step_0000002", "--data", data, "--split", "val"], cwd=REPO,
                                env=ENV, capture_output=True, text=True, timeout=300)
        seen(f"reader beside it (eval retrieval on step_0000002): exit {reader.returncode}")
        assert reader.returncode == 0 and "image→text" in reader.stdout, reader.stderr[-2000:]
    finally:
        first.kill()
        first.wait()


def test_a_training_run_holds_its_folder_before_its_setup(smoke_source, tmp_path, seen):
    """The writer's lock is the first thing `mmd2v2 train` does, before torch is imported and its data read (that
    setup took 11 s under load, while a second writer could start): the folder is held within a few seconds."""
    data, out = smoke_source["synth-coco"], tmp_path / "run"
    start = time.monotonic()
    first = subprocess.Popen([sys.executable, "-m", "mmd2v2_core.cli", *map(str, _train(data, out))], cwd=REPO,
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _holding(out, first)
        seconds = time.monotonic() - start
        seen(f"the run held its folder {seconds:.1f} s after it started")
        assert seconds < 5 and not (out / "metrics.jsonl").exists()  # held before the run wrote anything
    finally:
        first.kill()
        first.wait()


def test_two_target_caches_into_one_folder(smoke_source, tmp_path, cli):
    """`mmd2v2 targets --out C` while another `targets` fills C: exit 2 naming the folder and the cache build; once
    the first is gone, the same command completes the cache."""
    data, cache = smoke_source["synth-coco"], tmp_path / "cache"
    args = ["targets", "--teacher", "efficientnet-lite0", "--tiny", "--kind", "pooled", "--image-size", "32",
            "--data", data, "--out", cache, "--shard-size", "48", "--batch-size", "16"]
    first = _paused("numpy:save", 2, 60, *args)  # ids written, busy before its first shard
    try:
        _holding(cache, first)
        line = assert_clear_error(cli(*args), str(cache), f"in use by a cache build (pid {first.pid}, since")
        assert line.endswith("wait for it or choose another cache folder")
    finally:
        first.kill()
        first.wait()
    assert cli(*args).code == 0
