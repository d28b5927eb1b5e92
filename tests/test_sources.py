"""The thesis' extra training sources: Visual Genome regions and webdataset shards, prepared, mixed with COCO, and
labelled when a run goes without them."""

from __future__ import annotations

import json
import tarfile

import pytest

from data_prep.karpathy import index_karpathy
from data_prep.visual_genome import index_visual_genome
from data_prep.webdataset_index import index_webdataset
from mmd2v2_core.cli import main
from mmd2v2_core.config import load_config
from mmd2v2_core.data.images import open_record
from mmd2v2_core.data.index import read_split
from mmd2v2_core.errors import DataError
from mmd2v2_core.study import Study
from mmd2v2_core.train.data import TrainPairs, View
from real_fixture import _photos, _write_coco, write_visual_genome, write_web_shards


@pytest.fixture(scope="module")
def photos():
    return _photos()


def test_visual_genome_pairs_each_image_with_each_of_its_region_phrases(tmp_path, photos):
    regions, images = write_visual_genome(tmp_path / "vg", photos)
    manifest = index_visual_genome(regions, images, tmp_path / "index")
    records = read_split(tmp_path / "index", "train")
    source = json.loads(regions.read_text())
    assert len(records) == len(source) == 8 and manifest["splits"]["train"]["images"] == 8
    for record, entry in zip(records, source):
        phrases = [r["phrase"] for r in entry["regions"] if r["phrase"].strip()]  # the empty phrase is left out
        assert record.image_id == entry["id"] and list(record.captions) == phrases
        assert max(open_record(record.path, record.extra).size) == 160  # the full view, longer side


def test_visual_genome_drops_a_missing_image_and_names_a_bad_field(tmp_path, photos):
    regions, images = write_visual_genome(tmp_path / "vg", photos)
    first = json.loads(regions.read_text())[0]["id"]
    (images / "VG_100K" / f"{first}.jpg").unlink()
    manifest = index_visual_genome(regions, images, tmp_path / "index")
    assert [d["image_id"] for d in manifest["dropped"]] == [first] and manifest["splits"]["train"]["images"] == 7
    with pytest.raises(DataError, match="1 of 8 images are missing"):
        index_visual_genome(regions, images, tmp_path / "strict", on_bad_image="error")
    data = json.loads(regions.read_text())
    data[2]["regions"][1]["phrase"] = 7
    regions.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"region_descriptions.json: \[2\].regions\[1\].phrase: expected a string"):
        index_visual_genome(regions, images, tmp_path / "bad")


def test_webdataset_index_reads_images_in_place_and_leaves_out_incomplete_samples(tmp_path, photos):
    shards = write_web_shards(tmp_path / "cc3m", photos, 2)
    manifest = index_webdataset(shards, tmp_path / "index")
    assert manifest["splits"]["train"]["captions"] == 38 and manifest["notes"] == [
        "2 sample(s) without an image or a caption left out"]
    records = read_split(tmp_path / "index", "train")
    with tarfile.open(shards / "00001.tar") as tar:
        member = records[-1].extra["tar_member"]
        assert records[-1].path.name == "00001.tar"
        expected = tar.extractfile(member["name"]).read()
    with open(records[-1].path, "rb") as shard:
        shard.seek(member["offset"])
        assert shard.read(member["size"]) == expected
    assert open_record(records[0].path, records[0].extra).mode == "RGB"
    assert len(index_webdataset(shards, tmp_path / "first10", limit=10)["splits"]) == 1
    assert read_split(tmp_path / "first10", "train")[-1].image_id == 9


def test_webdataset_index_refuses_what_is_no_shard(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .tar shards in this folder"):
        index_webdataset(tmp_path / "empty", tmp_path / "index")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "00000.tar").write_bytes(b"not a tar at all" * 64)
    with pytest.raises(DataError, match="00000.tar: not a readable tar shard"):
        index_webdataset(tmp_path / "broken", tmp_path / "index")


def test_a_shard_changed_after_indexing_is_named(tmp_path, photos):
    shards = write_web_shards(tmp_path / "cc12m", photos, 1)
    index_webdataset(shards, tmp_path / "index")
    record = read_split(tmp_path / "index", "train")[-1]
    (shards / "00000.tar").write_bytes((shards / "00000.tar").read_bytes()[:record.extra["tar_member"]["offset"] + 10])
    with pytest.raises(DataError, match="ends early"):
        open_record(record.path, record.extra)


def test_the_cli_prepares_both_sources(tmp_path, photos, capsys):
    regions, images = write_visual_genome(tmp_path / "vg", photos)
    assert main(["data", "vg", "--regions", str(regions), "--images", str(images), "--out", str(tmp_path / "v")]) == 0
    shards = write_web_shards(tmp_path / "cc3m", photos, 1)
    assert main(["data", "webdataset", "--shards", str(shards), "--out", str(tmp_path / "w"), "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert "visual genome regions: 8 images, 26 region phrases (training pairs)" in out
    assert "w: 5 pairs from 1 shards" in out


@pytest.fixture
def mix(tmp_path, photos):
    """A COCO index with the web source beside it, as `--data` holds them."""
    json_path, images = _write_coco(tmp_path / "coco-files", photos)
    index_karpathy(json_path, images, tmp_path / "data" / "coco")
    index_webdataset(write_web_shards(tmp_path / "cc3m-files", photos, 2), tmp_path / "data" / "cc3m")
    return tmp_path / "data"


def test_sources_join_the_training_pairs_and_count_in_the_batch_check(mix):
    cfg = load_config("real_smke", [f"data.root={mix / 'coco'}", "data.sources=[cc3m]", "optim.batch_size=150"])
    assert cfg.data.sources == ("cc3m",)  # 120 COCO pairs + 38 web pairs hold a batch of 150
    with pytest.raises(Exception, match="data.sources: .*cc12m is not a prepared dataset"):
        load_config("real_smke", [f"data.root={mix / 'coco'}", "optim.batch_size=8"])  # the YAML's cc12m is absent
    records = read_split(mix / "coco", "train") + read_split(mix / "cc3m", "train")
    pairs = TrainPairs(records, (0.9, 1.0), 0.5, View(32, (0.5,) * 3, (0.5,) * 3), None, seed=0)
    web = next(i for i, (r, _) in enumerate(pairs.pairs) if r >= len(read_split(mix / "coco", "train")))
    item = pairs[(0, 0, web)]
    assert item["image"].shape == (3, 32, 32) and item["caption"] in records[pairs.pairs[web][0]].captions


def test_a_run_without_its_sources_is_labelled_coco_only(tmp_path):
    labels = Study("real", tmp_path, ["data.sources=[]"]).labels
    assert labels["smke"] == "S-SMKE, BEiT-v2 teacher (CDL + memory bank) (COCO only)"
    assert labels["mmd2v2_6"].endswith("(COCO only)")
    assert "COCO only" not in Study("real", tmp_path).labels["smke"]
    assert not any("COCO only" in label for label in Study("smoke", tmp_path).labels.values())


def test_sources_and_cached_targets_do_not_mix(mix, tmp_path):
    (tmp_path / "cache").mkdir()
    with pytest.raises(Exception, match="data.sources trains on more data than data.root"):
        load_config("embedded", [f"data.root={mix / 'coco'}", "data.sources=[cc3m]", "data.rendering_views=0",
                                 f"teacher.cache={tmp_path / 'cache'}"])
