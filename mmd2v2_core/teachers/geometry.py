"""What a teacher target encodes: the share of its variance each scene attribute of the synthetic data explains.

For every attribute the targets are regressed (least squares, with an intercept) on indicator features of
the scene — one-hot for the background and the object count, per-value object counts for shape, colour,
size and position — and the explained share is R² = 1 − residual / total sum of squares over all target
dimensions. On whitened targets every direction weighs the same, so a high share there means the geometry
the student regresses is organised by what the captions talk about.
"""

from __future__ import annotations

import torch
from torch import Tensor

OBJECT_ATTRIBUTES = ("shape", "color", "size", "position")
ATTRIBUTES = ("background", "count", *OBJECT_ATTRIBUTES)


def scene_features(scenes: list[dict], attribute: str) -> Tensor:
    """[N, values] indicator features of one attribute (values in sorted order)."""
    if attribute in ("background", "count"):
        keys = [str(s["background"]) if attribute == "background" else str(len(s["objects"])) for s in scenes]
        values = sorted(set(keys))
        out = torch.zeros(len(scenes), len(values), dtype=torch.float64)
        out[torch.arange(len(scenes)), torch.tensor([values.index(k) for k in keys])] = 1.0
        return out
    if attribute not in OBJECT_ATTRIBUTES:
        raise ValueError(f"unknown scene attribute {attribute!r}; choose one of {', '.join(ATTRIBUTES)}")
    values = sorted({str(o[attribute]) for s in scenes for o in s["objects"]})
    out = torch.zeros(len(scenes), len(values), dtype=torch.float64)
    for i, scene in enumerate(scenes):
        for obj in scene["objects"]:
            out[i, values.index(str(obj[attribute]))] += 1.0
    return out


def explained_variance(targets: Tensor, features: Tensor) -> float:
    """R² of the least-squares fit of [N, D] targets on [N, F] features plus an intercept."""
    y = targets.double() - targets.double().mean(0)
    x = torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64)], dim=1)
    coef = torch.linalg.lstsq(x, y).solution
    total = y.pow(2).sum()
    return float(1.0 - (y - x @ coef).pow(2).sum() / total) if total > 0 else 0.0


def attribute_shares(targets: Tensor, scenes: list[dict]) -> dict[str, float]:
    """{attribute: share of the targets' variance it explains} for every attribute in ``ATTRIBUTES``."""
    if len(targets) != len(scenes):
        raise ValueError(f"{len(targets)} targets but {len(scenes)} scenes")
    return {a: explained_variance(targets, scene_features(scenes, a)) for a in ATTRIBUTES}
