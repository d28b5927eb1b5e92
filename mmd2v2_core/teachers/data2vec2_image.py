"""Data2Vec2-image (data2vec 2.0, ViT-B/16, fairseq's ``base_imagenet.pt``) as a timm VisionTransformer.

What the original model computes (fairseq ``examples/data2vec/models``: ``data2vec2.py``,
``modalities/base.py``, ``modalities/images.py``, ``modalities/modules.py``), and how timm expresses it:

* Patch embedding: a 16×16 stride-16 conv to 768 (``modality_encoders.IMAGE.local_encoder.proj``,
  with bias) → timm ``patch_embed.proj``.
* Positions: FIXED 2-D sin-cos embeddings (MAE layout: first half of the channels encodes the column,
  second half the row), added to the patches only. The checkpoint stores them as a frozen parameter
  (``fixed_positional_encoder.positions``, shape [1, 196, 768]) → timm ``pos_embed`` with
  ``no_embed_class=True``. The one extra token (``extra_tokens``, the CLS token) is prepended after the
  positions were added, so it gets none → timm ``cls_token``.
* The blocks are POST-LN (``AltBlock`` with ``layer_norm_first=False``):
  ``x = norm1(x + attn(x)); x = norm2(x + mlp(x))``. timm's ``Block`` is pre-LN, hence ``PostNormBlock``.
* Because the blocks normalise at their end, nothing normalises their input: for post-LN models the
  image encoder's ``context_encoder`` applies its LayerNorm to the embeddings (CLS included) BEFORE the
  first block → timm ``norm_pre``. There is no final norm (``Data2VecMultiModel.norm`` exists only for
  pre-LN models) → ``norm`` is Identity; the last block's output is already normalised.
* 12 blocks in all: 2 image-specific "prenet" blocks (``modality_encoders.IMAGE.context_encoder.blocks``,
  ``prenet_depth=2``) run first, then the 10 blocks shared across modalities (``blocks``, ``depth=10``).
  Same block class, same width: one 12-block ViT (prenet blocks first).
* Attention: one ``qkv`` linear with bias, split as (3, heads, head_dim) — timm's layout; ``proj``;
  MLP ``fc1``/GELU/``fc2``; LayerNorm eps 1e-6 (``norm_eps``). Block tensor names match timm's exactly.

Training-only parts of the checkpoint are dropped: the EMA teacher (``_ema``), the image decoder,
``shared_decoder``, ``recon_proj`` and the encoders of other modalities. A checkpoint trained with ALiBi
biases (``alibi_scale``) is refused: its attention depends on them and a timm ViT would silently differ.
The original pickle is read without fairseq (``checkpoints.load_original_checkpoint``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerNorm, PatchEmbed
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from ..errors import DataError
from .base import MissingWeights
from .checkpoints import load_original_checkpoint, model_state

METADATA_KEY = "data2vec2_image"  # the safetensors metadata entry holding the architecture (JSON)
IMAGE = "modality_encoders.IMAGE."
BLOCK_TENSORS = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                 "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                 "mlp.fc2.weight", "mlp.fc2.bias")  # same names in fairseq's AltBlock and timm's Block
STEM = {  # original key → timm key
    IMAGE + "local_encoder.proj.weight": "patch_embed.proj.weight",
    IMAGE + "local_encoder.proj.bias": "patch_embed.proj.bias",
    IMAGE + "extra_tokens": "cls_token",
    IMAGE + "fixed_positional_encoder.positions": "pos_embed",
    IMAGE + "context_encoder.norm.weight": "norm_pre.weight",
    IMAGE + "context_encoder.norm.bias": "norm_pre.bias",
}
TRAINING_ONLY = (  # key prefixes of parts that only pretraining uses
    "_ema",  # EMA teacher: a nested dict of tensors under one key
    IMAGE + "decoder.",  # conv decoder predicting the teacher's targets
    "shared_decoder.",
    "recon_proj.",  # pixel-reconstruction head (recon_loss > 0)
    "modality_encoders.AUDIO.",
    "modality_encoders.TEXT.",
)
RELEASED_HEADS = {768: 12, 1024: 16, 1280: 16}  # data2vec 2.0 image configs, when a checkpoint lacks its cfg
_PRENET = re.compile(re.escape(IMAGE) + r"context_encoder\.blocks\.(\d+)\.")
_SHARED = re.compile(r"blocks\.(\d+)\.")


@dataclass(frozen=True)
class Data2Vec2ImageArch:
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12  # prenet + shared blocks
    num_heads: int = 12
    mlp_ratio: float = 4.0
    prenet_depth: int = 2


BASE = Data2Vec2ImageArch()
TINY = Data2Vec2ImageArch(embed_dim=32, depth=5, num_heads=2, prenet_depth=2)


class PostNormBlock(Block):
    """fairseq's AltBlock with ``layer_norm_first=False``: normalise after each residual sum."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        x = self.norm1(x + self.drop_path1(self.ls1(self.attn(x, attn_mask=attn_mask, is_causal=is_causal))))
        return self.norm2(x + self.drop_path2(self.ls2(self.mlp(x))))


