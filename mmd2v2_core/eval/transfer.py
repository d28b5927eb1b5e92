"""Where zero-shot transfer is lost: rendering vs phrasing, per rendering trait, and per scene attribute.

``transfer_decomposition`` scores one model (a trained student, or a closed-form baseline) on the same test scenes
in every drawing × phrasing that ``data_prep.synth.transfer`` prepares (the test set itself, the training style, the
training style plus one test-style trait; each with the test set's captions and with captions in the training
phrasing). Images and captions are encoded once each; every pairing is a 1K-gallery retrieval.

``failure_reading`` reads image→text top-1 on the test set: recall per group of images (background, object
count, smallest object), and for each failed image which scene attributes the retrieved caption's scene
gets wrong (background, object count, and the multiset of each object attribute: shape, colour, size,
position).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable

import torch

from ..data.datasets import RetrievalSplit
from ..errors import DataError
from .retrieval import retrieval_ranks

OBJECT_ATTRIBUTES = ("shape", "color", "size", "position")
ATTRIBUTES = ("background", "count", *OBJECT_ATTRIBUTES)


def scene_attributes(scene: dict) -> dict:
    """Each attribute of a scene as a comparable value (object attributes as sorted multisets)."""
    objects = scene["objects"]
    values = {"background": scene["background"], "count": len(objects)}
    for a in OBJECT_ATTRIBUTES:
        values[a] = sorted((o["row"], o["col"]) if a == "position" else o[a] for o in objects)
    return values


def image_groups(scene: dict) -> dict:
    """The groups a test image belongs to for the per-group recall: background, object count, smallest size."""
    sizes = {o["size"] for o in scene["objects"]}
    return {"background": scene["background"], "objects": str(len(scene["objects"])),
            "smallest object": "small" if "small" in sizes else "large"}


def failure_reading(scenes: list[dict], image_emb: torch.Tensor, text_emb: torch.Tensor,
                    text_to_image: torch.Tensor) -> dict:
    """Image→text top-1 on the test set: R@1 per image group, and for each failure which attributes the
    retrieved caption's scene gets wrong (a near miss: one attribute only)."""
    retrieved = text_to_image[(image_emb @ text_emb.T).argmax(dim=1)].tolist()
    wrong, near, failures = Counter(), 0, 0
    images, hits = Counter(), Counter()
    for i, k in enumerate(retrieved):
        groups = list(image_groups(scenes[i]).items())
        images.update(groups)
        if k == i:
            hits.update(groups)
            continue
        failures += 1
        mine, theirs = scene_attributes(scenes[i]), scene_attributes(scenes[k])
        differ = [a for a in ATTRIBUTES if mine[a] != theirs[a]]
        wrong.update(differ)
        near += len(differ) == 1
    by_group = {}
    for (group, value), n in sorted(images.items()):
        by_group.setdefault(group, {})[value] = {"images": n, "i2t_r1": 100 * hits[(group, value)] / n}
    return {"images": len(scenes), "failures": failures, "near_misses": near,
            "wrong": {a: wrong[a] / max(failures, 1) for a in ATTRIBUTES}, "i2t_r1_by": by_group}


def transfer_decomposition(test_dir: str | Path, drawings: dict[str, Path],
                           encode_images: Callable[[RetrievalSplit], torch.Tensor],
                           encode_texts: Callable[[RetrievalSplit], torch.Tensor], test_drawing: str) -> dict:
    """I→T / T→I R@1 of every drawing (``drawings``: name → prepared dataset of the test scenes, captioned in the
    training phrasing) with the test set's phrasing and the training phrasing, and the failure reading of the
    test set; ``test_drawing`` names the drawing whose pixels are the test set's. The model is its two encoders:
    ``encode_images(split)`` → [images, D], ``encode_texts(split)`` → [its captions, D]."""
    test = RetrievalSplit.from_index(test_dir, "test")
    splits = {name: RetrievalSplit.from_index(folder, "test") for name, folder in drawings.items()}
    for name, split in splits.items():
        if [r.extra.get("scene") for r in split.records] != [r.extra.get("scene") for r in test.records] or \
                list(split.text_to_image) != list(test.text_to_image):
            raise DataError(f"{split.index_dir}: its scenes or caption counts differ from the test set {test_dir}; "
                            "regenerate the transfer sets from this test set")
    t2i = torch.as_tensor(test.text_to_image, dtype=torch.long)
    training_phrasing = next(iter(splits.values()))  # one caption set for every drawing
    texts = {"test": encode_texts(test), "training": encode_texts(training_phrasing)}
    recall, test_images = {}, None
    for name, split in splits.items():
        image_emb = encode_images(split)
        if name == test_drawing:
            test_images = image_emb
        recall[name] = {}
        for phrasing, text_emb in texts.items():
            r = retrieval_ranks(image_emb, text_emb, t2i).recalls(ks=(1,))
            recall[name][phrasing] = {"i2t_r1": r["i2t_r1"], "t2i_r1": r["t2i_r1"]}
    if test_images is None:
        raise DataError(f"the drawings {sorted(drawings)} do not include the test set's ({test_drawing!r})")
    return {"images": len(test.records), "captions": len(test.captions), "recall": recall,
            "failures": failure_reading([r.extra["scene"] for r in test.records], test_images, texts["test"], t2i)}
