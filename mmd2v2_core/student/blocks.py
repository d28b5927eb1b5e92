"""The transformer block of the student, and how modality-specific blocks share (or do not share) it.

One ``Block`` class serves every part of the student, so that weights copied from timm ViTs
(pre-LN: DINO, BEiT-v2; post-LN: Data2Vec2) and from transformers' BERT layers (post-LN) land in the
same structure and the attention modes differ only in *which modules are shared*:

* ``separate`` self-attention (the seed's MM-D2V2): a ``ModalityBlock`` holds two complete blocks,
  one per modality — own attention, norms and FFN.
* ``shared`` self-attention (VLMo's mixture-of-modality-experts): the two blocks hold the *same*
  ``Attention`` module; norms and FFN stay per modality.

Image and text always run in separate forward passes: nothing here lets one attend to the other.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm's layout)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, queries: int | None = None) -> torch.Tensor:
        """``key_padding`` [B, T] True where a token is padding (never attended); ``bias`` [H, T, T] added to logits;
        ``queries``: only the first ``queries`` tokens attend (their queries, every token's keys and values)."""
        b, t, d = x.shape
        heads = self.heads
        if queries is None:
            q, k, v = self.qkv(x).view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        else:
            w, qkv_bias = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, :queries], w[:d], None if qkv_bias is None else qkv_bias[:d])
            q = q.view(b, queries, heads, d // heads).transpose(1, 2)
            k, v = F.linear(x, w[d:], None if qkv_bias is None else qkv_bias[d:]).view(
                b, t, 2, heads, d // heads).permute(2, 0, 3, 1, 4)
        mask = None
        if bias is not None:
            mask = bias[None, :, :q.shape[2]].to(q.dtype)
        if key_padding is not None:
            pad = torch.zeros(b, 1, 1, t, dtype=q.dtype, device=x.device).masked_fill(
                key_padding[:, None, None, :], float("-inf"))
            mask = pad if mask is None else mask + pad
        out = attend(q, k, v, mask)
        return self.proj(out.transpose(1, 2).reshape(b, q.shape[2], d))


_fused_on_cpu = False


@contextmanager
def fused_attention():
    """Within it, ``attend`` runs PyTorch's fused kernel on a CPU too: what an accelerator runs, and saves for the
    backward pass (the memory plan measures that)."""
    global _fused_on_cpu
    before, _fused_on_cpu = _fused_on_cpu, True
    try:
        yield
    finally:
        _fused_on_cpu = before


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q·kᵀ/√d + mask)·v. PyTorch's fused kernel, except on a CPU, where for the kit's short sequences
    (17 image tokens, ≤ 48 caption tokens) the explicit product is faster: 10 % in fp32, and under bf16 autocast
    the fused kernel's backward took 19 ms a call against 3.5 ms in fp32 (embedded S-SMKE step at batch 256:
    bf16 with the fused kernel 509 pairs/s, with the explicit product 1,040). The softmax runs in fp32."""
    if q.device.type != "cpu" or _fused_on_cpu:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores + mask
    return scores.float().softmax(-1).to(v.dtype) @ v


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x, return_hidden: bool = False):
        """``return_hidden``: also the first linear layer's output, before the GELU (S-SMKE's second ITC feature)."""
        hidden = self.fc1(x)
        out = self.fc2(F.gelu(hidden))
        return (out, hidden) if return_hidden else out


class Block(nn.Module):
    """Transformer block, pre-LN (``norm_first``, as ViT/BEiT) or post-LN (as BERT and Data2Vec2).

    Optional LayerScale (``gamma_1``/``gamma_2``, as BEiT): residual branches are scaled per channel.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, norm_first: bool = True,
                 layer_scale: float | None = None, eps: float = 1e-6, attn: Attention | None = None):
        super().__init__()
        self.norm_first = norm_first
        self.attn = attn if attn is not None else Attention(dim, heads)
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if layer_scale is not None:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(layer_scale)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def _scale(self, gamma, x):
        return x if gamma is None else gamma * x

    def forward(self, x, key_padding=None, bias=None, return_hidden: bool = False, cls_only: bool = False):
        """[B, T, D] → [B, T, D]; with ``return_hidden`` also the FFN's hidden pre-activation [B, T, hidden].
        ``cls_only``: only the first token's rows ([B, 1, ·]) — it still attends to every token, but nothing
        else is computed (the last block, when only the CLS is read: a quarter of a 3-block student's work)."""
        queries = 1 if cls_only else None
        residual = x[:, :1] if cls_only else x
        if self.norm_first:
            x = residual + self._scale(self.gamma_1, self.attn(self.norm1(x), key_padding, bias, queries))
            out, hidden = self.mlp(self.norm2(x), return_hidden=True)
            x = x + self._scale(self.gamma_2, out)
        else:
            x = self.norm1(residual + self._scale(self.gamma_1, self.attn(x, key_padding, bias, queries)))
            out, hidden = self.mlp(x, return_hidden=True)
            x = self.norm2(x + self._scale(self.gamma_2, out))
        return (x, hidden) if return_hidden else x


class ModalityBlock(nn.Module):
    """A modality-specific layer: one block per modality; in ``shared`` mode both use one attention."""

    def __init__(self, image: Block, text: Block, attention: str):
        super().__init__()
        if attention not in ("separate", "shared"):
            raise ValueError(f"attention must be 'separate' or 'shared', got {attention!r}")
        if attention == "shared":
            text.attn = image.attn  # one module, registered under both names: one set of weights
        self.attention = attention
        self.image, self.text = image, text

    def forward(self, x, modality: str, key_padding=None, bias=None, return_hidden: bool = False,
                cls_only: bool = False):
        return (self.image if modality == "image" else self.text)(x, key_padding, bias, return_hidden, cls_only)
