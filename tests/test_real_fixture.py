"""The real configs end to end on the real-format fixture (tests/real_fixture.py): its data passes the kit's own
preparation, every teacher of the thesis ablation loads from its original file found where real weights are found,
the students start from those files at size tiny, and real_mmd2v2 and real_smke train through the CLI."""

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from data_prep.karpathy import resolve_image
from mmd2v2_core.cli import main
from mmd2v2_core.data.index import load_manifest, read_split
from mmd2v2_core.student.presets import build_student, get_preset
from mmd2v2_core.teachers.registry import create_teacher
from real_fixture import IMG

ENTRY_FIELDS = {"coco": {"filepath", "filename", "imgid", "sentids", "split", "sentences", "cocoid"},
                "flickr30k": {"filename", "imgid", "sentids", "split", "sentences"}}


@pytest.fixture(scope="module")
def real(real_fixture):
    with pytest.MonkeyPatch.context() as patch:
        for key, value in real_fixture.env.items():
            patch.setenv(key, value)
        yield real_fixture


def _release(path):
    """The tensors of a release pickle (our own file: a full unpickle is safe here)."""
    return torch.load(path, weights_only=False)["model"]


def _hub_file(real, repo_id):
    snapshots = real.hf_home / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return load_file(next(snapshots.glob("*/model.safetensors")))


# ---------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize("name", ["coco", "flickr30k"])
def test_karpathy_files_have_the_real_fields_and_prepare_through_the_cli(real, name, tmp_path):
    json_path, images = real.karpathy[name]
    data = json.loads(json_path.read_text())
    assert data["dataset"] == name
    digests = set()
    for entry in data["images"]:
        assert set(entry) == ENTRY_FIELDS[name]
        assert entry["sentids"] == [s["sentid"] for s in entry["sentences"]] and len(entry["sentids"]) == 5
        for sentence in entry["sentences"]:
            assert set(sentence) == {"tokens", "raw", "imgid", "sentid"} and sentence["imgid"] == entry["imgid"]
            assert sentence["tokens"] and all(t.isalpha() and t.islower() for t in sentence["tokens"])
        path = resolve_image(entry, images)
        with Image.open(path) as photo:
            assert photo.format == "JPEG" and photo.mode == "RGB" and min(photo.size) >= 64
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == len(data["images"]) >= 36  # distinct photographs
    splits = Counter(entry["split"] for entry in data["images"])
    assert splits["test"] >= 8 and splits["train"] >= 16 and splits["val"] >= 8
    if name == "coco":
        assert splits["restval"] > 0 and {e["filepath"] for e in data["images"]} == {"train2014", "val2014"}

    # `mmd2v2 data karpathy` on the same files writes what the fixture prepared
    instances = [a for path in real.instances for a in ("--instances", str(path))] if name == "coco" else []
    assert main(["data", "karpathy", "--json", str(json_path), "--images", str(images), "--out", str(tmp_path),
                 *instances]) == 0
    prepared = load_manifest(real.prepared[name])
    assert load_manifest(tmp_path)["splits"] == prepared["splits"]
    assert prepared["splits"]["train"]["images"] == splits["train"] + splits["restval"]  # restval merged
    assert read_split(tmp_path, "test") == read_split(real.prepared[name], "test")


# ---------------------------------------------------------------------------------------------- teachers

# teacher -> (a tensor of the loaded model, how the original file holds it)
SOURCES = {
    "beitv2": ("blocks.1.attn.qkv.weight",
               lambda r: _release(r.weights_dir / "beitv2_base_patch16_224_pt1k.pth")["blocks.1.attn.qkv.weight"]),
    "beitv2-ft": ("head.weight",
                  lambda r: _hub_file(r, "timm/beitv2_base_patch16_224.in1k_ft_in22k_in1k")["head.weight"]),
    "d2v2-image": ("blocks.2.attn.qkv.weight",  # after the 2 prenet blocks: main block 0
                   lambda r: _release(r.weights_dir / "base_imagenet.pt")["blocks.0.attn.qkv.weight"]),
    "dino": ("cls_token", lambda r: _hub_file(r, "timm/vit_base_patch16_224.dino")["cls_token"]),
    "d2v2-text": ("encoder.layer.5.attention.self.value.weight",  # fused qkv: value is the last third
                  lambda r: _release(r.weights_dir / "nlp_base.pt")["blocks.5.attn.qkv.weight"][64:]),
    "bert": ("encoder.layer.5.output.LayerNorm.weight",  # the hub file keeps the TF port's names
             lambda r: _hub_file(r, "google-bert/bert-base-uncased")["bert.encoder.layer.5.output.LayerNorm.gamma"]),
}


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_ablation_teacher_loads_from_its_original_file(real, name):
    teacher = create_teacher(name, folder=real.weights_dir)  # as real weights: default file, else the hub cache
    key, original = SOURCES[name]
    assert not teacher.tiny and teacher.feature_dim == 32
    assert torch.equal(teacher.model.state_dict()[key], original(real))
    if teacher.spec.modality == "image":
        assert teacher.image_size == 32
        out = teacher(torch.randn(2, 3, 32, 32))
        assert out.pooled.shape == (2, 32)
        assert (out.logits is not None and out.logits.shape == (2, 1000)) == (name == "beitv2-ft")
    else:
        assert teacher.model.config.num_hidden_layers == 6
        ids = torch.tensor([[0 if name == "d2v2-text" else 101, 200, 300, 2 if name == "d2v2-text" else 102]] * 2)
        assert teacher(ids, torch.ones_like(ids)).pooled.shape == (2, 32)
    if name == "d2v2-image":
        assert len(teacher.model.blocks) == 8 and teacher.model.prenet_depth == 2


