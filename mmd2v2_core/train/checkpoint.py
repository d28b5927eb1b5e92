"""Step checkpoints that survive being killed at any moment, and resuming from them.

A checkpoint is a folder ``<out_dir>/checkpoints/step_0000200/`` holding

* ``model.safetensors`` — the student's (and the loss module's) weights; never the teacher's;
* ``state.pt`` — optimiser, scheduler, scaler, RNG states, the step (which is the data position), the
  best validation score; plain tensors and numbers, loaded with ``torch.load(weights_only=True)``;
* ``config.yaml`` — the resolved training configuration; ``student.json`` — the student's architecture,
  so evaluation can rebuild the model without the teacher or the data.

It is written into a temporary folder and renamed into place; ``latest`` (a one-line file) is then
replaced atomically. A kill during a save leaves a ``.tmp`` folder that is ignored and cleaned up,
and ``latest`` still names the previous complete checkpoint. A save that fails (a full disk) removes its
``.tmp`` folder at once and stops with an error saying why, the free space, and which checkpoint is intact.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from ..config import TrainConfig, from_dict
from ..data.index import write_text_atomic
from ..errors import DataError
from ..student.model import MultimodalStudent, StudentConfig
from ..student.presets import preset_from_config
from ..teachers.checkpoints import unpickling_refusal
from .objective import Objective, Trainable

LATEST = "latest"
# What the writers raise when the disk fills: safetensors its own error, torch.save a RuntimeError of its stream
# writer (without an errno), plain files OSError.
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def rng_state() -> dict:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_version": random.getstate()[0],
             "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), None))
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out_dir: str | Path, step: int, model: torch.nn.Module, state: dict, config_yaml: str,
                    student_config: dict, keep: int = 2) -> Path:
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".step_{step:07d}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        (tmp / "config.yaml").write_text(config_yaml)
        (tmp / "student.json").write_text(json.dumps(student_config, indent=2) + "\n")
        for f in tmp.iterdir():  # the data must be on disk before the rename makes the folder visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except WRITE_ERRORS as exc:
        message = _not_saved(final, exc)  # measures the free space before the cleanup frees some
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(message) from None
    write_text_atomic(root / LATEST, final.name + "\n")
    _prune(root, keep, protect={final.name, _best_name(root)})
    return final


def _not_saved(final: Path, exc: Exception) -> str:
    free = shutil.disk_usage(final.parent).free
    reason = "no space left on the disk" if free < 2**20 or "No space left" in str(exc) else \
        (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    latest = final.parent / LATEST
    kept = f"the previous checkpoint, {latest.read_text().strip()}, is intact" if latest.is_file() else \
        "there is no earlier checkpoint"
    return f"{final}: checkpoint not saved: {reason} ({free / 2**20:,.0f} MiB free there); {kept}"


def _best_name(root: Path) -> str | None:
    best = root / "best"
    return best.read_text().strip() if best.is_file() else None


def mark_best(out_dir: str | Path, checkpoint: Path) -> None:
    write_text_atomic(checkpoint_root(out_dir) / "best", checkpoint.name + "\n")


def _prune(root: Path, keep: int, protect: set) -> None:
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[:-keep]:
        if old.name not in protect:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob(".step_*.tmp*"):  # from a save that was killed
        shutil.rmtree(leftover, ignore_errors=True)


def find_checkpoint(out_dir: str | Path, resume: str | None) -> Path | None:
    """``latest`` → the newest complete checkpoint of this run (None if there is none yet); a path → it."""
    if not resume:
        return None
    if resume == LATEST:
        pointer = checkpoint_root(out_dir) / LATEST
        if not pointer.is_file():
            return None
        path = checkpoint_root(out_dir) / pointer.read_text().strip()
    else:
        path = Path(resume)
    for name in ("model.safetensors", "state.pt"):
        if not (path / name).is_file():
            raise DataError(f"{path}: not a complete checkpoint (no {name})")
    return path


def read_weights_into(model: torch.nn.Module, file: Path) -> tuple[list[str], list[str]]:
    """Load a safetensors file into ``model``; (missing, unexpected) keys, or a DataError naming an unreadable file."""
    try:
        return load_model(model, str(file), strict=False)
    except Exception as exc:  # safetensors raises several types for truncated or foreign files
        raise DataError(f"{file}: unreadable or of another model ({exc})") from None


def load_checkpoint(path: Path, model: torch.nn.Module) -> dict:
    """Load weights into ``model`` (strictly) and return the training state."""
    missing, unexpected = read_weights_into(model, path / "model.safetensors")
    if missing or unexpected:
        raise DataError(f"{path}: checkpoint does not fit this model: missing {sorted(missing)[:5]}, "
                        f"unexpected {sorted(unexpected)[:5]} — another preset or configuration?")
    try:
        return torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refuses anything but tensors and plain containers
        raise unpickling_refusal(path / "state.pt", exc) from None
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0].split(". ")[0]  # torch appends paragraphs of advice
        raise DataError(f"{path / 'state.pt'}: unreadable training state ({reason})") from None


# Settings a resumed run must share with its checkpoint: they decide which weights exist and what they mean.
STRUCTURAL_KEYS = ("student.preset", "student.size", "student.attention", "student.depth", "student.n_shared",
                   "loss.kd", "loss.itc_hidden", "teacher.name", "teacher.target", "teacher.whiten")


def check_compatible(path: Path, config: dict) -> None:
    """Refuse to resume from a checkpoint trained with another architecture, naming the keys that differ."""
    try:
        saved = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return  # the weights check in load_checkpoint still guards the architecture

    def get(tree, key):
        section, name = key.split(".")
        return (tree.get(section) or {}).get(name) if isinstance(tree, dict) else None

    diff = [f"{k}={get(saved, k)} there, {get(config, k)} here" for k in STRUCTURAL_KEYS if get(saved, k) != get(config, k)]
    if diff:
        raise DataError(f"{path}: checkpoint was trained with another model: {'; '.join(diff)}. "
                        "Resume with its settings, or start a new run (another run.out_dir, or run.resume=null).")


def load_trained_student(path: str | Path) -> tuple[MultimodalStudent, TrainConfig]:
    """The student of a checkpoint folder, in eval mode, with the configuration it was trained with."""
    path = Path(path)
    if (path / "config.json").is_file() and not (path / "config.yaml").is_file():
        raise DataError(f"{path}: an exported student (config.json; `mmd2v2 export`), not a training checkpoint: "
                        "`mmd2v2 eval clip-benchmark` and `mmd2v2_core.export.load_student` read exports")
    for name in ("config.yaml", "student.json", "model.safetensors"):
        if not (path / name).is_file():
            raise DataError(f"{path}: not a training checkpoint (no {name})")
    cfg = from_dict(yaml.safe_load((path / "config.yaml").read_text()))
    student_cfg = StudentConfig(**{k: tuple(v) if isinstance(v, list) else v
                                   for k, v in json.loads((path / "student.json").read_text()).items()})
    student = MultimodalStudent(student_cfg)
    target_dim = student_cfg.kd_dim or student_cfg.num_classes
    load_checkpoint(path, Trainable(student, Objective(cfg, target_dim)))
    return student.eval(), cfg


def checkpoint_bytes(cfg: TrainConfig, target_dim: int) -> int:
    """The size of one checkpoint of ``cfg``'s run, from its parameter counts (built on the meta device: no memory, no
    weights read): every weight and buffer of the student and the loss module, and AdamW's two fp32 moments of each
    trainable parameter. ``target_dim``: the teacher target's width (the KD head's output)."""
    if cfg.loss.kd == "shre":
        derived = {"kd_dim": 0, "num_classes": target_dim}
    else:  # without a KD head the CLS itself regresses the target: its width is the student's
        derived = {"kd_dim": target_dim if preset_from_config(cfg.student).config.kd_head else 0}
    with torch.device("meta"):
        model = Trainable(MultimodalStudent(preset_from_config(cfg.student, **derived).config),
                          Objective(cfg, target_dim))
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return weights + sum(2 * 4 * p.numel() for p in model.parameters() if p.requires_grad)
