"""`mmd2v2 teachers list|inspect` and `mmd2v2 targets`, as a user runs them."""

import json

import pytest
import skimage.data

from mmd2v2_core.cli import main
from mmd2v2_core.teachers.registry import TEACHERS, create_teacher


def test_list_names_every_teacher_and_what_is_here(capsys, tmp_path):
    (tmp_path / "base_imagenet.pt").write_bytes(b"x")
    assert main(["teachers", "list", "--json", "--weights-dir", str(tmp_path)]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(TEACHERS)
    assert rows["efficientnet-lite0"]["available"] and rows["minilm"]["found_at"] == "package"
    assert rows["d2v2-image"]["found_at"] == str(tmp_path / "base_imagenet.pt")
    assert not rows["beitv2"]["available"]
    assert 85e6 < rows["beitv2"]["parameters"] < 87e6 and rows["resnet50"]["classes"] == 1000


@pytest.mark.parametrize("name", sorted(TEACHERS))
def test_every_teacher_has_a_tiny_variant_that_runs(name):
    teacher = create_teacher(name, tiny=True)
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.model.training  # teachers stay in eval mode


def test_inspect_prints_imagenet_classes_of_photos(capsys):
    assert main(["teachers", "inspect", "efficientnet-lite0", "--images", f"{skimage.data.data_dir}/chelsea.png"]) == 0
    out = capsys.readouterr().out
    assert "Egyptian cat" in out and "logits [1, 1000]" in out


def test_missing_weights_is_one_actionable_line(capsys, tmp_path):
    assert main(["teachers", "inspect", "d2v2-image", "--weights-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs base_imagenet.pt" in err and "--weights PATH" in err


def test_targets_command_builds_then_reuses(smoke_data, tmp_path, capsys):
    args = ["targets", "--teacher", "dino", "--tiny", "--data", str(smoke_data["synth-coco"]), "--split", "val",
            "--out", str(tmp_path / "c"), "--shard-size", "64", "--device", "cpu"]
    assert main(args) == 0
    assert "computed shards [0, 1]" in capsys.readouterr().out
    assert main(args) == 0
    assert "computed shards none, reused [0, 1]" in capsys.readouterr().out
    assert main(args[:-4] + ["--kind", "mean", "--device", "cpu"]) == 2
    assert "holds other targets" in capsys.readouterr().err
