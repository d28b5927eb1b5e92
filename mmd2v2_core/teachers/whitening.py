"""Targets with geometry: centre teacher targets and PCA-whiten them to the student's width.

A pooled CNN feature keeps much of its energy in the dataset mean (predicting the mean already gives
a low MSE), and its dimensions are strongly correlated. Centring removes the part every image shares;
projecting onto the top-k principal directions and dividing by their standard deviations gives k
uncorrelated unit-variance coordinates, so an MSE on them weighs every direction along which images
differ equally. With k = the student's width, MM-D2V2 regresses its own CLS onto the target with no
head, as the seed did — the bridge between a 1280-d teacher and a 128-d student.

The statistics come from the *training* split's targets only (never val or test).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError


class TargetWhitening(nn.Module):
    """``(t − mean) @ projection``: [N, D] targets → [N, k] whitened coordinates (buffers, never trained)."""

    def __init__(self, mean: Tensor, projection: Tensor):
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("projection", projection.float())

    @classmethod
    def fit(cls, targets: Tensor, dim: int, eps: float = 1e-5) -> "TargetWhitening":
        """Fit on [N, D] training targets; keep the ``dim`` directions of largest variance.

        ``eps`` (relative to the largest variance) keeps near-empty directions from being blown up.
        """
        targets = targets.double()
        n, d = targets.shape
        if dim > d:
            raise ConfigError(f"cannot whiten {d}-dim targets to {dim} dims: the teacher target is narrower than "
                              "the student; use a preset with a KD head (smke) instead")
        if n < 2:
            raise ConfigError(f"whitening needs at least 2 training targets, got {n}")
        mean = targets.mean(0)
        centred = targets - mean
        variances, vectors = torch.linalg.eigh(centred.T @ centred / (n - 1))
        top = variances.flip(0)[:dim].clamp_min(0)
        vectors = vectors.flip(1)[:, :dim]
        projection = vectors / (top + eps * top[0]).sqrt()
        return cls(mean, projection)

    @property
    def out_dim(self) -> int:
        return self.projection.shape[1]

    def forward(self, targets: Tensor) -> Tensor:
        return (targets.float() - self.mean) @ self.projection
