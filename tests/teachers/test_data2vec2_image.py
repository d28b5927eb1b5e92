"""Data2Vec2-image: the fairseq-layout converter and the timm model it fills.

The mapping is proven against an independent reference: ``reference_forward`` runs the ORIGINAL
architecture (fairseq's ImageEncoder + AltBlock, post-LN) with plain torch ops straight from the
original-layout tensors of a tiny checkpoint, and the converted timm model must agree with it.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from mmd2v2_core.errors import DataError
from mmd2v2_core.student.init import init_image_from_timm
from mmd2v2_core.student.model import MultimodalStudent, StudentConfig
from mmd2v2_core.teachers.base import MissingWeights, timm_outputs
from mmd2v2_core.teachers.data2vec2_image import (build_data2vec2_image, convert_data2vec2_image,
                                                  load_data2vec2_image)
from real_fixture import IMG, ViTGeometry, d2v2_image_prefixes, d2v2_image_state, mae_positions, save_d2v2_image

DIM, HEADS, PATCH, SIZE, PRENET, SHARED, HIDDEN = 32, 2, 8, 32, 2, 3, 64
GEO = ViTGeometry(dim=DIM, heads=HEADS, patch=PATCH, size=SIZE, depth=SHARED, hidden=HIDDEN, prenet=PRENET)


def original_state() -> dict:
    return d2v2_image_state(GEO)


def expected_target(key: str) -> str:
    """The timm name of each architecture tensor, written out independently of the module."""
    stem = {"local_encoder.proj.weight": "patch_embed.proj.weight", "local_encoder.proj.bias": "patch_embed.proj.bias",
            "extra_tokens": "cls_token", "fixed_positional_encoder.positions": "pos_embed",
            "context_encoder.norm.weight": "norm_pre.weight", "context_encoder.norm.bias": "norm_pre.bias"}
    if key.startswith(IMG) and key[len(IMG):] in stem:
        return stem[key[len(IMG):]]
    for i, prefix in enumerate(d2v2_image_prefixes(GEO)):
        if key.startswith(prefix):
            return f"blocks.{i}.{key[len(prefix):]}"
    raise KeyError(key)


def alt_block(x, t, heads):
    """fairseq AltBlock, layer_norm_first=False: norm1(x + attn(x)), then norm2(x + mlp(x))."""
    B, N, C = x.shape
    qkv = F.linear(x, t["attn.qkv.weight"], t["attn.qkv.bias"]).reshape(B, N, 3, heads, C // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attn = ((q * (C // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    x = x + F.linear((attn @ v).transpose(1, 2).reshape(B, N, C), t["attn.proj.weight"], t["attn.proj.bias"])
    x = F.layer_norm(x, (C,), t["norm1.weight"], t["norm1.bias"], eps=1e-6)
    mlp = F.linear(F.gelu(F.linear(x, t["mlp.fc1.weight"], t["mlp.fc1.bias"])), t["mlp.fc2.weight"], t["mlp.fc2.bias"])
    return F.layer_norm(x + mlp, (C,), t["norm2.weight"], t["norm2.bias"], eps=1e-6)


def reference_forward(state, images, heads=HEADS):
    """The original forward (features_only, no mask, extra tokens kept): final tokens and each block's output."""
    weight = state[IMG + "local_encoder.proj.weight"]
    x = F.conv2d(images, weight, state[IMG + "local_encoder.proj.bias"], stride=weight.shape[-1])
    x = x.flatten(2).transpose(1, 2) + state[IMG + "fixed_positional_encoder.positions"]
    x = torch.cat([state[IMG + "extra_tokens"].expand(len(x), -1, -1), x], dim=1)
    x = F.layer_norm(x, x.shape[-1:], state[IMG + "context_encoder.norm.weight"],
                     state[IMG + "context_encoder.norm.bias"], eps=1e-6)
    layers = []
    for prefix in d2v2_image_prefixes(GEO):
        x = alt_block(x, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, heads)
        layers.append(x)
    return x, layers


@pytest.fixture
def original(tmp_path):
    return save_d2v2_image(tmp_path / "base_imagenet.pt", original_state(), GEO)


def test_converter_maps_every_tensor_and_drops_training_parts(original, tmp_path):
    out = convert_data2vec2_image(original, tmp_path / "d2v2.safetensors")
    source = original_state()
    architecture = {k: v for k, v in source.items() if not k.startswith(("_ema", IMG + "decoder."))}
    with safe_open(out, framework="pt") as f:
        converted = {key: f.get_tensor(key) for key in f.keys()}
        meta = json.loads(f.metadata()["data2vec2_image"])
    assert meta == {"img_size": SIZE, "patch_size": PATCH, "embed_dim": DIM, "depth": PRENET + SHARED,
                    "num_heads": HEADS, "mlp_ratio": HIDDEN / DIM, "prenet_depth": PRENET}
    assert len(converted) == len(architecture)  # every architecture tensor consumed, nothing else kept
    for key, tensor in architecture.items():
        assert torch.equal(converted[expected_target(key)], tensor), key
    model_keys = set(load_data2vec2_image(out).state_dict())
    assert set(converted) == model_keys  # every timm tensor filled


def test_conversion_is_deterministic(original, tmp_path):
    a = convert_data2vec2_image(original, tmp_path / "a.safetensors")
    b = convert_data2vec2_image(original, tmp_path / "b.safetensors")
    assert a.read_bytes() == b.read_bytes()


