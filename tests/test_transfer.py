"""The transfer analysis: the test scenes redrawn and rephrased, and where a model's transfer is lost."""

import pytest
import torch

from data_prep.synth.captions import STYLES
from data_prep.synth.render import TRAITS
from data_prep.synth.transfer import generate_transfer_sets
from mmd2v2_core.data.datasets import RetrievalSplit
from mmd2v2_core.data.index import read_split
from mmd2v2_core.errors import DataError
from mmd2v2_core.eval.embed import PairedEncoders, embed_split, encode_captions, encode_images
from mmd2v2_core.eval.retrieval import retrieval_ranks
from mmd2v2_core.eval.transfer import failure_reading, transfer_decomposition
from test_eval_runner import TRANSFORM, TinyImage, TinyText


@pytest.fixture(scope="module")
def transfer_sets(smoke_data, tmp_path_factory):
    return generate_transfer_sets(smoke_data["synth-flickr"], tmp_path_factory.mktemp("transfer"), workers=2)


def test_transfer_sets_redraw_the_test_scenes_in_the_training_phrasing(smoke_data, transfer_sets):
    assert set(transfer_sets) == {"flickr", "coco", *(f"coco+{t}" for t in TRAITS), "coco+mat"}
    test = read_split(smoke_data["synth-flickr"], "test")
    training_phrasing = read_split(transfer_sets["coco"], "test")
    coco_backgrounds = [p for phrases in STYLES["coco"].backgrounds.values() for p in phrases]
    for name, folder in transfer_sets.items():
        records = read_split(folder, "test")
        assert [r.extra["scene"] for r in records] == [r.extra["scene"] for r in test]
        assert [r.captions for r in records] == [r.captions for r in training_phrasing]  # one caption set
        assert all(any(p in c.lower() for p in coco_backgrounds) for r in records for c in r.captions)
        same_pixels = [a.path.read_bytes() == b.path.read_bytes() for a, b in zip(records, test)]
        assert all(same_pixels) if name == "flickr" else not any(same_pixels), name
    assert [len(r.captions) for r in training_phrasing] == [len(r.captions) for r in test]
    assert [r.captions for r in training_phrasing] != [r.captions for r in test]


def test_transfer_sets_are_reused(smoke_data, transfer_sets):
    stamps = {n: (f / "manifest.json").stat().st_mtime_ns for n, f in transfer_sets.items()}
    again = generate_transfer_sets(smoke_data["synth-flickr"], next(iter(transfer_sets.values())).parent)
    assert {n: (f / "manifest.json").stat().st_mtime_ns for n, f in again.items()} == stamps


def _encoders(model, tokenizer):
    return (lambda split: encode_images(model, split, TRANSFORM, batch_size=64),
            lambda split: encode_captions(model, split.captions, tokenizer, batch_size=64))


def test_decomposition_pairs_each_drawing_with_each_caption_set(smoke_data, transfer_sets, tokenizer):
    torch.manual_seed(0)
    model = PairedEncoders(TinyImage(), TinyText())
    result = transfer_decomposition(smoke_data["synth-flickr"], transfer_sets, *_encoders(model, tokenizer),
                                    test_drawing="flickr")
    assert set(result["recall"]) == set(transfer_sets)

    def direct(images_from, captions_from):
        images = embed_split(model, RetrievalSplit.from_index(images_from, "test"), TRANSFORM, tokenizer)
        texts = embed_split(model, RetrievalSplit.from_index(captions_from, "test"), TRANSFORM, tokenizer)
        recalls = retrieval_ranks(images.image, texts.text, texts.text_to_image).recalls(ks=(1,))
        return {"i2t_r1": pytest.approx(recalls["i2t_r1"], abs=1e-6), "t2i_r1": pytest.approx(recalls["t2i_r1"], abs=1e-6)}

    test = smoke_data["synth-flickr"]
    assert result["recall"]["flickr"]["test"] == direct(test, test)
    assert result["recall"]["coco+outline"]["test"] == direct(transfer_sets["coco+outline"], test)
    assert result["recall"]["coco"]["training"] == direct(transfer_sets["coco"], transfer_sets["coco"])
    assert result["failures"]["images"] == 128


def test_decomposition_refuses_sets_of_other_scenes(smoke_data, transfer_sets, tokenizer):
    model = PairedEncoders(TinyImage(), TinyText())
    with pytest.raises(DataError, match="scenes or caption counts differ"):
        transfer_decomposition(smoke_data["synth-flickr"], {**transfer_sets, "other": smoke_data["synth-coco"]},
                               *_encoders(model, tokenizer), test_drawing="flickr")


def _scene(background, *objects):
    return {"background": background, "objects": [dict(zip(("shape", "color", "size", "row", "col"), o))
                                                  for o in objects]}


def test_failure_reading_names_what_the_retrieved_scene_gets_wrong():
    scenes = [_scene("grass", ("star", "red", "small", "top", "left")),
              _scene("grass", ("star", "red", "large", "top", "left")),  # differs from 0 in size only
              _scene("snow", ("circle", "blue", "large", "middle", "center"), ("cross", "white", "small", "top", "left"))]
    image = torch.tensor([[1.0, 1, 0], [0, 1, 0], [0, 0, 1]])
    text = torch.tensor([[0.2, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]])  # image 0 is closer to image 1's caption
    reading = failure_reading(scenes, image, text, torch.tensor([0, 1, 2, 2]))
    assert reading["failures"] == 1 and reading["near_misses"] == 1
    assert reading["wrong"]["size"] == 1.0 and reading["wrong"]["background"] == 0.0
    assert reading["i2t_r1_by"]["background"] == {"grass": {"images": 2, "i2t_r1": 50.0},
                                                  "snow": {"images": 1, "i2t_r1": 100.0}}
    assert reading["i2t_r1_by"]["smallest object"]["small"] == {"images": 2, "i2t_r1": 50.0}
