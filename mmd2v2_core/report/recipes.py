"""What each run trains: its recipe read off the resolved training config it runs with (never a copy)."""

from __future__ import annotations

from pathlib import Path

from ..config import TrainConfig
from ..student.presets import preset_from_config

SEED_LAYOUTS = {"mmd2v2_6": "5+1", "mmd2v2_7": "6+1", "mmd2v2_7_2": "5+2", "smke": "6-block towers + 1"}


def describe(cfg: TrainConfig) -> dict[str, str]:
    """One run's recipe in words: student, layout, attention, teacher, target, loss terms and weights, schedule."""
    student = preset_from_config(cfg.student).config
    t, loss, o = cfg.teacher, cfg.loss, cfg.optim
    teacher = "none" if t.name == "none" else f"{t.name}{' (random-init)' if t.tiny else ''}"
    target = "-" if t.name == "none" else (f"{t.target}, {'whitened to ' + str(student.width) if t.whiten else 'raw'}"
                                           f", {t.image_size or 'default'} px")
    terms = []
    if loss.kd in ("mse", "cosine"):
        terms.append(f"{loss.kd_weight:g} × KD {loss.kd.upper() if loss.kd == 'mse' else loss.kd} (image + text)")
    elif loss.kd == "cdl":
        terms.append(f"{loss.kd_weight:g} × contrastive distillation"
                     + (f" + bank {loss.memory_bank:,}" if loss.memory_bank else ""))
    elif loss.kd == "shre":
        terms.append(f"{loss.kd_weight:g} × KL on teacher logits")
    if loss.itc_weight:
        terms.append(f"{loss.itc_weight:g} × ITC")
    layout = f"{student.n_specific}+{student.n_shared}"
    seed_layout = SEED_LAYOUTS.get(cfg.student.preset)
    return {"student": f"{cfg.student.preset} ({cfg.student.size})",
            "layout": layout + (f" (seed {seed_layout})" if seed_layout and seed_layout != layout else ""),
            "attention": student.attention, "teacher": teacher, "target": target, "loss": " + ".join(terms),
            "steps × batch": f"{o.steps} × {o.batch_size}", "peak lr": f"{o.lr * o.batch_size / 256:.1e}",
            "views": str(cfg.data.rendering_views), "run folder": Path(cfg.run.out_dir).name}


def recipe_markdown(configs: dict[str, TrainConfig]) -> str:
    """A table with one row per run (label → its resolved config)."""
    rows = {label: describe(cfg) for label, cfg in configs.items()}
    keys = list(next(iter(rows.values())))
    lines = ["| run | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {label} | " + " | ".join(row[k] for k in keys) + " |" for label, row in rows.items()]
    return "\n".join(lines)