def test_converted_model_computes_the_original_forward(original):
    model = load_data2vec2_image(original)
    assert not model.training
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    expected, expected_layers = reference_forward(original_state(), images)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images), expected, atol=1e-5, rtol=1e-5)
        out = timm_outputs(model, images)  # forward_intermediates(return_prefix_tokens=True, output_fmt="NLC")
    assert len(out.layers) == PRENET + SHARED
    for got, want in zip(out.layers, expected_layers):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooled, expected[:, 0], atol=1e-5, rtol=1e-5)


def test_student_layers_are_the_main_blocks_after_a_frozen_prenet(original):
    """As the original MM-D2V2 and S-SMKE: front end = patch embedding + prenet blocks (frozen), and the student's
    image layer k = main block k — checked against the original architecture's own forward."""
    model = load_data2vec2_image(original)
    cfg = StudentConfig(width=DIM, heads=HEADS, mlp_ratio=HIDDEN / DIM, image_size=SIZE, patch_size=PATCH,
                        depth=SHARED, n_shared=0, norm_first=False, kd_dim=0, image_prenet=PRENET,
                        freeze_image_frontend=True)
    student = MultimodalStudent(cfg).eval()
    assert init_image_from_timm(student, model, "d2v2-image") == list(range(SHARED))
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    _, reference = reference_forward(original_state(), images)
    with torch.no_grad():
        x = student.image_embed(images)
        torch.testing.assert_close(x, reference[PRENET - 1], atol=1e-5, rtol=1e-5)
        for k, layer in enumerate(student.specific):
            x = layer(x, "image")
            torch.testing.assert_close(x, reference[PRENET + k], atol=1e-5, rtol=1e-5)
    frozen = {name for name, p in student.named_parameters() if not p.requires_grad}
    assert frozen == {name for name, _ in student.image_embed.named_parameters(prefix="image_embed")}
    assert any(name.startswith("image_embed.prenet.1.") for name in frozen)


def test_pt_and_safetensors_load_the_same_model(original, tmp_path):
    converted = convert_data2vec2_image(original, tmp_path / "d2v2.safetensors")
    images = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(load_data2vec2_image(original)(images), load_data2vec2_image(converted)(images))


def test_random_init_model_has_the_architecture():
    model = build_data2vec2_image(tiny=True)
    assert model.num_prefix_tokens == 1 and model.no_embed_class
    assert isinstance(model.norm, torch.nn.Identity) and isinstance(model.norm_pre, torch.nn.LayerNorm)
    assert model.patch_embed.proj.bias is not None
    assert not model.pos_embed.requires_grad
    torch.testing.assert_close(model.pos_embed[0], mae_positions(14, 32))
    assert model.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
    assert model.pretrained_cfg["std"] == (0.229, 0.224, 0.225)
    final, layers = model.eval().forward_intermediates(torch.randn(1, 3, 224, 224), return_prefix_tokens=True,
                                                       output_fmt="NLC")
    assert final.shape == (1, 197, 32) and len(layers) == 5 and layers[0][1].shape == (1, 1, 32)
    assert model.prenet_depth == 2
    with torch.device("meta"):
        base = build_data2vec2_image()
    assert (len(base.blocks), base.embed_dim, base.blocks[0].attn.num_heads) == (12, 768, 12)
    assert base.patch_embed.proj.weight.shape == (768, 3, 16, 16)
    assert 85e6 < sum(p.numel() for p in base.parameters()) < 87e6


def test_missing_file_and_no_path(tmp_path):
    for name in ("base_imagenet.pt", "d2v2.safetensors"):
        with pytest.raises(DataError, match=name):
            load_data2vec2_image(tmp_path / name)
    with pytest.raises(DataError, match="base_imagenet.pt"):
        convert_data2vec2_image(tmp_path / "base_imagenet.pt", tmp_path / "out.safetensors")
    with pytest.raises(MissingWeights, match="base_imagenet.pt"):
        load_data2vec2_image(None)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update({IMG + "mystery.weight": torch.zeros(3)}),
     rf"unexpected key '{IMG}mystery.weight' \(not mapped, not a known training-only part\)"),
    (lambda s: s.update({IMG + "alibi_scale": torch.ones(1, 1, 1, 1, 1)}), "ALiBi"),
    (lambda s: s.pop("blocks.0.mlp.fc2.bias"), "missing key.*'blocks.0.mlp.fc2.bias'"),
    (lambda s: s.update({"blocks.0.attn.proj.bias": torch.zeros(DIM + 1)}),
     r"'blocks.0.attn.proj.bias' has shape \(33,\).*'blocks.2.attn.proj.bias'.*\(32,\)"),
])
def test_bad_checkpoints_are_refused_by_name(tmp_path, edit, message):
    state = original_state()
    edit(state)
    path = save_d2v2_image(tmp_path / "base_imagenet.pt", state, GEO)
    with pytest.raises(DataError, match=message) as info:
        load_data2vec2_image(path)
    assert "base_imagenet.pt" in str(info.value)


def test_heads_need_the_config_for_unreleased_widths(tmp_path):
    path = save_d2v2_image(tmp_path / "base_imagenet.pt", original_state(), GEO, cfg=False)
    with pytest.raises(DataError, match="attention heads"):
        load_data2vec2_image(path)


def test_safetensors_without_architecture_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"cls_token": torch.zeros(1, 1, DIM)}, path)
    with pytest.raises(DataError, match="plain.safetensors.*metadata"):
        load_data2vec2_image(path)
