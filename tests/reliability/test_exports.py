"""What leaves the kit: an exported student proves what it holds. Damage to a copy of a good export, then
`load_student` / `load_inputs` (what `eval clip-benchmark` calls) and `mmd2v2 export` into folders that are not new."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmd2v2_core.errors import DataError
from mmd2v2_core.export import file_digest, load_inputs, load_student

from .conftest import Outcome, assert_clear_error


@pytest.fixture(scope="module")
def checkpoint(smoke_source, tmp_path_factory):
    from mmd2v2_core.config import load_config
    from mmd2v2_core.train.loop import train

    out = tmp_path_factory.mktemp("export-run")
    train(load_config("smoke", [f"data.root={smoke_source['synth-coco']}", f"run.out_dir={out}", "optim.steps=2",
                                "teacher.tiny=true", "run.val_every=0"]))
    return out / "checkpoints" / "step_0000002"


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    from mmd2v2_core.export import export_student

    return export_student(checkpoint, tmp_path_factory.mktemp("export") / "good")[0]


def _redigest(folder, name):
    config = json.loads((folder / "config.json").read_text())
    config["files"][name] = file_digest(folder / name)
    (folder / "config.json").write_text(json.dumps(config))


def _one_byte(folder):
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-7] ^= 0x01  # inside the last tensor's data: still loads, one weight changed
    (folder / "model.safetensors").write_bytes(bytes(data))


def _swapped_tokenizer(folder):  # another tokenizer under the same name: two tokens exchange their ids
    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["red"], vocab["blue"] = vocab["blue"], vocab["red"]
    (folder / "tokenizer.json").write_text(json.dumps(spec))


def _stray_tokenizer_file(folder):  # a vocabulary left by another tool, which a tokenizer would read
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\nred\n")


def _non_finite(folder):  # weights that went NaN in training, exported with a matching digest
    tensors = load_file(folder / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name][0] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    _redigest(folder, "model.safetensors")


def _other_mlp(folder):  # config.json of another size beside these weights
    config = json.loads((folder / "config.json").read_text())
    config["student"]["mlp_ratio"] *= 2
    (folder / "config.json").write_text(json.dumps(config))


def _other_preset(folder):  # config.json of a student that cannot be built (a KD head's target size missing)
    config = json.loads((folder / "config.json").read_text())
    config["student"].update(kd_head=False, width=2 * config["student"]["width"])
    (folder / "config.json").write_text(json.dumps(config))


def _no_digests(folder):  # written before exports recorded digests
    config = json.loads((folder / "config.json").read_text())
    del config["files"]
    (folder / "config.json").write_text(json.dumps(config))


DAMAGE = {
    "one byte of the weights": (_one_byte, "model.safetensors", "changed since the export"),
    "a swapped tokenizer": (_swapped_tokenizer, "tokenizer.json", "changed since the export"),
    "a stray tokenizer file": (_stray_tokenizer_file, "vocab.txt", "not part of the export"),
    "a tokenizer file deleted": (lambda f: (f / "tokenizer_config.json").unlink(), "tokenizer_config.json", "missing"),
    "a non-finite weight": (_non_finite, "model.safetensors", "non-finite"),
    "config.json of another size": (_other_mlp, "model.safetensors", "shapes do not fit config.json"),
    "config.json of no valid student": (_other_preset, "config.json", "student:"),
    "no digests": (_no_digests, "config.json", "export it again"),
}
WEIGHTS_ONLY = {"a non-finite weight", "config.json of another size", "config.json of no valid student"}  # load_inputs reads no weights


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_export_is_refused_naming_the_file(exported, tmp_path, seen, damage):
    """Each damage to a copy of a good export: both loaders refuse it with one message naming the file and what is
    wrong; nothing loads silently wrong."""
    folder = shutil.copytree(exported, tmp_path / "export")
    harm, name, problem = DAMAGE[damage]
    harm(folder)
    for loader in (load_student,) if damage in WEIGHTS_ONLY else (load_student, load_inputs):
        with pytest.raises(DataError) as refused:
            loader(folder)
        message = str(refused.value)
        assert name in message and problem in message and "\n" not in message, message
    seen(message)


def test_a_good_export_loads_and_gives_the_checkpoints_embeddings(exported, checkpoint):
    from mmd2v2_core.train.checkpoint import load_trained_student

    student, _ = load_trained_student(checkpoint)
    loaded = load_student(exported)
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), loaded.state_dict().values()))


def test_export_into_a_folder_that_is_not_new(checkpoint, exported, tmp_path, cli, seen):
    """--out that holds anything: refused without --overwrite, naming what it holds. With --overwrite an earlier
    export's own files are replaced (its stale tokenizer files removed), a user's file is kept and named, and a
    user's file the export would write over (README.md in a folder no export made) is refused."""
    args = ["export", "--checkpoint", checkpoint, "--out"]
    again = shutil.copytree(exported, tmp_path / "again")
    assert_clear_error(cli(*args, again), str(again), "not empty", "--overwrite")
    config = json.loads((again / "config.json").read_text())
    config["files"]["vocab.txt"] = "0" * 64  # an earlier export that wrote a vocabulary this one does not
    (again / "config.json").write_text(json.dumps(config))
    (again / "vocab.txt").write_text("stale\n")
    (again / "notes.md").write_text("my notes\n")
    out = cli(*args, again, "--overwrite")
    assert out.code == 0 and "notes.md" in out.out and "left as they were" in out.out
    assert not (again / "vocab.txt").exists() and (again / "notes.md").read_text() == "my notes\n"
    load_student(again), load_inputs(again)  # the digests of this export

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "README.md").write_text("# my project\n")
    assert_clear_error(cli(*args, theirs, "--overwrite"), str(theirs), "README.md", "no earlier export wrote")
    assert (theirs / "README.md").read_text() == "# my project\n" and sorted(p.name for p in theirs.iterdir()) == [
        "README.md"]


