"""A grid of dataset images with one of their captions each."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; notebooks display the PNG
import matplotlib.pyplot as plt  # noqa: E402

from ..data.images import open_rgb  # noqa: E402
from ..data.index import ImageRecord  # noqa: E402


def plot_samples(rows: dict[str, list[ImageRecord]], out: Path, per_row: int = 4) -> Path:
    """One row of ``per_row`` images per named group, each titled with its first caption."""
    fig, axes = plt.subplots(len(rows), per_row, figsize=(3.2 * per_row, 4.3 * len(rows)), squeeze=False)
    for r, (name, records) in enumerate(rows.items()):
        for c in range(per_row):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(records):
                ax.imshow(open_rgb(records[c].path))
                ax.set_title(textwrap.fill(records[c].captions[0], 40), fontsize=7)
        axes[r][0].text(-0.08, 0.5, name, transform=axes[r][0].transAxes, rotation=90, va="center",
                        ha="right", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_drawings(drawings: dict[str, list[ImageRecord]], out: Path, scenes: int = 3) -> Path:
    """The same scenes (rows) in every drawing (columns, titled by name)."""
    fig, axes = plt.subplots(scenes, len(drawings), figsize=(1.6 * len(drawings), 1.7 * scenes), squeeze=False)
    for c, (name, records) in enumerate(drawings.items()):
        axes[0][c].set_title(name, fontsize=8)
        for r in range(scenes):
            axes[r][c].imshow(open_rgb(records[r].path))
            axes[r][c].axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
