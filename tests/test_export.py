"""A trained student exported as a portable folder and loaded in a fresh process: the same embeddings, bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mmd2v2_core.cli import main
from mmd2v2_core.config import load_config
from mmd2v2_core.data.datasets import RetrievalSplit
from mmd2v2_core.errors import DataError
from mmd2v2_core.eval.embed import embed_split, student_inputs
from mmd2v2_core.export import load_student
from mmd2v2_core.train.checkpoint import load_trained_student
from mmd2v2_core.train.loop import train

# In a fresh process: only the exported folder, no run folder, no training config.
EMBED = """
import sys, torch
from mmd2v2_core.data.datasets import RetrievalSplit
from mmd2v2_core.eval.embed import embed_split
from mmd2v2_core.export import load_inputs, load_student
model = load_student(sys.argv[1])
transform, tokenizer = load_inputs(sys.argv[1])
emb = embed_split(model, RetrievalSplit.from_index(sys.argv[2], "val"), transform, tokenizer)
torch.save({"image": emb.image, "text": emb.text}, sys.argv[3])
"""


@pytest.fixture(scope="module")
def checkpoint(smoke_data, tmp_path_factory):
    """A smoke S-SMKE student with shared attention (one module under two names), trained 4 steps."""
    out = tmp_path_factory.mktemp("run") / "runs" / "smke" / "seed0-abc"
    cfg = load_config("smoke", [f"data.root={smoke_data['synth-coco']}", f"run.out_dir={out}", "optim.steps=4",
                                "student.preset=smke", "student.attention=shared", "teacher.tiny=true",
                                "loss.kd=cdl", "loss.itc_weight=1.0", "run.val_every=0"])
    train(cfg)
    step = out / "checkpoints" / "step_0000004"
    results = out.parent.parent.parent / "results" / "smke"  # where a study keeps the run's scores
    results.mkdir(parents=True)
    metrics = {k: 10.0 + i for i, k in enumerate(("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mean"))}
    (results / "seed0-abc-synth-coco.json").write_text(json.dumps(
        {"dataset": "synth-coco", "split": "test", "images": 50, "captions": 250, "metrics": metrics,
         "precision": "fp32"}))
    return step


def test_export_loads_in_a_fresh_process_with_identical_embeddings(checkpoint, smoke_data, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "export")]) == 0
    folder = tmp_path / "export"
    names = {p.name for p in folder.iterdir()}
    assert names >= {"model.safetensors", "config.json", "README.md", "tokenizer_config.json"}
    assert names & {"tokenizer.json", "vocab.txt"}  # the fast tokenizer's file, or the vocabulary
    done = subprocess.run([sys.executable, "-c", EMBED, str(folder), str(smoke_data["synth-coco"]),
                           str(tmp_path / "fresh.pt")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "model of type" not in done.stderr, done.stderr  # transformers on config.json's model_type
    fresh = torch.load(tmp_path / "fresh.pt")
    student, cfg = load_trained_student(checkpoint)
    transform, tokenizer = student_inputs(student, cfg.data.tokenizer)
    trained = embed_split(student, RetrievalSplit.from_index(smoke_data["synth-coco"], "val"), transform, tokenizer)
    assert torch.equal(fresh["image"], trained.image) and torch.equal(fresh["text"], trained.text)


def test_the_folder_holds_the_retrieval_model_only_and_a_model_card(checkpoint, tmp_path):
    main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "export")])
    student = load_student(tmp_path / "export")
    exported = sum(p.numel() for p in student.parameters()) + sum(b.numel() for b in student.buffers())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "export" / "model.safetensors"), "pt") as f:
        assert not any(k.startswith(("objective.", "student.")) for k in f.keys())  # no loss state, no wrapper
        assert sum(f.get_tensor(k).numel() for k in f.keys()) <= exported
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["model_type"] == "mmd2v2-student" and config["student"]["attention"] == "shared"
    card = (tmp_path / "export" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: mmd2v2\n")
    assert "- Teacher: efficientnet-lite0 (pooled target) (tiny random-init)" in card
    assert "| synth-coco | test | 50 | 250 | 10.00 | 11.00 | 12.00 | 13.00 | 14.00 | 15.00 | 16.00 | fp32 |" in card


def test_a_folder_that_is_not_an_export_is_named(checkpoint, tmp_path):
    with pytest.raises(DataError, match="not an exported student"):
        load_student(tmp_path)
    main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "export")])
    (tmp_path / "export" / "model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match="model.safetensors: changed since the export"):  # digest, before reading
        load_student(tmp_path / "export")
