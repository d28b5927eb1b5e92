"""Evaluation sets over a prepared index, and the batching of training pairs.

``RetrievalSplit``: the evaluation view — unique images, all captions, and for each caption the row of
its image (``text_to_image``), which is exactly what the retrieval metric consumes. The training pairs (one per
caption, as the thesis' 566,747 COCO pairs) are ``mmd2v2_core.train.data.TrainPairs`` or a WebDataset stream, which
``PairCollator`` batches, tokenising a whole batch at once — or ``CachedPairs``, which gathers whole batches itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .images import open_rgb
from .index import ImageRecord, load_manifest, read_split
from .tokenizer import CaptionTokenizer


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
        name = f"{load_manifest(index_dir)['dataset']}/{split}"
        return cls.from_records(name, read_split(index_dir, split), Path(index_dir), split)

    def images(self, transform: Callable) -> ImageSet:
        return ImageSet(self.records, transform)


class PairCollator:
    """Batches pair items: tensors stacked (``image`` → ``images``), numbers made a tensor, captions tokenised
    (``input_ids``, ``attention_mask``; the texts kept as ``captions``), anything else listed. Picklable, so it
    works in DataLoader workers."""

    def __init__(self, tokenizer: CaptionTokenizer):
        self.tokenizer = tokenizer

    def __call__(self, items: list[dict]) -> dict:
        batch = {}
        for key, first in items[0].items():
            values = [it[key] for it in items]
            if key == "caption":
                batch.update(captions=values, **self.tokenizer(values))
            elif isinstance(first, torch.Tensor):
                batch["images" if key == "image" else key] = torch.stack(values)
            elif isinstance(first, (int, np.integer)):
                batch[key] = torch.tensor(values, dtype=torch.long)
            else:
                batch[key] = values
        return batch
