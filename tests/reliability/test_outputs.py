"""Outputs: a file where a folder belongs and the reverse, read-only and full disks, impossible counts.

A path that cannot be written is refused before any computation, naming the option (or key) and the
path; a disk that fills up mid-run says so and leaves no hidden temporary file behind.
"""

from __future__ import annotations

import errno
import os
import pathlib
import shutil

import pytest
from safetensors import SafetensorError

from mmd2v2_core.train import checkpoint as ckpt_module

from .conftest import assert_clear_error


def _karpathy(smoke, out, *extra):
    return ["data", "karpathy", "--json", smoke / "dataset_synth-coco.json", "--images", smoke / "images",
            "--out", out, *extra]


def _train(smoke, out, *extra):
    return ["train", "--config", "smoke", f"data.root={smoke}", f"run.out_dir={out}", *extra]


def _targets(smoke, out, *extra):
    return ["targets", "--teacher", "efficientnet-lite0", "--tiny", "--kind", "pooled", "--image-size", "32",
            "--data", smoke, "--out", out, *extra]


def _eval(smoke, out, *extra):
    # the checkpoint need not exist: the output is checked first
    return ["eval", "retrieval", "--checkpoint", smoke / "no-checkpoint", "--data", smoke, "--out", out, *extra]


FOLDER_OUTPUTS = {
    # command: (arguments given the output path, the name the error uses for it)
    "train run.out_dir": (_train, "run.out_dir="),
    "data karpathy --out": (_karpathy, "--out"),
    "data synth --out": (lambda smoke, out: ["data", "synth", "--out", out, "--profile", "smoke"], "--out"),
    "targets --out": (_targets, "--out"),
    "report tables --out": (lambda smoke, out: ["report", "tables", "--out", out], "--out"),
    "study --run-dir": (lambda smoke, out: ["study", "--profile", "smoke", "--run-dir", out,
                                            "--reports", out.parent / "reports"], "--run-dir"),
}


@pytest.mark.parametrize("command", list(FOLDER_OUTPUTS))
def test_output_folder_that_is_a_file(smoke, tmp_path, cli, command):
    """The output folder exists as a file: exit 2 naming the option and the path; the file is left as it was."""
    args, name = FOLDER_OUTPUTS[command]
    target = tmp_path / "notes.txt"
    target.write_text("my notes\n")
    assert_clear_error(cli(*args(smoke, target)), name, target, "is a file, not a folder")
    assert target.read_text() == "my notes\n"


@pytest.mark.parametrize("command", ["train run.out_dir", "data karpathy --out", "eval retrieval --out"])
def test_output_whose_parent_is_a_file(smoke, tmp_path, cli, command):
    """An output inside a file (`notes.txt/out`): exit 2 naming the path and the file in the way."""
    args, name = {"eval retrieval --out": (_eval, "--out"), **FOLDER_OUTPUTS}[command]
    blocker = tmp_path / "notes.txt"
    blocker.write_text("my notes\n")
    target = blocker / "out"
    assert_clear_error(cli(*args(smoke, target)), name, target, f"cannot be created: {blocker} is a file")


def test_results_file_that_is_a_folder(smoke, tmp_path, cli):
    """`eval retrieval --out` naming a folder: refused before the evaluation runs, no hidden temporary file left."""
    folder = tmp_path / "results"
    folder.mkdir()
    out = cli(*_eval(smoke, folder))
    assert_clear_error(out, "--out", folder, "is a folder")
    assert "R@1" not in out.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "synth-coco"]


def test_json_that_is_a_folder(smoke, tmp_path, cli):
    """`data karpathy --json` naming the dataset folder instead of its JSON file."""
    out = cli("data", "karpathy", "--json", smoke, "--images", smoke / "images", "--out", tmp_path / "idx")
    assert_clear_error(out, str(smoke), "is a folder")


BAD_COUNTS = {
    # case: (arguments, words the error must contain)
    "karpathy --workers -1": (lambda smoke, tmp: _karpathy(smoke, tmp / "o", "--workers", "-1"),
                              ["data karpathy", "--workers", "must be >= 0, got -1"]),
    "karpathy --workers two": (lambda smoke, tmp: _karpathy(smoke, tmp / "o", "--workers", "two"),
                               ["--workers", "whole number", "'two'"]),
    "synth --workers -1": (lambda smoke, tmp: ["data", "synth", "--out", tmp / "o", "--workers", "-1"],
                           ["data synth", "--workers", "must be >= 0"]),
    "eval --batch-size 0": (lambda smoke, tmp: _eval(smoke, tmp / "r.json", "--batch-size", "0"),
                            ["eval retrieval", "--batch-size", "must be >= 1, got 0"]),
    "targets --batch-size 0": (lambda smoke, tmp: _targets(smoke, tmp / "c", "--batch-size", "0"),
                               ["targets", "--batch-size", "must be >= 1"]),
    "targets --shard-size 0": (lambda smoke, tmp: _targets(smoke, tmp / "c", "--shard-size", "0"),
                               ["targets", "--shard-size", "must be >= 1"]),
    "targets --workers -1": (lambda smoke, tmp: _targets(smoke, tmp / "c", "--workers", "-1"),
                             ["targets", "--workers", "must be >= 0"]),
    "missing option": (lambda smoke, tmp: ["data", "karpathy", "--json", smoke / "dataset_synth-coco.json"],
                       ["data karpathy", "required", "--images", "--out"]),
}


