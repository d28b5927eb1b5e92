"""Validate a Karpathy-format caption file against an image folder and write the prepared index.

The Karpathy files (``dataset_coco.json``, ``dataset_flickr30k.json``) hold
``{"dataset": ..., "images": [{"filepath"?, "filename", "imgid", "split", "sentids",
"sentences": [{"raw", "tokens", "imgid", "sentid"}], ...}]}``. COCO entries have ``filepath``
(``train2014``/``val2014``); Flickr30K entries have none, the images lie in one folder. Any other
field of an entry (``cocoid``, the synthetic ``scene``) is carried into the index as ``extra``.

COCO's ``restval`` split is merged into ``train`` by default (Karpathy train+restval, 113,287 images),
which is safe: the 5K test images are disjoint from it.

Entries that parse but are wrong are refused with the entry named: a caption with nothing visible in it
(whitespace, zero-width or control characters only), an image id beyond 64 bits, two entries naming the
same file (the duplicate would tie with itself in retrieval and bias recall), an empty ``images`` list,
and a file name that leads outside the image folder (``../…`` or absolute): a downloaded JSON must not
make the kit read other files, unless the user allows it (``allow_outside_root``, which is then noted).
"""

from __future__ import annotations

import json
import os
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from mmd2v2_core.data.images import check_image, open_rgb
from mmd2v2_core.data.index import escapes_root, write_index, write_text_atomic
from mmd2v2_core.errors import DataError
from mmd2v2_core.progress import progress

SPLITS = ("train", "restval", "val", "test")
STANDARD_FIELDS = {"filepath", "filename", "imgid", "split", "sentids", "sentences"}
SHOW_FIRST = 5


