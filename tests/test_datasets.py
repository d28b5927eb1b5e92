"""Retrieval splits, transforms, and batching training pairs over a prepared index."""

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mmd2v2_core.data.datasets import PairCollator, RetrievalSplit
from mmd2v2_core.data.index import ImageRecord, read_split
from mmd2v2_core.data.transforms import ImageTransformConfig, eval_transform, train_transform
from mmd2v2_core.train.data import StepSampler, TrainPairs, View

CFG = ImageTransformConfig(size=32, hflip=0.0)


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


def test_training_pairs_batched_by_the_collator_in_workers(smoke_data, tokenizer):
    """The trainer's batching: one pair per caption, DataLoader workers, the collator tokenising the batch."""
    records = read_split(smoke_data["synth-coco"], "train")
    view = View(32, (0.5,) * 3, (0.5,) * 3)
    pairs = TrainPairs(records, (0.5, 1.0), 0.0, view, view, seed=0)
    assert len(pairs) == sum(len(r.captions) for r in records)
    loader = DataLoader(pairs, batch_sampler=StepSampler(len(pairs), 16, 2, seed=0), num_workers=2,
                        collate_fn=PairCollator(tokenizer))
    batch = next(iter(loader))
    assert batch["images"].shape == batch["teacher_image"].shape == (16, 3, 32, 32)
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[1] <= 64
    assert batch["image_id"].dtype == torch.long and batch["image_id"].shape == (16,) and len(batch["captions"]) == 16
    assert torch.equal(batch["input_ids"], tokenizer(batch["captions"])["input_ids"])
    by_id = {r.image_id: r for r in records}
    assert all(c in by_id[int(i)].captions for c, i in zip(batch["captions"], batch["image_id"]))
