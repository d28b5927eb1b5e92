"""Encode an evaluation split with any model that has ``encode_image`` and ``encode_text``.

The model is the student, or — for the unaligned baseline of the seed's Table 1 — an image model and
a text model side by side (``PairedEncoders``). Encoding runs in eval mode without gradients, in
batches, images once each (``RetrievalSplit`` deduplicates them by id) and every caption.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import EVAL_PRECISIONS
from ..precision import resolve_precision
from ..data.datasets import RetrievalSplit
from ..data.index import load_manifest
from ..data.tokenizer import CaptionTokenizer
from ..data.transforms import ImageTransformConfig, eval_transform
from ..errors import clean_worker_errors
from ..progress import progress
from ..student.frontend_cache import CachedFrontEnd
from .retrieval import retrieval_ranks


class Encoder(Protocol):
    def encode_image(self, images: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


class PairedEncoders(nn.Module):
    """Two unimodal models used as one dual encoder (no alignment: the seed's "Data2Vec2" row)."""

    def __init__(self, image_model: nn.Module, text_model: nn.Module):
        super().__init__()
        self.image_model, self.text_model = image_model, text_model

    def encode_image(self, images):
        return self.image_model.encode_image(images)

    def encode_text(self, input_ids, attention_mask):
        return self.text_model.encode_text(input_ids, attention_mask)


@contextmanager
def eval_mode(model):
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    try:
        yield
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)


def student_inputs(student, tokenizer_name: str, frontend_cache: str | Path | None = None,
                   device: str | torch.device = "cpu") -> tuple[Callable | CachedFrontEnd, CaptionTokenizer]:
    """The image source and tokenizer a trained student expects: its evaluation transform (its image size) — or,
    with ``frontend_cache`` and a frozen front end, its cached front-end outputs — and its caption length."""
    tokenizer = CaptionTokenizer(tokenizer_name, max_length=student.cfg.max_text_len)
    if frontend_cache and student.image_embed.cacheable:
        return CachedFrontEnd(student, frontend_cache, device), tokenizer
    return eval_transform(ImageTransformConfig(size=student.cfg.image_size)), tokenizer


@dataclass(frozen=True)
class SplitEmbeddings:
    image: torch.Tensor  # [N, D] float32
    text: torch.Tensor  # [M, D] float32
    text_to_image: torch.Tensor  # [M]


def precision_context(precision: str, device: str | torch.device = "cpu"):
    """``bf16``: bfloat16 autocast (on a CPU with AMX the 25k COCO captions encode ≈ 2.5× faster); ``fp32``: none;
    ``auto``: bf16 where ``device`` computes it natively (an AVX2-only CPU would emulate it, 6× slower)."""
    if precision not in EVAL_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(EVAL_PRECISIONS)}, got {precision!r}")
    bf16 = resolve_precision(precision, device) == "bf16"
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)


@torch.inference_mode()
def encode_images(model: Encoder, split: RetrievalSplit, images: Callable | CachedFrontEnd, batch_size: int = 256,
                  device: str | torch.device = "cpu", num_workers: int = 0, precision: str = "fp32") -> torch.Tensor:
    """[N, D] float32 embeddings of the split's images, in record order; ``images``: a pixel transform, or a
    ``CachedFrontEnd`` (the student's frozen front-end outputs by id)."""
    dataset = images.images(split) if isinstance(images, CachedFrontEnd) else split.images(images)
    out = []
    with eval_mode(model), precision_context(precision, device):
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
        for batch in progress(clean_worker_errors(loader), total=len(loader), desc=f"encoding {split.name} images"):
            out.append(model.encode_image(batch["image"].to(device)).float())
    return torch.cat(out)


_TOKENIZED: OrderedDict = OrderedDict()  # (tokenizer settings, captions, batch size) → (order, batches)


def _caption_batches(tokenizer: CaptionTokenizer, captions: list[str], batch_size: int) -> tuple[list[int], list]:
    """Captions sorted by length (so little compute goes to padding) and tokenised in batches; the last few
    caption lists are kept, because a study scores every run on the same test captions and tokenising COCO
    5K's 25k takes 2 s, a third of encoding them."""
    key = (tokenizer.name, tokenizer.max_length, tokenizer.pad_to, tuple(captions), batch_size)
    if key not in _TOKENIZED:
        order = sorted(range(len(captions)), key=lambda j: len(captions[j]))
        _TOKENIZED[key] = order, [tokenizer([captions[j] for j in order[start:start + batch_size]])
                                  for start in range(0, len(order), batch_size)]
        while len(_TOKENIZED) > 4:
            _TOKENIZED.popitem(last=False)
    _TOKENIZED.move_to_end(key)
    return _TOKENIZED[key]


@torch.inference_mode()
def encode_captions(model: Encoder, captions: list[str], tokenizer: CaptionTokenizer, batch_size: int = 256,
                    device: str | torch.device = "cpu", precision: str = "fp32", desc: str = "captions") -> torch.Tensor:
    """[M, D] float32 embeddings of ``captions``, in their order (encoded in batches of similar length)."""
    order, batches = _caption_batches(tokenizer, captions, batch_size)
    out = []
    with eval_mode(model), precision_context(precision, device):
        for tokens in progress(batches, desc=f"encoding {desc}"):
            out.append(model.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)).float())
    text = torch.empty_like(torch.cat(out))
    text[torch.tensor(order, device=text.device)] = torch.cat(out)
    return text


def embed_split(model: Encoder, split: RetrievalSplit, images: Callable | CachedFrontEnd, tokenizer: CaptionTokenizer,
                batch_size: int = 256, device: str | torch.device = "cpu", num_workers: int = 0,
                precision: str = "fp32") -> SplitEmbeddings:
    """Both sides of a split (see ``encode_images`` and ``encode_captions``); ``precision``: see
    ``precision_context`` (the embeddings are float32 either way)."""
    return SplitEmbeddings(encode_images(model, split, images, batch_size, device, num_workers, precision),
                           encode_captions(model, split.captions, tokenizer, batch_size, device, precision,
                                           f"{split.name} captions"),
                           torch.as_tensor(split.text_to_image, dtype=torch.long, device=device))


def evaluate_retrieval(model: Encoder, index_dir: str | Path, split: str, transform: Callable | CachedFrontEnd,
                       tokenizer: CaptionTokenizer, batch_size: int = 256, device: str = "cpu",
                       num_workers: int = 0, precision: str = "fp32") -> dict:
    """Encode ``split`` of a prepared dataset and score it: metrics, rank summary and what was measured."""
    data = RetrievalSplit.from_index(index_dir, split)
    start = time.perf_counter()
    emb = embed_split(model, data, transform, tokenizer, batch_size, device, num_workers, precision)
    ranks = retrieval_ranks(emb.image, emb.text, emb.text_to_image)
    return {
        "dataset": load_manifest(index_dir)["dataset"],
        "split": split,
        "data": str(Path(index_dir).resolve()),
        "images": len(data.records),
        "captions": len(data.captions),
        "precision": precision,
        "metrics": ranks.recalls(),
        "ranks": ranks.summary(),
        "seconds": round(time.perf_counter() - start, 2),
    }
