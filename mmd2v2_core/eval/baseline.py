"""Closed-form baselines: two sets of frozen features linked by a ridge-regularised CCA fitted on the training pairs.

A number is a finding only next to the best cheap alternative (DESIGN.md, "Findings discipline"); the study's rows
differ only in the features each side gets:

* ``thumbnails`` × ``bag_of_words``: 16×16 RGB thumbnails (768 values) against word counts — the trivial row, what
  pixel colours and word counts carry;
* the students' frozen image inputs (their cached front-end output, flattened) × bag of words, fitted on the clean
  training view or also on the rendering views the students train on — what a linear map of the same frozen inputs
  reaches without any training;
* on COCO / Flickr30K, the cached features of the frozen models the real towers (and the teacher) start from.

Which rows a study scores, and where their features come from: ``Study.fit_baseline``.

The CCA, in closed form (``fit_cca``): both sides standardised over the training pairs, each whitened with its
ridge-regularised covariance (ridge × mean variance added to the diagonal), the SVD of the whitened
cross-covariance; images and captions are projected onto every canonical direction weighted by its canonical
correlation and scored by cosine. The ridge is the one of ``RIDGES`` with the best mean recall on the val split.

The moments are sums over images, each image row weighted by its caption count, and its captions summed: exactly the
statistics of one row per (image view, caption) pair without building those rows (synth-coco's 40k pairs × 4 views ×
1,792 values would take 2.3 GB in float64). They are accumulated in float64, in chunks of rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.datasets import RetrievalSplit
from ..data.images import open_rgb
from .retrieval import recall_at_k

THUMB = 16
RIDGES = (1e-3, 1e-2, 1e-1, 1.0)
_CHUNK = 16384  # rows per float64 block of a moment sum (1,792 features: 235 MB)

# A split → features of its images [images, Dx] (in its records' order), or of its captions [captions, Dy]
ImageFeatures = Callable[[RetrievalSplit], np.ndarray]
TextFeatures = Callable[[RetrievalSplit], np.ndarray]


def thumbnails(split: RetrievalSplit) -> np.ndarray:
    return np.stack([np.asarray(open_rgb(r.path).resize((THUMB, THUMB), Image.BILINEAR), dtype=np.float32).ravel()
                     for r in split.records])


def bag_of_words(train: RetrievalSplit) -> TextFeatures:
    """Word counts over the vocabulary of the training captions."""
    from sklearn.feature_extraction.text import CountVectorizer  # here: scikit-learn and SciPy take 1 s to import

    vectorizer = CountVectorizer(lowercase=True, token_pattern=r"[a-z]+").fit(train.captions)
    return lambda split: vectorizer.transform(split.captions).toarray().astype(np.float32)


@dataclass(frozen=True)
class PairedFeatures:
    """Features of one split's images (in one or more views: each view's row of an image pairs with every caption of
    the image) and of its captions."""

    views: Sequence[np.ndarray]  # each [images, Dx]
    texts: np.ndarray  # [captions, Dy]
    text_to_image: np.ndarray  # [captions]: the image row of each caption


def _gram(a: np.ndarray, b: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """a.T @ diag(weights) @ b in float64, a block of rows at a time (never a float64 copy of a whole input)."""
    out = np.zeros((a.shape[1], b.shape[1]))
    for start in range(0, len(a), _CHUNK):
        block = a[start:start + _CHUNK].astype(np.float64)
        if weights is not None:
            block *= weights[start:start + _CHUNK, None]
        out += block.T @ b[start:start + _CHUNK].astype(np.float64)
    return out


def _caption_sums(texts: np.ndarray, t2i: np.ndarray, n_images: int) -> np.ndarray:
    """[images, Dy] float64: each image's caption features summed, a block of captions at a time."""
    from scipy import sparse  # here: every notebook kernel imports this module, few fit a baseline

    out = np.zeros((n_images, texts.shape[1]))
    for start in range(0, len(t2i), _CHUNK):
        rows = t2i[start:start + _CHUNK]
        to_image = sparse.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(n_images, len(rows)))
        out += to_image @ texts[start:start + _CHUNK].astype(np.float64)
    return out


@dataclass(frozen=True)
class Standardised:
    """Mean and standard deviation of each feature over the training pairs, and the covariances of the standardised
    features (xx, yy) and their cross-covariance (xy)."""

    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: np.ndarray
    y_std: np.ndarray
    xx: np.ndarray
    yy: np.ndarray
    xy: np.ndarray


