"""Data: broken image files, malformed Karpathy JSON, and entries that parse but are wrong, through the
commands a user runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmd2v2_core.data.images import open_rgb
from mmd2v2_core.data.index import read_split

from .conftest import assert_clear_error


def _break(path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    elif how == "zero-byte":
        path.write_bytes(b"")
    elif how == "not an image":
        path.write_text("<html>404 Not Found</html>")
    elif how == "huge dimensions":  # a 1-bit PNG of 12,000 × 12,000 px: a few KB on disk, 144 Mpx decoded
        Image.new("1", (12_000, 12_000)).save(path, format="PNG")
    elif how == "a folder":
        path.unlink()
        path.mkdir()
    elif how == "symlink loop":
        path.unlink()
        path.symlink_to(path.name)
    elif how == "dangling symlink":
        path.unlink()
        path.symlink_to(path.with_name("moved-away.jpg"))
    else:
        raise ValueError(how)


BAD_IMAGES = ["truncated", "zero-byte", "not an image", "huge dimensions", "a folder", "symlink loop",
              "dangling symlink"]
PROBLEM = {"truncated": "unreadable", "zero-byte": "empty file", "not an image": "unreadable",
           "huge dimensions": "image too large", "a folder": "a folder, not an image file",
           "symlink loop": "symlink loop", "dangling symlink": "broken symlink (to "}


def _karpathy(smoke):
    return smoke / "dataset_synth-coco.json", smoke / "images"


def _first_test_image(smoke):
    record = read_split(smoke, "test")[0]
    return record.path


@pytest.mark.parametrize("how", BAD_IMAGES)
def test_bad_image_at_indexing_is_named(smoke, tmp_path, cli, how):
    """`data karpathy` (default --on-bad-image error): exit 2 naming the file and its problem; no index."""
    json_path, images = _karpathy(smoke)
    bad = _first_test_image(smoke)
    _break(bad, how)
    line = assert_clear_error(cli("data", "karpathy", "--json", json_path, "--images", images, "--out", tmp_path / "idx"),
                              bad.name, PROBLEM[how])
    assert "--on-bad-image skip" in line
    assert not (tmp_path / "idx" / "manifest.json").exists()


@pytest.mark.parametrize("how", BAD_IMAGES)
def test_bad_image_can_be_skipped_and_is_listed(smoke, tmp_path, cli, how):
    """`--on-bad-image skip`: the index is written without that image, and dropped.json says why."""
    json_path, images = _karpathy(smoke)
    bad = _first_test_image(smoke)
    _break(bad, how)
    out = cli("data", "karpathy", "--json", json_path, "--images", images, "--out", tmp_path / "idx",
              "--on-bad-image", "skip")
    assert out.code == 0 and "dropped 1 bad images" in out.out
    dropped = json.loads((tmp_path / "idx" / "dropped.json").read_text())
    assert [d["file"].endswith(bad.name) and d["reason"].startswith(PROBLEM[how]) for d in dropped] == [True]
    kept = read_split(tmp_path / "idx", "test")
    assert len(kept) == len(read_split(smoke, "test")) - 1 and bad.name not in {r.path.name for r in kept}


@pytest.mark.parametrize("how", ["truncated", "zero-byte"])
def test_image_broken_after_indexing_is_skipped_in_training(smoke, tmp_path, cli, how):
    """An image damaged after indexing: training skips it, logs it in skipped_images.jsonl, and finishes."""
    bad = read_split(smoke, "train")[3].path
    _break(bad, how)
    out = cli("train", "--config", "smoke", f"data.root={smoke}", f"run.out_dir={tmp_path / 'run'}", "optim.steps=12",
              "run.val_every=12", "data.num_workers=2")
    assert out.code == 0 and "step 12" in out.out
    skipped = [json.loads(line) for line in (tmp_path / "run" / "skipped_images.jsonl").read_text().splitlines()]
    assert skipped and {s["path"] for s in skipped} == {str(bad)} and PROBLEM[how] in skipped[0]["problem"]


def test_an_image_skipped_many_times_is_listed_once(smoke, tmp_path, cli):
    """A folder where an image was: met once per caption and epoch, by two loader workers, it is one line of
    skipped_images.jsonl (with how often a batch met it) and "skipped 1", never "(missing)"."""
    bad = read_split(smoke, "train")[3].path
    _break(bad, "a folder")
    out = cli("train", "--config", "smoke", f"data.root={smoke}", f"run.out_dir={tmp_path / 'run'}", "optim.steps=12",
              "optim.batch_size=256", "run.val_every=12", "data.num_workers=2")  # 12 steps: 1.2 epochs
    assert out.code == 0 and "warning: skipped 1 unreadable image(s)" in out.err
    skipped = [json.loads(line) for line in (tmp_path / "run" / "skipped_images.jsonl").read_text().splitlines()]
    assert [(s["path"], s["problem"]) for s in skipped] == [(str(bad), "a folder, not an image file")]
    assert skipped[0]["times"] >= 5  # its 5 captions, in the first epoch alone


def test_a_corrupt_exif_block_is_read_without_a_raw_warning(smoke, tmp_path):
    """A JPEG whose EXIF block is cut short: PIL warns once per tag it skips, from inside Image.open. Indexing and
    training read the pixels, and neither prints a warning or a site-packages path."""
    json_path, images = _karpathy(smoke)
    bad = read_split(smoke, "train")[0].path
    cut_exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"
    Image.open(bad).convert("RGB").save(bad, format="JPEG", exif=cut_exif)
    commands = [("data", "karpathy", "--json", json_path, "--images", images, "--out", tmp_path / "idx"),
                ("train", "--config", "smoke", f"data.root={tmp_path / 'idx'}", f"run.out_dir={tmp_path / 'run'}",
                 "optim.steps=2", "run.val_every=2", "data.num_workers=1")]
    for command in commands:  # a terminal's view: pytest would catch an in-process warning, and a loader worker's
        out = subprocess.run([sys.executable, "-m", "mmd2v2_core.cli", *map(str, command)], capture_output=True,
                             text=True, timeout=300, env={**os.environ, "MMD2V2_PROGRESS": "off"})
        assert out.returncode == 0, out.stderr[-3000:]
        assert "Warning" not in out.stderr and "site-packages" not in out.stderr, out.stderr


def test_image_broken_after_indexing_stops_evaluation_by_name(smoke, tmp_path, cli):
    """Evaluation never skips (the protocol scores every test image): exit 2 naming the file, no results file."""
    assert cli("train", "--config", "smoke", f"data.root={smoke}", f"run.out_dir={tmp_path / 'run'}",
               "optim.steps=2", "run.val_every=2").code == 0
    bad = _first_test_image(smoke)
    _break(bad, "truncated")
    out = cli("eval", "retrieval", "--checkpoint", tmp_path / "run" / "checkpoints" / "step_0000002",
              "--data", smoke, "--out", tmp_path / "r.json")
    assert_clear_error(out, bad.name, "unreadable")
    assert not (tmp_path / "r.json").exists()


def _entries(json_path):
    data = json.loads(json_path.read_text())
    return data, data["images"]


MALFORMED = {
    "missing filename": (lambda e: e[1].pop("filename"), "images[1]", "'filename'"),
    "missing sentences": (lambda e: e[0].pop("sentences"), "images[0]", "'sentences'"),
    "missing raw caption": (lambda e: e[2]["sentences"][1].pop("raw"), "images[2].sentences[1]", "'raw'"),
    "imgid is a string": (lambda e: e[1].update(imgid="7"), "images[1].imgid", "str"),
    "sentences is an object": (lambda e: e[0].update(sentences={"raw": "x"}), "images[0].sentences", "dict"),
    "raw caption is a number": (lambda e: e[2]["sentences"][0].update(raw=5), "images[2].sentences[0].raw", "int"),
    "unknown split": (lambda e: e[0].update(split="dev"), "images[0].split", "'dev'"),
    "duplicate image id": (lambda e: e[4].update(imgid=e[1]["imgid"]), "images[4].imgid", "duplicate image id"),
    "empty caption": (lambda e: e[3]["sentences"][2].update(raw="   "), "images[3].sentences[2].raw", "empty caption"),
    # wrong, though they parse
    "caption of zero-width characters": (lambda e: e[3]["sentences"][2].update(raw="\u200b\u2060\ufeff"),
                                         "images[3].sentences[2].raw", "empty caption"),
    "caption of control characters": (lambda e: e[0]["sentences"][4].update(raw="\x00\x07 \x1b"),
                                      "images[0].sentences[4].raw", "empty caption"),
    "empty images list": (lambda e: e.clear(), "images", "a non-empty list"),
    "image id beyond 64 bits": (lambda e: e[1].update(imgid=2**64), "images[1].imgid", "fits in 64 bits"),
    "image id below -2^63": (lambda e: e[2].update(imgid=-2**63 - 1), "images[2].imgid", "fits in 64 bits"),
    "two entries, one file": (lambda e: e[4].update(filename=e[1]["filename"]), "images[4]",
                              "same image file as images[1]"),
    "one file spelled two ways": (lambda e: e[4].update(filename="./" + e[1]["filename"]), "images[4]",
                                  "same image file as images[1]"),
    "file name leading out of the image folder": (lambda e: e[2].update(filename="../../../secret.jpg"),
                                                  "images[2].filename", "--allow-images-outside-root"),
    "absolute file name": (lambda e: e[2].update(filename="/etc/hostname"), "images[2].filename",
                           "leads outside the image folder"),
    "file path leading out of the image folder": (lambda e: e[2].update(filepath="../.."), "images[2].filepath",
                                                  "leads outside the image folder"),
    "file name with a NUL byte": (lambda e: e[2].update(filename="a\x00.jpg"), "images[2].filename",
                                  "without control characters"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_karpathy_json_names_entry_and_field(smoke, tmp_path, cli, case):
    """Exit 2 naming the JSON file, the entry and the field; nothing is indexed."""
    json_path, images = _karpathy(smoke)
    mutate, where, what = MALFORMED[case]
    data, entries = _entries(json_path)
    mutate(entries)
    json_path.write_text(json.dumps(data))
    out = cli("data", "karpathy", "--json", json_path, "--images", images, "--out", tmp_path / "idx")
    assert_clear_error(out, json_path.name, where, what)
    assert not (tmp_path / "idx" / "manifest.json").exists()


@pytest.mark.parametrize("damage,names", [
    (lambda raw: raw.replace(b"Two", b"Tw\xff", 1), ["not UTF-8", "0xff", "line 1"]),
    (lambda raw: raw[: len(raw) // 2], ["invalid JSON", "line 1, column"]),
    (lambda raw: b"", ["invalid JSON"]),
], ids=["non-UTF-8 byte", "cut in half", "empty file"])
def test_unreadable_karpathy_json_names_the_file(smoke, tmp_path, cli, damage, names):
    """Exit 2 naming the file and where the bytes broke."""
    json_path, images = _karpathy(smoke)
    raw = json_path.read_bytes()
    assert b"Two" in raw
    json_path.write_bytes(damage(raw))
    assert_clear_error(cli("data", "karpathy", "--json", json_path, "--images", images, "--out", tmp_path / "idx"),
                       json_path.name, *names)


def test_caption_far_longer_than_64_tokens(smoke, tmp_path, cli, tokenizer):
    """A 400-word caption is indexed, truncated to the student's length with [SEP] kept, and trains."""
    json_path, images = _karpathy(smoke)
    data, entries = _entries(json_path)
    long_caption = " ".join(["a small red circle next to a big blue square"] * 40)
    for e in entries:
        e["sentences"][0]["raw"] = long_caption
    json_path.write_text(json.dumps(data))
    assert cli("data", "karpathy", "--json", json_path, "--images", images, "--out", tmp_path / "idx").code == 0
    assert long_caption in read_split(tmp_path / "idx", "train")[0].captions
    batch = tokenizer([long_caption, "short"])
    assert batch["input_ids"].shape == (2, 64) and batch["input_ids"][0, -1] == tokenizer.hf.sep_token_id
    out = cli("train", "--config", "smoke", f"data.root={tmp_path / 'idx'}", f"run.out_dir={tmp_path / 'run'}",
              "optim.steps=4", "run.val_every=4")
    assert out.code == 0 and "step 4" in out.out


