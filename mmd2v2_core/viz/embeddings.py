"""A 2-D map of image and caption embeddings of the same test items, and numbers that say what it shows."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def embedding_map(image_emb: torch.Tensor, text_emb: torch.Tensor, attribute: list[str], attribute_name: str,
                  out: Path, seed: int = 0) -> dict:
    """t-SNE of N images and their N captions (row i of each belongs together), coloured by modality and by
    an attribute of the image. Returns the numbers the reading is based on."""
    from sklearn.manifold import TSNE

    img, txt = F.normalize(image_emb.float(), dim=-1), F.normalize(text_emb.float(), dim=-1)
    points = TSNE(n_components=2, init="pca", perplexity=min(30, len(img) - 1), random_state=seed,
                  metric="cosine").fit_transform(torch.cat([img, txt]).numpy())
    n = len(img)
    fig, (mod_ax, att_ax) = plt.subplots(1, 2, figsize=(11, 5))
    mod_ax.scatter(*points[:n].T, s=8, c="tab:blue", label="images")
    mod_ax.scatter(*points[n:].T, s=8, c="tab:orange", label="captions")
    mod_ax.set_title("by modality")
    mod_ax.legend()
    values = sorted(set(attribute))
    cmap = plt.get_cmap("tab10")
    for k, value in enumerate(values):
        idx = np.array([a == value for a in attribute])
        color = cmap(k % 10)
        att_ax.scatter(*points[:n][idx].T, s=10, color=color, marker="o", label=f"{value} (image)")
        att_ax.scatter(*points[n:][idx].T, s=10, color=color, marker="x")
    att_ax.set_title(f"by {attribute_name} (o image, x caption)")
    att_ax.legend(fontsize=7, markerscale=1.5)
    for ax in (mod_ax, att_ax):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)

    sims = img @ txt.T
    labels = np.array(attribute)
    same = torch.from_numpy(labels[:, None] == labels[None, :])
    nearest_caption = sims.argmax(1)
    return {
        "matched_cosine": sims.diag().mean().item(),
        "unmatched_cosine": sims[~torch.eye(n, dtype=torch.bool)].mean().item(),
        "same_attribute_cosine": sims[same & ~torch.eye(n, dtype=torch.bool)].mean().item(),
        "nearest_caption_same_attribute": float((labels[nearest_caption.numpy()] == labels).mean()),
        "attribute_chance": float(max((labels == v).mean() for v in values)),
        "modality_gap": float(np.linalg.norm(points[:n].mean(0) - points[n:].mean(0)) / points.std()),
    }
