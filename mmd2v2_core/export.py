"""A trained student as a self-contained folder in Hugging Face Hub conventions, and loading it back.

``export_student(checkpoint, out)`` writes what a colleague needs and nothing else:

* ``model.safetensors``: the retrieval model's weights (no optimiser, no teacher, no loss temperatures or memory bank);
* ``config.json``: the student's architecture (``StudentConfig``), its image preprocessing and caption length, and
  where it came from (kit version, recipe);
* the caption tokenizer's files (``tokenizer_config.json``, ``vocab.txt`` …, written by ``save_pretrained``);
* ``README.md``: a model card with Hub metadata, the recipe, teacher, data and steps, and the run's test results
  with their protocol.

The folder can be pushed as it is (``huggingface-cli upload <repo> DIR``). ``load_student(DIR)`` gives back the
model, ready for ``encode_image`` / ``encode_text``, without the run folder or the training config machinery;
``load_inputs(DIR)`` its image transform and tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_model

from . import __version__
from .data.index import write_text_atomic
from .data.tokenizer import CaptionTokenizer
from .data.transforms import ImageTransformConfig, eval_transform
from .errors import DataError
from .student.model import MultimodalStudent, StudentConfig
from .train.checkpoint import load_trained_student, read_weights_into

MODEL_TYPE = "mmd2v2-student"


def _results_of(checkpoint: Path) -> list[dict]:
    """The study's test results of the run a checkpoint belongs to (``<run_dir>/results/<run>/<folder>-*.json``)."""
    out_dir = checkpoint.parent.parent  # <run_dir>/runs/<run>/<folder>/checkpoints/<step>
    results = out_dir.parent.parent.parent / "results" / out_dir.parent.name
    return [json.loads(p.read_text()) for p in sorted(results.glob(f"{out_dir.name}-*.json"))]


def _card(cfg, student: MultimodalStudent, results: list[dict], checkpoint: Path) -> str:
    s, t, o = cfg.student, cfg.teacher, cfg.optim
    rows = [f"| {r['dataset']} | {r['split']} | {r['images']:,} | {r['captions']:,} | "
            + " | ".join(f"{r['metrics'][k]:.2f}" for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5",
                                                           "t2i_r10", "mean"))
            + f" | {r.get('precision', 'fp32')} |" for r in results]
    data = [Path(cfg.data.root).name, *cfg.data.sources]
    lines = [
        "---", "library_name: mmd2v2", f"tags: [image-text-retrieval, knowledge-distillation, {s.preset}]",
        f"datasets: [{', '.join(data)}]", "metrics: [recall]", "---", "",
        f"# {s.preset} student ({s.size} size), distilled with the MM-D2V2 study kit", "",
        "An image–text model: modality-specific transformer blocks (separate self-attention), then shared blocks; "
        "`encode_image` and `encode_text` give L2-normalised embeddings for retrieval.", "",
        "## Recipe", "",
        f"- Layout: {s.preset}, attention {student.cfg.attention}, width {student.cfg.width}, "
        f"{student.cfg.depth} blocks of which {student.cfg.n_shared} shared",
        f"- Teacher: {t.name} ({t.target} target){' (tiny random-init)' if t.tiny else ''}",
        f"- Objective: KD {cfg.loss.kd} × {cfg.loss.kd_weight:g}, ITC × {cfg.loss.itc_weight:g}"
        + (f", memory bank {cfg.loss.memory_bank:,}" if cfg.loss.memory_bank else ""),
        f"- Data: {' + '.join(data)} (train split)",
        f"- Training: {o.steps:,} steps × {o.batch_size} pairs, lr {o.lr:g}, {o.precision}, seed {o.seed}",
        f"- From: `{checkpoint}` · kit version {__version__}", "",
        "## Zero-shot retrieval", "",
    ]
    if rows:
        lines += ["Protocol: every test image against every caption of the split (cosine similarity of the "
                  "embeddings); image→text R@K counts an image as found when any of its captions ranks in the top K, "
                  "text→image R@K a caption when its image does.", "",
                  "| test set | split | images | captions | I→T R@1 | R@5 | R@10 | T→I R@1 | R@5 | R@10 | mean | "
                  "precision |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|", *rows]
    else:
        lines.append("No test results were found beside the checkpoint (score it with `mmd2v2 eval retrieval`).")
    lines += ["", "## Use", "", "```python", "from mmd2v2_core.export import load_inputs, load_student", "",
              "model = load_student(\"this-folder\")", "transform, tokenizer = load_inputs(\"this-folder\")",
              "image = model.encode_image(transform(pil_image)[None])",
              "text = model.encode_text(**tokenizer([\"a caption\"]))", "```", ""]
    return "\n".join(lines)


def export_student(checkpoint: str | Path, out: str | Path, results: list[dict] | None = None) -> Path:
    """Write the exported folder of a training checkpoint; ``results`` default to the study's for its run."""
    checkpoint, out = Path(checkpoint), Path(out)
    student, cfg = load_trained_student(checkpoint)
    results = _results_of(checkpoint) if results is None else results
    out.mkdir(parents=True, exist_ok=True)
    save_model(student, str(out / "model.safetensors"), metadata={"format": "pt"})  # shared attention: stored once
    tokenizer = CaptionTokenizer(cfg.data.tokenizer, max_length=student.cfg.max_text_len)
    tokenizer.hf.save_pretrained(out)
    view = ImageTransformConfig(size=student.cfg.image_size)
    config = {"model_type": MODEL_TYPE, "architectures": ["MultimodalStudent"], "mmd2v2_version": __version__,
              "student": student.config_dict(),
              "image": {"size": view.size, "mean": list(view.mean), "std": list(view.std)},
              "text": {"max_length": student.cfg.max_text_len, "tokenizer": cfg.data.tokenizer},
              "recipe": {"preset": cfg.student.preset, "teacher": cfg.teacher.name, "steps": cfg.optim.steps,
                         "batch_size": cfg.optim.batch_size, "seed": cfg.optim.seed}}
    write_text_atomic(out / "config.json", json.dumps(config, indent=2) + "\n")
    write_text_atomic(out / "README.md", _card(cfg, student, results, checkpoint))
    return out


def _config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{folder}: not an exported student (no config.json; `mmd2v2 export` writes one)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if config.get("model_type") != MODEL_TYPE:
        raise DataError(f"{path}: model_type {config.get('model_type')!r}, expected {MODEL_TYPE!r}")
    return config


def load_student(folder: str | Path, device: str | torch.device = "cpu") -> MultimodalStudent:
    """The exported student, in eval mode, with its weights."""
    folder = Path(folder)
    config = _config(folder)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config["student"].items()}
    try:
        student = MultimodalStudent(StudentConfig(**fields))
    except TypeError as exc:
        raise DataError(f"{folder / 'config.json'}: student: {exc} (exported by another kit version?)") from None
    missing, unexpected = read_weights_into(student, folder / "model.safetensors")
    if missing or unexpected:
        raise DataError(f"{folder / 'model.safetensors'}: does not fit config.json: missing {sorted(missing)[:5]}, "
                        f"unexpected {sorted(unexpected)[:5]}")
    return student.eval().to(device)


def load_inputs(folder: str | Path):
    """(image transform: PIL image → tensor, tokenizer: captions → input_ids and attention_mask) of an export."""
    folder = Path(folder)
    config = _config(folder)
    view = ImageTransformConfig(size=config["image"]["size"], mean=tuple(config["image"]["mean"]),
                                std=tuple(config["image"]["std"]))
    return eval_transform(view), CaptionTokenizer(str(folder), max_length=config["text"]["max_length"])

