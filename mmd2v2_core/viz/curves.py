"""Training curves: one panel per run, its loss terms against steps for every seed (and validation recall when
the run was validated)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..data.index import read_log_lines  # noqa: E402

TERMS = {"loss": "-", "kd": "--", "itc": ":"}  # the objective and the two terms every recipe is built from


def plot_training_curves(runs: dict[str, dict[int, Path]], out: Path, columns: int = 3) -> Path:
    """``runs``: label → {seed: metrics.jsonl}. Per panel: the total loss and its KD and ITC terms (log scale:
    they differ by 20×), one colour per seed; validation R@1 (image→text and text→image averaged, what the convergence check reads) on a right
    axis when logged."""
    rows = math.ceil(len(runs) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.1 * rows), squeeze=False)
    for ax, (label, seeds) in zip(axes.flat, runs.items()):
        val_ax = None
        for i, (seed, path) in enumerate(sorted(seeds.items())):
            logged = read_log_lines(Path(path))
            train = [r for r in logged if r["kind"] == "train"]
            for term, style in TERMS.items():
                if train and term in train[0]:
                    ax.plot([r["step"] for r in train], [r[term] for r in train], style, color=f"C{i}",
                            label=f"{term} (seed {seed})" if i == 0 or term == "loss" else None)
            val = [r for r in logged if r["kind"] == "val"]
            if len(val) > 1:
                val_ax = val_ax or ax.twinx()
                val_ax.plot([r["step"] for r in val], [(r["i2t_r1"] + r["t2i_r1"]) / 2 for r in val], "o-",
                            color=f"C{i}", alpha=0.5)
                val_ax.set_ylabel("val R@1 (%)", fontsize=7)
        ax.set(yscale="log", xlabel="step", title=label)
        ax.title.set_fontsize(8)
        ax.legend(fontsize=6)
    for ax in axes.flat[len(runs):]:
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
