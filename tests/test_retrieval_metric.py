"""Recall@K under the BEiT-3 / CLIP_benchmark protocol, checked against hand-computed answers and
plain reference implementations."""

import numpy as np
import pytest
import torch

from mmd2v2_core.eval.retrieval import RECALL_KEYS, ranks_from_scores, recall_at_k, retrieval_ranks


def reference_ranks(scores: np.ndarray, t2i: np.ndarray):
    """Obviously correct: sort every query's candidates (stable, descending) and look for the answer.
    Returns image→text ranks, each image's best-ranked caption, and text→image ranks."""
    i2t, best = [], []
    for i in range(scores.shape[0]):
        order = list(np.argsort(-scores[i], kind="stable"))
        rank, caption = min((order.index(j), j) for j in np.flatnonzero(t2i == i))
        i2t.append(rank)
        best.append(caption)
    t2i_ranks = [list(np.argsort(-scores[:, j], kind="stable")).index(t2i[j]) for j in range(scores.shape[1])]
    return np.array(i2t), np.array(best), np.array(t2i_ranks)


def clip_benchmark_recall(scores: torch.Tensor, t2i: torch.Tensor, k: int):
    """CLIP_benchmark's formulation: positive-pair matrix, top-k one-hot, any hit counts."""
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[t2i, torch.arange(len(t2i))] = True
    top_txt = torch.nn.functional.one_hot(scores.topk(k, dim=1).indices, scores.shape[1]).sum(1).bool()
    i2t = (top_txt & positive).any(1).float().mean().item() * 100
    top_img = torch.nn.functional.one_hot(scores.T.topk(k, dim=1).indices, scores.shape[0]).sum(1).bool()
    t2i_hit = (top_img & positive.T).any(1).float().mean().item() * 100
    return i2t, t2i_hit


def test_hand_made_scores():
    # 3 images; captions 0,1 → image 0, caption 2 → image 1, captions 3,4 → image 2.
    t2i = [0, 0, 1, 2, 2]
    scores = torch.tensor([
        [0.1, 0.9, 0.8, 0.2, 0.3],  # image 0: its caption 1 is top → rank 0
        [0.5, 0.4, 0.3, 0.2, 0.6],  # image 1: its caption 2 is 4th → rank 3
        [0.7, 0.1, 0.2, 0.0, 0.6],  # image 2: best own caption 4 is 2nd → rank 1
    ])
    ranks = ranks_from_scores(scores, t2i)
    assert ranks.i2t.tolist() == [0, 3, 1] and ranks.i2t_best_caption.tolist() == [1, 2, 4]
    # caption columns: c0 → image 0 scores .1 < .5, .7 → rank 2; c1 → .9 top → 0; c2 → image 1 .3 < .8 → 1;
    # c3 → image 2 .0 lowest → 2; c4 → image 2 .6 vs .3, .6 (tie with image 1, lower index wins) → 1
    assert ranks.t2i.tolist() == [2, 0, 1, 2, 1]
    r = ranks.recalls((1, 2))
    assert r["i2t_r1"] == pytest.approx(100 / 3) and r["i2t_r2"] == pytest.approx(200 / 3)
    assert r["t2i_r1"] == pytest.approx(20.0) and r["t2i_r2"] == pytest.approx(60.0)
    assert r["mean"] == pytest.approx(np.mean([100 / 3, 200 / 3, 20, 60]))


@pytest.mark.parametrize("per_image", [1, 5, 6, 7, "mixed"])
def test_equals_reference_on_random_embeddings(per_image):
    rng = np.random.default_rng(0)
    n = 60
    counts = rng.choice([5, 5, 5, 6, 7], n) if per_image == "mixed" else np.full(n, per_image)
    t2i = np.repeat(np.arange(n), counts)
    img = rng.normal(size=(n, 16)).astype(np.float32)
    txt = (img[t2i] + 1.5 * rng.normal(size=(len(t2i), 16))).astype(np.float32)
    ranks = retrieval_ranks(img, txt, t2i)
    imgn = img / np.linalg.norm(img, axis=1, keepdims=True)
    txtn = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    scores = torch.from_numpy(imgn) @ torch.from_numpy(txtn).T
    ref_i2t, _, ref_t2i = reference_ranks(scores.numpy(), t2i)
    assert ranks.i2t.tolist() == ref_i2t.tolist() and ranks.t2i.tolist() == ref_t2i.tolist()
    metrics = recall_at_k(img, txt, t2i)
    assert list(metrics) == [*RECALL_KEYS, "mean"]
    for k in (1, 5, 10):
        i2t, t2i_hit = clip_benchmark_recall(scores, torch.from_numpy(t2i), k)
        assert metrics[f"i2t_r{k}"] == pytest.approx(i2t) and metrics[f"t2i_r{k}"] == pytest.approx(t2i_hit)
    assert 0 < metrics["i2t_r1"] < 100  # the case is not trivial


def test_chunking_does_not_change_ranks():
    rng = np.random.default_rng(1)
    t2i = np.repeat(np.arange(50), 5)
    img, txt = rng.normal(size=(50, 8)), rng.normal(size=(250, 8))
    whole = retrieval_ranks(img, txt, t2i, chunk_bytes=2**30)
    tiny = retrieval_ranks(img, txt, t2i, chunk_bytes=4 * 250 * 3)  # tiles of 13 × 54 scores
    assert torch.equal(whole.i2t, tiny.i2t) and torch.equal(whole.t2i, tiny.t2i)


