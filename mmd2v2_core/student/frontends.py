"""Front ends: what turns pixels and token ids into the tokens the student's layers read.

An image front end has a **frozen part** — pretrained and never trained, so its output depends on the image
alone and can be computed once and cached — and a **trainable part**. The student takes either pixels
[B, 3, H, W] (both parts run) or the frozen part's output [B, T, C] read from a cache (only the trainable
part runs); the two give the same result, the cache only saves time.

* ``PatchFrontEnd`` (the real presets): patch embedding, CLS, positions, the pre-block norm of post-LN
  models, and Data2Vec2's prenet blocks. With ``freeze_image_frontend`` (the seed) all of it is frozen and
  cacheable; otherwise it trains from scratch and there is nothing to cache.
* ``StemFrontEnd`` (the embedded presets): the first stages of the packaged, ImageNet-trained
  EfficientNet-Lite0 (``image_stem_stage=4``: stride 16, a 4×4 grid of 112-channel tokens at 64 px),
  frozen, then a trainable projection to the student's width, CLS, learned positions and a LayerNorm —
  the laptop counterpart of the seed's frozen pretrained patch embedding + prenet.

The text front end has BERT's layout (word + position embeddings, LayerNorm, token type 0 folded into the
positions). With ``text_embed_dim`` it runs at another width (the packaged MiniLM's 384) and a linear layer
projects it to the student's; with ``freeze_text_frontend`` the embeddings are frozen (a table lookup:
nothing worth caching).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from timm.models.beit import RelativePositionBias
from torch import nn

from ..teachers.packaged import build_efficientnet_lite0

STEM_CHANNELS = (16, 24, 40, 80, 112, 192, 320)  # EfficientNet-Lite0's seven stages
STEM_STRIDES = (2, 4, 8, 16, 16, 32, 32)
# Pixels reach every image front end normalised with ImageNet's mean/std (the evaluation transform's default);
# the stem undoes that and applies its own TF-Lite scaling (mean = std = 0.5).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class FrontEnd(nn.Module):
    """``forward(x)``: pixels [B, 3, H, W] → tokens, or a cached frozen output [B, T, C] → tokens."""

    cacheable = False
    token_dim = 0  # channels of the frozen part's output tokens

    def frozen(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen part's output for pixels (what a front-end cache stores)."""
        return images

    def frozen_modules(self) -> nn.Module:
        """The modules whose weights the frozen output depends on (a cache's fingerprint hashes them)."""
        return self

    def describe(self) -> str:
        return type(self).__name__

    def trainable(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            with torch.no_grad() if self.cacheable else nullcontext():
                x = self.frozen(x)
        elif not self.cacheable:
            raise ValueError(f"this image front end trains from the pixels; got a [B, T, C] input {tuple(x.shape)}")
        return self.trainable(x)

    def attention_bias(self) -> torch.Tensor | None:
        return None


class PatchFrontEnd(FrontEnd):
    """Patches → tokens, CLS first; positions on the patches only (as Data2Vec2); optional pre-block norm;
    then the image model's ``prenet`` blocks (Data2Vec2), which belong to the front end, not to the layers."""

    def __init__(self, cfg, make_block):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        grid = cfg.image_size // cfg.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, cfg.width)) if cfg.abs_pos_embed else None
        # Post-LN blocks normalise their output, not their input: the embeddings are normalised here.
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.eps) if not cfg.norm_first else nn.Identity()
        self.rel_pos = RelativePositionBias((grid, grid), cfg.heads) if cfg.rel_pos_bias else None
        self.prenet = nn.ModuleList(make_block() for _ in range(cfg.image_prenet))
        self.cacheable = cfg.freeze_image_frontend
        self.token_dim = cfg.width
        self.summary = f"patch embedding {cfg.patch_size} px + {cfg.image_prenet} prenet blocks at {cfg.image_size} px"
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        x = self.proj(images).flatten(2).transpose(1, 2)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        x = self.norm(torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1))
        bias = self.attention_bias() if self.prenet else None
        for block in self.prenet:
            x = block(x, None, bias)
        return x

    def frozen(self, images: torch.Tensor) -> torch.Tensor:
        return self._embed(images) if self.cacheable else images

    def describe(self) -> str:
        return self.summary

    def trainable(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.cacheable else self._embed(x)

    def attention_bias(self) -> torch.Tensor | None:
        """[heads, T, T] relative position bias for the image blocks (BEiT-v2 initialisation), else None."""
        return self.rel_pos() if self.rel_pos is not None else None


def efficientnet_stem(stage: int) -> nn.Sequential:
    """EfficientNet-Lite0 (timm's tf_efficientnet_lite0, random init) up to and including ``stage``."""
    net = build_efficientnet_lite0()
    # channels-last: its depthwise convolutions run 1.7× faster on CPU, with the same results
    return nn.Sequential(net.conv_stem, net.bn1, *net.blocks[:stage + 1]).to(memory_format=torch.channels_last)


class StemFrontEnd(FrontEnd):
    """Frozen EfficientNet-Lite0 stages 0…``image_stem_stage`` → a grid of tokens → trainable projection."""

    cacheable = True

    def __init__(self, cfg):
        super().__init__()
        # eval mode from the start: its BatchNorm must use (and never update) the ImageNet running statistics,
        # also when a cache is built before anyone calls .train()/.eval() on the student
        self.stem = efficientnet_stem(cfg.image_stem_stage).requires_grad_(False).eval()
        grid = cfg.image_size // STEM_STRIDES[cfg.image_stem_stage]
        self.token_dim = STEM_CHANNELS[cfg.image_stem_stage]
        self.summary = f"efficientnet-lite0 stages 0-{cfg.image_stem_stage} at {cfg.image_size} px"
        self.proj = nn.Linear(self.token_dim, cfg.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, cfg.width))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.eps)
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        # ImageNet-normalised pixels → the stem's [-1, 1] scaling, as one affine map per channel
        self.register_buffer("pixel_scale", (std / 0.5).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_shift", ((mean - 0.5) / 0.5).view(1, 3, 1, 1), persistent=False)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def train(self, mode: bool = True):  # the stem's BatchNorm keeps its ImageNet statistics
        super().train(mode)
        self.stem.eval()
        return self

    def frozen(self, images: torch.Tensor) -> torch.Tensor:
        pixels = (images * self.pixel_scale + self.pixel_shift).contiguous(memory_format=torch.channels_last)
        features = self.stem(pixels)
        return features.flatten(2).transpose(1, 2)  # [B, h·w, C]

    def frozen_modules(self) -> nn.Module:
        return self.stem

    def describe(self) -> str:
        return self.summary

    def trainable(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x.to(self.proj.weight.dtype)) + self.pos_embed
        return self.norm(torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1))


class TextFrontEnd(nn.Module):
    """Word + position embeddings and LayerNorm, BERT's layout (token type 0 folded in); at ``text_embed_dim``
    with a projection to the student's width when that differs (e.g. the packaged MiniLM's 384)."""

    def __init__(self, cfg):
        super().__init__()
        dim = cfg.text_embed_dim or cfg.width
        self.word = nn.Embedding(cfg.vocab_size, dim)
        self.position = nn.Embedding(cfg.max_text_len, dim)
        self.norm = nn.LayerNorm(dim, eps=cfg.eps)
        self.proj = nn.Linear(dim, cfg.width) if dim != cfg.width else None
        self.out_norm = nn.LayerNorm(cfg.width, eps=cfg.eps) if self.proj is not None else None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.norm(self.word(input_ids) + self.position(positions)[None])
        return x if self.proj is None else self.out_norm(self.proj(x))
