"""Real-data preparation: the Karpathy validator and indexer, on files the tests make."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from data_prep.karpathy import index_karpathy
from mmd2v2_core.data.index import load_manifest, read_split
from mmd2v2_core.errors import DataError


def _entry(imgid, filename, split="test", filepath=None, n=5, **extra):
    sentences = [{"tokens": ["a", "photo"], "raw": f"A photo number {imgid}.{k}", "imgid": imgid,
                  "sentid": imgid * 10 + k} for k in range(n)]
    e = {"sentids": [s["sentid"] for s in sentences], "filename": filename, "imgid": imgid, "split": split,
         "sentences": sentences, **extra}
    if filepath is not None:
        e["filepath"] = filepath
    return e


@pytest.fixture
def coco_like(tmp_path):
    """A COCO-layout folder (train2014/, val2014/) with a matching Karpathy JSON."""
    root = tmp_path / "coco"
    entries = []
    for i, (folder, split) in enumerate([("train2014", "train"), ("val2014", "restval"), ("val2014", "val"),
                                         ("val2014", "test"), ("val2014", "test")]):
        (root / folder).mkdir(parents=True, exist_ok=True)
        name = f"COCO_{folder}_{i:012d}.jpg"
        Image.fromarray(np.full((32, 40, 3), i * 40, np.uint8)).save(root / folder / name)
        entries.append(_entry(i, name, split, filepath=folder, n=5 + (i == 3), cocoid=1000 + i))
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return path, root


def test_synthetic_json_reads_back_through_the_real_data_loader(smoke_data, tmp_path):
    domain = smoke_data["synth-coco"]
    manifest = index_karpathy(domain / "dataset_synth-coco.json", domain / "images", tmp_path / "again")
    assert manifest["dropped"] == [] and manifest["dataset"] == "synth-coco"
    for split in ("train", "val", "test"):
        original, reread = read_split(domain, split), read_split(tmp_path / "again", split)
        assert original == reread
        assert [r.extra["scene"] for r in original] == [r.extra["scene"] for r in reread]
        assert all(r.path.is_file() for r in reread)


def test_coco_layout_restval_merge_and_extra_fields(coco_like, tmp_path):
    path, root = coco_like
    manifest = index_karpathy(path, root, tmp_path / "idx")
    assert manifest["splits"] == {"test": {"images": 2, "captions": 11}, "train": {"images": 2, "captions": 10},
                                  "val": {"images": 1, "captions": 5}}
    test = read_split(tmp_path / "idx", "test")
    assert [r.image_id for r in test] == [3, 4] and len(test[0].captions) == 6
    assert test[0].extra == {"cocoid": 1003} and test[0].path == (root / "val2014" / test[0].path.name).resolve()
    kept = index_karpathy(path, root, tmp_path / "idx2", merge_restval=False)
    assert set(kept["splits"]) == {"train", "restval", "val", "test"}


def test_resize_indexes_smaller_copies_and_leaves_the_originals(coco_like, tmp_path):
    path, root = coco_like  # 40 × 32 images
    manifest = index_karpathy(path, root, tmp_path / "idx", resize=16)
    assert manifest["resized"] == 16
    for split in ("train", "val", "test"):
        for record in read_split(tmp_path / "idx", split):
            assert record.path.is_relative_to((tmp_path / "idx" / "images").resolve())
            with Image.open(record.path) as copy:
                assert copy.size == (20, 16) and copy.format == "JPEG"
    assert Image.open(root / "train2014" / "COCO_train2014_000000000000.jpg").size == (40, 32)
    bigger = index_karpathy(path, root, tmp_path / "idx2", resize=64)  # never enlarged
    assert Image.open(read_split(tmp_path / "idx2", "test")[0].path).size == (40, 32) and bigger["resized"] == 64
    with pytest.raises(DataError, match="needs every image inside --images"):
        index_karpathy(path, root, tmp_path / "idx3", resize=16, allow_outside_root=True)


def test_flickr_layout_real_photographs(tmp_path):
    """Real photos of several formats and modes, Flickr30K layout (one folder, no filepath)."""
    import matplotlib.cbook
    import skimage.data

    photos = tmp_path / "flickr30k-images"
    photos.mkdir()
    shutil.copy(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), photos / "1000.jpg")
    shutil.copy(f"{skimage.data.data_dir}/chelsea.png", photos / "1001.png")
    shutil.copy(f"{skimage.data.data_dir}/rocket.jpg", photos / "1002.jpg")
    shutil.copy(f"{skimage.data.data_dir}/camera.png", photos / "1003.png")  # grayscale
    entries = [_entry(i, name) for i, name in enumerate(["1000.jpg", "1001.png", "1002.jpg", "1003.png"])]
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    manifest = index_karpathy(path, photos, tmp_path / "idx")
    assert manifest["splits"]["test"] == {"images": 4, "captions": 20}
    from mmd2v2_core.data.datasets import RetrievalSplit

    split = RetrievalSplit.from_index(tmp_path / "idx", "test")
    assert split.name == "flickr30k/test" and split.text_to_image.tolist() == np.repeat(range(4), 5).tolist()


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("images"), "top level: missing field 'images'"),
    (lambda d: d.update(images={}), "images: expected a non-empty list"),
    (lambda d: d["images"][1].pop("filename"), r"images\[1\]: missing field 'filename'"),
    (lambda d: d["images"][2].update(imgid="7"), r"images\[2\].imgid: expected an integer"),
    (lambda d: d["images"][4].update(imgid=0), r"images\[4\].imgid: duplicate image id 0 \(also images\[0\]\)"),
    (lambda d: d["images"][0].update(split="training"), r"images\[0\].split: expected one of"),
    (lambda d: d["images"][3]["sentences"][2].update(raw="  "), r"images\[3\].sentences\[2\].raw: empty caption"),
    (lambda d: d["images"][3]["sentences"][1].update(raw=None), r"images\[3\].sentences\[1\].raw: expected a string"),
    (lambda d: d["images"][3].update(sentences=[]), r"images\[3\].sentences: expected a non-empty list"),
    (lambda d: d["images"][1]["sentids"].pop(), r"images\[1\].sentids: expected a list of 5 ids"),
])
def test_malformed_json_names_entry_and_field(coco_like, tmp_path, mutate, message):
    path, root = coco_like
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message) as err:
        index_karpathy(path, root, tmp_path / "idx")
    assert str(path) in str(err.value)
    assert not (tmp_path / "idx").exists()  # nothing written


def test_invalid_json_and_bytes(coco_like, tmp_path):
    path, root = coco_like
    path.write_text('{"images": [\n  {"filename": "a.jpg",,}\n]}')
    with pytest.raises(DataError, match="invalid JSON at line 2, column 24"):
        index_karpathy(path, root, tmp_path / "idx")
    path.write_bytes(b'{"images": [],\n "dataset": "caf\xe9"}')
    with pytest.raises(DataError, match="not UTF-8 text .*0xe9 on line 2"):
        index_karpathy(path, root, tmp_path / "idx")
    with pytest.raises(DataError, match="file not found"):
        index_karpathy(tmp_path / "nope.json", root, tmp_path / "idx")
    with pytest.raises(DataError, match="image folder not found"):
        index_karpathy(path, tmp_path / "no-images", tmp_path / "idx")


def _break_images(root):
    (root / "val2014" / "COCO_val2014_000000000003.jpg").unlink()  # missing
    jpg = root / "val2014" / "COCO_val2014_000000000004.jpg"
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])  # truncated
    (root / "val2014" / "COCO_val2014_000000000002.jpg").write_bytes(b"")  # zero bytes


def test_bad_images_error_mode_names_count_and_first_files(coco_like, tmp_path):
    path, root = coco_like
    _break_images(root)
    with pytest.raises(DataError, match=r"3 of 5 images are missing or unreadable") as err:
        index_karpathy(path, root, tmp_path / "idx")
    text = str(err.value)
    assert "COCO_val2014_000000000003.jpg (missing)" in text
    assert "COCO_val2014_000000000002.jpg (empty file)" in text
    assert "COCO_val2014_000000000004.jpg (unreadable" in text
    assert not (tmp_path / "idx").exists()


def test_bad_images_skip_mode_records_exactly_what_was_dropped(coco_like, tmp_path):
    path, root = coco_like
    _break_images(root)
    manifest = index_karpathy(path, root, tmp_path / "idx", on_bad_image="skip")
    assert sorted(d["imgid"] for d in manifest["dropped"]) == [2, 3, 4]
    assert json.loads((tmp_path / "idx" / "dropped.json").read_text()) == manifest["dropped"]
    assert manifest["splits"] == {"train": {"images": 2, "captions": 10}}
    assert load_manifest(tmp_path / "idx")["dropped"] == manifest["dropped"]


def test_header_check_misses_truncation_that_decode_catches(coco_like, tmp_path):
    path, root = coco_like
    jpg = root / "val2014" / "COCO_val2014_000000000004.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8)).save(jpg)
    jpg.write_bytes(jpg.read_bytes()[:-2000])
    assert index_karpathy(path, root, tmp_path / "a", verify="header", on_bad_image="skip")["dropped"] == []
    assert len(index_karpathy(path, root, tmp_path / "b", on_bad_image="skip")["dropped"]) == 1


def test_reading_an_unfinished_index_is_refused(tmp_path):
    (tmp_path / "test.jsonl").write_text("{}\n")
    with pytest.raises(DataError, match="no manifest.json"):
        read_split(tmp_path, "test")