def test_ties_are_broken_by_index():
    # All captions identical: every score ties, so each query's rank is the index of its answer.
    img = torch.eye(4)
    txt = torch.ones(8, 4)
    t2i = [0, 0, 1, 1, 2, 2, 3, 3]
    ranks = retrieval_ranks(img, txt, t2i)
    assert ranks.i2t.tolist() == [0, 2, 4, 6]  # first own caption
    assert ranks.t2i.tolist() == t2i  # own image's row
    assert recall_at_k(img, txt, t2i, ks=(1,)) == recall_at_k(img, txt, t2i, ks=(1,))


def tied_case(seed: int, n: int = 40):
    """Embeddings whose scores are exact in any summation order, with many exact ties: unit vectors
    with four entries ±1/2 in 8 dimensions score multiples of 1/4. Captions come in shuffled order,
    1 to 7 per image, some copying another caption or their image's embedding."""
    rng = np.random.default_rng(seed)
    t2i = rng.permutation(np.repeat(np.arange(n), rng.integers(1, 8, n)))

    def unit(count):
        v = np.zeros((count, 8), np.float32)
        for row in v:
            row[rng.choice(8, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
        return v

    img, txt = unit(n), unit(len(t2i))
    copies = rng.choice(len(t2i), len(t2i) // 4)
    txt[copies] = txt[rng.choice(len(t2i), len(copies))]
    own = rng.choice(len(t2i), len(t2i) // 8)
    txt[own] = img[t2i[own]]
    return img, txt, t2i


@pytest.mark.parametrize("chunk_bytes", [64, 1000, 4 * 2**10, 2**30])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_brute_force_with_exact_ties(seed, chunk_bytes):
    img, txt, t2i = tied_case(seed)
    scores = img.astype(np.float64) @ txt.T.astype(np.float64)
    assert len(np.unique(scores)) <= 9  # nearly every score ties with many others
    ref_i2t, ref_best, ref_t2i = reference_ranks(scores, t2i)
    for ranks in (retrieval_ranks(img, txt, t2i, chunk_bytes=chunk_bytes),
                  ranks_from_scores(scores, t2i, chunk_bytes=chunk_bytes)):
        assert ranks.i2t.tolist() == ref_i2t.tolist()
        assert ranks.i2t_best_caption.tolist() == ref_best.tolist()
        assert ranks.t2i.tolist() == ref_t2i.tolist()


@pytest.mark.parametrize("chunk_bytes", [64, 1000, 2**30])
def test_grouped_captions_with_ties(chunk_bytes):
    # Captions in image order (as in Karpathy splits) take the one-comparison path in pass 2.
    img, txt, t2i = tied_case(3, n=60)
    grouped = np.argsort(t2i, kind="stable")
    txt, t2i = txt[grouped], t2i[grouped]
    ref_i2t, ref_best, ref_t2i = reference_ranks(img.astype(np.float64) @ txt.T.astype(np.float64), t2i)
    ranks = retrieval_ranks(img, txt, t2i, chunk_bytes=chunk_bytes)
    assert ranks.i2t.tolist() == ref_i2t.tolist() and ranks.i2t_best_caption.tolist() == ref_best.tolist()
    assert ranks.t2i.tolist() == ref_t2i.tolist()


def test_perfect_and_random_models():
    rng = np.random.default_rng(2)
    n = 1000
    t2i = np.repeat(np.arange(n), 5)
    img = rng.normal(size=(n, 64))
    perfect = recall_at_k(img, img[t2i] + 0.01 * rng.normal(size=(5 * n, 64)), t2i)
    assert all(v == 100.0 for v in perfect.values())
    random = recall_at_k(img, rng.normal(size=(5 * n, 64)), t2i)
    for k in (1, 5, 10):
        assert random[f"t2i_r{k}"] == pytest.approx(100 * k / n, abs=100 * 4 * np.sqrt(k / n / (5 * n)) + 0.1)
        chance_i2t = 1 - np.prod([(5 * n - 5 - i) / (5 * n - i) for i in range(k)])  # any of 5 in top k
        assert random[f"i2t_r{k}"] == pytest.approx(100 * chance_i2t, abs=100 * 4 * np.sqrt(chance_i2t / n) + 0.1)


def test_input_errors():
    with pytest.raises(ValueError, match="one entry per caption"):
        recall_at_k(np.ones((2, 3)), np.ones((4, 3)), [0, 1, 1])
    with pytest.raises(ValueError, match="every image needs at least one caption"):
        recall_at_k(np.ones((3, 3)), np.ones((2, 3)), [0, 1])
    with pytest.raises(ValueError, match="need image_emb"):
        recall_at_k(np.ones((2, 3)), np.ones((2, 4)), [0, 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")
def test_gpu_matches_cpu():
    rng = np.random.default_rng(3)
    t2i = np.repeat(np.arange(100), 5)
    img, txt = torch.from_numpy(rng.normal(size=(100, 32))), torch.from_numpy(rng.normal(size=(500, 32)))
    cpu = retrieval_ranks(img, txt, t2i)
    gpu = retrieval_ranks(img.cuda(), txt.cuda(), torch.from_numpy(t2i).cuda())
    assert torch.equal(cpu.i2t, gpu.i2t.cpu()) and torch.equal(cpu.t2i, gpu.t2i.cpu())
