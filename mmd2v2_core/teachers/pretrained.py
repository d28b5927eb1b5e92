"""DINO ViT-B/16, the supervised ResNet-50 of SHRe and BERT-base-uncased, from files on this machine.

Nothing here downloads. Each ``load_*`` takes a local file (BERT: a folder), or ``None`` to look in the
Hugging Face cache offline; a checkpoint that is in neither place raises ``MissingWeights`` saying what to fetch,
from where, and how to point the kit at it. Each ``build_*`` makes the same model with random weights;
``tiny=True`` gives a small variant for tests (width 32 or a few channels, one or two layers), built by the
same code path.

- DINO ViT-B/16 (Caron et al. 2021; self-supervised, ImageNet-1k): timm ``vit_base_patch16_224.dino``, hub repo
  ``timm/vit_base_patch16_224.dino``. 12 pre-LN blocks, width 768, 12 heads, qkv with bias, LayerNorm eps 1e-6,
  learned absolute position embedding, no classifier (the final-norm CLS is the embedding). The original
  ``dino_vitbase16_pretrain.pth`` (facebookresearch/dino, ``vision_transformer.py``) uses the same key names, so it
  loads as well.
- ResNet-50 ``resnet50.a1_in1k`` (timm, "ResNet strikes back" A1 recipe; supervised ImageNet-1k), hub repo
  ``timm/resnet50.a1_in1k``; the teacher of SHRe, which distils its 1000-class logits, so the head is kept.
- BERT-base-uncased (transformers ``BertModel``), hub repo ``google-bert/bert-base-uncased``: 12 post-LN layers,
  width 768, 12 heads, vocabulary 30522 (``BertConfig()``'s defaults are exactly this model).

The helpers ``cached_hub_file``, ``timm_weights_file``, ``read_weights`` and ``load_exactly`` are shared with
``beitv2``.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import DataError, few_keys
from .base import MissingWeights, freeze
from .checkpoints import load_original_checkpoint, model_state

WEIGHTS_FLAG = "--weights PATH"
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what hub model repos hold, preferred first

DINO = "vit_base_patch16_224.dino"
RESNET50 = "resnet50.a1_in1k"
BERT_REPOS = ("google-bert/bert-base-uncased", "bert-base-uncased")  # current id first; old caches use the short one

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
TINY_RESNET = dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64))  # the 7x7 stem keeps 64 channels
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


# ---------------------------------------------------------------------------------------------- finding files


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub fixes its default at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


@contextmanager
def offline():
    """HF_HUB_OFFLINE=1 for the duration (a hub client first imported inside reads it), restored afterwards."""
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def cached_hub_file(repo_id: str, filenames: tuple[str, ...]) -> Path | None:
    """The first of ``filenames`` that the hub cache holds for ``repo_id`` (revision main), or None. No network."""
    with offline():
        from huggingface_hub import hf_hub_download

        for name in filenames:
            try:
                return Path(hf_hub_download(repo_id, name, cache_dir=hub_cache_dir(), local_files_only=True))
            except (OSError, ValueError):  # LocalEntryNotFoundError and the hub's HTTP errors are OSErrors
                continue
    return None


def timm_weights_file(teacher: str, repo_id: str, path: str | Path | None) -> Path:
    """The weights file to read: ``path`` (a file, or a folder holding a hub file), else the hub cache's copy."""
    how = f"pass its path with {WEIGHTS_FLAG}"
    if path is not None:
        path = Path(path)
        if path.is_file():
            return path
        for name in HUB_WEIGHT_FILES if path.is_dir() else ():
            if (path / name).is_file():
                return path / name
        how += f" ({path} is not such a file)"
    else:
        found = cached_hub_file(repo_id, HUB_WEIGHT_FILES)
        if found is not None:
            return found
        how += f", or put the hub repo into the Hugging Face cache ({hub_cache_dir()}), e.g. `hf download {repo_id}`"
    raise MissingWeights(teacher, f"the weights of {repo_id} ({' or '.join(HUB_WEIGHT_FILES)})",
                         f"the Hugging Face hub, https://huggingface.co/{repo_id}", how)


