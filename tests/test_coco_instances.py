"""COCO instance annotations into the prepared index: each image's dominant supercategory, for the real study's
embedding map; malformed files are refused naming the file and field."""

import json

import pytest

from data_prep.coco_instances import NO_OBJECTS, dominant_supercategories
from mmd2v2_core.cli import main
from mmd2v2_core.data.index import load_manifest, read_split
from mmd2v2_core.errors import DataError
from real_fixture import _photos, _write_coco, _write_flickr, write_coco_instances

CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"},
              {"id": 18, "name": "dog", "supercategory": "animal"},
              {"id": 47, "name": "cup", "supercategory": "kitchen"}]


def _instances(path, images, annotations, categories=CATEGORIES):
    path.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i}.jpg"} for i in images],
                                "annotations": [{"image_id": i, "category_id": c, "area": a, "id": k}
                                                for k, (i, c, a) in enumerate(annotations)],
                                "categories": categories}))
    return path


def test_the_supercategory_covering_most_area_wins_over_the_most_frequent(tmp_path):
    train = _instances(tmp_path / "train.json", [1, 2], [(1, 1, 100.0), (1, 1, 150.0), (1, 18, 400.0), (2, 47, 9)])
    val = _instances(tmp_path / "val.json", [3, 4], [(3, 1, 10.0)])
    assert dominant_supercategories([train, val]) == {1: "animal", 2: "kitchen", 3: "person", 4: NO_OBJECTS}


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.pop("categories"), "top level: no field 'categories'"),
    (lambda d: d["annotations"][1].update(category_id=99), "annotations[1].category_id: 99 is not in categories"),
    (lambda d: d["annotations"][0].update(area="big"), "annotations[0].area: expected a number, got str 'big'"),
    (lambda d: d["images"][0].pop("id"), "images[0]: no field 'id'"),
    (lambda d: d["categories"][2].update(supercategory=None), "categories[2].supercategory: expected str"),
])
def test_a_malformed_instances_file_is_refused_naming_the_field(tmp_path, damage, message):
    path = _instances(tmp_path / "instances_val2014.json", [1, 2], [(1, 1, 5.0), (2, 18, 5.0)])
    data = json.loads(path.read_text())
    damage(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as error:
        dominant_supercategories([path])
    assert str(error.value) == f"{path}: {message}" or str(error.value).startswith(f"{path}: {message}")


def test_data_karpathy_stores_each_coco_images_supercategory(tmp_path, capsys):
    photos = _photos()
    json_path, images = _write_coco(tmp_path / "coco", photos)
    instances = write_coco_instances(tmp_path / "coco" / "annotations", json_path)
    val_only = [p for p in instances if "val2014" in p.name]
    out = tmp_path / "prepared"
    argv = ["data", "karpathy", "--json", str(json_path), "--images", str(images), "--out", str(out)]
    assert main([*argv, *[a for p in val_only for a in ("--instances", str(p))]]) == 0
    printed = capsys.readouterr().out
    train = read_split(out, "train")
    missing = sum("supercategory" not in r.extra for r in train)
    assert missing and f"note: {missing} image(s) not in the instance annotations" in printed  # train2014 ones
    assert main([*argv, *[a for p in instances for a in ("--instances", str(p))]]) == 0
    test = read_split(out, "test")
    labels = {r.extra["supercategory"] for s in ("train", "val", "test") for r in read_split(out, s)}
    assert labels == {"person", "animal", "kitchen", "vehicle", NO_OBJECTS}
    assert {r.extra["supercategory"] for r in test if "astronaut" in r.captions[1]} == {"person"}
    assert not load_manifest(out)["notes"]


def test_instances_for_a_dataset_without_coco_ids_are_refused(tmp_path, capsys):
    json_path, images = _write_flickr(tmp_path / "flickr30k", _photos())
    instances = _instances(tmp_path / "instances_val2014.json", [1], [])
    code = main(["data", "karpathy", "--json", str(json_path), "--images", str(images), "--out", str(tmp_path / "o"),
                 "--instances", str(instances)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{json_path}: images[0]: no cocoid to look up in --instances (they are COCO's annotations)" in err
    assert not (tmp_path / "o").exists()