def test_image_outside_the_folder_is_read_only_when_allowed(smoke, tmp_path, cli):
    """`--allow-images-outside-root`: indexed with a note naming the entry; the manifest records the opt-in,
    and the index is read. A hand-edited index without it cannot point outside (the row is named)."""
    json_path, images = _karpathy(smoke)
    data, entries = _entries(json_path)
    outside = smoke / "outside.jpg"
    shutil.copy(images / entries[2]["filepath"] / entries[2]["filename"], outside)
    entries[2]["filename"] = "../../outside.jpg"  # relative to images/test/
    (tmp_path / "outside.json").write_text(json.dumps(data))
    out = cli("data", "karpathy", "--json", tmp_path / "outside.json", "--images", images, "--out", tmp_path / "idx",
              "--allow-images-outside-root")
    assert out.code == 0 and "note: 1 image(s) lie outside the image folder" in out.out and "images[2]" in out.out
    assert outside.resolve() in {r.path.resolve() for r in read_split(tmp_path / "idx", "test")}

    rows = (smoke / "train.jsonl").read_text().splitlines()
    rows[0] = json.dumps({**json.loads(rows[0]), "path": "../../outside.jpg"})
    (smoke / "train.jsonl").write_text("\n".join(rows) + "\n")
    out = cli("train", "--config", "smoke", f"data.root={smoke}", f"run.out_dir={tmp_path / 'run'}", "optim.steps=2")
    assert_clear_error(out, "train.jsonl, line 1", "'../../outside.jpg'", "outside the image folder")


