"""The README's first command, guarded in seconds: for every profile, everything the study does before its first
computation runs here — the ``Study``, every run's config for every seed (before the data and caches it names exist),
the labels, the closed-form rows, the disk budget, the preflight, and each notebook's cells up to the first one that
would generate, cache, train or score (``mmd2v2 study --check``). A full study takes half an hour; a config, label or
recipe that breaks it breaks this test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmd2v2_core.cli import main
from mmd2v2_core.errors import ConfigError
from mmd2v2_core.profiles import PROFILES
from mmd2v2_core.runner import StudyFailed, check_study
from mmd2v2_core.study import NOTEBOOKS, Study

ROOT = Path(__file__).resolve().parents[1]
# where each notebook's first computation is: the check must reach it, no earlier
FIRST_COMPUTATION = {"00_data_prep": "study.prepare_data()", "01_teacher_targets": "study.build_caches()",
                     "02_distillation_pretraining": "study.train_all(runs)",
                     "03_retrieval_eval": "study.evaluate_baselines()", "04_ablation_teacher": "study.run_all(runs)",
                     "05_ablation_attention": "study.run_all(attention)",
                     "06_embeddings_and_browser": "sections.embeddings_section("}


def _assert_reached_every_first_computation(lines: list[str]) -> None:
    assert len(lines) == len(NOTEBOOKS)
    for name, line in zip(NOTEBOOKS, lines):
        assert line.startswith(f"[check] {name}: ") and FIRST_COMPUTATION[name] in line, line


@pytest.fixture
def plenty_of_disk(monkeypatch):
    """The embedded study needs ≈ 5 GB, more than a CI machine's /tmp may have free: these tests follow the notebooks'
    path, not this machine's disk (the disk budget's refusal has its own test in tests/reliability/test_outputs.py)."""
    usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(path)._replace(free=10**12))


@pytest.mark.parametrize("profile", ["smoke", "embedded"])
def test_every_notebook_runs_to_its_first_computation_on_a_fresh_folder(profile, tmp_path, plenty_of_disk):
    run_dir = tmp_path / "study"
    lines = check_study(Study(profile, run_dir, check=True), ROOT / "notebooks", tmp_path / "reports")
    _assert_reached_every_first_computation(lines)
    assert not run_dir.exists() and not (tmp_path / "reports").exists(), "a check writes nothing"


def test_the_check_sees_a_study_whose_data_exists_but_not_its_caches(tmp_path, plenty_of_disk):
    """The state of a study killed in notebook 01 (00 made the data, the caches are not there yet): every question
    asked before a stage runs must be answerable, or the study could never restart."""
    from data_prep.synth import generate

    run_dir = tmp_path / "study"
    generate(run_dir / "data", PROFILES["smoke"].data_profile, seed=0, overwrite=True)
    study = Study("smoke", run_dir, check=True)
    _assert_reached_every_first_computation(
        check_study(study, ROOT / "notebooks", tmp_path / "reports"))
    assert not study.trained("smke", 0) and not (run_dir / "cache").exists()
    assert all("COCO only" not in label for label in study.labels.values())


def test_a_broken_recipe_fails_the_check_naming_the_notebook_and_key(tmp_path, plenty_of_disk):
    with pytest.raises(ConfigError, match="optim.lr"):
        check_study(Study("embedded", tmp_path / "s", ["optim.lr=-1"], check=True), ROOT / "notebooks", tmp_path)
    notebooks = tmp_path / "notebooks"  # a notebook whose cell fails before any computation
    notebooks.mkdir()
    for name in NOTEBOOKS:
        text = (ROOT / "notebooks" / f"{name}.ipynb").read_text()
        if name == "04_ablation_teacher":
            text = text.replace("runs = study.profile.teacher_ablation", "runs = study.profile.no_such_chapter")
        (notebooks / f"{name}.ipynb").write_text(text)
    with pytest.raises(StudyFailed, match=r"notebook 04_ablation_teacher failed in code cell 4, `runs = study.profile.no_such_chapter` \(AttributeError"):
        check_study(Study("smoke", tmp_path / "s", check=True), notebooks, tmp_path)


def test_the_cli_check_on_the_real_profile_with_its_data_and_weights(real_fixture, tmp_path, capsys):
    """``mmd2v2 study --profile real --check`` on the real-format fixture, in a shell with its environment (its own
    process: huggingface_hub reads HF_HOME once): the preflight passes, every notebook reaches its first
    computation, nothing is written."""
    run_dir = tmp_path / "run"
    args = ["study", "--profile", "real", "--check", "--run-dir", str(run_dir), "--reports", str(tmp_path / "reports"),
            "--notebooks", str(ROOT / "notebooks"), "--data", str(real_fixture.root / "prepared"),
            "-pstudent.size=tiny", "-poptim.batch_size=8"]
    done = subprocess.run([sys.executable, "-m", "mmd2v2_core.cli", *args], cwd=real_fixture.root, capture_output=True,
                          text=True, env={**os.environ, **real_fixture.env}, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _assert_reached_every_first_computation([line for line in done.stdout.splitlines() if line.startswith("[check]")])
    assert "check: the real study's 10 runs × 1 seeds resolve" in done.stdout
    assert not run_dir.exists() and not (tmp_path / "reports").exists()
    # without its data, the same check stops at the preflight, one line per missing input
    assert main([*args[:8], "--data", str(tmp_path / "none")]) == 2
    assert "the real study cannot start" in capsys.readouterr().err
