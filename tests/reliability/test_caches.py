"""Target caches: another teacher's targets, and shards deleted or cut short."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mmd2v2_core.cli import main

from .conftest import assert_clear_error

SHARD = 48  # the smoke train split spans several shards


def _targets_args(data, out, *extra):
    return ["targets", "--teacher", "efficientnet-lite0", "--tiny", "--kind", "pooled", "--image-size", "32",
            "--data", data, "--out", out, "--shard-size", str(SHARD), *extra]


@pytest.fixture(scope="module")
def built(smoke_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "cache"
    assert main([str(a) for a in _targets_args(smoke_source["synth-coco"], out)]) == 0
    return out


@pytest.fixture
def cache(built, tmp_path):
    return shutil.copytree(built, tmp_path / "cache")


def _train(cli, data, cache, tmp_path, *extra):
    return cli("train", "--config", "smoke", f"data.root={data}", f"run.out_dir={tmp_path / 'run'}", "optim.steps=2",
               "run.val_every=2", f"teacher.cache={cache}", *extra)


def test_cache_of_another_teacher_is_refused(cache, smoke_source, tmp_path, cli):
    """Training with the packaged pretrained teacher on a cache of its random-init twin: the differing fields named."""
    out = _train(cli, smoke_source["synth-coco"], cache, tmp_path, "teacher.tiny=false")
    assert_clear_error(out, "stale target cache", "teacher", "weights_sha256")


def test_cache_of_another_target_kind_is_refused(cache, smoke_source, tmp_path, cli):
    """Same teacher, other target (logits instead of pooled features): refused, naming 'target'."""
    out = _train(cli, smoke_source["synth-coco"], cache, tmp_path, "teacher.target=logits")
    assert_clear_error(out, "stale target cache", "target")


def test_cache_of_another_dataset_is_refused(cache, smoke_source, tmp_path, cli):
    """The same teacher, but the train split's index changed since the targets were computed."""
    data = shutil.copytree(smoke_source["synth-coco"], tmp_path / "data")
    lines = (data / "train.jsonl").read_text().splitlines()
    (data / "train.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # one image fewer
    assert_clear_error(_train(cli, data, cache, tmp_path), "stale target cache", "dataset")


def test_building_over_another_teachers_cache_needs_overwrite(cache, smoke_source, cli):
    """`mmd2v2 targets` into a folder holding other targets: refused, pointing at --overwrite."""
    args = _targets_args(smoke_source["synth-coco"], cache, "--kind", "logits")
    assert_clear_error(cli(*args), "holds other targets", "--overwrite")
    assert cli(*args, "--overwrite").code == 0
    assert json.loads((cache / "meta.json").read_text())["fingerprint"]["target"] == "logits"


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_damaged_shard_is_named_and_rerun_recomputes_only_it(cache, built, smoke_source, tmp_path, cli, damage):
    """A shard deleted or cut: training names it; rerunning `targets` recomputes just that shard, identically."""
    shard = cache / "shard_00001.npy"
    if damage == "deleted":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:200])
    assert_clear_error(_train(cli, smoke_source["synth-coco"], cache, tmp_path), "shard_00001.npy",
                       "Rerun `mmd2v2 targets`")
    out = cli(*_targets_args(smoke_source["synth-coco"], cache))
    assert out.code == 0 and "computed shards [1]" in out.out
    assert np.array_equal(np.load(shard), np.load(built / "shard_00001.npy"))
    assert _train(cli, smoke_source["synth-coco"], cache, tmp_path).code == 0


@pytest.mark.parametrize("part,damage,words", [
    ("meta.json", b"{\"format\": ", ["meta.json", "not valid JSON"]),
    ("ids.npy", None, ["ids.npy"]),
], ids=["meta.json cut", "ids.npy deleted"])
def test_damaged_cache_metadata_is_named(cache, smoke_source, tmp_path, cli, part, damage, words):
    """meta.json cut short or ids.npy gone: training stops naming the file and how to restore it."""
    if damage is None:
        (cache / part).unlink()
    else:
        (cache / part).write_bytes(damage)
    assert_clear_error(_train(cli, smoke_source["synth-coco"], cache, tmp_path), *words)