def test_floating_point_image_in_unit_range(smoke, tmp_path, cli):
    """A 32-bit float TIFF with values in [0, 1] (0.8 everywhere): indexed with a note naming it, and decoded as
    light grey (204), not black."""
    json_path, images = _karpathy(smoke)
    data, entries = _entries(json_path)
    entries[5]["filename"] = "float.tif"
    Image.fromarray(np.full((64, 64), 0.8, dtype=np.float32)).save(images / entries[5]["filepath"] / "float.tif")
    json_path.write_text(json.dumps(data))
    out = cli("data", "karpathy", "--json", json_path, "--images", images, "--out", tmp_path / "idx")
    assert out.code == 0 and "note: 1 image(s) have floating-point pixels in [0, 1]" in out.out
    assert "images[5]" in out.out and "float.tif" in out.out
    assert np.asarray(open_rgb(images / entries[5]["filepath"] / "float.tif")).mean() == pytest.approx(204, abs=1)


def test_no_readable_image_at_all(smoke, tmp_path, cli):
    """--images pointing at an empty folder with --on-bad-image skip: refused (no empty index that fails later)."""
    json_path, _ = _karpathy(smoke)
    (tmp_path / "empty").mkdir()
    out = cli("data", "karpathy", "--json", json_path, "--images", tmp_path / "empty", "--out", tmp_path / "idx",
              "--on-bad-image", "skip")
    assert_clear_error(out, json_path.name, "none of its 896 images is readable", "--images")
    assert not (tmp_path / "idx" / "manifest.json").exists()