# ---------------------------------------------------------------------------------------------- students


@pytest.mark.parametrize("arch, text_source", [("mmd2v2_6", "d2v2-text"), ("mmd2v2_7", "d2v2-text"),
                                               ("mmd2v2_7_2", "d2v2-text"), ("smke", "bert")])
def test_students_start_from_the_original_files_at_size_tiny(real, arch, text_source):
    preset = get_preset(arch, "tiny")
    student, report = build_student(preset, init=True, weights_dir=real.weights_dir)
    picks = list(range(preset.config.n_specific))
    assert report == {"image": f"d2v2-image main blocks {picks}; front end = patch embedding + prenet blocks 0–1 "
                               "(frozen)", "text": f"{text_source} layers {picks}"}
    last = picks[-1]
    image = _release(real.weights_dir / "base_imagenet.pt")
    prenet = IMG + "context_encoder.blocks.1.mlp.fc1.weight"
    assert torch.equal(student.image_embed.prenet[1].mlp.fc1.weight, image[prenet])
    assert torch.equal(student.specific[last].image.attn.qkv.weight, image[f"blocks.{last}.attn.qkv.weight"])
    if text_source == "bert":
        text = _hub_file(real, "google-bert/bert-base-uncased")[f"bert.encoder.layer.{last}.intermediate.dense.weight"]
    else:
        text = _release(real.weights_dir / "nlp_base.pt")[f"blocks.{last}.mlp.fc1.weight"]
    assert torch.equal(student.specific[last].text.mlp.fc1.weight, text)
    ids = torch.randint(4, 300, (2, 12))
    out = student(torch.randn(2, 3, 32, 32), ids, torch.ones_like(ids))
    assert out["image_kd"].shape == out["text_kd"].shape == (2, 32)


def test_model_summary_knows_the_tiny_size(capsys):
    assert main(["model", "summary", "smke", "--size", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "smke (tiny): 6 modality-specific (separate attention) + 1 shared blocks, width 32, 2 heads" in out
    assert "image side from d2v2-image, text side from bert, tokenizer bert-base-uncased" in out


# ---------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("config, text_init", [("real_mmd2v2", "d2v2-text layers [0, 1, 2, 3, 4]"),
                                               ("real_smke", "bert layers [0, 1, 2, 3, 4, 5]")])
def test_real_config_trains_two_steps_through_the_cli(real, tmp_path, config, text_init):
    """``mmd2v2 train`` as a user runs it, in a shell with the fixture's environment: its own process, because
    huggingface_hub reads HF_HOME once, when first imported (here it already was), and transformers finds the
    config's tokenizer name through it."""
    argv = ["train", "--config", config, *real.overrides_for(config), "optim.steps=2",
            f"data.root={real.prepared['coco']}", f"run.out_dir={tmp_path}"]
    run = subprocess.run([sys.executable, "-m", "mmd2v2_core.cli", *argv], env={**os.environ, **real.env},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    final = tmp_path / "checkpoints" / "step_0000002"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == final.name
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert log[0]["kind"] == "init" and log[0]["image"].startswith("d2v2-image main blocks [0,")
    assert log[0]["text"] == text_init
    assert [row["step"] for row in log if row["kind"] == "train"] == [2]
    trained, image = load_file(final / "model.safetensors"), _release(real.weights_dir / "base_imagenet.pt")
    # the frozen front end is still the file's prenet; the first image layer started from main block 0 and moved
    prenet = IMG + "context_encoder.blocks.0.attn.qkv.weight"
    assert torch.equal(trained["student.image_embed.prenet.0.attn.qkv.weight"], image[prenet])
    assert not torch.equal(trained["student.specific.0.image.attn.qkv.weight"], image["blocks.0.attn.qkv.weight"])