def _patch_embed_with_bias(**kwargs) -> PatchEmbed:
    # timm drops the conv bias whenever pre_norm=True (CLIP has none); data2vec's patch conv has one.
    return PatchEmbed(**{**kwargs, "bias": True})


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """[grid², dim] fixed positions in MAE's layout: [sin | cos](column) then [sin | cos](row), row-major."""
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")

    def encode(coord: torch.Tensor) -> torch.Tensor:
        angles = coord.reshape(-1, 1) * freqs
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


def _build(arch: Data2Vec2ImageArch, num_classes: int = 0) -> VisionTransformer:
    model = VisionTransformer(
        img_size=arch.img_size, patch_size=arch.patch_size, embed_dim=arch.embed_dim, depth=arch.depth,
        num_heads=arch.num_heads, mlp_ratio=arch.mlp_ratio, qkv_bias=True, num_classes=num_classes,
        no_embed_class=True, pre_norm=True, final_norm=False, norm_layer=LayerNorm,
        block_fn=PostNormBlock, embed_layer=_patch_embed_with_bias,
    )
    grid = arch.img_size // arch.patch_size
    with torch.no_grad():
        model.pos_embed.copy_(sincos_positions(grid, arch.embed_dim).unsqueeze(0))
    model.pos_embed.requires_grad_(False)  # fixed in the original, never trained
    model.fixed_pos_embed = True  # so a student initialised from it keeps them fixed too
    model.prenet_depth = arch.prenet_depth  # blocks[:prenet_depth] are the image-specific prenet (students need it)
    model.pretrained_cfg = {
        "architecture": "data2vec2_image", "input_size": (3, arch.img_size, arch.img_size),
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,  # fairseq's MaeImageDataset normalisation
        "interpolation": "bicubic", "crop_pct": 0.875, "num_classes": num_classes,
        "first_conv": "patch_embed.proj", "classifier": "head",
    }
    return model


def build_data2vec2_image(tiny: bool = False, img_size: int = 224, num_classes: int = 0) -> nn.Module:
    """Random-init Data2Vec2-image ViT-B/16 (tiny: width 32, 2 prenet + 3 shared blocks, 2 heads)."""
    return _build(replace(TINY if tiny else BASE, img_size=img_size), num_classes)


def _key_map(arch: Data2Vec2ImageArch) -> dict[str, str]:
    """Every original tensor name the architecture needs → its timm name."""
    mapping = dict(STEM)
    for i in range(arch.depth):
        source = f"{IMAGE}context_encoder.blocks.{i}." if i < arch.prenet_depth else f"blocks.{i - arch.prenet_depth}."
        mapping.update({source + name: f"blocks.{i}.{name}" for name in BLOCK_TENSORS})
    return mapping


def _block_count(keys, pattern: re.Pattern, path: Path, what: str) -> int:
    found = sorted({int(m.group(1)) for key in keys if (m := pattern.match(key))})
    if found != list(range(len(found))):
        raise DataError(f"{path}: {what} blocks are numbered {found}, expected 0..{len(found) - 1} without gaps")
    return len(found)


def _num_heads(checkpoint: dict, dim: int, path: Path) -> int:
    """From the checkpoint's cfg (fairseq saves it as a plain dict), else the released configs' value."""
    cfg = checkpoint.get("cfg")
    model_cfg = cfg.get("model") if isinstance(cfg, dict) else None
    heads = model_cfg.get("num_heads") if isinstance(model_cfg, dict) else None
    heads = heads or RELEASED_HEADS.get(dim)
    if not heads:
        raise DataError(f"{path}: cannot tell the number of attention heads: no cfg.model.num_heads in the "
                        f"checkpoint, and width {dim} is not one of the released sizes {sorted(RELEASED_HEADS)}")
    if dim % heads:
        raise DataError(f"{path}: cfg.model.num_heads={heads} does not divide the width {dim}")
    return int(heads)


