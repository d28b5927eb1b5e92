"""Index Visual Genome's region descriptions as training pairs, as the thesis' early MM-D2V2 runs used them.

The thesis code (``datasets_/multimodal_datasets.py``, ``VisualGenome``) pairs each whole image with each of its region
phrases: 108,077 images and 5.4 M phrases (4.7 tokens on average) from ``region_descriptions.json``
(``[{"id": <image id>, "regions": [{"region_id", "phrase", "x", "y", "width", "height", …}, …]}, …]``) and the images
of ``images.zip`` / ``images2.zip`` (``VG_100K/``, ``VG_100K_2/``). The index is the kit's (``manifest.json`` +
``train.jsonl``: one record per image, its phrases as captions), so the trainer makes one pair per phrase.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from data_prep.karpathy import SHOW_FIRST, read_json
from mmd2v2_core.data.images import check_image
from mmd2v2_core.data.index import write_index
from mmd2v2_core.errors import DataError
from mmd2v2_core.progress import progress

IMAGE_FOLDERS = ("", "VG_100K", "VG_100K_2")  # where an image may be under --images


def _entries(data: object, path: Path) -> list[tuple[int, list[str], list[int]]]:
    """(image id, phrases, region ids) per image, checked field by field."""
    if not isinstance(data, list) or not data:
        raise DataError(f"{path}: top level: expected a non-empty list of images with 'id' and 'regions'")
    out = []
    for i, entry in enumerate(data):
        where = f"[{i}]"
        if not isinstance(entry, dict) or "regions" not in entry or ("id" not in entry and "image_id" not in entry):
            raise DataError(f"{path}: {where}: expected an object with 'id' and 'regions', got {entry!r:.80}")
        image_id = entry.get("id", entry.get("image_id"))
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise DataError(f"{path}: {where}.id: expected an integer, got {image_id!r:.40}")
        if not isinstance(entry["regions"], list):
            raise DataError(f"{path}: {where}.regions: expected a list, got {entry['regions']!r:.40}")
        phrases, region_ids = [], []
        for j, region in enumerate(entry["regions"]):
            phrase = region.get("phrase") if isinstance(region, dict) else None
            if not isinstance(phrase, str):
                raise DataError(f"{path}: {where}.regions[{j}].phrase: expected a string, got {phrase!r:.40}")
            if phrase.strip():  # a handful of regions have an empty phrase: nothing to learn from
                phrases.append(phrase.strip())
                region_ids.append(region.get("region_id", j))
        if phrases:
            out.append((image_id, phrases, region_ids))
    return out


def _find(images: Path, image_id: int) -> Path:
    for folder in IMAGE_FOLDERS:
        candidate = images / folder / f"{image_id}.jpg"
        if candidate.exists():
            return candidate
    return images / IMAGE_FOLDERS[1] / f"{image_id}.jpg"


def index_visual_genome(regions_json: str | Path, images: str | Path, out_dir: str | Path, verify: str = "header",
                        on_bad_image: str = "skip", workers: int | None = None) -> dict:
    """Validate ``region_descriptions.json``, check every image (``verify``: decode, header, exists), write the index.
    ``on_bad_image='skip'`` (default: VG's download lacks a few images) drops and lists them; 'error' stops."""
    regions_json, images, out_dir = Path(regions_json), Path(images), Path(out_dir)
    if not images.is_dir():
        raise DataError(f"{images}: image folder not found")
    entries = _entries(read_json(regions_json), regions_json)
    paths = [_find(images, image_id) for image_id, _, _ in entries]
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) * 2)) as pool:
        checks = list(progress(pool.map(lambda p: check_image(p, verify), paths), total=len(paths),
                               desc=f"checking images ({verify})"))
    bad = [(image_id, path, why) for (image_id, _, _), path, (why, _) in zip(entries, paths, checks) if why]
    if bad and (on_bad_image == "error" or len(bad) == len(entries)):
        first = "; ".join(f"{p} ({why})" for _, p, why in bad[:SHOW_FIRST])
        raise DataError(f"{regions_json}: {len(bad)} of {len(entries)} images are missing or unreadable under "
                        f"{images}, first: {first}" + ("" if len(bad) < len(entries) else "; is --images right?"))
    dropped = {image_id for image_id, _, _ in bad}
    rows = [{"image_id": image_id, "path": os.path.relpath(path, images), "captions": phrases, "sentids": region_ids,
             "extra": {}}
            for (image_id, phrases, region_ids), path in zip(entries, paths) if image_id not in dropped]
    manifest = {"dataset": "visual-genome-regions", "source_json": str(regions_json.resolve()),
                "image_root": str(images.resolve()), "verify": verify,
                "dropped": [{"image_id": i, "file": str(p), "reason": why} for i, p, why in bad], "notes": []}
    return write_index(out_dir, manifest, {"train": rows})
