"""The student: shapes and masks, what the attention modes share (via gradients), exact initialisation,
and every preset building, running and reporting its size."""

import pytest
import torch

from mmd2v2_core.errors import ConfigError
from mmd2v2_core.student.init import init_image_from_timm, init_text_from_hf, layer_indices
from mmd2v2_core.student.model import MultimodalStudent, StudentConfig
from mmd2v2_core.student.presets import ARCHS, SIZES, build_student, get_preset, summarize
from mmd2v2_core.teachers.registry import create_teacher

SMALL = dict(width=32, heads=2, image_size=32, patch_size=8, vocab_size=100, kd_dim=16, depth=3, n_shared=1)


def _batch(b=3, t=12, vocab=100):
    torch.manual_seed(0)
    ids = torch.randint(5, vocab, (b, t))
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    return torch.randn(b, 3, 32, 32), ids, mask


def test_shapes_and_unit_norm_embeddings():
    student = MultimodalStudent(StudentConfig(**SMALL, num_classes=10))
    out = student(*_batch())
    assert out["image_emb"].shape == out["text_emb"].shape == (3, 32)
    assert out["image_kd"].shape == (3, 16) and out["text_logits"].shape == (3, 10)
    assert torch.allclose(out["text_emb"].norm(dim=-1), torch.ones(3))


def test_padding_is_never_attended():
    student = MultimodalStudent(StudentConfig(**SMALL)).eval()
    _, ids, mask = _batch()
    emb = student.encode_text(ids, mask)
    garbage = ids.clone()
    garbage[mask == 0] = 7  # other tokens in the padded positions
    assert torch.allclose(student.encode_text(garbage, mask), emb, atol=1e-6)
    short = student.encode_text(ids[2:, :3], mask[2:, :3])  # the same caption without any padding
    assert torch.allclose(short, emb[2:], atol=1e-5)


def _grads(student, loss):
    student.zero_grad()
    loss.backward()
    return {id(p): p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()}


@pytest.mark.parametrize("attention", ["separate", "shared"])
def test_what_the_attention_modes_share_seen_through_gradients(attention):
    student = MultimodalStudent(StudentConfig(**SMALL, attention=attention))
    images, ids, mask = _batch()
    probe = torch.randn(32)  # a plain sum would be blind: LayerNorm outputs sum to a constant
    text_grads = _grads(student, (student.text_cls(ids, mask) @ probe).sum())
    image_grads = _grads(student, (student.image_cls(images) @ probe).sum())
    for layer in student.specific:
        touched_by_both = {name for name, p in layer.image.named_parameters()
                           if image_grads[id(p)] and text_grads[id(p)]}
        if attention == "separate":
            assert touched_by_both == set()
        else:  # exactly the attention is shared: its four tensors, nothing else
            assert touched_by_both == {"attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias"}
    shared_block = [p for p in student.shared.parameters()]
    assert all(image_grads[id(p)] and text_grads[id(p)] for p in shared_block if p.dim() > 1)


