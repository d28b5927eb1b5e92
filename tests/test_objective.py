"""The training objective as the original code ran it: S-SMKE's two ITC losses, the fixed KD temperature, the
memory bank's local negatives, the summed MM-D2V2 KD terms, weight decay groups, the real presets' choices,
and target whitening."""

import math

import pytest
import torch

from mmd2v2_core.config import load_config
from mmd2v2_core.student.presets import build_student, get_preset
from mmd2v2_core.teachers.whitening import TargetWhitening
from mmd2v2_core.train import objective
from mmd2v2_core.train.loop import _param_groups
from mmd2v2_core.train.objective import Objective, Trainable


def hand_itc(image, text, scale):
    """½·(CE over image rows + CE over text rows) of scale·cos, with plain Python loops."""
    def unit(rows):
        return [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in rows]

    def ce(queries, keys):
        total = 0.0
        for i, q in enumerate(queries):
            logits = [scale * sum(a * b for a, b in zip(q, k)) for k in keys]
            total += math.log(sum(math.exp(v) for v in logits)) - logits[i]
        return total / len(queries)

    u, z = unit(image), unit(text)
    return 0.5 * (ce(u, z) + ce(z, u))


def _out(**extra):
    g = torch.Generator().manual_seed(0)
    out = {f"{m}_{k}": torch.randn(3, d, generator=g) for m in ("image", "text") for k, d in (("emb", 4), ("hidden", 6),
                                                                                             ("kd", 5))}
    return {**out, **extra}


def test_smke_itc_is_the_mean_of_the_hidden_and_final_losses_with_their_own_temperatures():
    cfg = load_config("smoke", ["loss.kd=cdl", "loss.itc_hidden=true"])
    objective = Objective(cfg, target_dim=5)
    with torch.no_grad():
        objective.itc_scale.log_scale.fill_(math.log(5.0))
        objective.itc_hidden_scale.log_scale.fill_(math.log(20.0))
    out = _out()
    terms = objective(out, torch.randn(3, 5))
    final = hand_itc(out["image_emb"].tolist(), out["text_emb"].tolist(), 5.0)
    hidden = hand_itc(out["image_hidden"].tolist(), out["text_hidden"].tolist(), 20.0)
    assert terms["itc_final"].item() == pytest.approx(final, rel=1e-5)
    assert terms["itc_hidden"].item() == pytest.approx(hidden, rel=1e-5)
    assert terms["itc"].item() == pytest.approx(0.5 * (final + hidden), rel=1e-5)
    # the thesis text's version: the final CLS only
    text_version = Objective(load_config("smoke", ["loss.kd=cdl"]), target_dim=5)
    with torch.no_grad():
        text_version.itc_scale.log_scale.fill_(math.log(5.0))
    terms = text_version(out, torch.randn(3, 5))
    assert terms["itc"].item() == pytest.approx(final, rel=1e-5) and "itc_hidden" not in terms


def test_the_student_returns_the_shared_blocks_ffn_hidden_cls():
    student, _ = build_student(get_preset("smke", "smoke"), init=False)
    images, ids, mask = torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2, 9)), torch.ones(2, 9, dtype=torch.long)
    captured = []
    handle = student.shared[-1].mlp.fc1.register_forward_hook(lambda m, i, o: captured.append(o[:, 0]))
    out = student(images, ids, mask)
    handle.remove()
    assert out["image_hidden"].shape == (2, 4 * 32)  # the FFN width, before the GELU
    torch.testing.assert_close(out["image_hidden"], captured[0])
    torch.testing.assert_close(out["text_hidden"], captured[1])


@pytest.mark.parametrize("mode, trainable", [("fixed", False), ("learned", True)])
def test_kd_temperature_fixed_as_the_original_or_learned(mode, trainable):
    cfg = load_config("smoke", ["loss.kd=cdl", f"loss.kd_temperature={mode}"])
    student, _ = build_student(get_preset("smke", "smoke"), init=False)
    model = Trainable(student, Objective(cfg, target_dim=1280))
    assert model.objective.kd_scale().item() == pytest.approx(1 / 0.07)
    optimised = {id(p) for group in _param_groups(model, 0.01) for p in group["params"]}
    assert (id(model.objective.kd_scale.log_scale) in optimised) == trainable