def _std(mean: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Standard deviations from the means and the raw second moments; a constant feature keeps scale 1."""
    std = np.sqrt(np.clip(np.diag(second) - mean ** 2, 0, None))
    return np.where(std > 1e-8, std, 1.0)


def pair_moments(pairs: PairedFeatures) -> Standardised:
    """The moments of one row per (view, caption) pair of ``pairs``, from sums over images."""
    n_images, t2i = len(pairs.views[0]), np.asarray(pairs.text_to_image)
    counts = np.bincount(t2i, minlength=n_images).astype(np.float64)
    caption_sums = _caption_sums(pairs.texts, t2i, n_images)
    n = counts.sum() * len(pairs.views)  # (view, caption) pairs
    ones_x, ones_y = np.ones((n_images, 1)), np.ones((len(t2i), 1))  # a gram with a column of ones: the column sums
    x_mean = sum(_gram(view, ones_x, counts)[:, 0] for view in pairs.views) / n
    xx = sum(_gram(view, view, counts) for view in pairs.views) / n
    xy = sum(_gram(view, caption_sums) for view in pairs.views) / n
    y_mean = _gram(pairs.texts, ones_y)[:, 0] / len(t2i)
    yy = _gram(pairs.texts, pairs.texts) / len(t2i)
    x_std, y_std = _std(x_mean, xx), _std(y_mean, yy)
    return Standardised(x_mean, x_std, y_mean, y_std,
                        (xx - np.outer(x_mean, x_mean)) / np.outer(x_std, x_std),
                        (yy - np.outer(y_mean, y_mean)) / np.outer(y_std, y_std),
                        (xy - np.outer(x_mean, y_mean)) / np.outer(x_std, y_std))


def _whitener(eigen: tuple[np.ndarray, np.ndarray], ridge: float) -> np.ndarray:
    """(C + ridge·mean(diag C)·I)^(-1/2) from C's eigendecomposition (shared by every ridge of the grid)."""
    values, vectors = eigen
    shifted = np.clip(values, 0, None) + ridge * values.sum() / len(values)
    return (vectors / np.sqrt(np.clip(shifted, 1e-12, None))) @ vectors.T


@dataclass(frozen=True)
class LinearCCA:
    """A fitted CCA: standardisation and projection of each side onto the weighted canonical directions."""

    moments: Standardised
    x_proj: np.ndarray  # [Dx, k]
    y_proj: np.ndarray  # [Dy, k]
    ridge: float

    # L2-normalised, as a student's embeddings: scores are cosines wherever they are read (also the transfer
    # analysis' failure reading, which ranks by dot product)
    def embed_x(self, x: np.ndarray) -> torch.Tensor:
        m = self.moments
        return F.normalize(torch.from_numpy(((x - m.x_mean) / m.x_std).astype(np.float32) @ self.x_proj), dim=-1)

    def embed_y(self, y: np.ndarray) -> torch.Tensor:
        m = self.moments
        return F.normalize(torch.from_numpy(((y - m.y_mean) / m.y_std).astype(np.float32) @ self.y_proj), dim=-1)

    def recall(self, pairs: PairedFeatures) -> dict[str, float]:
        """Retrieval metrics of the first view's images against the captions."""
        return recall_at_k(self.embed_x(pairs.views[0]), self.embed_y(pairs.texts), pairs.text_to_image)


def _solve(moments: Standardised, eigen_x, eigen_y, ridge: float) -> LinearCCA:
    wx, wy = _whitener(eigen_x, ridge), _whitener(eigen_y, ridge)
    u, corr, vt = np.linalg.svd(wx @ moments.xy @ wy, full_matrices=False)
    return LinearCCA(moments, (wx @ u * corr).astype(np.float32), (wy @ vt.T * corr).astype(np.float32), ridge)


def fit_cca(train: PairedFeatures, val: PairedFeatures) -> tuple[LinearCCA, dict[float, float]]:
    """The CCA of ``train`` with the ridge of ``RIDGES`` that gives the best val mean recall (the smaller on a tie),
    and the val mean recall of every ridge."""
    moments = pair_moments(train)
    eigen_x, eigen_y = np.linalg.eigh(moments.xx), np.linalg.eigh(moments.yy)
    fitted = [_solve(moments, eigen_x, eigen_y, ridge) for ridge in RIDGES]
    scores = {cca.ridge: cca.recall(val)["mean"] for cca in fitted}
    return max(fitted, key=lambda cca: scores[cca.ridge]), scores


@dataclass(frozen=True)
class CCABaseline:
    """A fitted CCA with the feature extractors of its two sides: scores any split."""

    images: ImageFeatures
    texts: TextFeatures
    cca: LinearCCA
    val_mean_recall: dict[float, float]  # per ridge tried

    def embed_images(self, split: RetrievalSplit) -> torch.Tensor:
        return self.cca.embed_x(self.images(split))

    def embed_texts(self, split: RetrievalSplit) -> torch.Tensor:
        return self.cca.embed_y(self.texts(split))

    def evaluate(self, split: RetrievalSplit) -> dict[str, float]:
        return recall_at_k(self.embed_images(split), self.embed_texts(split), split.text_to_image)

    def describe(self) -> dict:
        """What the result files record: the ridge picked on val and every ridge's val mean recall."""
        return {"ridge": self.cca.ridge, "val_mean_recall": {f"{r:g}": round(v, 2) for r, v in
                                                            self.val_mean_recall.items()}}


def fit_baseline(train: RetrievalSplit, val: RetrievalSplit, images: ImageFeatures, texts: TextFeatures,
                 train_views: Sequence[np.ndarray] | None = None) -> CCABaseline:
    """A CCA between ``images`` and ``texts`` fitted on ``train``'s pairs, its ridge picked on ``val``.
    ``train_views``: the training images' features in every view to fit on (default: ``images(train)`` alone)."""
    views = train_views if train_views is not None else [images(train)]
    cca, scores = fit_cca(PairedFeatures(views, texts(train), train.text_to_image),
                          PairedFeatures([images(val)], texts(val), val.text_to_image))
    return CCABaseline(images, texts, cca, scores)
