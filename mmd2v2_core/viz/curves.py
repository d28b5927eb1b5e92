"""Training curves of several runs: training loss and validation mean recall against steps."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_training_curves(runs: dict[str, Path], out: Path) -> Path:
    """``runs``: label → metrics.jsonl. Left: training loss; right: val mean R@K at each validated step."""
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    for label, path in runs.items():
        rows = read_metrics(path)
        train = [r for r in rows if r["kind"] == "train"]
        val = [r for r in rows if r["kind"] == "val"]
        line, = loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], label=label)
        val_ax.plot([r["step"] for r in val], [r["mean"] for r in val], marker="o", color=line.get_color(), label=label)
    loss_ax.set(xlabel="step", ylabel="training loss", title="training loss (each run's own objective)")
    val_ax.set(xlabel="step", ylabel="val mean R@1/5/10 (%)", title="validation retrieval")
    val_ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
