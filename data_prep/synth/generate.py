"""Generate the synthetic datasets: images, the Karpathy JSON, and the prepared index.

Two domains, mirroring the study's benchmarks:

* ``synth-coco`` — train / val / test, test = 5,000 images (the COCO 5K analogue), ``coco`` look and phrasing;
* ``synth-flickr`` — a 1,000-image test split only, ``flickr`` look and phrasing, never trained on
  (the zero-shot transfer analogue of Flickr30K 1K).

Output of ``generate(out, "embedded")``::

    out/synth-coco/dataset_synth-coco.json    Karpathy format, plus a ``scene`` field per image
    out/synth-coco/images/{train,val,test}/…  JPEGs (``filepath`` = split folder, as COCO's train2014/val2014)
    out/synth-coco/manifest.json, *.jsonl     the prepared index, written by the real-data indexer
    out/synth-flickr/…                        same, images in one flat folder (no ``filepath``, as Flickr30K)

Scenes and captions are sampled sequentially from one seeded RNG (uniqueness needs the history);
images are rendered in parallel, each from its own seed, so the bytes do not depend on scheduling.
A domain is built in ``<name>.partial`` and renamed when complete; a rerun with the same parameters
reuses it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from multiprocessing import get_context
from pathlib import Path

from mmd2v2_core.errors import DataError
from mmd2v2_core.progress import progress

from ..karpathy import index_karpathy
from .captions import captions_for, karpathy_tokens
from .render import STYLE_TRAITS, render
from .scenes import sample_unique_scenes

GENERATOR_VERSION = 2
DOMAINS = {"synth-coco": "coco", "synth-flickr": "flickr"}  # domain -> rendering and phrasing style
# Splits are sampled test first, so the test set does not change when the train size does.
SPLIT_ORDER = ("test", "val", "train")
PROFILES = {
    "smoke": {"image_size": 64, "synth-coco": {"train": 512, "val": 128, "test": 256}, "synth-flickr": {"test": 128}},
    "embedded": {
        "image_size": 128,
        # 8,000 training images (≈40k pairs): a 20-minute CPU study never sees more in any run.
        "synth-coco": {"train": 8_000, "val": 1_000, "test": 5_000},
        "synth-flickr": {"test": 1_000},
    },
}
JPEG_QUALITY = 90


def captions_per_image(i: int) -> int:
    """Five captions, a few images six or seven, as in COCO (5,000 test images → 25,020 captions; COCO 5K has 25,010)."""
    if i % 1000 == 1:
        return 7
    if i % 500 == 2:
        return 6
    return 5


def _render_job(job: tuple) -> None:
    path, scene, size, traits, seed = job
    render(scene, size, traits, seed).save(path, quality=JPEG_QUALITY)


def _build_entries(domain: str, splits: dict[str, int], seed: int) -> list[dict]:
    style = DOMAINS[domain]
    rng = random.Random(f"{seed}/{domain}")
    seen: set = set()
    by_split = {s: sample_unique_scenes(rng, splits[s], seen) for s in SPLIT_ORDER if s in splits}
    entries, sentid = [], 0
    for split in SPLIT_ORDER:
        for i, scene in enumerate(by_split.get(split, [])):
            raws = captions_for(scene, style, captions_per_image(i), rng)
            entry = karpathy_entry(len(entries), sentid, f"{domain}_{split}_{i:06d}.jpg", split, scene, raws)
            if style == "coco":  # COCO keeps images in per-split folders, Flickr30K in one folder
                entry = {"filepath": split, **entry}
            entries.append(entry)
            sentid += len(raws)
    return entries


def karpathy_entry(imgid: int, first_sentid: int, filename: str, split: str, scene: dict, raws: list[str]) -> dict:
    """One image of a Karpathy JSON, with its scene."""
    sentences = [{"tokens": karpathy_tokens(r), "raw": r, "imgid": imgid, "sentid": first_sentid + k}
                 for k, r in enumerate(raws)]
    return {"sentids": [s["sentid"] for s in sentences], "filename": filename, "imgid": imgid, "split": split,
            "sentences": sentences, "scene": scene}


def render_seed(seed: int, domain: str, entry: dict) -> tuple[int, ...]:
    """The seed an image of ``domain`` is drawn from (the same scene redrawn with it keeps its noise)."""
    return seed, list(DOMAINS).index(domain), SPLIT_ORDER.index(entry["split"]), entry["imgid"]


def generate_domain(out_dir: Path, domain: str, splits: dict[str, int], image_size: int, seed: int,
                    workers: int | None = None, overwrite: bool = False) -> Path:
    params = {"generator_version": GENERATOR_VERSION, "domain": domain, "splits": splits,
              "image_size": image_size, "seed": seed}
    traits = STYLE_TRAITS[DOMAINS[domain]]
    return write_dataset(out_dir, domain, params, lambda: [
        (e, traits, render_seed(seed, domain, e)) for e in _build_entries(domain, splits, seed)],
        image_size, workers, overwrite)


def write_dataset(out_dir: Path, name: str, params: dict, make_entries, image_size: int,
                  workers: int | None = None, overwrite: bool = False) -> Path:
    """A prepared synthetic dataset from ``make_entries()`` — (Karpathy entry, rendering traits, render seed)
    per image —, reused when ``out_dir`` holds one made with the same ``params``."""
    params_file = out_dir / "synth.json"
    if out_dir.exists():
        old = json.loads(params_file.read_text()) if params_file.is_file() else None
        if old == params and (out_dir / "manifest.json").is_file():
            return out_dir
        if not overwrite:
            raise DataError(f"{out_dir}: exists with other generation parameters ({old}); "
                            "pass --overwrite to replace it or choose another --out")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    images = tmp / "images"
    entries, jobs = [], []
    for entry, traits, seed in make_entries():
        folder = images / entry.get("filepath", "")
        folder.mkdir(parents=True, exist_ok=True)
        entries.append(entry)
        jobs.append((folder / entry["filename"], entry["scene"], image_size, traits, seed))
    workers = workers or os.cpu_count() or 1
    if workers > 1:
        # spawn, not fork: a fork of a process whose BLAS/OpenMP threads already ran (a notebook kernel that
        # trained, a test session) can deadlock in the child
        with get_context("spawn").Pool(workers) as pool:
            for _ in progress(pool.imap_unordered(_render_job, jobs, chunksize=64), total=len(jobs),
                              desc=f"rendering {name}"):
                pass
    else:
        for job in progress(jobs, desc=f"rendering {name}"):
            _render_job(job)
    json_path = tmp / f"dataset_{name}.json"
    json_path.write_text(json.dumps({"images": entries, "dataset": name}), encoding="utf-8")
    # The same indexer as for real COCO/Flickr30K: the synthetic JSON is read back like a downloaded one.
    index_karpathy(json_path, images, tmp, verify="header", workers=workers)
    (tmp / "synth.json").write_text(json.dumps(params, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def generate(out: str | Path, profile: str = "embedded", seed: int = 0, workers: int | None = None,
             overwrite: bool = False) -> dict[str, Path]:
    """Generate both synthetic domains under ``out``; returns {domain: prepared dataset directory}."""
    if profile not in PROFILES:
        raise DataError(f"unknown synthetic profile {profile!r}; choose one of {sorted(PROFILES)}")
    scale = PROFILES[profile]
    out = Path(out)
    return {
        domain: generate_domain(out / domain, domain, scale[domain], scale["image_size"], seed, workers, overwrite)
        for domain in DOMAINS
    }
