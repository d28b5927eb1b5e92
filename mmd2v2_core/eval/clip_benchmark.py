"""The kit's students in CLIP_benchmark (LAION's ``clip-benchmark``): a model type, and test splits in its layout.

CLIP_benchmark loads a model with ``clip_benchmark.models.TYPE2FUNC[model_type](model_name=…, pretrained=…,
cache_dir=…, device=…)``, which returns ``(model, transform, tokenizer)``: the model's ``encode_image(images)`` and
``encode_text(tokens)``, a PIL → tensor transform, and a tokenizer from a list of captions to one tensor. ``register()``
adds the type ``mmd2v2``, whose ``pretrained`` is an exported student folder (``mmd2v2 export``) or a training
checkpoint folder; then any dataset CLIP_benchmark knows (zero-shot retrieval on COCO / Flickr30K / XTD,
classification on ImageNet, CIFAR, VTAB …) scores a kit student with CLIP_benchmark's own code
(``mmd2v2 eval clip-benchmark``). ``write_flickr_layout`` writes a kit test split as its Flickr loader reads it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..data.index import read_split, write_text_atomic
from ..errors import ConfigError, DataError
from .embed import student_inputs

MODEL_TYPE = "mmd2v2"


class ClipBenchmarkModel(nn.Module):
    """A student with CLIP's encoder signatures: captions arrive as one tensor of token ids, padding where the
    tokenizer put its pad id."""

    def __init__(self, student: nn.Module, pad_id: int):
        super().__init__()
        self.student, self.pad_id = student, pad_id

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.student.encode_image(images)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.student.encode_text(input_ids, (input_ids != self.pad_id).long())


def load_student_any(path: str | Path):
    """(student, tokenizer name or folder) of an exported folder or a training checkpoint."""
    from ..export import MODEL_TYPE as EXPORTED, load_student
    from ..train.checkpoint import load_trained_student

    path = Path(path)
    config = path / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("model_type") == EXPORTED:
        return load_student(path), str(path)
    student, cfg = load_trained_student(path)
    return student, cfg.data.tokenizer


def load_mmd2v2(model_name: str = "", pretrained: str = "", cache_dir: str | None = None, device="cpu"):
    """CLIP_benchmark's loader signature: ``pretrained`` (or ``model_name``) is the student's folder."""
    student, tokenizer_name = load_student_any(pretrained or model_name)
    transform, tokenizer = student_inputs(student, tokenizer_name)
    model = ClipBenchmarkModel(student.to(device).eval(), tokenizer.pad_id)
    return model, transform, lambda captions: tokenizer(list(captions))["input_ids"]


def register() -> None:
    """Make ``--model_type mmd2v2`` known to CLIP_benchmark (its CLI reads the same list and table)."""
    try:
        from clip_benchmark import models
    except ImportError:
        raise ConfigError("CLIP_benchmark is not installed: pip install 'mmd2v2[bench]' (or clip-benchmark)") from None
    models.TYPE2FUNC[MODEL_TYPE] = load_mmd2v2
    if MODEL_TYPE not in models.MODEL_TYPES:
        models.MODEL_TYPES.append(MODEL_TYPE)


def write_flickr_layout(index_dir: str | Path, split: str, out_dir: str | Path) -> Path:
    """A prepared split as CLIP_benchmark's ``flickr30k`` dataset reads it: the images (linked) in ``out_dir`` under
    ``.jpg`` names, and ``flickr30k_<split>_karpathy.txt`` (a header, then ``image.jpg,caption`` per caption)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["image,caption"]
    for record in read_split(index_dir, split):
        name = f"{record.image_id}.jpg"  # the loader splits each line at ".jpg,"; decoding reads the file's content
        link = out_dir / name
        if not link.exists():
            os.symlink(record.path.resolve(), link)
        for caption in record.captions:
            if "\n" in caption or ".jpg," in caption:
                raise DataError(f"{index_dir}: image {record.image_id}: caption {caption!r:.60} cannot be written "
                                "in CLIP_benchmark's one-line-per-caption format")
            lines.append(f"{name},{caption}")
    path = out_dir / f"flickr30k_{split}_karpathy.txt"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def run_clip_benchmark(checkpoint: str | Path, dataset: str, dataset_root: str | Path, output: str | Path,
                       split: str = "test", batch_size: int = 64, recall_k=(1, 5, 10), amp: bool = False,
                       annotation_file: str | None = None) -> dict:
    """CLIP_benchmark's own evaluation (its CLI's ``eval``) of a kit student on one dataset; its result JSON."""
    register()
    from clip_benchmark import cli

    argv = ["clip_benchmark", "eval", "--model_type", MODEL_TYPE, "--model", MODEL_TYPE, "--pretrained",
            str(checkpoint), "--dataset", dataset, "--dataset_root", str(dataset_root), "--split", split,
            "--batch_size", str(batch_size), "--num_workers", "0", "--output", str(output), "--recall_k",
            *map(str, recall_k), *([] if amp else ["--no_amp"]),
            *(["--annotation_file", str(annotation_file)] if annotation_file else [])]
    if not Path(dataset_root).is_dir():
        raise DataError(f"--dataset-root {dataset_root}: folder not found")
    saved = sys.argv
    sys.argv = argv
    try:
        with _offline():
            cli.main()
    except ValueError as exc:  # CLIP_benchmark's own refusals: an unknown dataset, language or split
        raise DataError(f"CLIP_benchmark, dataset {dataset!r}: {exc}") from None
    except RuntimeError as exc:  # torchvision's datasets, which may not download here: "Dataset not found …"
        raise DataError(f"--dataset-root {dataset_root}: {str(exc).splitlines()[0]} (CLIP_benchmark's {dataset} "
                        "loader; the kit passes download=False: put the dataset's files there)") from None
    except OSError as exc:  # a file the loader lists but cannot open (images deleted after the layout was written)
        raise DataError(f"{exc.filename or dataset_root}: {exc.strerror or exc} (CLIP_benchmark's {dataset} "
                        "loader)") from None
    finally:
        sys.argv = saved
    return json.loads(Path(output).read_text())


@contextmanager
def _offline():
    """CLIP_benchmark fetches what a dataset root lacks: ``wget`` through a shell (annotations, COCO's images) and
    torchvision's ``download=True``. Within this, a file it would fetch is an error naming the file and where it
    comes from, no download starts, and no empty file is left for the next run to trust."""
    from clip_benchmark import cli
    from clip_benchmark.datasets import builder

    def refuse(command: str, **_) -> None:
        target, url = re.search(r"--output-document=(\S+)", command), re.search(r"https?://\S+", command)
        raise DataError(f"{target[1] if target else command}: missing; CLIP_benchmark would download it"
                        + (f" from {url[0]}" if url else "") + ": put it there (the kit starts no download)")

    build, call = cli.build_dataset, builder.call
    cli.build_dataset = lambda *args, **kw: build(*args, **{**kw, "download": False})
    builder.call = refuse
    try:
        yield
    finally:
        cli.build_dataset, builder.call = build, call
