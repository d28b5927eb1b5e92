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

An export proves what it holds: ``config.json`` records the SHA-256 of the weights and of every tokenizer file, and
both loaders check them first (a changed byte, a swapped or stray tokenizer file is an error naming the file), then
the tensors' shapes against the config, then that every weight is finite. ``--out`` is a new or empty folder, or
``--overwrite``, which replaces only an earlier export's own files and names any other file it leaves there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_model

from . import __version__
from .data.index import write_text_atomic
from .data.tokenizer import CaptionTokenizer
from .data.transforms import ImageTransformConfig, eval_transform
from .errors import ConfigError, DataError, few_keys
from .student.model import MultimodalStudent, StudentConfig
from .train.checkpoint import load_trained_student, read_weights_into

MODEL_TYPE = "mmd2v2-student"
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
# files a Hugging Face tokenizer reads from its folder: one that config.json does not list would change the tokenizer
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja"}


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _clear(out: Path, overwrite: bool) -> list[str]:
    """Make ``out`` ready for an export: a new or empty folder, or (``overwrite``) one whose earlier export's own files
    are removed. Returns the files left there that are not an export's own; refuses a file the export would write
    over that an earlier export did not write (a user's README.md, say)."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise DataError(f"{out}: not a folder (--out is the folder to write)")
    present = {p.name for p in out.iterdir()}
    if not present:
        return []
    if not overwrite:
        raise DataError(f"--out {out}: not empty, holds {few_keys(sorted(present), 5)}: export into a new or empty "
                        "folder, or pass --overwrite to replace an earlier export there")
    earlier = {}
    with contextlib.suppress(OSError, ValueError):
        earlier = json.loads((out / CONFIG).read_text())
    own = {WEIGHTS, CONFIG, CARD, *earlier.get("files", {})} if earlier.get("model_type") == MODEL_TYPE else set()
    clash = (present - own) & {WEIGHTS, CONFIG, CARD, *TOKENIZER_FILES}
    if clash:
        raise DataError(f"--out {out}: holds {few_keys(sorted(clash), 5)}, which no earlier export wrote and this one "
                        "would replace; export into another folder")
    for name in present & own:
        (out / name).unlink()
    return sorted(present - own)


def _check_finite(student: torch.nn.Module, where: Path) -> None:
    bad = [k for k, v in student.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise DataError(f"{where}: non-finite weights (NaN or inf) in {few_keys(sorted(bad), 5)}")


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


def export_student(checkpoint: str | Path, out: str | Path, results: list[dict] | None = None,
                   overwrite: bool = False) -> tuple[Path, list[str]]:
    """Write the exported folder of a training checkpoint; ``results`` default to the study's for its run. Returns
    the folder and the files in it that are not the export's own (left as they were; ``_clear``)."""
    checkpoint, out = Path(checkpoint), Path(out)
    student, cfg = load_trained_student(checkpoint)
    _check_finite(student, checkpoint / WEIGHTS)
    results = _results_of(checkpoint) if results is None else results
    others = _clear(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    save_model(student, str(out / WEIGHTS), metadata={"format": "pt"})  # shared attention: stored once
    tokenizer = CaptionTokenizer(cfg.data.tokenizer, max_length=student.cfg.max_text_len)
    written = [Path(f).name for f in tokenizer.hf.save_pretrained(out) if Path(f).parent == out and Path(f).is_file()]
    view = ImageTransformConfig(size=student.cfg.image_size)
    config = {"model_type": MODEL_TYPE, "architectures": ["MultimodalStudent"], "mmd2v2_version": __version__,
              "student": student.config_dict(),
              "image": {"size": view.size, "mean": list(view.mean), "std": list(view.std)},
              "text": {"max_length": student.cfg.max_text_len, "tokenizer": cfg.data.tokenizer},
              "recipe": {"preset": cfg.student.preset, "teacher": cfg.teacher.name, "steps": cfg.optim.steps,
                         "batch_size": cfg.optim.batch_size, "seed": cfg.optim.seed},
              "files": {name: file_digest(out / name) for name in sorted({WEIGHTS, *written})}}
    write_text_atomic(out / CONFIG, json.dumps(config, indent=2) + "\n")
    write_text_atomic(out / CARD, _card(cfg, student, results, checkpoint))
    return out, others


def _config(folder: Path) -> dict:
    """An export's config.json, after checking every file it lists against its digest and that no tokenizer file
    it does not list lies beside them."""
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{folder}: not an exported student (no config.json; `mmd2v2 export` writes one)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if config.get("model_type") != MODEL_TYPE:
        raise DataError(f"{path}: model_type {config.get('model_type')!r}, expected {MODEL_TYPE!r}")
    files = config.get("files")
    if not isinstance(files, dict) or WEIGHTS not in files:
        raise DataError(f"{path}: no file digests ('files'): exported by an older kit version; export it again")
    for name, digest in files.items():
        if not (folder / name).is_file():
            raise DataError(f"{folder / name}: missing (config.json lists it)")
        if file_digest(folder / name) != digest:
            raise DataError(f"{folder / name}: changed since the export (its SHA-256 is not the one config.json "
                            "records): export the checkpoint again")
    stray = {p.name for p in folder.iterdir()} & TOKENIZER_FILES - set(files)
    if stray:
        raise DataError(f"{folder}: tokenizer file(s) {few_keys(sorted(stray), 5)} not part of the export (config.json "
                        "does not list them), and the tokenizer would read them: remove them or export again")
    return config


def load_student(folder: str | Path, device: str | torch.device = "cpu") -> MultimodalStudent:
    """The exported student, in eval mode, with its weights."""
    folder = Path(folder)
    config = _config(folder)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config["student"].items()}
    try:
        student = MultimodalStudent(StudentConfig(**fields))
    except (TypeError, ConfigError) as exc:
        raise DataError(f"{folder / CONFIG}: student: {exc} (exported by another kit version?)") from None
    _check_shapes(student, folder / WEIGHTS)
    missing, unexpected = read_weights_into(student, folder / WEIGHTS)
    if missing or unexpected:
        raise DataError(f"{folder / WEIGHTS}: does not fit config.json: missing {sorted(missing)[:5]}, "
                        f"unexpected {sorted(unexpected)[:5]}")
    _check_finite(student, folder / WEIGHTS)
    return student.eval().to(device)


def _check_shapes(student: MultimodalStudent, weights: Path) -> None:
    """Every stored tensor's shape against the model config.json builds, before anything loads."""
    expected = {k: tuple(v.shape) for k, v in student.state_dict().items()}
    try:
        with safe_open(str(weights), "pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for a truncated or foreign file
        raise DataError(f"{weights}: unreadable ({exc})") from None
    wrong = [f"{k} {stored[k]} (config.json: {expected[k]})" for k in sorted(stored.keys() & expected.keys())
             if stored[k] != expected[k]]
    if wrong:
        raise DataError(f"{weights}: tensor shapes do not fit config.json: {'; '.join(wrong[:3])}"
                        + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""))


def load_inputs(folder: str | Path):
    """(image transform: PIL image → tensor, tokenizer: captions → input_ids and attention_mask) of an export."""
    folder = Path(folder)
    config = _config(folder)
    view = ImageTransformConfig(size=config["image"]["size"], mean=tuple(config["image"]["mean"]),
                                std=tuple(config["image"]["std"]))
    return eval_transform(view), CaptionTokenizer(str(folder), max_length=config["text"]["max_length"])

