"""Teacher targets computed once, stored as fp16 shards that training memory-maps.

Layout of a cache folder::

    meta.json          format, fingerprint, sizes
    ids.npy            int64 image ids, in the split's order (row r of the cache is image ids[r])
    shard_00000.npy    float16 [shard_size, D] (the last shard may be shorter)

The **fingerprint** names everything the targets depend on: teacher name and weight hash, target
kind, preprocessing (size, mean, std, resize), and the dataset (name, split, hash of its index file).
Opening a cache with another fingerprint is refused with the fields that differ — a cache never
silently belongs to another teacher. Each shard is written to a temporary file and renamed, so a
killed run leaves only whole shards; rerunning computes just the missing ones. Under ``torchrun``
rank r computes shards r, r + world, r + 2·world … (CC3M/CC12M scale).

Targets come from one fixed, un-augmented view per image (the evaluation resize); training with
augmented views needs the online teacher instead (``train`` keeps both paths).

The same format holds a text model's features of every caption of a split (``build_caption_cache``: row r is
caption r of the split, ``ids.npy`` the caption rows), for the closed-form baselines on real data.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..data.datasets import ImageSet
from ..data.images import open_rgb
from ..data.index import load_manifest, read_split, write_text_atomic
from ..data.tokenizer import CaptionTokenizer
from ..data.transforms import ImageTransformConfig, eval_transform
from ..errors import DataError, clean_worker_errors
from ..lock import folder_lock
from ..progress import progress
from .registry import Teacher
from .targets import compute_target

CACHE_FORMAT = "mmd2v2-target-cache"
CACHE_VERSION = 1


def dataset_fingerprint(index_dir: str | Path, split: str) -> dict:
    index_dir = Path(index_dir)
    digest = hashlib.sha256((index_dir / f"{split}.jsonl").read_bytes()).hexdigest()[:16]
    return {"name": load_manifest(index_dir)["dataset"], "split": split, "index_sha256": digest}


def fingerprint(teacher: Teacher, kind: str, top_k: int, preprocess: ImageTransformConfig, dataset: dict) -> dict:
    return {
        "teacher": teacher.spec.name + (" (tiny random-init)" if teacher.tiny else ""),
        "weights_sha256": teacher.weight_hash(),
        "target": kind if kind != "layer_avg" else f"layer_avg(top {top_k})",
        "preprocess": {"size": preprocess.size, "mean": list(preprocess.mean), "std": list(preprocess.std),
                       "resize": "bicubic, square, no crop"},
        "dataset": dataset,
    }


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: cache has {a!r}, wanted {b!r}")
    return out


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _shard_path(folder: Path, s: int) -> Path:
    return folder / f"shard_{s:05d}.npy"


def _shard_problem(path: Path, rows: int, dim: int) -> str | None:
    if not path.is_file():
        return "missing"
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        return f"unreadable ({exc})"
    if arr.shape != (rows, dim) or arr.dtype != np.float16:
        return f"shape {arr.shape} {arr.dtype}, expected ({rows}, {dim}) float16"
    return None


@dataclass(frozen=True)
class CacheBuild:
    folder: Path
    computed: list[int]
    reused: list[int]


def build_cache(teacher: Teacher, kind: str, index_dir: str | Path, split: str, out_dir: str | Path,
                preprocess: ImageTransformConfig, top_k: int = 8, batch_size: int = 64, shard_size: int = 4096,
                device: str = "cpu", num_workers: int = 0, overwrite: bool = False) -> CacheBuild:
    """The teacher's targets of every image of a split (one un-augmented view each)."""
    teacher = teacher.to(device)
    prefix = _prefix_tokens(teacher)

    def targets(images: torch.Tensor) -> torch.Tensor:
        return compute_target(teacher(images), kind, top_k, prefix)

    fp = fingerprint(teacher, kind, top_k, preprocess, dataset_fingerprint(index_dir, split))
    return build_feature_cache(targets, fp, index_dir, split, out_dir, preprocess, batch_size, shard_size, device,
                               num_workers, overwrite, desc=f"targets {kind}")


