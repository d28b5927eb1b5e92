"""Datasets over a prepared index: caption pairs for training, image/caption sets for evaluation.

``CaptionPairs``: one item per (image, caption) pair, as in the thesis (566,747 COCO pairs).
``RetrievalSplit``: the evaluation view — unique images, all captions, and for each caption the row of
its image (``text_to_image``), which is exactly what the retrieval metric consumes.
Tokenisation happens in ``PairCollator`` so a whole batch goes through the fast tokenizer at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .images import open_rgb
from .index import ImageRecord, read_split
from .tokenizer import CaptionTokenizer


class CaptionPairs(Dataset):
    def __init__(self, records: list[ImageRecord], transform: Callable):
        self.records = records
        self.transform = transform
        self.pairs = np.array([(i, j) for i, r in enumerate(records) for j in range(len(r.captions))],
                              dtype=np.int64).reshape(-1, 2)

    @classmethod
    def from_index(cls, index_dir: str | Path, split: str, transform: Callable) -> "CaptionPairs":
        return cls(read_split(index_dir, split), transform)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> dict:
        i, j = self.pairs[k]
        record = self.records[i]
        return {
            "image": self.transform(open_rgb(record.path)),
            "caption": record.captions[j],
            "image_index": int(i),
            "pair_index": int(k),
        }


class ImageSet(Dataset):
    """Each image once, for encoding; ``image_index`` is its row in the retrieval matrices."""

    def __init__(self, records: list[ImageRecord], transform: Callable):
        self.records = records
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.transform(open_rgb(self.records[i].path)), "image_index": i}


@dataclass(frozen=True)
class RetrievalSplit:
    name: str
    records: list[ImageRecord]
    captions: list[str]
    text_to_image: np.ndarray  # caption j belongs to image row text_to_image[j]
    index_dir: Path | None = None  # where it was read from (a cached front end keys its rows by it)
    split: str | None = None

    @classmethod
    def from_records(cls, name: str, records: list[ImageRecord], index_dir: Path | None = None,
                     split: str | None = None) -> "RetrievalSplit":
        unique, seen = [], set()
        for r in records:  # pair-style sources can list an image more than once
            if r.image_id not in seen:
                seen.add(r.image_id)
                unique.append(r)
        captions = [c for r in unique for c in r.captions]
        text_to_image = np.repeat(np.arange(len(unique)), [len(r.captions) for r in unique])
        return cls(name, unique, captions, text_to_image, index_dir, split)

    @classmethod
    def from_index(cls, index_dir: str | Path, split: str) -> "RetrievalSplit":
        from .index import load_manifest

        name = f"{load_manifest(index_dir)['dataset']}/{split}"
        return cls.from_records(name, read_split(index_dir, split), Path(index_dir), split)

    def images(self, transform: Callable) -> ImageSet:
        return ImageSet(self.records, transform)


class PairCollator:
    """Stacks images and tokenises the batch's captions (picklable, so it works in DataLoader workers)."""

    def __init__(self, tokenizer: CaptionTokenizer):
        self.tokenizer = tokenizer

    def __call__(self, batch: list[dict]) -> dict:
        out = {
            "images": torch.stack([b["image"] for b in batch]),
            "captions": [b["caption"] for b in batch],
            **self.tokenizer([b["caption"] for b in batch]),
        }
        for key in ("image_index", "pair_index"):
            if key in batch[0]:
                out[key] = torch.tensor([b[key] for b in batch], dtype=torch.long)
        return out