def test_an_export_where_a_training_checkpoint_is_read_is_named_an_export(exported, smoke_source, cli):
    out = cli("eval", "retrieval", "--checkpoint", exported, "--data", smoke_source["synth-coco"])
    assert_clear_error(out, str(exported), "an exported student", "eval clip-benchmark")


def _flickr_with_a_deleted_image(root, smoke_source) -> list:
    from mmd2v2_core.eval.clip_benchmark import write_flickr_layout

    annotations = write_flickr_layout(smoke_source["synth-coco"], "val", root)
    next(root.glob("*.jpg")).unlink()
    return ["--split", "val", "--annotation-file", annotations]


DOORS = {  # dataset, what makes its root (and returns more arguments), what the error line names
    "a root without the annotation file": ("flickr30k", lambda root, _: [], "flickr30k_test_karpathy.txt"),
    "an unknown dataset name": ("flickr31k", lambda root, _: [], "flickr31k"),
    "images deleted after the layout": ("flickr30k", _flickr_with_a_deleted_image, ".jpg"),
    "a torchvision dataset not there": ("cifar10", lambda root, _: [], "download=False"),
}


@pytest.mark.parametrize("door", DOORS)
def test_clip_benchmark_never_downloads_and_fails_in_one_line(exported, smoke_source, tmp_path, cli, seen, door):
    """`eval clip-benchmark` on a dataset root that lacks what the loader needs: one error line naming the file or
    the dataset, no download started (CLIP_benchmark would wget or call torchvision's download=True), and no empty
    file left behind for the next run to trust."""
    dataset, make, named = DOORS[door]
    root = tmp_path / "root"
    root.mkdir()
    extra = make(root, smoke_source)
    before = sorted(p.name for p in root.iterdir())
    out = cli("eval", "clip-benchmark", "--checkpoint", exported, "--dataset", dataset, "--dataset-root", root, "--out",
              tmp_path / "cb.json", *extra)
    bars = re.compile(r"^(\r?\d+it \[[^\]]*\])+$")  # CLIP_benchmark's own progress bar, before it stopped
    assert_clear_error(Outcome(out.code, out.out, "\n".join(l for l in out.err.splitlines() if not bars.match(l))),
                       named)
    assert sorted(p.name for p in root.iterdir()) == before and not (tmp_path / "cb.json").exists()
