"""Training pairs streamed from webdataset tar shards in the layout img2dataset writes (CC3M, CC12M).

img2dataset's ``--output_format webdataset`` writes ``00000.tar, 00001.tar, …``; each sample is a key
(``000000123``) with ``.jpg`` (or ``.png``/``.webp``), ``.txt`` (the caption) and ``.json`` (url, size,
status …), next to ``00000_stats.json`` and ``00000.parquet``. Images that fail to decode are
skipped and logged with their shard and key: web crawls always contain some, and one must not end a
multi-hour run.

For several ranks, shards are split across nodes and workers (``resampled=False``) or sampled with
replacement (``resampled=True``), the maintainers' recommendation for resumable training on shards.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import webdataset as wds

from ..errors import DataError
from .images import open_rgb

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def shard_urls(source: str | Path | list[str]) -> list[str] | str:
    """A directory becomes its sorted ``*.tar`` files; a brace pattern or list is passed through."""
    if isinstance(source, (list, tuple)):
        return [str(s) for s in source]
    path = Path(source)
    if path.is_dir():
        shards = sorted(str(p) for p in path.glob("*.tar"))
        if not shards:
            raise DataError(f"{path}: no .tar shards in this folder")
        return shards
    return str(source)


class _DecodePair:
    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, sample: dict) -> dict | None:
        where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if ext is None or "txt" not in sample:
            log.warning("skipping %s: no image or no caption (has %s)", where,
                        sorted(k for k in sample if not k.startswith("__")))
            return None
        try:
            image = open_rgb(sample[ext], name=where)
        except DataError as exc:
            log.warning("skipping %s", exc)
            return None
        return {"image": self.transform(image), "caption": sample["txt"].decode("utf-8").strip(),
                "key": sample["__key__"]}


def webdataset_pairs(source: str | Path | list[str], transform: Callable, shuffle: int = 0,
                     resampled: bool = False, seed: int = 0) -> wds.WebDataset:
    """An IterableDataset of {'image', 'caption', 'key'} dicts; batch it with ``PairCollator``."""
    dataset = wds.WebDataset(
        shard_urls(source),
        resampled=resampled,
        shardshuffle=False if not shuffle else shuffle,
        nodesplitter=None if resampled else wds.split_by_node,
        seed=seed,
        empty_check=False,
    )
    if shuffle:
        dataset = dataset.shuffle(shuffle)
    return dataset.map(_DecodePair(transform)).select(lambda s: s is not None)
