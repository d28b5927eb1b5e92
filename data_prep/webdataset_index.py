"""Index img2dataset webdataset shards (CC3M, CC12M) for training without unpacking them.

img2dataset (``--output_format webdataset``) writes ``00000.tar, 00001.tar, …``; a sample is a key with ``.jpg``
(``.png``, ``.webp``) and ``.txt``. One pass over each shard records, per sample, where its image bytes lie in the tar
(member name, offset, size) and its caption; the kit's index (``manifest.json`` + ``train.jsonl``) then lists one
record per sample whose path is the shard, and the trainer reads each image in place
(``mmd2v2_core.data.images.open_record``). So a web dataset joins COCO in one seeded, resumable sampler, like any
other source. Images are not decoded here (a crawl of millions always holds some broken ones): training skips and
logs those, as it does any image that breaks.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from mmd2v2_core.data.index import write_index
from mmd2v2_core.errors import DataError
from mmd2v2_core.progress import progress

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def _samples(shard: Path) -> tuple[list[dict], int]:
    """(samples with an image and a caption, count of samples missing one) of one shard."""
    members: dict[str, dict] = {}
    try:
        with tarfile.open(shard) as tar:
            for info in tar:
                if not info.isfile() or "." not in info.name:
                    continue
                key, ext = info.name.split(".", 1)
                sample = members.setdefault(key, {})
                if ext.lower() in IMAGE_EXTENSIONS:
                    sample["image"] = {"name": info.name, "offset": info.offset_data, "size": info.size}
                elif ext == "txt":
                    sample["caption"] = tar.extractfile(info).read().decode("utf-8", "replace").strip()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{shard}: not a readable tar shard ({exc})") from None
    complete = [{"key": k, **v} for k, v in members.items() if "image" in v and v.get("caption")]
    return complete, len(members) - len(complete)


def index_webdataset(shards: str | Path, out_dir: str | Path, name: str | None = None,
                     limit: int | None = None) -> dict:
    """Index the ``*.tar`` shards of a folder (all, or the first ``limit`` samples in shard order)."""
    shards, out_dir = Path(shards), Path(out_dir)
    files = sorted(shards.glob("*.tar")) if shards.is_dir() else []
    if not files:
        raise DataError(f"{shards}: no .tar shards in this folder (img2dataset --output_format webdataset)")
    rows, incomplete = [], 0
    for shard in progress(files, desc="indexing shards"):
        samples, missing = _samples(shard)
        incomplete += missing
        for sample in samples:
            rows.append({"image_id": len(rows), "path": shard.name, "captions": [sample["caption"]],
                         "sentids": [len(rows)], "extra": {"key": sample["key"], "tar_member": sample["image"]}})
        if limit and len(rows) >= limit:
            rows = rows[:limit]
            break
    if not rows:
        raise DataError(f"{shards}: none of its samples has both an image and a .txt caption")
    manifest = {"dataset": name or out_dir.name, "source": "webdataset", "image_root": str(shards.resolve()),
                "shards": len(files), "limit": limit, "dropped": [],
                "notes": [f"{incomplete} sample(s) without an image or a caption left out"] if incomplete else []}
    return write_index(out_dir, manifest, {"train": rows})