@pytest.mark.parametrize("source", ["d2v2-image", "dino", "beitv2"])
def test_image_initialisation_reproduces_the_source_blocks(source):
    model = create_teacher(source, tiny=True).model
    prenet = getattr(model, "prenet_depth", 0)  # Data2Vec2: its prenet blocks are the student's front end
    depth = len(model.blocks) - prenet
    post_ln = source == "d2v2-image"
    cfg = StudentConfig(width=model.embed_dim, heads=model.blocks[0].attn.num_heads,
                        mlp_ratio=model.blocks[0].mlp.fc1.out_features / model.embed_dim,
                        image_size=model.patch_embed.img_size[0], patch_size=model.patch_embed.patch_size[0],
                        depth=depth, n_shared=0, norm_first=not post_ln, eps=1e-6, kd_dim=0,
                        layer_scale=0.1 if source == "beitv2" else None, abs_pos_embed=source != "beitv2",
                        rel_pos_bias=source == "beitv2", image_prenet=prenet)
    student = MultimodalStudent(cfg).eval()
    assert init_image_from_timm(student, model, source) == list(range(depth))
    if student.image_embed.pos_embed is not None:  # Data2Vec2's sin-cos positions stay fixed; DINO's train
        assert student.image_embed.pos_embed.requires_grad == (source != "d2v2-image")
    x = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        _, layers = model.forward_intermediates(x, return_prefix_tokens=True, output_fmt="NLC")
        expected = torch.cat([layers[-1][1], layers[-1][0]], dim=1)
        got = student.features(student.image_embed(x), "image", bias=student.image_embed.attention_bias())
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("source", ["minilm", "bert", "d2v2-text"])
def test_text_initialisation_reproduces_the_source_layers(source):
    model = create_teacher(source, tiny=True).model
    hf = model.config
    cfg = StudentConfig(width=hf.hidden_size, heads=hf.num_attention_heads, vocab_size=hf.vocab_size,
                        mlp_ratio=hf.intermediate_size / hf.hidden_size,
                        depth=hf.num_hidden_layers, n_shared=0, kd_dim=0, image_size=32, patch_size=8)
    student = MultimodalStudent(cfg).eval()
    init_text_from_hf(student, model, source)
    _, ids, mask = _batch(vocab=min(hf.vocab_size, 1000))
    ids[:, 0] = 0 if source == "d2v2-text" else 101  # a <s>/[CLS]-like first token
    ids[mask == 0] = hf.pad_token_id
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = student.features(student.text_embed(ids), "text", key_padding=mask == 0)
    real = mask.bool()
    assert torch.allclose(got[real], expected[real], atol=1e-5)  # padded positions are never used


def test_layer_selection_and_mismatch_errors():
    assert layer_indices(12, 5) == [0, 1, 2, 3, 4] and layer_indices(12, 5, "every_other") == [1, 3, 5, 7, 9]
    with pytest.raises(ConfigError, match="needs source layer 13"):
        layer_indices(12, 7, "every_other")
    model = create_teacher("dino", tiny=True).model
    student = MultimodalStudent(StudentConfig(**{**SMALL, "width": 64}, norm_first=True))
    with pytest.raises(ConfigError, match=r"student \(width 64, 2 heads, FFN 256\) from dino \(width 32, 2 heads, FFN 128\)"):
        init_image_from_timm(student, model, "dino")
    with pytest.raises(ConfigError, match="n_shared=8 must be between 0 and student.depth=6"):
        StudentConfig(n_shared=8)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("attention", ["separate", "shared"])
def test_every_preset_builds_runs_and_reports_its_size(arch, attention):
    for size in SIZES:
        total = summarize(arch, size, attention=attention)["parameters"]["total"]
        assert total > 0
    student, report = build_student(get_preset(arch, "smoke", attention=attention))
    images = torch.randn(2, 3, 32, 32)
    ids, mask = torch.randint(0, 30522, (2, 64)), torch.ones(2, 64, dtype=torch.long)
    out = student(images, ids, mask)
    (out["image_kd"].sum() + out["text_kd"].sum()).backward()
    assert all((p.grad is not None) == p.requires_grad for p in student.parameters())  # frozen front ends
    assert report == {"image": "efficientnet-lite0 stages 0–4 (frozen front end); projection and layers random",
                      "text": "minilm embeddings (frozen); projection and layers random"}


def test_minilm_size_starts_from_minilm():
    student, report = build_student(get_preset("mmd2v2_7", "minilm"))
    assert report == {"image": "random", "text": "minilm layers [0, 1, 2, 3, 4, 5]"}
    minilm = create_teacher("minilm").model
    assert torch.equal(student.specific[3].text.mlp.fc1.weight, minilm.encoder.layer[3].intermediate.dense.weight)


def test_real_smke_is_near_the_thesis_size():
    params = summarize("smke", "real")["parameters"]
    assert 116e6 < params["trainable"] < 118e6  # the thesis: ≈117M, beside the frozen front end
    assert params["frozen"] == params["image_frontend"]  # patch embedding + 2 Data2Vec2 prenet blocks


