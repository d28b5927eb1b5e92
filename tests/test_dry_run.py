"""``bench/dry_run_real.py`` at the tests' size: the script that proves the real study at real size, itself tested —
a run trains through the study, resumes bit for bit and is scored, the memory plan is measured; a checkpoint its
converter cannot read fails it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _dry_run(root: Path, *runs: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "dry_run_real.py"), "--size", "tiny", "--root",
                           str(root), "--runs", ",".join(runs), "--no-write"], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("dry-run")


def test_a_run_trains_resumes_identically_and_is_scored(root):
    done = _dry_run(root, "smke")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "fixture (tiny) written" in done.stdout
    assert "Memory plan: devices of 80 GiB (80% usable), 1 process(es)" in done.stdout  # the memory child ran too
    assert done.stdout.rstrip().endswith("parameters loaded — ok"), done.stdout


def test_a_checkpoint_the_converter_cannot_read_fails_the_dry_run(root):
    sys.path.insert(0, str(ROOT / "bench"))
    from dry_run_real import fixture

    fixture(root / "tiny", "tiny")  # built by the test above, or now
    release = root / "tiny" / "files" / "weights" / "beitv2_base_patch16_224_pt1k.pth"
    checkpoint = torch.load(release, weights_only=False)
    index = checkpoint["model"]["rel_pos_bias.relative_position_index"]
    checkpoint["model"]["rel_pos_bias.relative_position_index"] = index.flip(0)  # another image size's table
    torch.save(checkpoint, release)
    done = _dry_run(root, "smke")
    assert done.returncode == 1
    assert "smke: FAILED" in done.stdout and "is not the relative position index" in done.stdout
    assert "dry run failed" in done.stderr
