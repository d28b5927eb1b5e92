"""The target cache: hit, miss, stale, resume after a kill, deleted or truncated shards, rank splitting."""

import json

import numpy as np
import pytest
import torch

from mmd2v2_core.data.index import read_split
from mmd2v2_core.data.transforms import ImageTransformConfig, eval_transform
from mmd2v2_core.data.datasets import ImageSet
from mmd2v2_core.errors import DataError
from mmd2v2_core.teachers.cache import TargetCache, build_cache, dataset_fingerprint, fingerprint
from mmd2v2_core.teachers.registry import create_teacher
from mmd2v2_core.teachers.targets import compute_target

PRE = ImageTransformConfig(size=32, mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.fixture(scope="module")
def teacher():
    return create_teacher("efficientnet-lite0", tiny=True)


def _build(teacher, data, out, **kw):
    return build_cache(teacher, "pooled", data, "val", out, PRE, shard_size=50, batch_size=32, **kw)


def test_cache_holds_the_teachers_targets(smoke_data, teacher, tmp_path):
    data = smoke_data["synth-coco"]
    result = _build(teacher, data, tmp_path / "c")
    assert result.computed == [0, 1, 2] and result.reused == []
    expected = fingerprint(teacher, "pooled", 8, PRE, dataset_fingerprint(data, "val"))
    cache = TargetCache(tmp_path / "c", expected)
    records = read_split(data, "val")
    ids = [records[i].image_id for i in (0, 77, 127)]
    images = ImageSet(records, eval_transform(PRE))
    direct = compute_target(teacher(torch.stack([images[i]["image"] for i in (0, 77, 127)])), "pooled")
    assert cache.lookup(ids).dtype == torch.float32
    assert torch.allclose(cache.lookup(ids), direct, atol=2e-3 * direct.abs().max())  # fp16 storage
    assert np.load(tmp_path / "c" / "shard_00000.npy").dtype == np.float16


def test_rerun_is_a_hit_and_resume_recomputes_only_missing_shards(smoke_data, teacher, tmp_path):
    data = smoke_data["synth-coco"]
    _build(teacher, data, tmp_path / "c")
    before = (tmp_path / "c" / "shard_00000.npy").read_bytes()
    assert _build(teacher, data, tmp_path / "c").computed == []
    (tmp_path / "c" / "shard_00001.npy").unlink()  # as if killed before this shard was written
    truncated = tmp_path / "c" / "shard_00002.npy"
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(DataError, match=r"2 of 3 shards incomplete: shard_00001.npy \(missing\), shard_00002.npy"):
        TargetCache(tmp_path / "c")
    assert _build(teacher, data, tmp_path / "c").computed == [1, 2]
    assert (tmp_path / "c" / "shard_00000.npy").read_bytes() == before
    TargetCache(tmp_path / "c")


def test_stale_cache_is_refused_with_what_differs(smoke_data, teacher, tmp_path):
    data = smoke_data["synth-coco"]
    _build(teacher, data, tmp_path / "c")
    other = create_teacher("efficientnet-lite0", tiny=True)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)  # same name, other weights
    wanted = fingerprint(other, "pooled", 8, PRE, dataset_fingerprint(data, "val"))
    with pytest.raises(DataError, match="stale target cache: weights_sha256: cache has"):
        TargetCache(tmp_path / "c", wanted)
    with pytest.raises(DataError, match=r"holds other targets: .*target: cache has 'pooled', wanted 'logits'"):
        build_cache(teacher, "logits", data, "val", tmp_path / "c", PRE, shard_size=50)
    with pytest.raises(DataError, match="dataset.index_sha256"):
        wrong_split = fingerprint(teacher, "pooled", 8, PRE, dataset_fingerprint(data, "test"))
        TargetCache(tmp_path / "c", {**wrong_split, "dataset": {**wrong_split["dataset"], "split": "val"}})
    result = build_cache(teacher, "logits", data, "val", tmp_path / "c", PRE, shard_size=50, overwrite=True)
    assert result.computed == [0, 1, 2] and TargetCache(tmp_path / "c").dim == 1000


def test_ranks_compute_disjoint_shards(smoke_data, teacher, tmp_path, monkeypatch):
    data = smoke_data["synth-coco"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert _build(teacher, data, tmp_path / "c").computed == [1]
    monkeypatch.setenv("RANK", "0")
    assert _build(teacher, data, tmp_path / "c").computed == [0, 2]
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert len(TargetCache(tmp_path / "c")) == 128


def test_unknown_ids_and_non_caches(smoke_data, teacher, tmp_path):
    _build(teacher, smoke_data["synth-coco"], tmp_path / "c")
    with pytest.raises(DataError, match="image id 0 is not in this cache"):
        TargetCache(tmp_path / "c").lookup([0])
    with pytest.raises(DataError, match="no meta.json"):
        TargetCache(tmp_path)
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    (tmp_path / "c" / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(DataError, match="not a version-1 target cache"):
        TargetCache(tmp_path / "c")
