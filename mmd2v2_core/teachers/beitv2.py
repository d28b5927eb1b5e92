"""BEiT-v2 ViT-B/16 (Peng et al. 2022) as timm ``Beit`` models: the self-supervised release and timm's fine-tunes.

Architecture (microsoft/unilm ``beit2/modeling_finetune.py``, ``modeling_pretrain.py``): ViT-B/16 at 224 px,
12 pre-LN blocks, width 768, 12 heads, MLP 3072, LayerNorm eps 1e-6; no absolute position embedding but a
learned relative position bias; attention with q and v biases (k has none); layer scale ``gamma_1``/``gamma_2``
on both residual branches.

``beitv2_base_patch16_224_pt1k.pth`` — the self-supervised checkpoint (1600 epochs on ImageNet-1k) whose
final-layer, final-norm CLS is the thesis's target. From the BEiT-v2 release of microsoft/unilm
(https://github.com/microsoft/unilm/tree/master/beit2, README → "pretrained on ImageNet-1k" → BEiT-base).
It is the state of ``VisionTransformerForMaskedImageModelingCLS`` saved as ``{"model": state_dict}``, built by
``run_beitv2_pretraining.py`` with one relative position bias shared by all blocks (``rel_pos_bias.*``, with its
``relative_position_index`` buffer), layer scale initialised at 0.1, and three pretraining-only parts: ``mask_token``,
the visual-token head ``lm_head.*`` (8192 codes) and the patch-aggregation head ``cls_pt_layers.*`` (two blocks
fed by layer 9's patches). Its other names are timm's for ``Beit(use_shared_rel_pos_bias=True)``, so the
conversion drops those three parts and the index buffer (timm rebuilds it; we check the stored one matches),
refuses any other key, and checks every shape.

``beitv2_base_patch16_224.in1k_ft_in22k_in1k`` / ``.in1k_ft_in1k`` — timm's ImageNet-1k fine-tunes (hub
``timm/beitv2_base_patch16_224.<tag>``): a relative position bias per block, mean-pooled patch tokens → ``fc_norm``
→ 1000-class head, and no final ``norm`` (Identity). The release's own fine-tuned ``.pth`` files use the same names.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from timm.models.beit import gen_relative_position_index
from torch import nn

from ..errors import ConfigError, DataError, few_keys
from .base import MissingWeights, freeze
from .pretrained import WEIGHTS_FLAG, load_exactly, read_weights, timm_weights_file

ARCH = "beitv2_base_patch16_224"
FINETUNED_TAGS = ("in1k_ft_in22k_in1k", "in1k_ft_in1k")
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)

PT1K_FILE = "beitv2_base_patch16_224_pt1k.pth"
PT1K_WHERE = ("the BEiT-v2 release of microsoft/unilm, https://github.com/microsoft/unilm/tree/master/beit2 "
              "(README, 'pretrained on ImageNet-1k', BEiT-base; also "
              "https://github.com/addf400/files/releases/download/BEiT-v2/beitv2_base_patch16_224_pt1k.pth)")
# The pt1k layout in timm's terms: one shared bias, layer scale 0.1, final norm kept, CLS pooling (not mean).
_PT1K_LAYOUT = dict(use_rel_pos_bias=False, use_shared_rel_pos_bias=True, init_values=0.1,
                    global_pool="token", use_fc_norm=False)


def build_beitv2(tiny: bool = False, num_classes: int = 0, shared_rel_pos: bool = True) -> nn.Module:
    """Random-init BEiT-v2 ViT-B/16 (or its tiny test variant).

    ``shared_rel_pos=True``: the pt1k layout; ``forward_features(x)[:, 0]`` (and ``forward`` when
    ``num_classes=0``) is the final-norm CLS. ``False``: timm's fine-tuned layout (per-block bias, mean pooling).
    """
    layout = _PT1K_LAYOUT if shared_rel_pos else {}
    return timm.create_model(ARCH, pretrained=False, num_classes=num_classes, **layout, **(TINY if tiny else {}))


def _is_tiny(state: dict[str, torch.Tensor]) -> bool:
    cls = state.get("cls_token")
    return cls is not None and cls.shape[-1] == TINY["embed_dim"]


def _check_position_index(index: torch.Tensor, grid: tuple[int, int], path: Path, key: str) -> None:
    """A stored relative_position_index must be the one timm rebuilds for the model's patch grid."""
    if not torch.equal(index.long(), gen_relative_position_index(grid)):
        raise DataError(f"{path}: {key} (shape {tuple(index.shape)}) is not the relative position index of a "
                        f"{grid[0]}x{grid[1]} patch grid; the checkpoint was made for another image or patch size")


