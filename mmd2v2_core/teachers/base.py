"""What every teacher produces, whatever its architecture, and the error for weights that are not here.

Teachers are ordinary timm or transformers models. Two adapters turn their outputs into one
``TeacherOutput``: ``timm_outputs`` (ViT, BEiT, Data2Vec2-image, EfficientNet, ResNet — through timm's
``forward_intermediates``) and ``hf_text_outputs`` (BERT, MiniLM, Data2Vec2-text — through
``output_hidden_states``). Target kinds (``targets.py``) are computed from a ``TeacherOutput``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError


@dataclass
class TeacherOutput:
    pooled: torch.Tensor  # [B, D] the features the model's classifier reads (timm ``pre_logits``): CLS after the
    # final norm for CLS-pooled ViTs, mean of the tokens + fc_norm for mean-pooled ones, global pool for CNNs
    tokens: torch.Tensor | None = None  # [B, T, D] final tokens after the final norm (CLS first); None for CNNs
    tokens_prenorm: torch.Tensor | None = None  # [B, T, D] last block's output before the final norm
    layers: list[torch.Tensor] | None = None  # per-block outputs [B, T, D], before any final norm
    logits: torch.Tensor | None = None  # [B, C] classifier logits, for teachers with a head
    attention_mask: torch.Tensor | None = None  # [B, T] 1 = real token (text teachers)


def _has_tokens(model: nn.Module) -> bool:
    return hasattr(model, "num_prefix_tokens")  # timm's ViT family (ViT, BEiT, DeiT …); CNNs have none


def _is_cnn(model: nn.Module) -> bool:
    return not _has_tokens(model) and hasattr(model, "forward_features")  # timm, not transformers


@torch.no_grad()
def timm_outputs(model: nn.Module, images: torch.Tensor) -> TeacherOutput:
    """All of a timm model's outputs in one pass: per-block tokens (ViTs), final normed features, logits."""
    if _has_tokens(model):
        final, layers = model.forward_intermediates(images, return_prefix_tokens=True, output_fmt="NLC")
        # timm returns (patch tokens, prefix tokens) per block when asked for prefix tokens.
        layers = [torch.cat([prefix, patches], dim=1) for patches, prefix in layers]
        return TeacherOutput(pooled=model.forward_head(final, pre_logits=True), tokens=final,
                             tokens_prenorm=layers[-1], layers=layers, logits=_logits(model, final))
    # CNNs: channels-last runs EfficientNet's depthwise convolutions 1.7× faster on CPU, with the same results
    features = model.forward_features(images.contiguous(memory_format=torch.channels_last))
    return TeacherOutput(pooled=model.forward_head(features, pre_logits=True), logits=_logits(model, features))


def _logits(model: nn.Module, features: torch.Tensor) -> torch.Tensor | None:
    return model.forward_head(features) if getattr(model, "num_classes", 0) else None


@torch.no_grad()
def hf_text_outputs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TeacherOutput:
    """A transformers encoder (post-LN: its last hidden state is already normalised)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    final = out.last_hidden_state
    return TeacherOutput(pooled=final[:, 0], tokens=final, tokens_prenorm=final,
                         layers=list(out.hidden_states[1:]), attention_mask=attention_mask)


class MissingWeights(ConfigError):
    """Raised instead of a hub client's traceback when a checkpoint is not on this machine."""

    def __init__(self, teacher: str, needed: str, where: str, how: str):
        super().__init__(f"teacher {teacher!r}: needs {needed}, which is not on this machine. Get it from {where}; "
                         f"then {how}.")


def freeze(model: nn.Module) -> nn.Module:
    """Teachers never train: no gradients, eval mode (dropout off, norms fixed)."""
    model.requires_grad_(False)
    if _is_cnn(model):  # CNNs read channels-last input (``timm_outputs``): their weights match it
        model.to(memory_format=torch.channels_last)
    return model.eval()