@torch.no_grad()
def build_feature_cache(extract: Callable[[torch.Tensor], torch.Tensor], fp: dict, index_dir: str | Path, split: str,
                        out_dir: str | Path, preprocess: ImageTransformConfig, batch_size: int = 64,
                        shard_size: int = 4096, device: str = "cpu", num_workers: int = 0, overwrite: bool = False,
                        desc: str = "features", images: Dataset | None = None) -> CacheBuild:
    """One row per image of a split: ``extract`` (a frozen network: teacher targets, a student's frozen front end)
    applied to the evaluation view (or to ``images``, a dataset over the split's records yielding another view),
    flattened, stored as fp16 shards under the fingerprint ``fp``."""
    records = read_split(index_dir, split)
    probe = {"image": eval_transform(preprocess)(_first_image(records))[None]}
    images = images if images is not None else ImageSet(records, eval_transform(preprocess))
    return _write_cache(lambda batch: extract(batch["image"].to(device)), fp, [r.image_id for r in records], images,
                        probe, out_dir, batch_size, shard_size, num_workers, overwrite, desc)


@torch.no_grad()
def build_caption_cache(teacher: Teacher, kind: str, tokenizer: CaptionTokenizer, index_dir: str | Path, split: str,
                        out_dir: str | Path, batch_size: int = 256, shard_size: int = 65536, device: str = "cpu",
                        overwrite: bool = False) -> CacheBuild:
    """A text model's ``kind`` features (``targets.py``: ``cls``, ``mean`` …) of every caption of a split, in the
    split's caption order."""
    captions = [c for r in read_split(index_dir, split) for c in r.captions]
    teacher = teacher.to(device)

    def features(tokens: dict) -> torch.Tensor:
        return compute_target(teacher(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)), kind)

    fp = {"teacher": teacher.spec.name + (" (tiny random-init)" if teacher.tiny else ""),
          "weights_sha256": teacher.weight_hash(), "target": kind, "rows": "captions",
          "tokenizer": {"name": tokenizer.name, "max_length": tokenizer.max_length},
          "dataset": dataset_fingerprint(index_dir, split)}
    return _write_cache(features, fp, range(len(captions)), captions, tokenizer(captions[:1]), out_dir, batch_size,
                        shard_size, 0, overwrite, f"caption features {kind}", collate=tokenizer)


def _write_cache(extract: Callable, fp: dict, ids, rows: Dataset, probe, out_dir: str | Path, batch_size: int,
                 shard_size: int, num_workers: int, overwrite: bool, desc: str, collate=None) -> CacheBuild:
    """``extract`` (a batch of ``rows`` as ``collate`` makes it → [B, …]) on every row, flattened, in fp16 shards;
    row r has id ``ids[r]``; ``probe``: one batch, to read the feature size off."""
    with folder_lock(out_dir, "a cache build", "choose another cache folder"):  # under torchrun rank 0 holds it for all ranks
        return _write_locked(extract, fp, ids, rows, probe, Path(out_dir), batch_size, shard_size, num_workers,
                             overwrite, desc, collate)


def _write_locked(extract, fp, ids, rows, probe, out_dir: Path, batch_size, shard_size, num_workers, overwrite, desc,
                  collate) -> CacheBuild:
    n, n_shards = len(rows), -(-len(rows) // shard_size)
    rank, world = _dist_rank_world()
    meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "fingerprint": fp, "items": n,
            "dim": extract(probe).flatten(1).shape[1], "shard_size": shard_size, "shards": n_shards}
    meta_path = out_dir / "meta.json"
    diff = ["no meta.json yet"]
    if meta_path.is_file():
        old = _read_meta(meta_path)
        diff = _differences({**old, "fingerprint": old.get("fingerprint", {})}, meta)
        if diff and not overwrite:
            raise DataError(f"{out_dir}: holds other targets: " + "; ".join(diff) +
                            ". Choose another --out or pass --overwrite to recompute.")
        if diff:
            for s in range(int(old.get("shards", 0))):
                _shard_path(out_dir, s).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0 and (diff or not (out_dir / "ids.npy").is_file()):  # a complete cache's files stay untouched
        write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
        ids_tmp = out_dir / f".ids.tmp{os.getpid()}.npy"
        np.save(ids_tmp, np.array(list(ids), dtype=np.int64))
        os.replace(ids_tmp, out_dir / "ids.npy")

    if world == 1:  # half-written files of a killed run (ranks of a live distributed run may be writing theirs)
        for leftover in out_dir.glob(".*.tmp*.npy"):
            leftover.unlink()
    mine = [s for s in range(rank, n_shards, world)]
    todo = [s for s in mine if _shard_problem(_shard_path(out_dir, s), min(shard_size, n - s * shard_size),
                                              meta["dim"])]
    bar = progress(total=sum(min(shard_size, n - s * shard_size) for s in todo), desc=desc)
    for s in todo:
        chunks = []
        for batch in clean_worker_errors(DataLoader(Subset(rows, range(s * shard_size, min((s + 1) * shard_size, n))),
                                                    batch_size=batch_size, num_workers=num_workers,
                                                    collate_fn=collate)):
            chunks.append(extract(batch).flatten(1).cpu())
            bar.update(len(chunks[-1]))
        path = _shard_path(out_dir, s)
        tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npy")
        np.save(tmp, torch.cat(chunks).numpy().astype(np.float16))
        os.replace(tmp, path)
    bar.close()
    return CacheBuild(out_dir, computed=todo, reused=[s for s in mine if s not in todo])


