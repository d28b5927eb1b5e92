"""CLIP-style zero-shot classification: prompt ensembles averaged into class prototypes.

Each class name is put into every template, the captions are encoded and L2-normalised, averaged, and
normalised again; an image is assigned the class whose prototype scores highest (the temperature does
not change the argmax, so the thesis' logit scale of 100 is irrelevant here).

* ``real``: ImageNet-1k validation from a local folder laid out as ``val/<wnid>/*.JPEG`` (the layout of
  the official devkit after the usual reorganisation), with the OpenAI class names and 80 templates as
  open_clip ships them.
* ``embedded``: per-attribute accuracy on the synthetic test images — which of shape, colour, size and
  position the student can read from an image — on single-object images (so the label is unambiguous),
  against each attribute's chance rates.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data.datasets import RetrievalSplit
from ..data.images import open_rgb
from ..data.index import read_split
from ..data.tokenizer import CaptionTokenizer
from ..errors import DataError, clean_worker_errors
from ..progress import progress
from ..student.frontend_cache import CachedFrontEnd
from .embed import Encoder, encode_images, eval_mode

Template = str | Callable[[str], str]

ATTRIBUTE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "shape": ("a {}.", "a picture of a {}.", "there is a {}."),
    "color": ("a {} shape.", "a {} object.", "something {}."),
    "size": ("a {} shape.", "a {} object."),
    "position": ("a shape at the {}.", "an object in the {}."),
}


def _fill(template: Template, name: str) -> str:
    return template(name) if callable(template) else template.format(name)


@torch.no_grad()
def class_prototypes(model: Encoder, tokenizer: CaptionTokenizer, classnames: Sequence[str],
                     templates: Sequence[Template], device: str = "cpu") -> torch.Tensor:
    """[C, D] unit-norm prototypes: the normalised mean of each class's normalised prompt embeddings."""
    protos = []
    with eval_mode(model):
        for name in classnames:
            tokens = tokenizer([_fill(t, name) for t in templates])
            emb = model.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)).float()
            protos.append(F.normalize(F.normalize(emb, dim=-1).mean(0), dim=-1))
    return torch.stack(protos)


def zero_shot_accuracy(image_emb: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor,
                       ks: Sequence[int] = (1,)) -> dict[str, float]:
    scores = F.normalize(image_emb.float(), dim=-1) @ prototypes.T
    top = scores.topk(max(ks), dim=1).indices
    hits = top == labels.to(top.device)[:, None]
    return {f"top{k}": 100.0 * hits[:, :k].any(1).double().mean().item() for k in ks}


def attribute_zero_shot(model: Encoder, index_dir: str | Path, split: str, images: Callable | CachedFrontEnd,
                        tokenizer: CaptionTokenizer, batch_size: int = 256, device: str = "cpu") -> dict[str, dict]:
    """Per attribute: accuracy, uniform chance (1/classes), majority-class rate, class count, images.
    ``images``: a pixel transform, or the student's cached front end."""
    records = [r for r in read_split(index_dir, split) if len(r.extra.get("scene", {}).get("objects", [])) == 1]
    if not records:
        raise DataError(f"{index_dir}/{split}: no single-object images with a 'scene' field; attribute "
                        "zero-shot needs the synthetic datasets")
    single = RetrievalSplit.from_records(f"{split} single-object", records, Path(index_dir), split)
    image_emb = encode_images(model, single, images, batch_size, device)
    results = {}
    for attribute, templates in ATTRIBUTE_TEMPLATES.items():
        values = [r.extra["scene"]["objects"][0][attribute] for r in records]
        classes = sorted(set(values))
        labels = torch.tensor([classes.index(v) for v in values])
        protos = class_prototypes(model, tokenizer, classes, templates, device)
        results[attribute] = {
            "accuracy": zero_shot_accuracy(image_emb, protos, labels)["top1"],
            "chance": 100.0 / len(classes),
            "majority": 100.0 * Counter(values).most_common(1)[0][1] / len(values),
            "classes": len(classes),
            "images": len(records),
        }
    return results


def imagenet_zero_shot(model: Encoder, val_dir: str | Path, transform: Callable, tokenizer: CaptionTokenizer,
                       batch_size: int = 256, device: str = "cpu", num_workers: int = 4) -> dict[str, float]:
    """Top-1/top-5 (and the image count) on ImageNet-1k val (``val_dir/<wnid>/*``), OpenAI class names and 80
    templates."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
    from torchvision.datasets import ImageFolder

    val_dir = Path(val_dir)
    if not val_dir.is_dir():
        raise DataError(f"{val_dir}: ImageNet validation folder not found")
    folder = ImageFolder(str(val_dir), transform=transform, loader=open_rgb)
    if len(folder.classes) != len(IMAGENET_CLASSNAMES):
        raise DataError(f"{val_dir}: {len(folder.classes)} class folders, expected 1000 (val/<wnid>/*.JPEG)")
    loader = DataLoader(folder, batch_size=batch_size, num_workers=num_workers)
    images, labels = [], []
    with eval_mode(model), torch.no_grad():
        for x, y in progress(clean_worker_errors(loader), total=len(loader), desc="ImageNet val"):
            images.append(model.encode_image(x.to(device)).float())
            labels.append(y)
    protos = class_prototypes(model, tokenizer, IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, device)
    return {**zero_shot_accuracy(torch.cat(images), protos, torch.cat(labels), ks=(1, 5)), "images": len(folder)}
