"""The student: MM-D2V2 (modality-specific blocks, then shared blocks) and its successor S-SMKE.

    image ─ image front end ─┐                                   ┌─ CLS → L2-norm = retrieval embedding
                             ├─ depth − n_shared ModalityBlocks ─┤
    text ── text front end ──┘   (separate or shared attention)   └─ n_shared shared Blocks ─ [KD head]

Image and text run in separate passes through the same stack: the modality-specific layers pick their
image or text block, the shared blocks are one set of weights for both. S-SMKE (``type_embedding``)
adds a learned image/text type vector after the modality-specific layers, scaled by a LayerScale that
starts at 1e-5 so the pretrained towers' outputs are barely disturbed at first.

The **image front end** is the patch embedding plus, for Data2Vec2, its two "prenet" blocks
(``image_prenet``): the original code ran both under ``no_grad`` and copied the student's layers from
the *main* blocks, so here they are part of the front end, frozen with it (``freeze_image_frontend``).

The **KD head** is a preset property. MM-D2V2 (the seed) has none: its loss regresses the final CLS
itself — the very vector used for retrieval — onto the teacher target, which must then have the
student's width. S-SMKE maps the CLS through LayerNorm + Linear to the target's width (``kd_head``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from .blocks import Block, ModalityBlock
from .frontends import PatchFrontEnd, StemFrontEnd, TextFrontEnd, efficientnet_stem


@dataclass(frozen=True)
class StudentConfig:
    depth: int = 6
    n_shared: int = 1
    attention: str = "separate"  # separate | shared (modality-specific layers)
    width: int = 768
    heads: int = 12
    mlp_ratio: float = 4.0
    image_size: int = 224
    patch_size: int = 16
    vocab_size: int = 30522
    max_text_len: int = 64
    norm_first: bool = False  # modality-specific blocks: post-LN like Data2Vec2 / BERT; pre-LN like ViT/BEiT
    layer_scale: float | None = None  # modality-specific blocks' LayerScale (BEiT: 0.1)
    abs_pos_embed: bool = True  # learned/fixed absolute positions on the patches (BEiT-v2 has none)
    rel_pos_bias: bool = False  # BEiT-v2's shared relative position bias in the image blocks
    shared_norm_first: bool = False  # shared blocks (S-SMKE: pre-LN with LayerScale)
    shared_layer_scale: float | None = None
    type_embedding: bool = False  # S-SMKE: image/text type vector after the modality-specific layers
    type_layer_scale: float = 1e-5
    kd_dim: int = 768  # width of the teacher target (0: no KD target)
    kd_head: bool = True  # LN + Linear CLS → target (S-SMKE); False: the CLS itself regresses it (MM-D2V2)
    image_prenet: int = 0  # blocks run inside the image front end (Data2Vec2: its 2 prenet blocks)
    freeze_image_frontend: bool = False  # patch embedding + prenet frozen, as the original ran them (no_grad)
    image_stem: str | None = None  # "efficientnet-lite0": a frozen pretrained CNN stem instead of patches
    image_stem_stage: int = 4  # its last stage kept (4: stride 16, 112 channels)
    text_embed_dim: int | None = None  # width of the word/position embeddings when not the student's (MiniLM: 384)
    freeze_text_frontend: bool = False
    num_classes: int = 0  # SHRe class head (KL on teacher logits); 0: none
    eps: float = 1e-6
    # std of the truncated-normal init of layers not copied from a pretrained model (BERT/timm: 0.02, made for
    # width 768); None: PyTorch's fan-in-scaled default, which narrow students need — at width 128, std 0.02
    # left the embedded KD-only student at synth-coco 5K mean recall 23 % after 150 steps, the default at 66 %.
    init_std: float | None = 0.02

    def __post_init__(self):
        if not 0 <= self.n_shared <= self.depth:
            raise ConfigError(f"student.n_shared={self.n_shared} must be between 0 and student.depth={self.depth}")
        if self.attention not in ("separate", "shared"):
            raise ConfigError(f"student.attention must be 'separate' or 'shared', got {self.attention!r}")
        if self.width % self.heads:
            raise ConfigError(f"student: width {self.width} is not divisible by heads {self.heads}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"student: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.image_stem not in (None, "efficientnet-lite0"):
            raise ConfigError(f"student.image_stem must be efficientnet-lite0 or empty, got {self.image_stem!r}")
        if self.image_stem and not 0 <= self.image_stem_stage <= 6:
            raise ConfigError(f"student.image_stem_stage must be in 0…6, got {self.image_stem_stage}")
        if not self.kd_head and self.kd_dim not in (0, self.width):
            raise ConfigError(f"student: without a KD head the CLS (width {self.width}) regresses the target itself, "
                              f"but the target has {self.kd_dim} dims; whiten it to the student's width "
                              "(teacher.whiten=true) or use a preset with a KD head (smke)")

    @property
    def n_specific(self) -> int:
        return self.depth - self.n_shared


def _block(cfg: StudentConfig, shared: bool) -> Block:
    if shared:
        return Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.shared_norm_first, cfg.shared_layer_scale, cfg.eps)
    return Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.norm_first, cfg.layer_scale, cfg.eps)


class MultimodalStudent(nn.Module):
    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.cfg = cfg
        self.image_embed = StemFrontEnd(cfg) if cfg.image_stem else PatchFrontEnd(cfg, lambda: _block(cfg, False))
        self.text_embed = TextFrontEnd(cfg)
        self.specific = nn.ModuleList(
            ModalityBlock(_block(cfg, False), _block(cfg, False), cfg.attention) for _ in range(cfg.n_specific))
        if cfg.type_embedding:
            self.type_embed = nn.Parameter(torch.zeros(2, cfg.width))  # row 0: image, row 1: text
            nn.init.trunc_normal_(self.type_embed, std=0.02)
            self.type_scale = nn.Parameter(torch.full((cfg.width,), cfg.type_layer_scale))
        self.shared = nn.ModuleList(_block(cfg, True) for _ in range(cfg.n_shared))
        # The body is initialised before the heads exist, so its weights are the same whichever teacher
        # (KD head width, class head or none) the student is trained against.
        self.apply(partial(_init_fresh, std=cfg.init_std))
        if cfg.image_stem:  # a frozen stem keeps timm's initialisation (pretrained weights are copied in later)
            self.image_embed.stem = efficientnet_stem(cfg.image_stem_stage).requires_grad_(False).eval()
        self.kd_head = nn.Sequential(nn.LayerNorm(cfg.width, eps=cfg.eps), nn.Linear(cfg.width, cfg.kd_dim)) \
            if cfg.kd_dim and cfg.kd_head else None
        self.class_head = nn.Linear(cfg.width, cfg.num_classes) if cfg.num_classes else None
        for head in (self.kd_head, self.class_head):
            if head is not None:
                head.apply(partial(_init_fresh, std=cfg.init_std))
        if cfg.freeze_image_frontend:
            self.image_embed.requires_grad_(False)
        if cfg.image_stem:
            self.image_embed.stem.requires_grad_(False)
        if cfg.freeze_text_frontend:
            for part in (self.text_embed.word, self.text_embed.position, self.text_embed.norm):
                part.requires_grad_(False)
        self.grad_checkpointing = False  # recompute block activations in backward: memory for compute

    def features(self, x: torch.Tensor, modality: str, key_padding: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, return_hidden: bool = False, cls_only: bool = False):
        """[B, T, D] output of the last block for one modality (image: ``bias`` is an optional position bias).

        ``return_hidden``: also the last block's FFN hidden pre-activation [B, T, mlp width] (S-SMKE's second
        ITC feature is its CLS row). ``cls_only``: the last block computes the CLS row only (T = 1 in both)."""
        hidden = None
        blocks = [(layer, (modality, key_padding, bias)) for layer in self.specific]
        blocks += [(block, (key_padding,)) for block in self.shared]
        for i, (module, args) in enumerate(blocks):
            last = i == len(blocks) - 1
            if i == len(self.specific) and self.cfg.type_embedding:
                x = x + self.type_scale * self.type_embed[0 if modality == "image" else 1]
            if return_hidden and last:
                x, hidden = self._run(module, x, *args, return_hidden=True, cls_only=cls_only)
            else:
                x = self._run(module, x, *args, cls_only=cls_only and last)
        return (x, hidden) if return_hidden else x

    def _run(self, module: nn.Module, *args, **kwargs):
        if self.grad_checkpointing and self.training:
            return checkpoint(module, *args, use_reentrant=False, **kwargs)
        return module(*args, **kwargs)

    def image_cls(self, images: torch.Tensor, return_hidden: bool = False):
        out = self.features(self.image_embed(images), "image", bias=self.image_embed.attention_bias(),
                            return_hidden=return_hidden, cls_only=True)
        return (out[0][:, 0], out[1][:, 0]) if return_hidden else out[:, 0]

    def text_cls(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_hidden: bool = False):
        out = self.features(self.text_embed(input_ids), "text", key_padding=attention_mask == 0,
                            return_hidden=return_hidden, cls_only=True)
        return (out[0][:, 0], out[1][:, 0]) if return_hidden else out[:, 0]

    def text_cls_by_length(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_hidden: bool = False,
                           groups: int = 2):
        """``text_cls`` run as ``groups`` sub-batches of similar caption length, each cut to its own longest
        caption: the same outputs (rows in the input's order), less work on padding. On a CPU the work follows
        the padded length: two groups save ≈ 7 % of an embedded training step at batch 64."""
        lengths = attention_mask.sum(1)
        order = lengths.argsort()
        parts = []
        for rows in order.tensor_split(groups):
            longest = int(lengths[rows].max())
            parts.append(self.text_cls(input_ids[rows, :longest], attention_mask[rows, :longest], return_hidden))
        back = order.argsort()
        if return_hidden:
            return torch.cat([p[0] for p in parts])[back], torch.cat([p[1] for p in parts])[back]
        return torch.cat(parts)[back]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_cls(images).float(), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_cls(input_ids, attention_mask).float(), dim=-1)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        """Everything the losses need, per modality: the retrieval embedding (``_emb``), the last block's FFN
        hidden CLS (``_hidden``), the KD output (``_kd``: the head's, or the CLS itself) and class logits."""
        out = {}
        image = self.image_cls(images, return_hidden=True)
        by_length = input_ids.device.type == "cpu" and len(input_ids) >= 64  # a GPU pays little for padding
        text = (self.text_cls_by_length if by_length else self.text_cls)(input_ids, attention_mask, return_hidden=True)
        for name, (cls, hidden) in (("image", image), ("text", text)):
            out[f"{name}_emb"] = F.normalize(cls, dim=-1)
            out[f"{name}_hidden"] = hidden
            if self.cfg.kd_dim:
                out[f"{name}_kd"] = self.kd_head(cls) if self.kd_head is not None else cls
            if self.class_head is not None:
                out[f"{name}_logits"] = self.class_head(cls)
        return out

    def config_dict(self) -> dict:
        return asdict(self.cfg)


def _init_fresh(module: nn.Module, std: float | None) -> None:
    """Init of everything not copied from a pretrained model: BERT-style truncated normal of ``std``, or (None)
    the fan-in-scaled default each PyTorch layer was constructed with."""
    if isinstance(module, (nn.Linear, nn.Conv2d)) and std is not None:
        nn.init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding) and std is not None:
        nn.init.trunc_normal_(module.weight, std=std)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