@pytest.mark.parametrize("case", list(BAD_COUNTS))
def test_impossible_option_is_one_error_line(smoke, tmp_path, cli, case):
    """A count below its minimum, not a number, or a required option missing: one `error:` line naming the
    command and the option."""
    args, words = BAD_COUNTS[case]
    assert_clear_error(cli(*args(smoke, tmp_path)), *words)
    assert not any(p.name in ("o", "c", "r.json") for p in tmp_path.iterdir())


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder the process may not write into. Root ignores permission bits, so for root the kernel's answer
    for a read-only disk (access(2) refusing W_OK, which it does for root too) is stood in for."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if pathlib.Path(path).is_relative_to(folder)
                            and mode & os.W_OK else real(path, mode, **kw))
    yield folder
    folder.chmod(0o755)


@pytest.mark.parametrize("command", ["train run.out_dir", "data karpathy --out"])
def test_output_on_a_read_only_disk(smoke, read_only, cli, command):
    """Refused before any work, naming the folder that cannot be written."""
    args, name = FOLDER_OUTPUTS[command]
    assert_clear_error(cli(*args(smoke, read_only / "out")), name, f"cannot be written: {read_only} is read-only")
    assert not (read_only / "out").exists()


def test_disk_full_during_a_checkpoint_save(smoke, tmp_path, cli, monkeypatch):
    """The disk fills while step 4's weights are written (safetensors' own error and no free byte, as on a real full
    disk): exit 2 saying so and naming the intact checkpoint; no hidden half checkpoint; once there is space, it
    resumes."""
    real, real_usage, calls = ckpt_module.save_model, shutil.disk_usage, {"n": 0}

    def filling_up(model, filename, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            pathlib.Path(filename).write_bytes(b"\0" * 4096)
            monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=0))
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(model, filename, *a, **kw)

    monkeypatch.setattr(ckpt_module, "save_model", filling_up)
    run = tmp_path / "run"
    args = _train(smoke, run, "optim.steps=4", "run.checkpoint_every=2", "run.val_every=100", "run.val_at_start=false")
    out = cli(*args)
    assert_clear_error(out, "step_0000004", "checkpoint not saved: no space left on the disk (0 MiB free there)",
                       "step_0000002, is intact")
    root = run / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_0000002"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000002"], "a half checkpoint was left"
    monkeypatch.setattr(ckpt_module, "save_model", real)
    monkeypatch.setattr(shutil, "disk_usage", real_usage)
    assert cli(*args, "run.resume=latest").code == 0
    assert (root / "latest").read_text().strip() == "step_0000004"


def test_disk_full_while_writing_the_index(smoke, tmp_path, cli, monkeypatch):
    """ENOSPC while train.jsonl is written: exit 2 naming the file; no hidden temporary file, no manifest."""
    real = pathlib.Path.write_text

    def filling_up(self, text, *a, **kw):
        if self.name.startswith(".train.jsonl.tmp"):
            real(self, text[: len(text) // 2], *a, **kw)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, text, *a, **kw)

    monkeypatch.setattr(pathlib.Path, "write_text", filling_up)
    out_dir = tmp_path / "idx"
    out = cli(*_karpathy(smoke, out_dir, "--verify", "exists"))
    assert_clear_error(out, out_dir / "train.jsonl", "No space left on device")
    assert not (out_dir / "manifest.json").exists()
    assert not [p.name for p in out_dir.iterdir() if p.name.startswith(".")], "hidden temporary file left behind"


@pytest.mark.parametrize("plan", [False, True], ids=["study", "study --plan"])
def test_a_study_that_cannot_fit_its_disk(tmp_path, cli, monkeypatch, plan):
    """The disk of --run-dir has 1 GB free; the smoke study's 10 runs need ≈ 1.6 GB of checkpoints (3 kept per run,
    one being written): refused before any data, cache or run is made, with the numbers and run.keep_checkpoints."""
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=10**9))
    run_dir = tmp_path / "study"
    out = cli("study", "--profile", "smoke", "--run-dir", run_dir, "--reports", tmp_path / "reports",
              *(["--plan"] if plan else []))
    line = assert_clear_error(out, str(run_dir), "the study needs ≈ 1.6 GB but its disk has 1.0 GB free",
                              "10 unfinished run(s)", "run.keep_checkpoints", "-p run.keep_checkpoints=1")
    assert "checkpoints of 0.05–0.05 GB each" in line
    assert sorted(p.name for p in run_dir.iterdir()) == [".mmd2v2.lock"]  # nothing made but the folder's lock


def test_checkpoint_size_estimate_matches_a_saved_checkpoint(smoke, tmp_path, cli):
    """What the disk budget assumes per checkpoint (parameter counts: weights, buffers, AdamW moments) is within 1 %
    of a checkpoint the smoke preset writes."""
    from mmd2v2_core.config import load_config
    from mmd2v2_core.memory import target_dim

    run = tmp_path / "run"
    assert cli(*_train(smoke, run, "optim.steps=2", "run.val_every=100", "run.val_at_start=false")).code == 0
    saved = sum(f.stat().st_size for f in (run / "checkpoints" / "step_0000002").iterdir())
    cfg = load_config("smoke")
    estimate = ckpt_module.checkpoint_bytes(cfg, target_dim(cfg))
    assert abs(estimate - saved) < 0.01 * saved, (estimate, saved)
