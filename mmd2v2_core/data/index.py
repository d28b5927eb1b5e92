"""The prepared-dataset index: what ``mmd2v2 data karpathy`` and ``mmd2v2 data synth`` write, and
what every dataset class reads.

A prepared dataset is a directory holding ``manifest.json`` and one ``<split>.jsonl`` per split, one
line per image: ``{"image_id", "path", "captions", "sentids", "extra"}``. ``path`` is relative to the
manifest's ``image_root`` (itself relative to the index directory unless absolute) and stays inside it
(no ``../``, not absolute) unless the index was made with ``--allow-images-outside-root``, which the
manifest records (``images_outside_root``). ``extra`` carries any non-standard fields of the Karpathy
entry (``cocoid``, the synthetic ``scene`` …).

Split files are written first and the manifest last, each through a temporary file and a rename, so
an interrupted run never leaves an index that looks complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

INDEX_FORMAT = "mmd2v2-karpathy-index"
INDEX_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    path: Path
    captions: tuple[str, ...]
    sentids: tuple[int, ...]
    extra: dict = field(default_factory=dict, compare=False)


def escapes_root(relative: str) -> bool:
    """Whether a path meant to be inside an image root leads out of it (``../…``, or absolute). Decided on the
    text alone, before any file is touched; links the user made inside the root are theirs to make."""
    path = os.path.normpath(relative)
    return os.path.isabs(path) or path == os.pardir or path.startswith(os.pardir + os.sep)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, or a folder at ``path``: no hidden temporary file stays behind
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None  # named after the file the user knows


def read_log_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines log, without a last line a kill cut short; [] when there is no log."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def write_index(out_dir: Path, manifest: dict, splits: dict[str, list[dict]]) -> dict:
    """Write split files then the manifest; returns the manifest with format, version and split sizes added."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # an old manifest must not vouch for new split files
    for split, rows in splits.items():
        write_text_atomic(out_dir / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    full = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        **manifest,
        "splits": {
            s: {"images": len(rows), "captions": sum(len(r["captions"]) for r in rows)}
            for s, rows in splits.items()
        },
    }
    write_text_atomic(out_dir / MANIFEST, json.dumps(full, indent=2) + "\n")
    return full


def load_manifest(index_dir: str | Path) -> dict:
    index_dir = Path(index_dir)
    path = index_dir / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{index_dir}: no {MANIFEST} — not a prepared dataset (or its preparation did not finish). "
            "Create one with `mmd2v2 data synth` or `mmd2v2 data karpathy`."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("format") != INDEX_FORMAT or manifest.get("version") != INDEX_VERSION:
        raise DataError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
            f"expected {INDEX_FORMAT!r} version {INDEX_VERSION}; re-run the data preparation"
        )
    return manifest


def image_root(index_dir: str | Path, manifest: dict) -> Path:
    return (Path(index_dir) / manifest["image_root"]).resolve()


def read_split(index_dir: str | Path, split: str) -> list[ImageRecord]:
    """The image records of one split, with absolute image paths."""
    index_dir = Path(index_dir)
    manifest = load_manifest(index_dir)
    if split not in manifest["splits"]:
        raise DataError(f"{index_dir}: no split {split!r}; this dataset has {sorted(manifest['splits'])}")
    root = image_root(index_dir, manifest)
    path = index_dir / f"{split}.jsonl"
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                if escapes_root(row["path"]) and not manifest.get("images_outside_root"):
                    raise DataError(f"{path}, line {line_no}: image path {row['path']!r} leads outside the image "
                                    f"folder {root}; re-index with --allow-images-outside-root if that is intended")
                records.append(ImageRecord(
                    image_id=row["image_id"],
                    path=root / row["path"],
                    captions=tuple(row["captions"]),
                    sentids=tuple(row["sentids"]),
                    extra=row.get("extra", {}),
                ))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}, line {line_no}: malformed index row ({exc!r})") from None
    expected = manifest["splits"][split]["images"]
    if len(records) != expected:
        raise DataError(f"{path}: {len(records)} rows but the manifest says {expected}; re-run the preparation")
    return records
