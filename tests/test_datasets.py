"""Training pairs, retrieval splits, transforms and batching over a prepared index."""

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mmd2v2_core.data.datasets import CaptionPairs, PairCollator, RetrievalSplit
from mmd2v2_core.data.index import ImageRecord, read_split
from mmd2v2_core.data.transforms import ImageTransformConfig, eval_transform, train_transform

CFG = ImageTransformConfig(size=32, hflip=0.0)


def test_caption_pairs_one_item_per_caption(smoke_data):
    records = read_split(smoke_data["synth-coco"], "train")
    pairs = CaptionPairs(records, train_transform(CFG))
    assert len(pairs) == sum(len(r.captions) for r in records)
    item = pairs[7]
    i, j = pairs.pairs[7]
    assert item["caption"] == records[i].captions[j] and item["image_index"] == i
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32


def test_retrieval_split_maps_every_caption_to_its_image(smoke_data):
    split = RetrievalSplit.from_index(smoke_data["synth-coco"], "test")
    assert split.name == "synth-coco/test"
    assert len(split.captions) == len(split.text_to_image) == sum(len(r.captions) for r in split.records)
    for j in (0, 5, len(split.captions) - 1):
        assert split.captions[j] in split.records[split.text_to_image[j]].captions
    assert np.all(np.diff(split.text_to_image) >= 0)


def test_retrieval_split_deduplicates_images_listed_per_pair(tmp_path):
    r1 = ImageRecord(1, tmp_path / "a.jpg", ("a",), (0,))
    r2 = ImageRecord(2, tmp_path / "b.jpg", ("b", "c"), (1, 2))
    split = RetrievalSplit.from_records("x", [r1, r2, r1])
    assert [r.image_id for r in split.records] == [1, 2] and split.text_to_image.tolist() == [0, 1, 1]


def test_transforms(tmp_path):
    img = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))[..., None].repeat(3, 2))
    ev = eval_transform(CFG)(img)
    assert ev.shape == (3, 32, 32)
    assert ev[0, 0, 0] < ev[0, 0, -1]  # plain resize keeps orientation, no flip
    torch.manual_seed(0)
    crops = {tuple(train_transform(CFG)(img)[0, 0, :4].tolist()) for _ in range(8)}
    assert len(crops) > 1  # random crops differ
    flip = train_transform(ImageTransformConfig(size=32, hflip=1.0))(img)
    assert flip[0, 0, 0] > flip[0, 0, -1]
    unit = eval_transform(ImageTransformConfig(size=8, mean=(0, 0, 0), std=(1, 1, 1)))(Image.new("RGB", (9, 9), "white"))
    assert torch.allclose(unit, torch.ones_like(unit))


def test_loader_with_workers_and_collator(smoke_data, tokenizer):
    pairs = CaptionPairs.from_index(smoke_data["synth-coco"], "val", train_transform(CFG))
    loader = DataLoader(pairs, batch_size=16, shuffle=True, num_workers=2, collate_fn=PairCollator(tokenizer))
    batch = next(iter(loader))
    assert batch["images"].shape == (16, 3, 32, 32)
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[1] <= 64
    assert batch["image_index"].shape == batch["pair_index"].shape == (16,)
    assert len(batch["captions"]) == 16
    assert torch.equal(batch["input_ids"], tokenizer(batch["captions"])["input_ids"])
