"""What the student regresses: one vector per image (or caption) taken from a ``TeacherOutput``.

Kinds (``TARGET_KINDS``):

* ``cls``          final-layer CLS after the final norm — the thesis' BEiT-v2 target (``forward_features(x)[:, 0]``)
* ``cls_prenorm``  final-layer CLS before the final norm (the original code replaced BEiT's norm by Identity)
* ``mean``         mean of all final tokens, CLS included, padding excluded — as the original code averaged them;
                   the seed's Data2Vec2-teacher configuration used this (``target_agg: mean``)
* ``layer_avg``    data2vec-style: each of the top-k blocks' outputs instance-normalised over the tokens,
                   averaged over the blocks, then averaged over the tokens (what data2vec 2.0's CLS loss regresses)
* ``pooled``       the model's pooled features: CLS for transformers, global average pool for CNNs
* ``logits``       classifier logits (SHRe's KL target), for teachers with an ImageNet head
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import TeacherOutput

TARGET_KINDS = ("cls", "cls_prenorm", "mean", "layer_avg", "pooled", "logits")


def _token_mask(out: TeacherOutput, n_prefix: int) -> torch.Tensor:
    """[B, T] float mask of the tokens to average: no prefix (CLS) tokens, no padding."""
    b, t, _ = out.tokens.shape
    mask = torch.ones(b, t, device=out.tokens.device)
    if out.attention_mask is not None:
        mask = out.attention_mask.to(mask)
    mask[:, :n_prefix] = 0
    return mask


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)


def _instance_norm(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Normalise every channel over the (unmasked) tokens of its sequence, as F.instance_norm would."""
    mean = _masked_mean(x, mask)[:, None]
    var = _masked_mean((x - mean) ** 2, mask)[:, None]
    return (x - mean) / torch.sqrt(var + eps)


def compute_target(out: TeacherOutput, kind: str, top_k: int = 8, n_prefix: int = 1) -> torch.Tensor:
    """[B, D] targets of ``kind`` (float32). ``n_prefix``: CLS/register tokens before the patches."""
    if kind not in TARGET_KINDS:
        raise ConfigError(f"unknown target kind {kind!r}; choose one of {', '.join(TARGET_KINDS)}")
    if kind == "pooled":
        return out.pooled.float()
    if kind == "logits":
        if out.logits is None:
            raise ConfigError("target kind 'logits' needs a teacher with a classifier head (e.g. resnet50, beitv2-ft)")
        return out.logits.float()
    if out.tokens is None:
        raise ConfigError(f"target kind {kind!r} needs a transformer teacher with tokens; "
                          "for a CNN teacher use 'pooled' or 'logits'")
    if kind == "cls":
        return out.tokens[:, 0].float()
    if kind == "cls_prenorm":
        return out.tokens_prenorm[:, 0].float()
    if kind == "mean":
        return _masked_mean(out.tokens.float(), _token_mask(out, 0))
    mask = _token_mask(out, n_prefix)
    layers = out.layers[-top_k:]
    averaged = torch.stack([_instance_norm(layer.float(), mask) for layer in layers]).mean(0)
    return _masked_mean(averaged, mask)