def _infer_arch(tensors: dict[str, torch.Tensor], checkpoint: dict, path: Path) -> Data2Vec2ImageArch:
    for key in (IMAGE + "local_encoder.proj.weight", IMAGE + "fixed_positional_encoder.positions"):
        if key not in tensors:
            raise DataError(f"{path}: missing key '{key}'; not a data2vec 2.0 image checkpoint")
    dim, _, patch, _ = tensors[IMAGE + "local_encoder.proj.weight"].shape
    num_patches = tensors[IMAGE + "fixed_positional_encoder.positions"].shape[1]
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise DataError(f"{path}: {num_patches} fixed positions do not form a square patch grid")
    prenet = _block_count(tensors, _PRENET, path, "prenet (context_encoder)")
    shared = _block_count(tensors, _SHARED, path, "shared")
    first = f"{IMAGE}context_encoder.blocks.0.mlp.fc1.weight" if prenet else "blocks.0.mlp.fc1.weight"
    if first not in tensors:
        raise DataError(f"{path}: missing key '{first}'")
    return Data2Vec2ImageArch(img_size=grid * patch, patch_size=patch, embed_dim=dim, depth=prenet + shared,
                              num_heads=_num_heads(checkpoint, dim, path),
                              mlp_ratio=tensors[first].shape[0] / dim, prenet_depth=prenet)


def _convert(path: Path) -> tuple[dict[str, torch.Tensor], Data2Vec2ImageArch]:
    """The original checkpoint's tensors under timm's names, and the architecture they describe."""
    checkpoint = load_original_checkpoint(path)
    tensors = model_state(checkpoint, path)
    raw = checkpoint.get("model")  # where fairseq puts the state; model_state keeps only its tensors
    others = [k for k, v in raw.items() if not isinstance(v, torch.Tensor)] if isinstance(raw, dict) else []
    arch = _infer_arch(tensors, checkpoint, path)
    mapping = _key_map(arch)
    with torch.device("meta"):  # names, shapes and dtypes only: no memory, no init time
        expected = _build(arch).state_dict()
    state = {}
    for key, tensor in tensors.items():
        if key not in mapping:
            _check_dropped(key, path)
            continue
        target = expected[mapping[key]]
        if tensor.shape != target.shape:
            raise DataError(f"{path}: '{key}' has shape {tuple(tensor.shape)}, but its place in the timm model "
                            f"('{mapping[key]}') needs {tuple(target.shape)}")
        state[mapping[key]] = tensor.to(target.dtype).contiguous()
    for key in others:
        _check_dropped(key, path)
    missing = [key for key in mapping if key not in tensors]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"{path}: missing key(s) {', '.join(repr(k) for k in missing[:3])}{more}")
    return state, arch


def _check_dropped(key: str, path: Path) -> None:
    """Pass a known training-only part; refuse anything else by name."""
    if "alibi" in key:
        raise DataError(f"{path}: '{key}': this checkpoint was trained with ALiBi attention biases, which the "
                        "timm ViT does not apply; refusing to convert it")
    if not key.startswith(TRAINING_ONLY):
        raise DataError(f"{path}: unexpected key '{key}' (not mapped, not a known training-only part)")


def convert_data2vec2_image(src: str | Path, dst: str | Path) -> Path:
    """Original fairseq checkpoint → safetensors with timm's keys and the architecture as JSON metadata."""
    state, arch = _convert(Path(src))
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, dst, metadata={METADATA_KEY: json.dumps(asdict(arch), sort_keys=True)})
    return dst


def _read_converted(path: Path) -> tuple[dict[str, torch.Tensor], Data2Vec2ImageArch]:
    try:
        with safe_open(path, framework="pt") as f:
            meta = (f.metadata() or {}).get(METADATA_KEY)
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (OSError, SafetensorError) as exc:
        raise DataError(f"{path}: not a readable safetensors file ({exc})") from None
    if meta is None:
        raise DataError(f"{path}: no '{METADATA_KEY}' metadata entry; was it written by convert_data2vec2_image?")
    try:
        arch = Data2Vec2ImageArch(**json.loads(meta))
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: malformed '{METADATA_KEY}' metadata ({exc})") from None
    return state, arch


def load_data2vec2_image(path: str | Path | None) -> nn.Module:
    """The model in eval mode, from the original ``.pt`` (converted in memory) or a converted ``.safetensors``."""
    if path is None:
        raise MissingWeights("d2v2-image", "base_imagenet.pt (data2vec 2.0 ViT-B/16, pretrained on ImageNet-1k)",
                             "https://dl.fbaipublicfiles.com/fairseq/data2vec2/base_imagenet.pt",
                             "put it in the weights folder or pass its path")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint file not found")
    state, arch = _read_converted(path) if path.suffix == ".safetensors" else _convert(path)
    model = _build(arch)
    expected = model.state_dict()
    problems = [f"missing '{k}'" for k in expected if k not in state]
    problems += [f"unexpected '{k}'" for k in state if k not in expected]
    problems += [f"'{k}' has shape {tuple(v.shape)}, needs {tuple(expected[k].shape)}"
                 for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if problems:
        raise DataError(f"{path}: tensors do not fit the architecture {asdict(arch)}: {'; '.join(problems[:3])}")
    model.load_state_dict(state)
    return model.eval()
