"""Initialising the student from pretrained unimodal models, tensor for tensor.

Image side: a timm ViT-family model — Data2Vec2-image (post-LN, ``norm_pre``, positions on patches
only), a plain ViT such as DINO (pre-LN, CLS position folded into the CLS token), or BEiT-v2 (pre-LN,
no absolute positions, shared relative position bias, q/v biases, LayerScale). Text side: a
transformers BERT-layout encoder — BERT, MiniLM, or Data2Vec2-text (RoBERTa positions, which start
at padding_idx + 1). Modality-specific block *i* comes from layer ``pick[i]`` of its model (the first
layers, or every other one); shared blocks keep their random initialisation.

As the original code did (``mm_data2vec_beit.py``, ``Sx3HRe.py``):

* Data2Vec2-image's two prenet blocks go into the image *front end* (frozen with the patch embedding);
  the student's layers are copied from the *main* blocks, so "first 5 layers" = main blocks 0–4.
* Its sin-cos positions stay fixed (they were never trained).
* With shared attention, the one attention module of a layer is initialised from the *image* model only
  (``init_attention = modality == image or not shared_attn``); the text model gives norms and FFN.

Every copy is exact: fused qkv = [query; key; value] of BERT, BEiT's k bias is zero, BERT's token-type-0
vector is added to the position table (it is added to every token anyway), LayerNorm epsilons are
copied along with the weights.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .blocks import Block
from .model import MultimodalStudent


def layer_indices(n_model: int, n_student: int, how: str = "first") -> list[int]:
    """Which source layers feed the student's modality-specific blocks: the first n, or every other one."""
    if how == "first":
        picks = list(range(n_student))
    elif how == "every_other":
        picks = list(range(1, 2 * n_student, 2))
    else:
        raise ConfigError(f"layer selection must be 'first' or 'every_other', got {how!r}")
    if picks and picks[-1] >= n_model:
        raise ConfigError(f"the student needs source layer {picks[-1]} ({how}), but the model has only {n_model}")
    return picks


def _copy_ln(dst: nn.LayerNorm, src: nn.Module) -> None:
    dst.weight.copy_(src.weight)
    dst.bias.copy_(src.bias)
    dst.eps = src.eps


def _check_width(student: MultimodalStudent, name: str, width: int, heads: int, ffn: int) -> None:
    cfg = student.cfg
    mine = (cfg.width, cfg.heads, int(cfg.width * cfg.mlp_ratio))
    if (width, heads, ffn) != mine:
        raise ConfigError(f"cannot initialise the student (width {mine[0]}, {mine[1]} heads, FFN {mine[2]}) from {name} "
                          f"(width {width}, {heads} heads, FFN {ffn}): widths, head counts and FFN sizes must match")


def _copy_timm_block(dst: Block, src: nn.Module) -> None:
    _copy_ln(dst.norm1, src.norm1)
    _copy_ln(dst.norm2, src.norm2)
    dst.attn.qkv.weight.copy_(src.attn.qkv.weight)
    if getattr(src.attn, "q_bias", None) is not None:  # BEiT: q and v biases, none for k
        dst.attn.qkv.bias.copy_(torch.cat([src.attn.q_bias, torch.zeros_like(src.attn.v_bias), src.attn.v_bias]))
    elif src.attn.qkv.bias is not None:
        dst.attn.qkv.bias.copy_(src.attn.qkv.bias)
    else:
        dst.attn.qkv.bias.zero_()
    dst.attn.proj.load_state_dict(src.attn.proj.state_dict())
    dst.mlp.fc1.load_state_dict(src.mlp.fc1.state_dict())
    dst.mlp.fc2.load_state_dict(src.mlp.fc2.state_dict())
    gammas = [getattr(src, "gamma_1", None), getattr(src, "gamma_2", None)]
    if gammas[0] is None and isinstance(getattr(src, "ls1", None), nn.Module) and hasattr(src.ls1, "gamma"):
        gammas = [src.ls1.gamma, src.ls2.gamma]  # timm ViT's LayerScale modules
    if (gammas[0] is None) != (dst.gamma_1 is None):
        raise ConfigError("student.layer_scale must be set exactly when the image model's blocks have LayerScale")
    if gammas[0] is not None:
        dst.gamma_1.copy_(gammas[0])
        dst.gamma_2.copy_(gammas[1])