# ---------------------------------------------------------------------------------------------- reading files


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: safetensors directly; pickles (.pth/.pt/.bin) through the weights-only reader."""
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError) as exc:
            raise DataError(f"{path}: not a readable safetensors file ({exc})") from None
    return model_state(load_original_checkpoint(path), path)


def load_exactly(build: Callable[[], nn.Module], state: dict[str, torch.Tensor], path: Path, what: str) -> nn.Module:
    """``build()`` loaded with ``state`` when that has exactly the model's keys and shapes; else DataError naming them.

    The check runs on a meta-device copy, so a wrong file fails before 86M weights are initialised.
    """
    with torch.device("meta"):
        expected = build().state_dict()
    # BatchNorm's step counter never affects outputs and some exports omit it.
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = sorted(expected.keys() - state.keys() - optional, key=_shallow_first)
    unexpected = sorted(state.keys() - expected.keys(), key=_shallow_first)
    if missing or unexpected:
        raise DataError(f"{path}: missing keys {few_keys(missing)}, unexpected keys {few_keys(unexpected)}; "
                        f"is this a {what} checkpoint?")
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in state.items()
             if v.shape != expected[k].shape]
    if wrong:
        raise DataError(f"{path}: wrong shapes {few_keys(wrong)}; is this a {what} checkpoint?")
    model = build()
    model.load_state_dict({**{k: v for k, v in model.state_dict().items() if k in optional}, **state})
    return model


def _shallow_first(key: str) -> tuple[int, str]:
    """Sort order for key lists: top-level names (``cls_token``, ``fc.weight``) tell architectures apart best."""
    return key.count("."), key


def _width(state: dict[str, torch.Tensor], key: str, dim: int) -> int | None:
    """One dimension of one tensor, used to tell the real model from its tiny test variant; None if absent."""
    tensor = state.get(key)
    return tensor.shape[dim] if tensor is not None and tensor.ndim > 0 else None


# ---------------------------------------------------------------------------------------------- DINO ViT-B/16


def build_dino(tiny: bool = False) -> nn.Module:
    """DINO ViT-B/16 without a head (random init); ``forward`` gives the final-norm CLS."""
    return timm.create_model(DINO, pretrained=False, num_classes=0, **(TINY_VIT if tiny else {}))


def load_dino(path_or_none: str | Path | None) -> nn.Module:
    """Frozen DINO ViT-B/16 from a local file (hub ``model.safetensors``/``pytorch_model.bin``, or the original
    ``dino_vitbase16_pretrain.pth``), or from the hub cache when ``None``."""
    path = timm_weights_file("dino", f"timm/{DINO}", path_or_none)
    state = read_weights(path)
    tiny = _width(state, "cls_token", -1) == TINY_VIT["embed_dim"]
    return freeze(load_exactly(lambda: build_dino(tiny), state, path, "DINO ViT-B/16"))


# ---------------------------------------------------------------------------------------------- ResNet-50


def build_resnet50(tiny: bool = False, num_classes: int = 1000) -> nn.Module:
    """timm ResNet-50 (``resnet50.a1_in1k`` architecture) with a ``num_classes`` head (random init)."""
    return timm.create_model(RESNET50, pretrained=False, num_classes=num_classes, **(TINY_RESNET if tiny else {}))


def load_resnet50(path_or_none: str | Path | None) -> nn.Module:
    """Frozen supervised ResNet-50 with its 1000-class head, from a local file or the hub cache when ``None``."""
    path = timm_weights_file("resnet50", f"timm/{RESNET50}", path_or_none)
    state = read_weights(path)
    tiny = _width(state, "layer1.0.conv1.weight", 0) == TINY_RESNET["channels"][0]
    return freeze(load_exactly(lambda: build_resnet50(tiny), state, path, "ResNet-50 (ImageNet-1k, 1000 classes)"))


# ---------------------------------------------------------------------------------------------- BERT


def build_bert(tiny: bool = False) -> nn.Module:
    """transformers ``BertModel`` (with pooler, as in the hub checkpoint), random init."""
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(**TINY_BERT) if tiny else BertConfig())


def _bert_folder(path: str | Path | None) -> Path:
    """The folder to load: ``path`` itself, or the hub cache's snapshot holding config.json and weights."""
    how = f"pass the folder with {WEIGHTS_FLAG}"
    if path is not None:
        if Path(path).is_dir():
            return Path(path)
        how += f" ({path} is not a folder)"
    else:
        for repo in BERT_REPOS:
            config = cached_hub_file(repo, ("config.json",))
            if config is not None and cached_hub_file(repo, HUB_WEIGHT_FILES) is not None:
                return config.parent
        how += (f", or put the hub repo into the Hugging Face cache ({hub_cache_dir()}), "
                f"e.g. `hf download {BERT_REPOS[0]}`")
    raise MissingWeights("bert", "bert-base-uncased as a folder (config.json and model.safetensors or pytorch_model.bin)",
                         f"the Hugging Face hub, https://huggingface.co/{BERT_REPOS[0]}", how)


def load_bert(path_or_none: str | Path | None) -> nn.Module:
    """Frozen BERT-base-uncased from a ``save_pretrained`` or hub snapshot folder, or the hub cache when ``None``."""
    from transformers import BertModel

    folder = _bert_folder(path_or_none)
    config = folder / "config.json"
    if not config.is_file():
        raise DataError(f"{folder}: no config.json; expected a folder written by save_pretrained or a hub snapshot "
                        "folder (…/snapshots/<commit>)")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"{config}: not a readable model config ({exc})") from None
    if model_type != "bert":  # transformers would only warn, then load what fits and leave the rest random
        raise DataError(f"{config}: model_type {model_type!r}; is this a BERT checkpoint?")
    with offline():
        try:
            model, info = BertModel.from_pretrained(folder, local_files_only=True, output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise DataError(f"{folder}: cannot load BERT weights ({str(exc).splitlines()[0]})") from None
    if info["missing_keys"] or info.get("mismatched_keys"):  # ignoring them would leave random weights
        raise DataError(f"{folder}: missing keys {few_keys(sorted(info['missing_keys']))}, wrong shapes "
                        f"{few_keys([str(k) for k in info.get('mismatched_keys', [])])}; is this a BERT checkpoint?")
    return freeze(model)
