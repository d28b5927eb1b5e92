"""Retrieval successes and failures as a picture: caption queries and their top images."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..data.images import open_rgb  # noqa: E402


def plot_gallery(browser, out: Path, per_kind: int = 3, top: int = 3) -> Path:
    """``per_kind`` caption queries whose true image came first, and ``per_kind`` whose did not."""
    fails = browser.failures("caption")
    fail_set = set(fails)
    wins = [j for j in range(len(browser.split.captions)) if j not in fail_set][:per_kind]
    rows = [("success", j) for j in wins] + [("failure", j) for j in fails[:per_kind]]
    fig, axes = plt.subplots(len(rows), top + 1, figsize=(2.3 * (top + 1), 2.3 * len(rows)), squeeze=False)
    for r, (kind, j) in enumerate(rows):
        answer = browser.by_caption(j)
        axes[r][0].axis("off")
        axes[r][0].text(0, 0.5, textwrap.fill(f"[{kind}, true rank {answer.true_rank}] {browser.split.captions[j]}", 28),
                        fontsize=7, va="center")
        for c, hit in enumerate(answer.hits[:top], start=1):
            ax = axes[r][c]
            ax.imshow(open_rgb(browser.split.records[hit.index].path))
            ax.set_xticks([])
            ax.set_yticks([])
            color = "tab:green" if hit.correct else "lightgray"
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(4)
            ax.set_title(f"{hit.score:.2f}{' ✔' if hit.correct else ''}", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_binding_failures(failures: list[dict], out: Path, columns: int = 4) -> Path:
    """Hard-negative items a model got wrong: each image with its caption, the negative, and both cosines (the text
    in a panel of its own under the image, as tall as the longest one needs)."""
    texts = ["\n".join(textwrap.fill(t, 44) if t else t for t in
                       f"caption {f['caption_score']:.3f}: {f['caption']}\n\nnegative {f['negative_score']:.3f}: "
                       f"{f['negative']}".split("\n")) for f in failures]
    rows, text_inches = -(-len(failures) // columns), 0.12 * max(t.count("\n") + 1 for t in texts)
    fig, axes = plt.subplots(2 * rows, columns, figsize=(3.2 * columns, (3.2 + text_inches) * rows), squeeze=False,
                             gridspec_kw={"height_ratios": [3.0, text_inches] * rows})
    for ax in axes.flat:
        ax.axis("off")
    for k, (f, text) in enumerate(zip(failures, texts)):
        image, caption = axes[2 * (k // columns), k % columns], axes[2 * (k // columns) + 1, k % columns]
        image.imshow(open_rgb(f["image"]))
        image.set_title(f["kind"], fontsize=9)
        caption.text(0, 1, text, transform=caption.transAxes, fontsize=6.5, va="top")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
