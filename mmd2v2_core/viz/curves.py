"""Training curves of several runs: training loss and validation mean recall against steps."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..data.index import read_log_lines  # noqa: E402


def plot_training_curves(runs: dict[str, Path], out: Path) -> Path:
    """``runs``: label → metrics.jsonl. Left: training loss (log scale: the objectives differ by 20×);
    right: val mean R@K against steps — or, when each run was validated once, one bar per run."""
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.15]})
    finals = []
    for label, path in runs.items():
        rows = read_log_lines(Path(path))
        train = [r for r in rows if r["kind"] == "train"]
        val = [r for r in rows if r["kind"] == "val"]
        line, = loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], marker=".", label=label)
        finals.append((label, val, line.get_color()))
    loss_ax.set(xlabel="step", ylabel="training loss", yscale="log", title="training loss (each run's own objective)")
    if all(len(val) <= 1 for _, val, _ in finals):
        shown = [(label, val[-1], color) for label, val, color in finals if val]
        val_ax.barh(range(len(shown)), [v["mean"] for _, v, _ in shown], color=[c for _, _, c in shown])
        val_ax.set_yticks(range(len(shown)), [label for label, _, _ in shown], fontsize=7)
        val_ax.invert_yaxis()
        step = shown[0][1]["step"] if shown else 0
        val_ax.set(xlabel="val mean R@1/5/10 (%)", title=f"validation retrieval after step {step}")
    else:
        for label, val, color in finals:
            val_ax.plot([r["step"] for r in val], [r["mean"] for r in val], marker="o", color=color, label=label)
        val_ax.set(xlabel="step", ylabel="val mean R@1/5/10 (%)", title="validation retrieval")
        val_ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
