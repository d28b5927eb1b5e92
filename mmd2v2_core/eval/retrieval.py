"""Zero-shot image↔text retrieval: Recall@K exactly as BEiT-3 and CLIP_benchmark compute it.

Inputs: ``image_emb`` [N, D] (each image once), ``text_emb`` [M, D] (every caption), and
``text_to_image`` [M] (caption j describes image row ``text_to_image[j]``; any number of captions per
image). Embeddings are L2-normalised here and scored by dot product in fp32.

* **image→text** (CLIP_benchmark's "text_retrieval"): an image query is a hit at K if *any* of its
  captions is among its K best-scoring captions. Its rank is the rank of its best-ranked caption.
* **text→image** (CLIP_benchmark's "image_retrieval"): a caption query is a hit at K if its image is
  among its K best-scoring images.

Ranks are 0-based: rank 0 is the top result; R@K = % of queries with rank < K.

**Ties** are broken deterministically: candidates are ordered by descending score, equal scores by
ascending row index (a stable sort). So the rank of
candidate c for a query is ``#{score > s_c} + #{score == s_c and index < c}``. The same scores always
give the same ranks, whatever the chunking or device.

The score matrix is never held whole: queries go through in chunks sized to ``chunk_bytes`` of
scores (5,000 × 25,010 at D=768 fits in a few hundred MB of extra memory), on the inputs' device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

RECALL_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
DEFAULT_CHUNK_BYTES = 32 * 2**20


@dataclass(frozen=True)
class RetrievalRanks:
    """0-based rank of the first correct item for every query (for failure analysis and the browser)."""

    i2t: torch.Tensor  # [N] best rank among each image's captions
    i2t_best_caption: torch.Tensor  # [N] which caption achieved it
    t2i: torch.Tensor  # [M] rank of each caption's image

    def recalls(self, ks=(1, 5, 10)) -> dict[str, float]:
        out = {}
        for direction, ranks in (("i2t", self.i2t), ("t2i", self.t2i)):
            for k in ks:
                out[f"{direction}_r{k}"] = 100.0 * (ranks < k).double().mean().item()
        out["mean"] = float(np.mean(list(out.values())))
        return out

    def summary(self) -> dict[str, float]:
        """Median and mean rank, 1-based as papers report them (1 = perfect)."""
        return {
            "i2t_median_rank": float(self.i2t.double().median().item() + 1),
            "i2t_mean_rank": float(self.i2t.double().mean().item() + 1),
            "t2i_median_rank": float(self.t2i.double().median().item() + 1),
            "t2i_mean_rank": float(self.t2i.double().mean().item() + 1),
        }


def _check(image_emb, text_emb, text_to_image) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    image_emb = torch.as_tensor(image_emb)
    text_emb = torch.as_tensor(text_emb, device=image_emb.device)
    t2i = torch.as_tensor(text_to_image, dtype=torch.long, device=image_emb.device)
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"need image_emb [N, D] and text_emb [M, D]; got {tuple(image_emb.shape)} and "
                         f"{tuple(text_emb.shape)}")
    _check_mapping(t2i, image_emb.shape[0], text_emb.shape[0])
    return (F.normalize(image_emb.float(), dim=-1), F.normalize(text_emb.float(), dim=-1), t2i)


def _check_mapping(t2i: torch.Tensor, n: int, m: int) -> None:
    if t2i.shape != (m,):
        raise ValueError(f"text_to_image needs one entry per caption ({m}), got {tuple(t2i.shape)}")
    if m and (t2i.min() < 0 or t2i.max() >= n):
        raise ValueError(f"text_to_image has rows outside [0, {n})")
    if n and torch.bincount(t2i, minlength=n).min() == 0:
        raise ValueError("every image needs at least one caption (image→text recall is undefined otherwise)")


def _rank_of(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Rank of column ``target[q]`` in row q of ``scores`` under the stable descending order."""
    s_target = scores.gather(1, target[:, None])
    cols = torch.arange(scores.shape[1], device=scores.device)
    ahead = (scores > s_target) | ((scores == s_target) & (cols[None, :] < target[:, None]))
    return ahead.sum(1)


def _image_query_ranks(scores: torch.Tensor, rows: torch.Tensor, t2i: torch.Tensor):
    """For image rows ``rows`` (scores [c, M]): rank of the best-ranked own caption, and which caption."""
    positive = t2i[None, :] == rows[:, None]
    best_score = scores.masked_fill(~positive, float("-inf")).amax(1, keepdim=True)
    # The best-ranked positive is the highest-scoring one, the lowest index among equals.
    best = (positive & (scores == best_score)).to(torch.uint8).argmax(1)
    return _rank_of(scores, best), best


def _rows_per_chunk(n_cols: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // (4 * max(n_cols, 1)))


def ranks_from_scores(scores, text_to_image) -> RetrievalRanks:
    """Ranks from a ready [N images, M captions] score matrix (hand-made cases, external scores)."""
    scores = torch.as_tensor(scores, dtype=torch.float32)
    t2i = torch.as_tensor(text_to_image, dtype=torch.long, device=scores.device)
    _check_mapping(t2i, *scores.shape)
    i2t, best = _image_query_ranks(scores, torch.arange(scores.shape[0], device=scores.device), t2i)
    return RetrievalRanks(i2t=i2t, i2t_best_caption=best, t2i=_rank_of(scores.T.contiguous(), t2i))


def retrieval_ranks(image_emb, text_emb, text_to_image, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> RetrievalRanks:
    """Ranks from embeddings, computing the score matrix chunk by chunk on the embeddings' device."""
    img, txt, t2i = _check(image_emb, text_emb, text_to_image)
    n, m = img.shape[0], txt.shape[0]
    i2t_rank = torch.empty(n, dtype=torch.long, device=img.device)
    i2t_best = torch.empty(n, dtype=torch.long, device=img.device)
    step = _rows_per_chunk(m, chunk_bytes)
    for start in range(0, n, step):
        rows = torch.arange(start, min(start + step, n), device=img.device)
        i2t_rank[rows], i2t_best[rows] = _image_query_ranks(img[rows] @ txt.T, rows, t2i)
    t2i_rank = torch.empty(m, dtype=torch.long, device=img.device)
    step = _rows_per_chunk(n, chunk_bytes)
    for start in range(0, m, step):
        rows = slice(start, start + step)
        t2i_rank[rows] = _rank_of(txt[rows] @ img.T, t2i[rows])
    return RetrievalRanks(i2t=i2t_rank, i2t_best_caption=i2t_best, t2i=t2i_rank)


def recall_at_k(image_emb, text_emb, text_to_image, ks=(1, 5, 10),
                chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> dict[str, float]:
    """{'i2t_r1', …, 't2i_r10', 'mean'} in percent; 'mean' is the mean of the 2×len(ks) recalls."""
    return retrieval_ranks(image_emb, text_emb, text_to_image, chunk_bytes).recalls(ks)