@pytest.mark.parametrize("arch, image_layers, text_source, head", [
    ("mmd2v2_6", 5, "d2v2-text", False), ("mmd2v2_7", 6, "d2v2-text", False), ("mmd2v2_7_2", 5, "d2v2-text", False),
    ("smke", 6, "bert", True)])
def test_real_presets_follow_the_original_layer_mapping(arch, image_layers, text_source, head):
    summary = summarize(arch, "real")
    layers = summary["layers"]
    assert layers["image_frontend"] == {"parts": ["patch embedding", "d2v2-image prenet block 0",
                                                  "d2v2-image prenet block 1"], "frozen": True}
    assert layers["image_layers"] == [f"d2v2-image main block {i}" for i in range(image_layers)]
    assert layers["text_layers"] == [f"{text_source} layer {i}" for i in range(image_layers)]
    assert layers["kd_head"].startswith("LayerNorm") == head
    assert (summary["parameters"]["kd_head"] > 0) == head
    assert layers["type_embedding"] == (arch == "smke")


def test_mmd2v2_has_no_kd_head_its_cls_is_the_kd_output():
    student = MultimodalStudent(get_preset("mmd2v2_6", "smoke").config)
    assert student.kd_head is None
    images, ids, mask = _batch()
    out = student(images, ids, mask)
    assert torch.equal(out["image_kd"], student.image_cls(images))
    assert torch.equal(out["text_kd"], student.text_cls(ids, mask))
    with pytest.raises(ConfigError, match="teacher.whiten=true"):
        get_preset("mmd2v2_6", "smoke", kd_dim=1280)
    assert MultimodalStudent(get_preset("smke", "smoke").config).kd_head is not None


def test_shared_attention_is_initialised_from_the_image_model_only():
    image_model = create_teacher("d2v2-image", tiny=True).model
    text_model = create_teacher("d2v2-text", tiny=True).model
    cfg = StudentConfig(width=32, heads=2, image_size=224, patch_size=16, vocab_size=50265, depth=3, n_shared=1,
                        kd_dim=0, attention="shared", image_prenet=2)
    student = MultimodalStudent(cfg)
    init_image_from_timm(student, image_model, "d2v2-image")
    init_text_from_hf(student, text_model, "d2v2-text")
    for i, layer in enumerate(student.specific):
        source = image_model.blocks[2 + i].attn  # main block i, after the two prenet blocks
        assert layer.text.attn is layer.image.attn
        assert torch.equal(layer.image.attn.qkv.weight, source.qkv.weight)
        assert torch.equal(layer.image.attn.proj.bias, source.proj.bias)
        bert = text_model.encoder.layer[i]  # the text model still gives the norms and the FFN
        assert torch.equal(layer.text.mlp.fc1.weight, bert.intermediate.dense.weight)
        assert torch.equal(layer.text.norm1.weight, bert.attention.output.LayerNorm.weight)


def test_embedded_layouts_are_scaled_down_versions_of_the_seed_layouts():
    layouts = {a: (get_preset(a, "embedded").config.n_specific, get_preset(a, "embedded").config.n_shared)
               for a in ARCHS}
    assert layouts == {"mmd2v2_6": (2, 1), "mmd2v2_7": (3, 1), "mmd2v2_7_2": (2, 2), "smke": (3, 1)}


def test_fresh_layers_use_bert_init_at_real_width_and_fan_in_init_when_narrow():
    """Std 0.02 is BERT's choice for width 768; the narrow sizes keep PyTorch's fan-in-scaled default
    (kaiming-uniform: std = 1/sqrt(3·fan_in)), under which the embedded student learns (0.02 left it near chance)."""
    torch.manual_seed(0)
    real_like = MultimodalStudent(StudentConfig(**{**SMALL, "width": 128, "heads": 4}))
    narrow = MultimodalStudent(StudentConfig(**{**SMALL, "width": 128, "heads": 4, "init_std": None}))
    for name in ("specific.0.image.mlp.fc1.weight", "shared.0.mlp.fc2.weight"):
        bert, fan_in = dict(real_like.named_parameters())[name], dict(narrow.named_parameters())[name]
        assert bert.std().item() == pytest.approx(0.02, rel=0.1)
        assert fan_in.std().item() == pytest.approx((3 * fan_in.shape[1]) ** -0.5, rel=0.1)
    assert SIZES["embedded"]["init_std"] is None and SIZES["smoke"]["init_std"] is None
    assert "init_std" not in SIZES["real"]  # the real presets' fresh layers (heads, type embedding) keep 0.02


