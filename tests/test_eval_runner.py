"""Encoding evaluation splits, and zero-shot classification, with a small real network."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmd2v2_core.data.datasets import RetrievalSplit
from mmd2v2_core.data.images import open_rgb
from mmd2v2_core.data.transforms import ImageTransformConfig, eval_transform
from mmd2v2_core.errors import DataError
from mmd2v2_core.eval.embed import PairedEncoders, embed_split, evaluate_retrieval
from mmd2v2_core.eval.zeroshot import (ATTRIBUTE_TEMPLATES, attribute_zero_shot, class_prototypes,
                                       imagenet_zero_shot, zero_shot_accuracy)

TRANSFORM = eval_transform(ImageTransformConfig(size=32))


class TinyImage(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.conv = nn.Conv2d(3, dim, 8, stride=8)
        self.drop = nn.Dropout(0.5)  # makes train vs eval mode observable

    def encode_image(self, images):
        return self.drop(self.conv(images).mean((2, 3)))


class TinyText(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.emb = nn.Embedding(30522, dim)

    def encode_text(self, input_ids, attention_mask):
        mask = attention_mask[..., None].float()
        return (self.emb(input_ids) * mask).sum(1) / mask.sum(1)


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = PairedEncoders(TinyImage(), TinyText())
    m.train()
    return m


def test_embeddings_are_the_models_outputs_in_eval_mode(smoke_data, tokenizer, model):
    split = RetrievalSplit.from_index(smoke_data["synth-flickr"], "test")
    emb = embed_split(model, split, TRANSFORM, tokenizer, batch_size=40)
    assert emb.image.shape == (128, 16) and emb.text.shape == (len(split.captions), 16)
    assert emb.text_to_image.tolist() == split.text_to_image.tolist()
    assert model.training  # restored afterwards
    model.eval()
    with torch.no_grad():
        direct_img = model.encode_image(TRANSFORM(open_rgb(split.records[5].path))[None])
        tokens = tokenizer([split.captions[17]])
        direct_txt = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
    assert torch.allclose(emb.image[5], direct_img[0], atol=1e-5)  # dropout was off
    assert torch.allclose(emb.text[17], direct_txt[0], atol=1e-5)
    assert not emb.image.requires_grad



def test_bf16_encoding_runs_the_encoders_under_autocast_and_stays_close_to_fp32(smoke_data, tokenizer, model):
    split = RetrievalSplit.from_index(smoke_data["synth-flickr"], "test")
    full = embed_split(model, split, TRANSFORM, tokenizer, batch_size=40)
    half = embed_split(model, split, TRANSFORM, tokenizer, batch_size=40, precision="bf16")
    assert half.image.dtype == torch.float32 and not torch.equal(half.image, full.image)  # bf16 matmuls ran
    assert F.cosine_similarity(half.image, full.image).min() > 0.99
    assert F.cosine_similarity(half.text, full.text).min() > 0.99
    with pytest.raises(ValueError, match="precision"):
        embed_split(model, split, TRANSFORM, tokenizer, precision="fp8")

def test_evaluate_retrieval_reports_what_was_measured(smoke_data, tokenizer, model):
    result = evaluate_retrieval(model, smoke_data["synth-flickr"], "test", TRANSFORM, tokenizer, batch_size=64)
    assert result["dataset"] == "synth-flickr" and result["split"] == "test"
    assert result["images"] == 128 and result["captions"] == 643
    assert set(result["metrics"]) == {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mean"}
    assert result["metrics"]["t2i_r10"] < 40  # an untrained model is near chance (10/128 ≈ 7.8 %)
    assert result["ranks"]["t2i_median_rank"] > 10


def test_prototypes_are_normalised_means_of_normalised_prompts(tokenizer, model):
    protos = class_prototypes(model, tokenizer, ["circle", "star"], ["a {}.", "a red {}."])
    model.eval()
    with torch.no_grad():
        tok = tokenizer(["a star.", "a red star."])
        e = F.normalize(model.encode_text(tok["input_ids"], tok["attention_mask"]), dim=-1)
    assert torch.allclose(protos[1], F.normalize(e.mean(0), dim=0), atol=1e-6)
    assert torch.allclose(protos.norm(dim=1), torch.ones(2))


def test_zero_shot_accuracy_by_hand():
    protos = torch.eye(3)
    images = torch.tensor([[1.0, 0.2, 0], [0, 0.1, 0.9], [0.5, 0.6, 0], [0, 0, 1]])
    labels = torch.tensor([0, 2, 0, 1])
    acc = zero_shot_accuracy(images, protos, labels, ks=(1, 2))
    assert acc == {"top1": 50.0, "top2": 75.0}


def test_attribute_zero_shot_on_synthetic_single_object_images(smoke_data, tokenizer, model):
    results = attribute_zero_shot(model, smoke_data["synth-coco"], "test", TRANSFORM, tokenizer)
    assert set(results) == set(ATTRIBUTE_TEMPLATES)
    assert results["shape"]["classes"] == 6 and results["size"]["classes"] == 2
    assert results["position"]["classes"] == 9 and results["size"]["chance"] == 50.0
    n = results["shape"]["images"]
    assert 40 < n < 130  # about 30 % of 256 test images show one object
    for r in results.values():
        assert 0 <= r["accuracy"] <= 100 and r["majority"] >= r["chance"]


def test_attribute_zero_shot_needs_scenes(tmp_path, tokenizer, model):
    import json

    from data_prep.karpathy import index_karpathy
    from PIL import Image

    (tmp_path / "im").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "im" / "a.png")
    (tmp_path / "d.json").write_text(json.dumps({"dataset": "x", "images": [
        {"filename": "a.png", "imgid": 0, "split": "test", "sentences": [{"raw": "a thing"}]}]}))
    index_karpathy(tmp_path / "d.json", tmp_path / "im", tmp_path / "idx")
    with pytest.raises(DataError, match="no single-object images"):
        attribute_zero_shot(model, tmp_path / "idx", "test", TRANSFORM, tokenizer)


def test_imagenet_zero_shot_checks_its_folder(tmp_path, tokenizer, model):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    assert len(IMAGENET_CLASSNAMES) == 1000 and len(OPENAI_IMAGENET_TEMPLATES) == 80
    with pytest.raises(DataError, match="ImageNet validation folder not found"):
        imagenet_zero_shot(model, tmp_path / "val", TRANSFORM, tokenizer)
    for wnid in ("n01440764", "n01443537"):
        (tmp_path / "val" / wnid).mkdir(parents=True)
        from PIL import Image

        Image.new("RGB", (8, 8)).save(tmp_path / "val" / wnid / "x.JPEG")
    with pytest.raises(DataError, match="2 class folders, expected 1000"):
        imagenet_zero_shot(model, tmp_path / "val", TRANSFORM, tokenizer)


def test_caption_tokens_are_reused_for_the_next_model(smoke_data, tokenizer):
    from mmd2v2_core.eval.embed import encode_captions

    class Counting:  # the tokenizer's settings, counting its calls
        name, max_length, pad_to, calls = tokenizer.name, tokenizer.max_length, tokenizer.pad_to, 0

        def __call__(self, captions):
            Counting.calls += 1
            return tokenizer(captions)

    captions = RetrievalSplit.from_index(smoke_data["synth-flickr"], "test").captions[:100] + ["a new caption"]
    first, second = PairedEncoders(TinyImage(), TinyText()), PairedEncoders(TinyImage(), TinyText())
    a = encode_captions(first, captions, Counting(), batch_size=32)
    calls = Counting.calls
    b = encode_captions(second, captions, Counting(), batch_size=32)
    assert calls == 4 and Counting.calls == calls  # tokenised once, in 4 batches
    torch.testing.assert_close(a, first.encode_text(**tokenizer(captions)), atol=1e-5, rtol=1e-5)  # rows in order
    assert not torch.allclose(a, b)
