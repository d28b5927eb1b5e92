"""Checkpoints: truncated, of another architecture or preset, and pickles that would run code."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from mmd2v2_core.cli import main

from .conftest import assert_clear_error

STEPS = 4


@pytest.fixture(scope="module")
def trained(smoke_source, tmp_path_factory):
    """A finished smoke run (checkpoint at step 4)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--config", "smoke", f"data.root={smoke_source['synth-coco']}", f"run.out_dir={out}",
                 f"optim.steps={STEPS}", f"run.val_every={STEPS}"]) == 0
    return out


@pytest.fixture
def run(trained, tmp_path):
    """A private copy of the finished run, free to be damaged."""
    return shutil.copytree(trained, tmp_path / "run")


def _ckpt(run):
    return run / "checkpoints" / f"step_{STEPS:07d}"


class RunsCode:
    """Unpickling this calls os.system: what a hostile 'checkpoint' from the internet can do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_truncated_weights_stop_evaluation_by_name(run, smoke_source, cli):
    """model.safetensors cut in half: `eval retrieval` exits 2 naming the file."""
    _truncate(_ckpt(run) / "model.safetensors")
    out = cli("eval", "retrieval", "--checkpoint", _ckpt(run), "--data", smoke_source["synth-coco"])
    assert_clear_error(out, "model.safetensors", "unreadable")


@pytest.mark.parametrize("part", ["model.safetensors", "state.pt"])
def test_truncated_checkpoint_stops_resume_by_name(run, smoke_source, cli, part):
    """Resuming from a checkpoint with a cut file: exit 2 naming that file; the checkpoint is left as it was."""
    _truncate(_ckpt(run) / part)
    before = (_ckpt(run) / part).read_bytes()
    out = cli("train", "--config", "smoke", f"data.root={smoke_source['synth-coco']}", f"run.out_dir={run}",
              f"optim.steps={2 * STEPS}", f"run.resume={_ckpt(run)}")
    assert_clear_error(out, part)
    assert (_ckpt(run) / part).read_bytes() == before


def test_weights_of_another_architecture(run, smoke_source, cli):
    """A safetensors file of some other network in the checkpoint folder: exit 2, 'does not fit'."""
    save_file({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.bias": torch.zeros(10)}, _ckpt(run) / "model.safetensors")
    out = cli("eval", "retrieval", "--checkpoint", _ckpt(run), "--data", smoke_source["synth-coco"])
    assert_clear_error(out, "does not fit this model", "conv1.weight")


def test_resuming_with_another_preset_names_the_difference(run, smoke_source, cli):
    """`run.resume=latest` in a run trained as mmd2v2_6, now configured as smke: exit 2 naming the key."""
    out = cli("train", "--config", "smoke", f"data.root={smoke_source['synth-coco']}", f"run.out_dir={run}",
              f"optim.steps={2 * STEPS}", "run.resume=latest", "student.preset=smke")
    assert_clear_error(out, "student.preset", "mmd2v2_6", "smke")


def test_resuming_with_another_attention_type(run, smoke_source, cli):
    """Same preset, other attention type (the weights would even partly fit): refused by key."""
    out = cli("train", "--config", "smoke", f"data.root={smoke_source['synth-coco']}", f"run.out_dir={run}",
              f"optim.steps={2 * STEPS}", "run.resume=latest", "student.attention=shared")
    assert_clear_error(out, "student.attention", "separate", "shared")


def test_code_executing_training_state_is_refused(run, smoke_source, cli, tmp_path):
    """state.pt replaced by a pickle that calls os.system: refused by name, and the command never runs."""
    marker = tmp_path / "pwned"
    torch.save({"optimizer": RunsCode(marker)}, _ckpt(run) / "state.pt")
    out = cli("train", "--config", "smoke", f"data.root={smoke_source['synth-coco']}", f"run.out_dir={run}",
              f"optim.steps={2 * STEPS}", "run.resume=latest")
    assert_clear_error(out, "state.pt", "refused")
    assert not marker.exists()


def test_code_executing_teacher_weights_are_refused(tmp_path, smoke_source, cli):
    """A 'Data2Vec2 checkpoint' that calls os.system: `teachers inspect` and `train` refuse it by name."""
    marker, evil = tmp_path / "pwned", tmp_path / "base_imagenet.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "cfg": RunsCode(marker)}, evil)
    assert_clear_error(cli("teachers", "inspect", "d2v2-image", "--weights", evil), "base_imagenet.pt", "refused",
                       "system")
    out = cli("train", "--config", "smoke", f"data.root={smoke_source['synth-coco']}", f"run.out_dir={tmp_path / 'r'}",
              "teacher.name=d2v2-image", "teacher.tiny=false", f"teacher.weights={evil}")
    assert_clear_error(out, "base_imagenet.pt", "refused")
    assert not marker.exists()


def test_folder_that_is_not_a_checkpoint(tmp_path, smoke_source, cli):
    """`eval retrieval --checkpoint` on the run folder instead of a step folder: named, with what is missing."""
    (tmp_path / "somewhere").mkdir()
    assert_clear_error(cli("eval", "retrieval", "--checkpoint", tmp_path / "somewhere", "--data",
                           smoke_source["synth-coco"]), "somewhere", "not a training checkpoint")