@pytest.mark.parametrize("preset,attention", [("mmd2v2_6", "separate"), ("mmd2v2_7_2", "shared"), ("smke", "separate")])
def test_cls_only_last_block_gives_the_full_forwards_cls_row(preset, attention):
    torch.manual_seed(0)
    student, _ = build_student(get_preset(preset, "smoke", attention=attention))
    student.eval()
    ids = torch.randint(1000, 2000, (4, 12))
    mask = torch.ones_like(ids)
    mask[:2, 7:] = 0
    images = torch.randn(4, 3, student.cfg.image_size, student.cfg.image_size)
    with torch.no_grad():
        for modality, x, kw in (("image", student.image_embed(images), {"bias": student.image_embed.attention_bias()}),
                                ("text", student.text_embed(ids), {"key_padding": mask == 0})):
            full, full_hidden = student.features(x, modality, return_hidden=True, **kw)
            cls, cls_hidden = student.features(x, modality, return_hidden=True, cls_only=True, **kw)
            assert cls.shape == (4, 1, student.cfg.width)
            torch.testing.assert_close(cls, full[:, :1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(cls_hidden, full_hidden[:, :1], atol=1e-5, rtol=1e-5)


def test_cls_only_with_relative_position_bias_and_pre_ln_layer_scale():
    torch.manual_seed(0)
    cfg = StudentConfig(depth=3, n_shared=1, width=32, heads=4, image_size=32, patch_size=8, norm_first=True,
                        layer_scale=0.1, abs_pos_embed=False, rel_pos_bias=True, shared_norm_first=True,
                        shared_layer_scale=0.1, type_embedding=True, kd_dim=32)
    student = MultimodalStudent(cfg).eval()
    x, bias = student.image_embed(torch.randn(2, 3, 32, 32)), student.image_embed.attention_bias()
    with torch.no_grad():
        full, cls = student.features(x, "image", bias=bias), student.features(x, "image", bias=bias, cls_only=True)
    torch.testing.assert_close(cls, full[:, :1], atol=1e-6, rtol=1e-5)


def test_text_by_length_groups_gives_the_padded_batchs_outputs_in_order():
    torch.manual_seed(0)
    student, _ = build_student(get_preset("smke", "smoke"))
    student.eval()
    ids = torch.randint(1000, 2000, (9, 14))
    mask = torch.ones_like(ids)
    for row, length in enumerate((3, 14, 5, 9, 2, 14, 7, 11, 4)):
        mask[row, length:] = 0
    with torch.no_grad():
        cls, hidden = student.text_cls(ids, mask, return_hidden=True)
        grouped, grouped_hidden = student.text_cls_by_length(ids, mask, return_hidden=True, groups=3)
    torch.testing.assert_close(grouped, cls, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grouped_hidden, hidden, atol=1e-5, rtol=1e-5)


def test_cpu_attention_matches_the_fused_kernel_with_bias_and_padding():
    from mmd2v2_core.student.blocks import attend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 9, 8, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.randn(4, 9, 9, generator=g)[None] + torch.zeros(3, 1, 1, 9).masked_fill(
        torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1], dtype=torch.bool), float("-inf"))
    explicit = attend(q, k, v, mask)
    fused = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(explicit.sum(), (q, k, v))
    torch.testing.assert_close(grads, torch.autograd.grad(fused.sum(), (q, k, v)), atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 products, fp32 softmax: close to the fp32 result
        half = attend(q, k, v, mask)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), fused, atol=3e-2, rtol=3e-2)
