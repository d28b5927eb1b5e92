"""A student's frozen image front end, computed once per dataset split and read back by image id.

    source = CachedFrontEnd(student, "runs/study-embedded/cache/frontend")
    emb = embed_split(student, split, source, tokenizer)     # instead of a pixel transform

The first use of a split computes the frozen part's output for every image (the evaluation view) into a
folder named by dataset, split and a hash of the fingerprint (front end, its weights, preprocessing, the
split's index file), so several front ends share one root and a changed one never reads another's rows.
An interrupted build resumes with the missing shards (the target cache's format and code). Training and
evaluation then run only the trainable part: no image is decoded again.

View 0 is the evaluation view; views 1, 2, … of a training split are rendering-augmented copies
(``data.rendering``), each image's augmentation seeded by (view, image id), cached the same way. The
teacher's target stays the clean image's, so distillation teaches the student to see through the rendering.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.datasets import RetrievalSplit
from ..data.images import open_rgb
from ..data.index import load_manifest, read_split
from ..data.rendering import VERSION as RENDERING_VERSION, render_augment
from ..data.transforms import ImageTransformConfig, eval_transform
from ..errors import ConfigError, DataError
from ..teachers.cache import TargetCache, build_feature_cache, dataset_fingerprint


class CachedImages(Dataset):
    """Each image's cached front-end tokens [T, C], in ``records`` order (``image_index`` = row)."""

    def __init__(self, records, cache: TargetCache, token_dim: int):
        self.records, self.cache, self.token_dim = records, cache, token_dim

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        row = self.cache.lookup([self.records[i].image_id])[0]
        return {"image": row.view(-1, self.token_dim), "image_index": i}


class RenderedViews(Dataset):
    """View ``view`` ≥ 1 of each image: rendering-augmented (seeded by view and image id), then the evaluation
    resize and normalisation."""

    def __init__(self, records, view: int, preprocess: ImageTransformConfig):
        self.records, self.view, self.transform = records, view, eval_transform(preprocess)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        pixels = torch.from_numpy(np.array(open_rgb(record.path))).permute(2, 0, 1)
        seed = int(np.random.SeedSequence([self.view, record.image_id % 2**63]).generate_state(1)[0])
        augmented = render_augment(pixels, torch.Generator().manual_seed(seed))
        return {"image": self.transform(Image.fromarray(augmented.permute(1, 2, 0).numpy())), "image_index": i}


class CachedFrontEnd:
    def __init__(self, student, root: str | Path, device: str | torch.device = "cpu", batch_size: int = 256,
                 num_workers: int = 0):
        front = student.image_embed
        if not front.cacheable:
            raise ConfigError("student.frontend_cache: this student's image front end trains from the pixels "
                              "(nothing frozen to cache); unset it")
        self.front, self.root, self.device = front, Path(root), device
        self.batch_size, self.num_workers = batch_size, num_workers
        self.preprocess = ImageTransformConfig(size=student.cfg.image_size)
        digest = hashlib.sha256()
        for name, tensor in sorted(front.frozen_modules().state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        self.weights = digest.hexdigest()[:16]

    def fingerprint(self, index_dir: str | Path, split: str, view: int = 0) -> dict:
        return {"frontend": self.front.describe(), "weights_sha256": self.weights,
                "preprocess": {"size": self.preprocess.size, "mean": list(self.preprocess.mean),
                               "std": list(self.preprocess.std), "resize": "bicubic, square, no crop"},
                "view": "evaluation" if view == 0 else f"rendering augmentation v{RENDERING_VERSION}, seed {view}",
                "dataset": dataset_fingerprint(index_dir, split)}

    def cache(self, index_dir: str | Path, split: str, view: int = 0) -> TargetCache:
        """The split's cached front-end outputs (of ``view``), computed first if missing or incomplete."""
        fp = self.fingerprint(index_dir, split, view)
        key = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:10]
        folder = self.root / f"{load_manifest(index_dir)['dataset']}-{split}-v{view}-{key}"
        try:
            return TargetCache(folder, fp)
        except DataError:  # not there yet, or interrupted: compute what is missing
            images = RenderedViews(read_split(index_dir, split), view, self.preprocess) if view else None
            # Augmenting is many small tensor ops: in loader processes (one thread each) they run ~10× faster
            # than on the main process's thread pool of a busy machine; the main process then keeps to one
            # thread for the stem (2 cores: 19.5 s instead of 23.1 s for 5,000 rendered images).
            workers = max(1, self.num_workers) if view else self.num_workers
            threads = torch.get_num_threads()
            if view:
                torch.set_num_threads(1)
            try:
                build_feature_cache(self.front.frozen, fp, index_dir, split, folder, self.preprocess, self.batch_size,
                                    device=self.device, num_workers=workers,
                                    desc=f"front end {split}" + (f" view {view}" if view else ""), images=images)
            finally:
                torch.set_num_threads(threads)
            return TargetCache(folder, fp)

    def images(self, split: RetrievalSplit) -> CachedImages:
        if split.index_dir is None:
            raise ConfigError(f"{split.name}: a cached front end needs a split read from a prepared index")
        return CachedImages(split.records, self.cache(split.index_dir, split.split), self.front.token_dim)