@pytest.mark.parametrize("negatives, gathered", [("local", False), ("global", True)])
def test_memory_bank_negatives_local_as_the_original_or_gathered(monkeypatch, negatives, gathered):
    seen = {}
    real = objective.contrastive_distillation_terms

    def spy(*args):
        seen["gather"] = args[-1]
        return real(*args)

    monkeypatch.setattr(objective, "contrastive_distillation_terms", spy)
    cfg = load_config("smoke", ["loss.kd=cdl", "loss.memory_bank=16", f"loss.bank_negatives={negatives}"])
    Objective(cfg, target_dim=5)(_out(), torch.randn(3, 5))
    assert seen["gather"] is gathered
    Objective(load_config("smoke", ["loss.kd=cdl"]), target_dim=5)(_out(), torch.randn(3, 5))
    assert seen["gather"] is True  # without a bank the original gathered the batch's targets


def test_kd_terms_are_logged_per_modality_and_mse_terms_are_summed():
    objective = Objective(load_config("smoke"), target_dim=5)
    out, target = _out(), torch.randn(3, 5)
    terms = objective(out, target)
    image = torch.nn.functional.mse_loss(out["image_kd"], target)
    text = torch.nn.functional.mse_loss(out["text_kd"], target)
    torch.testing.assert_close(terms["kd_image"], image)
    torch.testing.assert_close(terms["kd_text"], text)
    torch.testing.assert_close(terms["kd"], image + text)
    assert set(terms) == {"kd_image", "kd_text", "kd", "itc", "loss"}


@pytest.mark.parametrize("overrides", [["loss.itc_weight=0"], ["loss.itc_weight=0", "loss.kd_temperature=learned"],
                                       ["loss.kd=cdl", "loss.kd_temperature=learned", "loss.itc_hidden=true"],
                                       ["loss.kd=none"]])
def test_every_trainable_temperature_gets_a_gradient(overrides):
    """DDP refuses a parameter that no loss term reaches (a KD-only MM-D2V2 under torchrun failed on its ITC
    temperature), so the temperatures a recipe does not use are frozen."""
    objective = Objective(load_config("smoke", overrides), target_dim=5)
    out = {key: value.requires_grad_() for key, value in _out().items()}  # the student's outputs
    objective(out, torch.randn(3, 5))["loss"].backward()
    trainable = {name: p.grad for name, p in objective.named_parameters() if p.requires_grad}
    assert all(grad is not None and grad.abs().sum() > 0 for grad in trainable.values()), trainable


def test_weight_decay_spares_embeddings_tokens_norms_biases_but_not_the_patch_convolution():
    student, _ = build_student(get_preset("smke", "minilm"), init=False)  # patches and text embeddings that train
    model = Trainable(student, Objective(load_config("smoke", ["loss.kd=cdl"]), target_dim=1280))
    decay, no_decay = _param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    spared = {names[id(p)] for p in no_decay["params"]}
    assert "student.image_embed.proj.weight" in decayed
    assert {"student.image_embed.pos_embed", "student.image_embed.cls_token", "student.text_embed.word.weight",
            "student.text_embed.position.weight", "student.type_embed", "student.image_embed.proj.bias",
            "student.shared.0.norm1.weight", "objective.itc_scale.log_scale"} <= spared
    assert all(".mlp.fc" not in n or n.endswith(".bias") for n in spared)


def test_real_presets_carry_the_original_codes_choices():
    smke = load_config("real_smke")
    assert (smke.teacher.target, smke.optim.clip, smke.loss.itc_hidden, smke.loss.kd_temperature,
            smke.loss.bank_negatives, smke.loss.memory_bank) == ("cls_prenorm", 0.0, True, "fixed", "local", 65536)
    mmd = load_config("real_mmd2v2")
    assert (mmd.teacher.target, mmd.optim.clip, mmd.loss.kd, mmd.teacher.whiten) == ("cls", 0.0, "mse", False)
    assert not get_preset(mmd.student.preset, mmd.student.size).config.kd_head
    assert get_preset(smke.student.preset, smke.student.size).config.kd_head


def test_whitening_gives_unit_covariance_on_the_training_targets():
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(12, 40, generator=g)
    train = 5 + torch.randn(500, 12, generator=g) @ mixing  # 40-d, rank 12, far from centred
    whitening = TargetWhitening.fit(train, 8)
    z = whitening(train)
    assert z.shape == (500, 8)
    torch.testing.assert_close(z.mean(0), torch.zeros(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), torch.eye(8), atol=1e-3, rtol=0)
    with pytest.raises(Exception, match="narrower than the student"):
        TargetWhitening.fit(train, 41)
