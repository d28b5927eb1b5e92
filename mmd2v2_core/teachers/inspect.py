"""What ``mmd2v2 teachers list`` and ``mmd2v2 teachers inspect`` report."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.images import open_rgb
from ..data.transforms import ImageTransformConfig, eval_transform
from .registry import TEACHERS, Teacher, parameter_count, weights_location


def list_teachers(folder: str | Path | None = None) -> list[dict]:
    rows = []
    for spec in TEACHERS.values():
        where = weights_location(spec, folder=folder)
        rows.append({
            "name": spec.name, "modality": spec.modality, "architecture": spec.architecture,
            "parameters": parameter_count(spec), "feature_dim": spec.feature_dim, "classes": spec.num_classes,
            "weights": spec.weights, "file": spec.default_file,
            "available": where is not None, "found_at": str(where) if where else None,
        })
    return rows


def preprocess_of(teacher: Teacher, size: int | None = None) -> ImageTransformConfig:
    return ImageTransformConfig(size=size or teacher.image_size, mean=teacher.spec.mean, std=teacher.spec.std)


@torch.no_grad()
def inspect_teacher(teacher: Teacher, images: list[str | Path] = (), top: int = 5) -> dict:
    """Output shapes on a probe input, and for classifiers the top classes of each given image."""
    report = {
        "name": teacher.spec.name, "tiny": teacher.tiny, "architecture": teacher.spec.architecture,
        "parameters": sum(p.numel() for p in teacher.parameters()), "feature_dim": teacher.feature_dim,
        "weights_sha256": teacher.weight_hash(),
    }
    if teacher.spec.modality == "text":
        ids = torch.tensor([[101, 1037, 4937, 102]])
        out = teacher(ids, torch.ones_like(ids))
    else:
        out = teacher(torch.zeros(1, 3, teacher.image_size, teacher.image_size))
    report["outputs"] = {
        "pooled": list(out.pooled.shape),
        "tokens": list(out.tokens.shape) if out.tokens is not None else None,
        "layers": len(out.layers) if out.layers is not None else None,
        "logits": list(out.logits.shape) if out.logits is not None else None,
    }
    if images and teacher.spec.num_classes == 1000 and teacher.spec.modality == "image":
        from timm.data import ImageNetInfo

        names = ImageNetInfo()
        transform = eval_transform(preprocess_of(teacher))
        report["predictions"] = {}
        for path in images:
            probs = teacher(transform(open_rgb(path))[None]).logits.softmax(-1)[0]
            values, indices = probs.topk(top)
            report["predictions"][str(path)] = [
                {"class": int(i), "name": names.index_to_description(int(i)), "probability": round(float(v), 4)}
                for v, i in zip(values, indices)]
    return report
