"""The closed-form baselines: one CCA for any pair of feature sets, with the exact per-pair statistics, recovering a
planted linear relation (and nothing from independent features), its ridge picked on val; the thumbnail row on
smoke data far above chance."""

import numpy as np
import pytest

from mmd2v2_core.data.datasets import RetrievalSplit
from mmd2v2_core.eval.baseline import PairedFeatures, bag_of_words, fit_baseline, fit_cca, pair_moments, thumbnails


def _pairs(rng, images: int, text_of, dx: int, captions: int = 3, noise: float = 0.5, mix=None) -> PairedFeatures:
    """``images`` random image features (mixed by ``mix``), each with ``captions`` noisy captions ``text_of(x)``."""
    x = rng.standard_normal((images, dx)).astype(np.float32)
    x = x @ mix if mix is not None else x
    t2i = np.repeat(np.arange(images), captions)
    y = text_of(x[t2i])
    return PairedFeatures([x], (y + noise * rng.standard_normal(y.shape)).astype(np.float32), t2i)


def test_moments_are_those_of_one_row_per_view_and_caption():
    rng = np.random.default_rng(0)
    views = [rng.standard_normal((5, 3)).astype(np.float32) * [1, 10, 0.1] + 4 for _ in range(2)]
    t2i = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4])  # 1-3 captions per image
    texts = rng.standard_normal((len(t2i), 2)).astype(np.float32)
    m = pair_moments(PairedFeatures(views, texts, t2i))
    x = np.concatenate([v[t2i] for v in views]).astype(np.float64)  # every (view, caption) pair as a row
    y = np.concatenate([texts] * len(views)).astype(np.float64)
    zx, zy = (x - x.mean(0)) / x.std(0), (y - y.mean(0)) / y.std(0)
    assert np.allclose(m.x_mean, x.mean(0)) and np.allclose(m.x_std, x.std(0))
    assert np.allclose(m.xx, zx.T @ zx / len(x)) and np.allclose(m.yy, zy.T @ zy / len(y))
    assert np.allclose(m.xy, zx.T @ zy / len(x))


def test_cca_recovers_a_planted_linear_relation_and_nothing_from_independent_features():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 16)).astype(np.float32)
    linked = [_pairs(rng, n, lambda x: x @ w, 48) for n in (2000, 300, 300)]
    cca, _ = fit_cca(*linked[:2])
    assert cca.recall(linked[2])["i2t_r1"] > 95 and cca.recall(linked[2])["mean"] > 97
    noise = [_pairs(rng, n, lambda x: rng.standard_normal((len(x), 16)).astype(np.float32), 48)
             for n in (2000, 300, 300)]
    cca, _ = fit_cca(*noise[:2])
    chance_r10 = 100 * 10 / 300
    assert cca.recall(noise[2])["i2t_r10"] < 3 * chance_r10 and cca.recall(noise[2])["i2t_r1"] < 3


def test_the_ridge_is_the_one_with_the_best_val_recall():
    rng = np.random.default_rng(0)
    # Few pairs in many dimensions: a small ridge fits the training noise, the largest generalises.
    w = rng.standard_normal((120, 120)).astype(np.float32) / np.sqrt(120)
    cca, scores = fit_cca(_pairs(rng, 80, lambda x: x @ w, 120, 2, 1.0), _pairs(rng, 200, lambda x: x @ w, 120, 2, 1.0))
    assert cca.ridge == 1.0 and scores[1.0] == max(scores.values()) and scores[1.0] > scores[1e-3] + 20
    # Image features in pairs (a + s·b, a − s·b), the caption reads b: a direction of variance ≈ s² that a large
    # ridge whitens away. The smallest ridge wins.
    s, d = 0.02, 20
    mix = np.zeros((2 * d, 2 * d), dtype=np.float32)
    for i in range(d):
        mix[i, 2 * i: 2 * i + 2] = 1, 1
        mix[d + i, 2 * i: 2 * i + 2] = s, -s

    def reads_b(x):
        return (x[:, 0::2] - x[:, 1::2]) / (2 * s)

    cca, scores = fit_cca(_pairs(rng, 3000, reads_b, 2 * d, 2, 0.5, mix), _pairs(rng, 300, reads_b, 2 * d, 2, 0.5, mix))
    assert cca.ridge == 1e-3 and scores[1e-3] > scores[1e-2] + 10 and scores[1.0] < 10


def test_thumbnail_baseline_is_far_above_chance_on_the_training_domain(smoke_data):
    data = smoke_data["synth-coco"]
    train, val, test = (RetrievalSplit.from_index(data, s) for s in ("train", "val", "test"))
    baseline = fit_baseline(train, val, thumbnails, bag_of_words(train))
    metrics = baseline.evaluate(test)
    chance = 100 / len(test.records)
    assert metrics["i2t_r1"] > 5 * chance and metrics["t2i_r1"] > 5 * chance
    described = baseline.describe()
    assert set(described["val_mean_recall"]) == {"0.001", "0.01", "0.1", "1"}
    assert described["val_mean_recall"][f"{described['ridge']:g}"] == max(described["val_mean_recall"].values())
    images, texts = baseline.embed_images(test), baseline.embed_texts(test)
    assert images.shape[1] == texts.shape[1] and images.norm(dim=1).numpy() == pytest.approx(1, abs=1e-5)
