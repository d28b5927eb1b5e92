"""DINO, ResNet-50 and BERT: tiny models saved in the hub's file formats load back through the loaders, offline."""

import pytest
import torch
from safetensors.torch import save_file

from mmd2v2_core.errors import DataError
from mmd2v2_core.teachers.base import MissingWeights, hf_text_outputs, timm_outputs
from mmd2v2_core.teachers.pretrained import build_bert, build_resnet50, load_bert, load_dino, load_resnet50
from real_fixture import hub_snapshot, random_dino


@pytest.fixture
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def tiny_resnet():
    torch.manual_seed(0)
    model = build_resnet50(tiny=True).eval()
    with torch.no_grad():  # fresh running statistics are 0/1; make them matter in eval mode
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


# ---------------------------------------------------------------------------------------------- timm models


@pytest.mark.parametrize("make, load", [(random_dino, load_dino), (tiny_resnet, load_resnet50)])
def test_timm_loaders_read_hub_files(tmp_path, images, make, load):
    model = make()
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    expected = model(images)
    for path in (tmp_path / "model.safetensors", tmp_path / "pytorch_model.bin", str(tmp_path)):
        loaded = load(path)
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
        torch.testing.assert_close(loaded(images), expected)


def test_dino_outputs_the_normed_cls(tmp_path, images):
    save_file(random_dino().state_dict(), tmp_path / "model.safetensors")
    model = load_dino(tmp_path / "model.safetensors")
    out = timm_outputs(model, images)
    assert out.logits is None and out.pooled.shape == (2, 32)
    torch.testing.assert_close(out.pooled, model.forward_features(images)[:, 0])


def test_resnet_keeps_its_1000_class_head(tmp_path, images):
    state = {k: v for k, v in tiny_resnet().state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, tmp_path / "model.safetensors")  # some exports omit BatchNorm's step counter
    out = timm_outputs(load_resnet50(tmp_path / "model.safetensors"), images)
    assert out.logits.shape == (2, 1000) and out.pooled.shape == (2, 256)


def test_resnet_checkpoint_given_to_dino_loader(tmp_path):
    save_file(tiny_resnet().state_dict(), tmp_path / "resnet.safetensors")
    with pytest.raises(DataError, match=r"resnet\.safetensors: missing keys \[.*cls_token.*\], unexpected keys "
                                        r"\[.*conv1\.weight.*\]; is this a DINO ViT-B/16 checkpoint\?"):
        load_dino(tmp_path / "resnet.safetensors")


def test_dino_checkpoint_given_to_resnet_loader(tmp_path):
    torch.save({"model": random_dino().state_dict()}, tmp_path / "dino.pth")
    with pytest.raises(DataError, match=r"dino\.pth: missing keys .*is this a ResNet-50"):
        load_resnet50(tmp_path / "dino.pth")


def test_wrong_shapes_are_named(tmp_path):
    state = random_dino().state_dict()
    state["pos_embed"] = torch.zeros(1, 5, 32)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(DataError, match=r"pos_embed \(1, 5, 32\) \(expected \(1, 17, 32\)\)"):
        load_dino(tmp_path / "model.safetensors")


def test_unreadable_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="model.safetensors"):
        load_dino(tmp_path / "model.safetensors")


@pytest.mark.parametrize("load, repo", [(load_dino, "timm/vit_base_patch16_224.dino"),
                                        (load_resnet50, "timm/resnet50.a1_in1k")])
def test_missing_timm_weights_are_actionable(offline_hub, tmp_path, load, repo):
    for path in (None, tmp_path / "absent.safetensors"):
        with pytest.raises(MissingWeights) as err:
            load(path)
        message = str(err.value)
        assert repo in message and f"https://huggingface.co/{repo}" in message and "--weights PATH" in message


@pytest.mark.parametrize("make, load, repo", [(random_dino, load_dino, "timm/vit_base_patch16_224.dino"),
                                              (tiny_resnet, load_resnet50, "timm/resnet50.a1_in1k")])
def test_timm_weights_from_the_hub_cache(offline_hub, images, make, load, repo):
    model = make()
    save_file(model.state_dict(), hub_snapshot(offline_hub, repo) / "model.safetensors")
    torch.testing.assert_close(load(None)(images), model(images))


# ---------------------------------------------------------------------------------------------- BERT


def text_batch():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1000, 30000, (2, 7), generator=g)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    return ids, mask


def tiny_bert():
    torch.manual_seed(0)
    return build_bert(tiny=True).eval()


def test_bert_loads_a_save_pretrained_folder(tmp_path):
    model = tiny_bert()
    model.save_pretrained(tmp_path / "bert")
    loaded = load_bert(tmp_path / "bert")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    ids, mask = text_batch()
    expected, out = hf_text_outputs(model, ids, mask), hf_text_outputs(loaded, ids, mask)
    assert out.pooled.shape == (2, 32) and len(out.layers) == 2
    torch.testing.assert_close(out.tokens, expected.tokens)


def test_bert_from_the_hub_cache(offline_hub):
    model = tiny_bert()
    model.save_pretrained(hub_snapshot(offline_hub, "google-bert/bert-base-uncased"))
    ids, mask = text_batch()
    torch.testing.assert_close(load_bert(None)(input_ids=ids, attention_mask=mask).last_hidden_state,
                               model(input_ids=ids, attention_mask=mask).last_hidden_state)


def test_bert_full_size_is_bert_base_uncased():
    with torch.device("meta"):
        config = build_bert().config
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.intermediate_size) == (30522, 768, 12, 12, 3072)


def test_bert_rejects_other_models(tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    DistilBertModel(DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64)).save_pretrained(tmp_path / "d")
    with pytest.raises(DataError, match=r"model_type 'distilbert'; is this a BERT checkpoint\?"):
        load_bert(tmp_path / "d")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no config.json"):
        load_bert(tmp_path / "empty")


def test_bert_missing_weights_are_named(tmp_path):
    model = tiny_bert()
    model.save_pretrained(tmp_path / "bert")
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.layer.1.")}
    save_file(state, tmp_path / "bert" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(DataError, match=r"missing keys \[encoder\.layer\.1\."):
        load_bert(tmp_path / "bert")


def test_missing_bert_is_actionable(offline_hub, tmp_path):
    for path in (None, tmp_path / "absent"):
        with pytest.raises(MissingWeights) as err:
            load_bert(path)
        message = str(err.value)
        assert "https://huggingface.co/google-bert/bert-base-uncased" in message and "--weights PATH" in message