def _first_image(records):
    return open_rgb(records[0].path)


def _prefix_tokens(teacher: Teacher) -> int:
    return getattr(teacher.model, "num_prefix_tokens", 1)


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); recompute the cache with `mmd2v2 targets ... --overwrite`") \
            from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: not a target cache's meta.json")
    return meta


class TargetCache:
    """Read side: memory-mapped shards, looked up by image id. Never loads the teacher."""

    def __init__(self, folder: str | Path, expected: dict | None = None):
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{self.folder}: no meta.json — not a target cache (create one with `mmd2v2 targets`)")
        self.meta = _read_meta(meta_path)
        if self.meta.get("format") != CACHE_FORMAT or self.meta.get("version") != CACHE_VERSION:
            raise DataError(f"{meta_path}: not a version-{CACHE_VERSION} target cache")
        if expected is not None:
            diff = _differences(self.meta["fingerprint"], expected)
            if diff:
                raise DataError(f"{self.folder}: stale target cache: " + "; ".join(diff) +
                                ". Recompute it with `mmd2v2 targets ... --overwrite`.")
        n, size, dim = self.meta["items"], self.meta["shard_size"], self.meta["dim"]
        problems = {s: _shard_problem(_shard_path(self.folder, s), min(size, n - s * size), dim)
                    for s in range(self.meta["shards"])}
        bad = {s: p for s, p in problems.items() if p}
        if bad:
            listed = ", ".join(f"{_shard_path(self.folder, s).name} ({p})" for s, p in list(bad.items())[:5])
            raise DataError(f"{self.folder}: {len(bad)} of {len(problems)} shards incomplete: {listed}. "
                            "Rerun `mmd2v2 targets` with the same arguments to finish it.")
        self.shards = [np.load(_shard_path(self.folder, s), mmap_mode="r") for s in range(self.meta["shards"])]
        try:
            ids = np.load(self.folder / "ids.npy")
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.folder / 'ids.npy'}: missing or unreadable ({type(exc).__name__}). "
                            "Rerun `mmd2v2 targets` with the same arguments to restore it.") from None
        self.row_of = {int(i): r for r, i in enumerate(ids)}

    @property
    def dim(self) -> int:
        return self.meta["dim"]

    def __len__(self) -> int:
        return self.meta["items"]

    def all(self) -> torch.Tensor:
        """float32 [N, D]: every target, in the split's order (e.g. to fit a whitening on the training targets)."""
        return torch.from_numpy(np.concatenate([np.asarray(shard) for shard in self.shards]).astype(np.float32))

    def lookup(self, image_ids) -> torch.Tensor:
        """float32 [B, D] targets of these image ids."""
        size = self.meta["shard_size"]
        try:
            rows = np.array([self.row_of[int(i)] for i in image_ids], dtype=np.int64)
        except KeyError as exc:
            raise DataError(f"{self.folder}: image id {exc.args[0]} is not in this cache "
                            f"({self.meta['fingerprint']['dataset']})") from None
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        shard_of = rows // size
        for s in np.unique(shard_of):  # one gather per shard, not one per row: a training batch is one call
            here = shard_of == s
            out[here] = self.shards[s][rows[here] % size]
        return torch.from_numpy(out)
