"""BEiT-v2: the pt1k release's original key layout mapped into timm, checked against a plain-torch forward."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mmd2v2_core.errors import ConfigError, DataError
from mmd2v2_core.teachers.base import MissingWeights, timm_outputs
from mmd2v2_core.teachers.beitv2 import (TINY, build_beitv2, convert_beitv2_pt1k, load_beitv2_finetuned,
                                         load_beitv2_pt1k)
from real_fixture import (beitv2_pt1k_state, hub_snapshot, relative_position_index, save_beitv2_release,
                          random_beitv2_finetuned)

DIM, HEADS, DEPTH, PATCH, IMG = 32, 2, 2, 8, 32
GRID = IMG // PATCH
DROPPED = ("mask_token", "lm_head.", "cls_pt_layers.", "rel_pos_bias.relative_position_index")


def test_tiny_variant_is_the_size_these_tests_write():
    assert TINY == dict(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS)


def reference_forward(s, images):
    """All tokens after the final norm, computed from the original-layout tensors with plain torch ops."""
    x = F.conv2d(images, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([s["cls_token"].expand(len(x), -1, -1), x], dim=1)
    n, head_dim = x.shape[1], DIM // HEADS
    table = s["rel_pos_bias.relative_position_bias_table"]
    bias = table[s["rel_pos_bias.relative_position_index"].flatten()].view(n, n, HEADS).permute(2, 0, 1)
    for i in range(DEPTH):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (DIM,), s[p + "norm1.weight"], s[p + "norm1.bias"], eps=1e-6)
        qkv_bias = torch.cat([s[p + "attn.q_bias"], torch.zeros(DIM), s[p + "attn.v_bias"]])
        q, k, v = (h @ s[p + "attn.qkv.weight"].T + qkv_bias).view(len(x), n, 3, HEADS, head_dim).permute(2, 0, 3, 1, 4)
        attn = ((q * head_dim ** -0.5) @ k.transpose(-2, -1) + bias).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(len(x), n, DIM) @ s[p + "attn.proj.weight"].T + s[p + "attn.proj.bias"]
        x = x + s[p + "gamma_1"] * out
        h = F.layer_norm(x, (DIM,), s[p + "norm2.weight"], s[p + "norm2.bias"], eps=1e-6)
        h = F.gelu(h @ s[p + "mlp.fc1.weight"].T + s[p + "mlp.fc1.bias"]) @ s[p + "mlp.fc2.weight"].T
        x = x + s[p + "gamma_2"] * (h + s[p + "mlp.fc2.bias"])
    return F.layer_norm(x, (DIM,), s["norm.weight"], s["norm.bias"], eps=1e-6)


@pytest.fixture
def images():
    return torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------- pt1k


def test_converter_consumes_or_drops_every_source_key_and_fills_every_target_key(tmp_path):
    source = beitv2_pt1k_state()
    release = save_beitv2_release(source, tmp_path / "pt1k.pth")
    out = load_file(convert_beitv2_pt1k(release, tmp_path / "pt1k.safetensors"))
    assert set(out) == set(build_beitv2(tiny=True).state_dict())
    kept = {k for k in source if not k.startswith(DROPPED)}
    assert set(out) == kept  # pt1k names are timm's names: a straight copy of everything but the dropped parts
    for key in kept:
        assert torch.equal(out[key], source[key]), key


def test_converted_model_equals_reference_forward(tmp_path, images):
    source = beitv2_pt1k_state()
    pth = save_beitv2_release(source, tmp_path / "pt1k.pth")
    expected = reference_forward(source, images)
    for model in (load_beitv2_pt1k(pth), load_beitv2_pt1k(convert_beitv2_pt1k(pth, tmp_path / "c.safetensors"))):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        torch.testing.assert_close(model.forward_features(images), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model(images), expected[:, 0], rtol=1e-4, atol=1e-5)  # the normed CLS
        out = timm_outputs(model, images)
        torch.testing.assert_close(out.pooled, expected[:, 0], rtol=1e-4, atol=1e-5)
        assert len(out.layers) == DEPTH


def test_reference_is_sensitive_to_the_mapped_tensors(images):
    """Guards the test itself: swapping the layer scales changes the output, so the equality above means something."""
    source = beitv2_pt1k_state()
    swapped = dict(source)
    swapped["blocks.0.gamma_1"], swapped["blocks.0.gamma_2"] = source["blocks.0.gamma_2"], source["blocks.0.gamma_1"]
    assert not torch.allclose(reference_forward(source, images), reference_forward(swapped, images), atol=1e-4)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update({"blocks.0.attn.k_bias": torch.zeros(DIM)}), "blocks.0.attn.k_bias"),
    (lambda s: s.pop("blocks.1.gamma_2"), "blocks.1.gamma_2"),
    (lambda s: s.update({"norm.bias": torch.zeros(DIM + 1)}), "norm.bias"),
    (lambda s: s.update({"rel_pos_bias.relative_position_index": relative_position_index(GRID).T.contiguous()}),
     "relative_position_index"),
])
def test_converter_refuses_wrong_checkpoints(tmp_path, edit, message):
    state = beitv2_pt1k_state()
    edit(state)
    with pytest.raises(DataError, match=message):
        convert_beitv2_pt1k(save_beitv2_release(state, tmp_path / "bad.pth"), tmp_path / "bad.safetensors")


def test_finetuned_file_is_not_a_pt1k_checkpoint(tmp_path):
    model = build_beitv2(tiny=True, num_classes=1000, shared_rel_pos=False)
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    with pytest.raises(DataError, match="rel_pos_bias.relative_position_bias_table"):
        load_beitv2_pt1k(tmp_path / "model.safetensors")


@pytest.mark.parametrize("path", [None, "missing/beitv2_base_patch16_224_pt1k.pth"])
def test_missing_pt1k_says_where_to_get_it(path):
    with pytest.raises(MissingWeights) as err:
        load_beitv2_pt1k(path)
    message = str(err.value)
    assert "beitv2_base_patch16_224_pt1k.pth" in message
    assert "github.com/microsoft/unilm" in message and "--weights PATH" in message


def test_full_size_layouts():
    with torch.device("meta"):  # shapes and structure only: no time spent initialising 86M weights
        pt1k, finetuned = build_beitv2(), build_beitv2(num_classes=1000, shared_rel_pos=False)
    assert pt1k.embed_dim == 768 and len(pt1k.blocks) == 12 and pt1k.blocks[0].attn.num_heads == 12
    assert pt1k.patch_embed.grid_size == (14, 14) and pt1k.pos_embed is None and pt1k.norm.eps == 1e-6
    assert pt1k.rel_pos_bias is not None and pt1k.blocks[0].attn.relative_position_bias_table is None
    assert finetuned.rel_pos_bias is None and finetuned.blocks[0].attn.relative_position_bias_table is not None
    assert isinstance(finetuned.norm, torch.nn.Identity) and finetuned.global_pool == "avg"
    assert sum(p.numel() for p in finetuned.parameters()) == 86_530_984  # the release README: 86.5M
    assert torch.all(build_beitv2(tiny=True).blocks[0].gamma_1 == 0.1)  # pt1k's layer scale init


# ---------------------------------------------------------------------------------------------- fine-tuned


def test_finetuned_loads_hub_files(tmp_path, images):
    model = random_beitv2_finetuned()
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    expected = model(images)
    assert expected.shape == (2, 1000)
    for path in (tmp_path / "model.safetensors", tmp_path / "pytorch_model.bin", tmp_path):
        torch.testing.assert_close(load_beitv2_finetuned(path)(images), expected)


def test_finetuned_loads_release_layout_with_position_index(tmp_path, images):
    """The release's own fine-tuned .pth: wrapped under "model", with each block's relative_position_index."""
    model = random_beitv2_finetuned()
    state = dict(model.state_dict())
    for i in range(DEPTH):
        state[f"blocks.{i}.attn.relative_position_index"] = relative_position_index(GRID)
    torch.save({"model": state}, tmp_path / "release_ft.pth")
    torch.testing.assert_close(load_beitv2_finetuned(tmp_path / "release_ft.pth", tag="in1k_ft_in1k")(images),
                               model(images))


def test_finetuned_rejects_pt1k_file(tmp_path):
    pth = save_beitv2_release(beitv2_pt1k_state(), tmp_path / "pt1k.pth")
    path = convert_beitv2_pt1k(pth, tmp_path / "pt1k.safetensors")
    with pytest.raises(DataError, match=r"missing keys .*fc_norm.*unexpected keys .*rel_pos_bias"):
        load_beitv2_finetuned(path)


def test_finetuned_from_hub_cache_or_missing(offline_hub, images):
    with pytest.raises(MissingWeights) as err:
        load_beitv2_finetuned(None)
    assert "timm/beitv2_base_patch16_224.in1k_ft_in22k_in1k" in str(err.value)
    assert "huggingface.co" in str(err.value) and "--weights PATH" in str(err.value)

    model = random_beitv2_finetuned()
    snapshot = hub_snapshot(offline_hub, "timm/beitv2_base_patch16_224.in1k_ft_in1k")
    save_file(model.state_dict(), snapshot / "model.safetensors")
    torch.testing.assert_close(load_beitv2_finetuned(None, tag="in1k_ft_in1k")(images), model(images))


def test_finetuned_unknown_tag():
    with pytest.raises(ConfigError, match="in1k_ft_in22k_in1k"):
        load_beitv2_finetuned(None, tag="in22k")