def _is_pretraining_only(key: str) -> bool:
    return key == "mask_token" or key.startswith(("lm_head.", "cls_pt_layers."))


def _convert_pt1k(source: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The pt1k tensors under timm's names (every target key filled, shapes checked), and whether it is tiny."""
    tiny = _is_tiny(source)
    with torch.device("meta"):  # names and shapes only
        model = build_beitv2(tiny=tiny)
    target = model.state_dict()
    converted = {}
    for key, tensor in source.items():
        if _is_pretraining_only(key):
            continue
        if key == "rel_pos_bias.relative_position_index":
            _check_position_index(tensor, model.patch_embed.grid_size, path, key)
        elif key not in target:
            raise DataError(f"{path}: unknown key {key!r} {tuple(tensor.shape)}; is this the BEiT-v2 pt1k checkpoint "
                            f"({PT1K_FILE})?")
        elif tensor.shape != target[key].shape:
            raise DataError(f"{path}: {key} has shape {tuple(tensor.shape)}, expected {tuple(target[key].shape)}")
        else:
            converted[key] = tensor.contiguous()
    missing = sorted(target.keys() - converted.keys())
    if missing:
        raise DataError(f"{path}: missing keys {few_keys(missing)}; is this the BEiT-v2 pt1k checkpoint ({PT1K_FILE})?")
    return converted, tiny


def _pt1k_missing(path: str | Path | None) -> MissingWeights:
    why = "none was given" if path is None else f"{path} does not exist"
    return MissingWeights("beitv2", f"{PT1K_FILE} (self-supervised BEiT-v2 ViT-B/16)", PT1K_WHERE,
                          f"pass the .pth, or the .safetensors convert_beitv2_pt1k writes from it, with {WEIGHTS_FLAG} "
                          f"({why})")


def convert_beitv2_pt1k(src: str | Path, dst: str | Path) -> Path:
    """Write the release ``.pth`` as a timm-layout ``.safetensors`` (loads without unpickling); returns ``dst``."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise _pt1k_missing(src)
    converted, _ = _convert_pt1k(read_weights(src), src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(converted, dst, metadata={"source": src.name, "layout": "timm Beit, shared relative position bias"})
    return dst


def load_beitv2_pt1k(path: str | Path | None) -> nn.Module:
    """Frozen self-supervised BEiT-v2 from the release ``.pth`` or its converted ``.safetensors``.

    The size (ViT-B/16 or the tiny test variant) follows the file.
    """
    if path is None or not Path(path).is_file():
        raise _pt1k_missing(path)
    path = Path(path)
    state = read_weights(path)
    if path.suffix == ".safetensors":
        tiny = _is_tiny(state)
    else:
        state, tiny = _convert_pt1k(state, path)
    return freeze(load_exactly(lambda: build_beitv2(tiny), state, path, "BEiT-v2 pt1k"))


def load_beitv2_finetuned(path_or_none: str | Path | None, tag: str = "in1k_ft_in22k_in1k") -> nn.Module:
    """Frozen fine-tuned BEiT-v2 with its 1000-class head, from a local file or the hub cache when ``None``."""
    if tag not in FINETUNED_TAGS:
        raise ConfigError(f"BEiT-v2 fine-tuned tag {tag!r}: expected one of {', '.join(FINETUNED_TAGS)}")
    path = timm_weights_file(f"beitv2.{tag}", f"timm/{ARCH}.{tag}", path_or_none)
    state = read_weights(path)
    tiny = _is_tiny(state)

    def build():
        return build_beitv2(tiny, num_classes=1000, shared_rel_pos=False)

    with torch.device("meta"):
        grid = build().patch_embed.grid_size
    for key in [k for k in state if k.endswith("relative_position_index")]:  # only in the release .pth files
        _check_position_index(state.pop(key), grid, path, key)
    return freeze(load_exactly(build, state, path, f"BEiT-v2 ViT-B/16 fine-tuned ({tag})"))
