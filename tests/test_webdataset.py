"""Pairs streamed from tar shards in img2dataset's webdataset layout."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from mmd2v2_core.data.datasets import PairCollator
from mmd2v2_core.data.transforms import ImageTransformConfig, eval_transform
from mmd2v2_core.data.webdataset_source import webdataset_pairs
from mmd2v2_core.errors import DataError


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _jpeg(value):
    buf = io.BytesIO()
    Image.fromarray(np.full((24, 30, 3), value, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def shards(tmp_path):
    """Two shards as img2dataset writes them; sample 000000003 has a corrupt image, 000000004 no caption."""
    folder = tmp_path / "cc3m"
    folder.mkdir()
    key = 0
    for shard in range(2):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for _ in range(3):
                k = f"{key:09d}"
                image = b"\xff\xd8 garbage" if key == 3 else _jpeg(key * 20)
                _add(tar, f"{k}.jpg", image)
                if key != 4:
                    _add(tar, f"{k}.txt", f"caption {key}".encode())
                _add(tar, f"{k}.json", json.dumps({"key": k, "url": f"http://x/{k}.jpg", "status": "success"}).encode())
                key += 1
        (folder / f"{shard:05d}_stats.json").write_text(json.dumps({"count": 3, "successes": 3}))
    return folder


def test_streams_good_pairs_and_skips_bad_samples(shards, caplog):
    ds = webdataset_pairs(shards, eval_transform(ImageTransformConfig(size=16)))
    samples = list(ds)
    assert [s["caption"] for s in samples] == ["caption 0", "caption 1", "caption 2", "caption 5"]
    assert samples[0]["image"].shape == (3, 16, 16)
    assert "000000003" in caplog.text and "000000004" in caplog.text


def test_batches_through_the_pair_collator(shards, tokenizer):
    ds = webdataset_pairs(shards, eval_transform(ImageTransformConfig(size=16)), shuffle=10, seed=1)
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=PairCollator(tokenizer))))
    assert batch["images"].shape == (4, 3, 16, 16) and batch["input_ids"].shape == (4, 5)  # [CLS] "caption" "N" … [SEP]
    assert sorted(batch["captions"]) == ["caption 0", "caption 1", "caption 2", "caption 5"]


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="no .tar shards"):
        webdataset_pairs(tmp_path, eval_transform(ImageTransformConfig(size=16)))