def read_json(path: Path) -> object:
    """Parse a JSON file; errors name the file and the line and column (or byte) where it broke."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder; give the JSON file itself") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8 text (invalid byte 0x{raw[exc.start]:02x} on line {line})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def _expect(cond: bool, path: Path, where: str, what: str, value: object) -> None:
    if not cond:
        raise DataError(f"{path}: {where}: expected {what}, got {type(value).__name__} {value!r:.80}")


def _visible(text: str) -> bool:
    """Whether any character would show: not whitespace, not a control, format (zero-width) or unassigned one."""
    return any(unicodedata.category(c)[0] not in "CZ" for c in text)


def validate(data: object, path: Path, allow_outside_root: bool = False) -> list[dict]:
    """Check the Karpathy structure field by field; return the image entries."""
    _expect(isinstance(data, dict), path, "top level", "an object with 'images' and 'dataset'", data)
    for key in ("images", "dataset"):
        if key not in data:
            raise DataError(f"{path}: top level: missing field {key!r}")
    _expect(isinstance(data["dataset"], str), path, "dataset", "a string", data["dataset"])
    images = data["images"]
    _expect(isinstance(images, list) and images, path, "images", "a non-empty list", images)
    seen_ids: dict[int, int] = {}
    for i, entry in enumerate(images):
        where = f"images[{i}]"
        _expect(isinstance(entry, dict), path, where, "an object", entry)
        for key in ("filename", "imgid", "split", "sentences"):
            if key not in entry:
                raise DataError(f"{path}: {where}: missing field {key!r}")
        _expect(isinstance(entry["filename"], str) and entry["filename"], path, f"{where}.filename",
                "a non-empty string", entry["filename"])
        if "filepath" in entry:
            _expect(isinstance(entry["filepath"], str), path, f"{where}.filepath", "a string", entry["filepath"])
        for key in ("filepath", "filename"):
            _expect(not any(unicodedata.category(c) == "Cc" for c in entry.get(key, "")), path, f"{where}.{key}",
                    "a name without control characters", entry.get(key))
        if not allow_outside_root:  # both places resolve_image may look
            for key, rel in (("filename", entry["filename"]),
                             ("filepath", os.path.join(entry.get("filepath") or "", entry["filename"]))):
                if escapes_root(rel):
                    raise DataError(f"{path}: {where}.{key}: {rel!r} leads outside the image folder; "
                                    "pass --allow-images-outside-root if that is intended")
        imgid = entry["imgid"]
        _expect(isinstance(imgid, int) and not isinstance(imgid, bool), path, f"{where}.imgid", "an integer", imgid)
        _expect(-2**63 <= imgid < 2**63, path, f"{where}.imgid", "an integer that fits in 64 bits", imgid)
        if imgid in seen_ids:
            raise DataError(f"{path}: {where}.imgid: duplicate image id {imgid} (also images[{seen_ids[imgid]}])")
        seen_ids[imgid] = i
        _expect(entry["split"] in SPLITS, path, f"{where}.split", f"one of {SPLITS}", entry["split"])
        sentences = entry["sentences"]
        _expect(isinstance(sentences, list) and sentences, path, f"{where}.sentences",
                "a non-empty list", sentences)
        for j, sent in enumerate(sentences):
            swhere = f"{where}.sentences[{j}]"
            _expect(isinstance(sent, dict), path, swhere, "an object", sent)
            if "raw" not in sent:
                raise DataError(f"{path}: {swhere}: missing field 'raw'")
            _expect(isinstance(sent["raw"], str), path, f"{swhere}.raw", "a string", sent["raw"])
            if not _visible(sent["raw"]):
                raise DataError(f"{path}: {swhere}.raw: empty caption {sent['raw']!r:.40}")
        if "sentids" in entry:
            _expect(isinstance(entry["sentids"], list) and len(entry["sentids"]) == len(sentences), path,
                    f"{where}.sentids", f"a list of {len(sentences)} ids (one per sentence)", entry["sentids"])
    return images


def resolve_image(entry: dict, root: Path) -> Path:
    """``root/filepath/filename`` when the entry has a filepath (COCO) and that file exists, else ``root/filename``."""
    if entry.get("filepath"):
        nested = root / entry["filepath"] / entry["filename"]
        if nested.exists() or not (root / entry["filename"]).exists():
            return nested
    return root / entry["filename"]


def _relative_or_absolute(target: Path, base: Path) -> str:
    target, base = target.resolve(), base.resolve()
    return os.path.relpath(target, base) if target.is_relative_to(base) else str(target)


def index_karpathy(
    json_path: str | Path,
    images_root: str | Path,
    out_dir: str | Path,
    on_bad_image: str = "error",
    verify: str = "decode",
    merge_restval: bool = True,
    workers: int | None = None,
    allow_outside_root: bool = False,
    supercategories: dict[int, str] | None = None,
    resize: int | None = None,
) -> dict:
    """Validate, check every image, and write the index to ``out_dir``. Returns the manifest.

    ``on_bad_image='error'`` stops before writing anything if an image is missing or unreadable,
    naming how many and the first few; ``'skip'`` drops those images and lists each in the manifest
    (``dropped``, with the reason) and in ``dropped.json``. Images kept but read in an unusual way (or
    allowed outside the image folder) are summed up in the manifest's ``notes``, one line each.
    ``supercategories`` (COCO id → label, ``coco_instances.dominant_supercategories``) is stored in each COCO
    entry's ``extra.supercategory``; ids it lacks are noted. ``resize``: the index points at copies whose shorter
    side is at most ``resize`` px (JPEG, under ``out_dir/images``): a training worker then decodes and resizes
    ~2.2× more pairs per second (``bench/bench_input.py``) for a 224-px student.
    """
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    if resize and allow_outside_root:  # the copies mirror the paths inside the image folder
        raise DataError("--resize writes copies under --out/images and needs every image inside --images: "
                        "drop --allow-images-outside-root")
    json_path, root, out_dir = Path(json_path), Path(images_root), Path(out_dir)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    data = read_json(json_path)
    entries = validate(data, json_path, allow_outside_root)
    if supercategories is not None:
        no_id = next((i for i, e in enumerate(entries) if not isinstance(e.get("cocoid"), int)), None)
        if no_id is not None:
            raise DataError(f"{json_path}: images[{no_id}]: no cocoid to look up in --instances (they are COCO's "
                            "annotations)")
    paths = [resolve_image(e, root) for e in entries]
    _refuse_shared_files(paths, json_path)

    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) * 2)) as pool:
        checks = list(progress(pool.map(lambda p: check_image(p, verify), paths), total=len(paths),
                               desc=f"checking images ({verify})"))
    bad = [(e, p, why) for e, p, (why, _) in zip(entries, paths, checks) if why is not None]
    if bad and on_bad_image == "error":
        first = "; ".join(f"{p} ({why})" for _, p, why in bad[:SHOW_FIRST])
        raise DataError(
            f"{json_path}: {len(bad)} of {len(entries)} images are missing or unreadable under {root}, "
            f"first: {first}. Fix them, or pass --on-bad-image skip to drop them."
        )
    if len(bad) == len(entries):
        raise DataError(f"{json_path}: none of its {len(entries)} images is readable under {root} "
                        f"(all dropped), first: {bad[0][1]} ({bad[0][2]}); is --images the right folder?")
    noted: dict[str, list[str]] = {}
    for i, (path, (why, note)) in enumerate(zip(paths, checks)):
        if why is not None:
            continue
        if allow_outside_root and escapes_root(os.path.relpath(path, root)):
            noted.setdefault("lie outside the image folder (allowed by --allow-images-outside-root)", []).append(
                f"images[{i}] {path}")
        if note:
            noted.setdefault(f"have {note}", []).append(f"images[{i}] {path}")

    bad_ids = {e["imgid"] for e, _, _ in bad}
    splits: dict[str, list[dict]] = {}
    for i, (entry, path) in enumerate(zip(entries, paths)):
        if entry["imgid"] in bad_ids:
            continue
        split = "train" if merge_restval and entry["split"] == "restval" else entry["split"]
        sentences = entry["sentences"]
        extra = {k: v for k, v in entry.items() if k not in STANDARD_FIELDS}
        if supercategories is not None:
            if entry["cocoid"] in supercategories:
                extra["supercategory"] = supercategories[entry["cocoid"]]
            else:
                noted.setdefault("not in the instance annotations", []).append(f"images[{i}] cocoid {entry['cocoid']}")
        splits.setdefault(split, []).append({
            "image_id": entry["imgid"],
            "path": os.path.relpath(path, root),
            "captions": [s["raw"].strip() for s in sentences],
            "sentids": entry.get("sentids") or [s.get("sentid", k) for k, s in enumerate(sentences)],
            "extra": extra,
        })
    dropped = [{"imgid": e["imgid"], "file": str(p), "reason": why} for e, p, why in bad]
    out_dir.mkdir(parents=True, exist_ok=True)
    if resize:
        kept = [(root / r["path"], out_dir / "images" / r["path"]) for rows in splits.values() for r in rows]
        with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) * 2)) as pool:
            list(progress(pool.map(lambda pair: _resized_copy(*pair, resize), kept), total=len(kept),
                          desc=f"resizing to {resize} px"))
        root = out_dir / "images"
    if dropped:
        write_text_atomic(out_dir / "dropped.json", json.dumps(dropped, indent=1) + "\n")
    else:
        (out_dir / "dropped.json").unlink(missing_ok=True)
    manifest = {
        "dataset": data["dataset"],
        "source_json": _relative_or_absolute(json_path, out_dir),
        "image_root": _relative_or_absolute(root, out_dir),
        "verify": verify,
        "merge_restval": merge_restval,
        **({"resized": resize} if resize else {}),
        "dropped": dropped,
        **({"images_outside_root": True} if allow_outside_root else {}),
        "notes": [f"{len(where)} image(s) {what}, first: {'; '.join(where[:SHOW_FIRST])}"
                  for what, where in noted.items()],
    }
    return write_index(out_dir, manifest, dict(sorted(splits.items())))


def _resized_copy(src: Path, dst: Path, side: int) -> None:
    """``src`` with its shorter side brought down to ``side`` px (never up), as a JPEG at ``dst``."""
    image = open_rgb(src)
    scale = side / min(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    dst.parent.mkdir(parents=True, exist_ok=True)
    image.save(dst, "JPEG", quality=90)


def _refuse_shared_files(paths: list[Path], json_path: Path) -> None:
    """Two entries naming one file: the image would compete with itself in retrieval (a tie that biases recall)."""
    first: dict[str, int] = {}
    for i, path in enumerate(paths):
        j = first.setdefault(os.path.normpath(path), i)
        if j != i:
            raise DataError(f"{json_path}: images[{i}]: same image file as images[{j}] ({path}); "
                            "each image must appear once")
