"""Training batches that make resuming exact and ranks consistent.

* The order of pairs is a seeded permutation per epoch; global batch ``s`` is positions
  ``[s·B, (s+1)·B)`` of it, and rank r takes its contiguous share. Resuming at step s needs no replay.
* Each pair's augmentation (one RandomResizedCrop + flip) is drawn from an RNG seeded by
  (seed, epoch, position), so it is the same whatever the worker, rank count or restart.
* The student and the online teacher see the same crop, each resized and normalised its own way.
* An image file that broke after indexing does not end a long run: its pair is replaced by the next
  readable image (deterministically, so resuming stays exact) and the file is listed in
  ``skipped_images.jsonl``. Several unreadable images in a row mean a missing folder, not a bad file:
  that stops the run with an error naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from ..data.images import image_problem, open_record
from ..data.index import ImageRecord, read_log_lines, write_text_atomic
from ..errors import DataError

MAX_UNREADABLE_IN_A_ROW = 8


@dataclass(frozen=True)
class View:
    """How one network wants its pixels: size and normalisation."""

    size: int
    mean: tuple
    std: tuple

    def __call__(self, img) -> torch.Tensor:
        img = TF.resize(img, [self.size, self.size], interpolation=T.InterpolationMode.BICUBIC, antialias=True)
        return TF.normalize(TF.to_tensor(img), self.mean, self.std)


class TrainPairs(Dataset):
    """Item (epoch, position) → one augmented (image, caption) pair, deterministically."""

    def __init__(self, records: list[ImageRecord], crop_scale: tuple, hflip: float, student: View,
                 teacher: View | None, seed: int, skipped_log: Path | None = None):
        self.records = records
        self.pairs = [(i, j) for i, r in enumerate(records) for j in range(len(r.captions))]
        self.crop_scale, self.hflip, self.seed = crop_scale, hflip, seed
        self.student_view, self.teacher_view = student, teacher
        self.skipped_log = skipped_log

    def __len__(self) -> int:
        return len(self.pairs)

    def _readable(self, i: int, j: int):
        """(record, caption index, image) of pair (i, j), or of the next image whose file still decodes."""
        for _ in range(MAX_UNREADABLE_IN_A_ROW):
            record = self.records[i]
            try:
                return record, j % len(record.captions), open_record(record.path, record.extra)
            except DataError as exc:
                self._log_skip(record, str(exc))
                i = (i + 1) % len(self.records)
        raise DataError(f"{MAX_UNREADABLE_IN_A_ROW} unreadable images in a row, the last {record.path}: "
                        "is the image folder still there? (see skipped_images.jsonl)")

    def _log_skip(self, record: ImageRecord, error: str) -> None:
        if self.skipped_log is not None:  # one short append per line: safe from several worker processes
            problem = error if "tar_member" in record.extra else image_problem(record.path)  # a shard is no image
            with open(self.skipped_log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"image_id": record.image_id, "path": str(record.path),
                                     "problem": problem}) + "\n")

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        epoch, position, index = key
        record, j, img = self._readable(*self.pairs[index])
        seed = int(np.random.SeedSequence([self.seed, epoch, position]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed also seeds accelerators, slowly
            top, left, h, w = T.RandomResizedCrop.get_params(img, list(self.crop_scale), [3 / 4, 4 / 3])
            flip = torch.rand(1).item() < self.hflip
        img = TF.crop(img, top, left, h, w)
        if flip:
            img = TF.hflip(img)
        item = {"image": self.student_view(img), "caption": record.captions[j], "image_id": record.image_id}
        if self.teacher_view is not None:
            item["teacher_image"] = self.teacher_view(img)
        return item


class CachedPairs:
    """A batch of keys (epoch, position, index) → the images' cached front-end tokens and the captions' token ids,
    gathered for the whole batch at once: nothing is decoded or tokenised during training, so a step costs only
    the trainable blocks. With several cached views (the evaluation view and rendering-augmented ones) each pair
    takes one, drawn from (seed, epoch, position), so resuming stays exact and ranks agree."""

    def __init__(self, records: list[ImageRecord], views: list, token_dim: int, tokenizer, seed: int = 0,
                 hard_negatives: str | None = None):
        self.views, self.token_dim, self.seed = views, token_dim, seed  # views: caches by id
        pairs = [(r, caption) for r in records for caption in r.captions]
        negatives = None
        if hard_negatives:  # the captions' phrasing: each pair's caption is drawn anew beside its negative (same draws)
            from data_prep.synth.negatives import any_hard_negative

            drawn = [any_hard_negative(r.extra.get("scene"), hard_negatives, f"{seed}/{r.image_id}/{k}")
                     for k, (r, _) in enumerate(pairs)]
            pairs = [(r, positive) for (r, _), (positive, _) in zip(pairs, drawn)]
            negatives = tokenizer.tokenize_all([negative for _, negative in drawn])
        self.image_ids = np.array([r.image_id for r, _ in pairs], dtype=np.int64)
        self.tokens = tokenizer.tokenize_all([caption for _, caption in pairs])
        self.negatives = negatives

    def __len__(self) -> int:
        return len(self.image_ids)

    def view_of(self, epoch: int, position: int) -> int:
        if len(self.views) == 1:
            return 0
        return int(np.random.SeedSequence([self.seed, epoch, position]).generate_state(1)[0]) % len(self.views)

    def batch(self, keys: list[tuple[int, int, int]]) -> dict:
        index = np.array([k[2] for k in keys], dtype=np.int64)
        views = np.array([self.view_of(epoch, position) for epoch, position, _ in keys])
        image_ids = self.image_ids[index]
        images = torch.empty(len(keys), self.views[0].dim // self.token_dim, self.token_dim)
        for v in np.unique(views):
            here = views == v
            images[torch.from_numpy(here)] = self.views[v].lookup(image_ids[here]).view(-1, *images.shape[1:])
        out = {"images": images, **self.tokens.take(index), "image_id": torch.from_numpy(image_ids)}
        if self.negatives is not None:
            taken = self.negatives.take(index)
            out.update(negative_ids=taken["input_ids"], negative_mask=taken["attention_mask"])
        return out


def skipped_images(log: Path, compact: bool = False) -> list[dict]:
    """The distinct files a run skipped, each with the number of times a batch met it (``times``): each worker and
    epoch logs its own encounters. ``compact``: rewrite the log as these entries, one line per file (at the end of a
    run, when no worker appends any more)."""
    seen: dict[str, dict] = {}
    for entry in read_log_lines(log):
        times = entry.get("times", 1)
        if entry["path"] in seen:
            seen[entry["path"]]["times"] += times
        else:
            seen[entry["path"]] = {**entry, "times": times}
    if compact and seen:
        write_text_atomic(log, "".join(json.dumps(e) + "\n" for e in seen.values()))
    return list(seen.values())


class StepSampler(Sampler):
    """Yields this rank's index keys for global batches ``start_step, start_step + 1, …, steps − 1``."""

    def __init__(self, n_items: int, global_batch: int, steps: int, seed: int, rank: int = 0, world: int = 1,
                 start_step: int = 0):
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by {world} ranks")
        if n_items < global_batch:
            raise ValueError(f"{n_items} training pairs are fewer than one batch of {global_batch}")
        self.n, self.batch, self.steps, self.seed = n_items, global_batch, steps, seed
        self.rank, self.world, self.start = rank, world, start_step
        self.per_epoch = n_items // global_batch  # the incomplete last batch of an epoch is dropped

    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        order, order_epoch = None, -1
        local = self.batch // self.world
        for step in range(self.start, self.steps):
            epoch, within = divmod(step, self.per_epoch)
            if epoch != order_epoch:
                order, order_epoch = self._order(epoch), epoch
            first = within * self.batch + self.rank * local
            yield [(epoch, first + k, order[first + k]) for k in range(local)]

    def __len__(self) -> int:
        return self.steps - self.start