@torch.no_grad()
def init_image_from_timm(student: MultimodalStudent, model: nn.Module, name: str = "image model",
                         how: str = "first") -> list[int]:
    """Copy patch embedding, CLS, positions and blocks of a timm ViT-family model into the image side."""
    cfg, embed = student.cfg, student.image_embed
    _check_width(student, name, model.embed_dim, model.blocks[0].attn.num_heads, model.blocks[0].mlp.fc1.out_features)
    post_ln = not isinstance(getattr(model, "norm_pre", nn.Identity()), nn.Identity)
    if post_ln == cfg.norm_first:
        raise ConfigError(f"{name} is {'post' if post_ln else 'pre'}-LN but student.norm_first={cfg.norm_first}")
    if tuple(model.patch_embed.proj.weight.shape[-2:]) != (cfg.patch_size, cfg.patch_size):
        raise ConfigError(f"{name} has patch size {model.patch_embed.proj.weight.shape[-1]}, the student {cfg.patch_size}")
    embed.proj.load_state_dict(model.patch_embed.proj.state_dict())
    cls = model.cls_token
    pos = getattr(model, "pos_embed", None)
    if pos is not None:
        if embed.pos_embed is None:
            raise ConfigError(f"{name} has absolute positions but student.abs_pos_embed is False")
        if not getattr(model, "no_embed_class", False):  # a constant added to a constant: fold it into CLS
            cls, pos = cls + pos[:, :1], pos[:, 1:]
        if pos.shape != embed.pos_embed.shape:
            raise ConfigError(f"{name} has {pos.shape[1]} patch positions, the student {embed.pos_embed.shape[1]} "
                              "(image_size / patch_size differ)")
        embed.pos_embed.copy_(pos)
    elif embed.pos_embed is not None:
        raise ConfigError(f"{name} has no absolute positions: set student.abs_pos_embed=False")
    embed.cls_token.copy_(cls)
    if post_ln:
        _copy_ln(embed.norm, model.norm_pre)
    shared_bias = getattr(model, "rel_pos_bias", None)
    if (shared_bias is not None) != (embed.rel_pos is not None):
        raise ConfigError(f"{name} {'has' if shared_bias is not None else 'has no'} shared relative position bias; "
                          f"set student.rel_pos_bias={shared_bias is not None}")
    if shared_bias is not None:
        embed.rel_pos.load_state_dict(shared_bias.state_dict())
    if pos is not None and getattr(model, "fixed_pos_embed", False):  # Data2Vec2's sin-cos positions
        embed.pos_embed.requires_grad_(False)
    prenet = getattr(model, "prenet_depth", 0)
    if prenet != cfg.image_prenet:
        raise ConfigError(f"{name} has {prenet} prenet blocks but student.image_prenet={cfg.image_prenet}")
    for dst, src in zip(embed.prenet, model.blocks[:prenet]):
        _copy_timm_block(dst, src)
    main = model.blocks[prenet:]
    picks = layer_indices(len(main), cfg.n_specific, how)
    for layer, i in zip(student.specific, picks):
        _copy_timm_block(layer.image, main[i])
    return picks


@torch.no_grad()
def init_text_from_hf(student: MultimodalStudent, model: nn.Module, name: str = "text model",
                      how: str = "first") -> list[int]:
    """Copy embeddings and layers of a transformers BERT-layout encoder into the text side."""
    cfg, hf = student.cfg, model.config
    _check_width(student, name, hf.hidden_size, hf.num_attention_heads, hf.intermediate_size)
    if hf.vocab_size != cfg.vocab_size:
        raise ConfigError(f"{name} has a vocabulary of {hf.vocab_size}, the student {cfg.vocab_size}")
    if cfg.norm_first:
        raise ConfigError(f"{name} is post-LN (BERT layout) but student.norm_first=True")
    _copy_bert_embeddings(student, model)
    picks = layer_indices(hf.num_hidden_layers, cfg.n_specific, how)
    for layer, i in zip(student.specific, picks):
        _copy_bert_layer(layer.text, model.encoder.layer[i], attention=layer.attention == "separate")
    return picks


def _copy_bert_embeddings(student: MultimodalStudent, model: nn.Module) -> None:
    cfg, embed, src = student.cfg, student.text_embed, model.embeddings
    embed.word.weight.copy_(src.word_embeddings.weight)
    # RoBERTa-style models number real tokens from padding_idx + 1; BERT from 0.
    offset = src.padding_idx + 1 if hasattr(src, "padding_idx") else 0
    positions = src.position_embeddings.weight[offset:offset + cfg.max_text_len]
    embed.position.weight.copy_(positions + src.token_type_embeddings.weight[0])
    _copy_ln(embed.norm, src.LayerNorm)


@torch.no_grad()
def init_text_embeddings_from_hf(student: MultimodalStudent, model: nn.Module, name: str = "text model") -> None:
    """Only the embeddings (word, position, LayerNorm) of a BERT-layout encoder, at ``text_embed_dim``: the text
    front end of a student narrower than the model (the embedded size on the packaged MiniLM)."""
    cfg, hf = student.cfg, model.config
    if (cfg.text_embed_dim or cfg.width) != hf.hidden_size or hf.vocab_size != cfg.vocab_size:
        raise ConfigError(f"{name}'s embeddings are {hf.vocab_size} × {hf.hidden_size}, the student's text front end "
                          f"{cfg.vocab_size} × {cfg.text_embed_dim or cfg.width}")
    _copy_bert_embeddings(student, model)


@torch.no_grad()
def init_image_stem(student: MultimodalStudent, model: nn.Module) -> None:
    """The frozen stem: EfficientNet-Lite0's conv stem, BatchNorm and stages 0…image_stem_stage, tensor for tensor
    (BatchNorm running statistics included)."""
    stages = student.cfg.image_stem_stage + 1
    source = nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:stages])
    student.image_embed.stem.load_state_dict(source.state_dict())


def _copy_bert_layer(dst: Block, src: nn.Module, attention: bool = True) -> None:
    """``attention=False``: leave the attention alone (shared attention is the image model's)."""
    att = src.attention
    if attention:
        dst.attn.qkv.weight.copy_(torch.cat([att.self.query.weight, att.self.key.weight, att.self.value.weight]))
        dst.attn.qkv.bias.copy_(torch.cat([att.self.query.bias, att.self.key.bias, att.self.value.bias]))
        dst.attn.proj.load_state_dict(att.output.dense.state_dict())
    _copy_ln(dst.norm1, att.output.LayerNorm)
    dst.mlp.fc1.load_state_dict(src.intermediate.dense.state_dict())
    dst.mlp.fc2.load_state_dict(src.output.dense.state_dict())
    _copy_ln(dst.norm2, src.output.LayerNorm)


def freeze_embeddings(student: MultimodalStudent) -> None:
    """The seed froze the pretrained patch/token/position embeddings."""
    student.image_embed.requires_grad_(False)
    student.text_embed.requires_grad_(False)
