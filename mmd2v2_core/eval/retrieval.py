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

The score matrix is never held whole, and each score is computed once and serves both directions:
it goes through in tiles of ``chunk_bytes`` (blocks of image rows × runs of captions), on the inputs'
device; see ``_sweep``. Extra memory beyond the normalised embeddings is a few tiles plus one block
of images against its own captions (tens of MB at COCO-5K size). Which scores go into one BLAS
product depends on ``chunk_bytes``, and a product can round its last bit differently by shape, so a
different ``chunk_bytes`` can flip a near-tie by one place; ranks from the same scores never change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

RECALL_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
DEFAULT_CHUNK_BYTES = 4 * 2**20


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


def _captions_by_image(t2i: torch.Tensor, n: int) -> tuple[torch.Tensor, list[int]]:
    """Caption indices grouped by image and the group boundaries: image i owns ``order[off[i]:off[i+1]]``."""
    order = torch.argsort(t2i, stable=True)
    off = [0, *torch.bincount(t2i, minlength=n).cumsum(0).tolist()]
    return order, off


def _tile_shape(n: int, m: int, chunk_bytes: int) -> tuple[int, int]:
    """Rows and columns of a score tile of about ``chunk_bytes``, four times wider than tall when there
    are enough captions: at 4 MiB such tiles stay in cache between the product and the comparisons."""
    floats = max(1, chunk_bytes // 4)
    width = max(1, min(m, 2 * math.isqrt(floats)))
    return max(1, min(n, floats // width)), width


def _as_slice(cols: torch.Tensor) -> slice | torch.Tensor:
    """Ascending distinct indices as a slice (a view, no gather) when they are a run, else unchanged."""
    first, last = int(cols[0]), int(cols[-1])
    return slice(first, last + 1) if last - first + 1 == len(cols) else cols


def _ahead(scores: torch.Tensor, target: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """The stable descending order: a candidate is ahead of the target if it scores higher, or equal
    with a lower index (``before``)."""
    return (scores > target) | ((scores == target) & before)


def _sweep(score, t2i: torch.Tensor, n: int, chunk_bytes: int) -> RetrievalRanks:
    """Ranks from ``score(rows, cols)``, which returns the [rows, cols] block of the score matrix.

    Every score is asked for once. Pass 1 scores each block of images against its own captions: that
    fixes every target score, and it is where both directions need the index comparison of the tie
    rule. Pass 2 scores the blocks against all other captions; a caption's image is then outside the
    block, so one comparison per score and direction decides, against the target score or the float
    just below it (``s >= t`` is ``s > nextafter(t, -inf)``).
    """
    m, dev = len(t2i), t2i.device
    height, width = _tile_shape(n, m, chunk_bytes)
    order, off = _captions_by_image(t2i, n)
    blocks = [(slice(a, min(a + height, n)), order[off[a]:off[min(a + height, n)]].sort().values)
              for a in range(0, n, height)]
    pos = torch.empty(m, device=dev)  # each caption's score with its own image
    best_score = torch.empty(n, device=dev)
    best = torch.empty(n, dtype=torch.long, device=dev)
    i2t_rank = torch.zeros(n, dtype=torch.long, device=dev)
    t2i_rank = torch.zeros(m, dtype=torch.long, device=dev)

    for rows, own in blocks:
        band = score(rows, _as_slice(own))
        local = t2i[own] - rows.start
        pos[own] = band[local, torch.arange(len(own), device=dev)]
        # Best own caption: highest score, lowest index among equals.
        best_score[rows] = torch.full((band.shape[0],), float("-inf"), device=dev).scatter_reduce(
            0, local, pos[own], "amax")
        candidates = torch.where(pos[own] == best_score[t2i[own]], own, m)
        best[rows] = torch.full((band.shape[0],), m, device=dev).scatter_reduce(0, local, candidates, "amin")
        i2t_rank[rows] += _ahead(band, best_score[rows, None], own < best[rows, None]).sum(1)
        images = torch.arange(rows.start, rows.stop, device=dev)[:, None]
        t2i_rank[own] += _ahead(band, pos[own], images < t2i[own]).sum(0)

    minus_inf = torch.tensor(float("-inf"), device=dev)
    below_best, below_pos = torch.nextafter(best_score, minus_inf), torch.nextafter(pos, minus_inf)
    # Comparisons land in floats: compare-and-sum into fp32 is several times faster than bool on CPU,
    # and counts up to a tile's side are exact.
    buffer = torch.empty(height, width, device=dev)
    is_own = torch.zeros(m, dtype=torch.bool, device=dev)
    for rows, own in blocks:
        is_own[own] = True
        rest = (~is_own).nonzero().squeeze(1)
        is_own[own] = False
        b, b_below, b_col = best_score[rows, None], below_best[rows, None], best[rows, None]
        bounds = torch.tensor([int(b_col.min()), int(b_col.max()) + 1], device=dev)
        for start in range(0, len(rest), width):
            cols = rest[start:start + width]
            scores = score(rows, _as_slice(cols))
            buf = buffer[: scores.shape[0], : scores.shape[1]]
            # image→text: captions before every row's best caption count when >=, after all when >;
            # only those in between (none when captions come grouped by image) need the full rule.
            lo, hi = torch.searchsorted(cols, bounds).tolist()
            torch.gt(scores[:, :lo], b_below, out=buf[:, :lo])
            torch.gt(scores[:, hi:], b, out=buf[:, hi:])
            buf[:, lo:hi] = _ahead(scores[:, lo:hi], b, cols[lo:hi] < b_col)
            i2t_rank[rows] += buf.sum(1).long()
            # text→image: images before the caption's own count when >=, after it when >.
            torch.gt(scores, torch.where(t2i[cols] < rows.start, pos[cols], below_pos[cols]), out=buf)
            t2i_rank[cols] += buf.sum(0).long()
    return RetrievalRanks(i2t=i2t_rank, i2t_best_caption=best, t2i=t2i_rank)


def ranks_from_scores(scores, text_to_image, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> RetrievalRanks:
    """Ranks from a ready [N images, M captions] score matrix (hand-made cases, external scores)."""
    scores = torch.as_tensor(scores, dtype=torch.float32)
    t2i = torch.as_tensor(text_to_image, dtype=torch.long, device=scores.device)
    _check_mapping(t2i, *scores.shape)
    return _sweep(lambda rows, cols: scores[rows][:, cols], t2i, scores.shape[0], chunk_bytes)


def retrieval_ranks(image_emb, text_emb, text_to_image, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> RetrievalRanks:
    """Ranks from embeddings, computing the score matrix tile by tile on the embeddings' device."""
    img, txt, t2i = _check(image_emb, text_emb, text_to_image)
    return _sweep(lambda rows, cols: img[rows] @ txt[cols].T, t2i, img.shape[0], chunk_bytes)


def recall_at_k(image_emb, text_emb, text_to_image, ks=(1, 5, 10),
                chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> dict[str, float]:
    """{'i2t_r1', …, 't2i_r10', 'mean'} in percent; 'mean' is the mean of the 2×len(ks) recalls."""
    return retrieval_ranks(image_emb, text_emb, text_to_image, chunk_bytes).recalls(ks)
