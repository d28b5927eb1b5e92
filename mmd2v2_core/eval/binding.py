"""Binding or a bag of words: SugarCrepe's image–caption selection (Hsieh et al., NeurIPS 2023 D&B).

Each item is an image, its caption and one fluent hard negative (an attribute, object or relation swapped, replaced
or added). A model is right when cos(image, caption) > cos(image, negative). A tie, which a bag of words gets on every
swap, counts half: the expected score of a coin toss. CLIP_benchmark's scorer (``metrics/image_caption_selection``)
takes the argmax over (caption, negative), which picks the caption on a tie; ``ties`` is reported beside every
accuracy, so its number is ``(correct + ties) / items``.

The sets are read in SugarCrepe's layout: ``<task>.json`` files of ``{id: {filename, caption, negative_caption}}``
(the synthetic sets of ``data_prep.synth.negatives`` add ``kind``) and the images under ``val2017/`` (COCO val2017 for
SugarCrepe itself). ``blind_embeddings`` is the text-prior row: the captions against the mean image, with no image.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.datasets import RetrievalSplit
from ..data.index import ImageRecord
from ..errors import DataError

SUGARCREPE_TASKS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
SUGARCREPE_IMAGES = "val2017"
FIELDS = ("filename", "caption", "negative_caption")
SOURCE_FILE = "source.json"  # a synthetic set's split of origin (``data_prep.synth.negatives``)
# The kinds pooled by what they ask: a swap keeps the caption's words (a bag of words ties), a replacement or an
# addition changes them; the relation is its own group. The synthetic kinds name the attribute; SugarCrepe's own
# items have their task as their kind.
BINDING_GROUPS = {"swaps": ("swap_color", "swap_size", "swap_position", "swap_shape", "swap_att", "swap_obj"),
                  "replacements": ("replace_color", "replace_size", "replace_position", "replace_shape",
                                   "replace_att", "replace_obj"),
                  "relation": ("replace_rel",), "addition": ("add_obj", "add_att")}
# Where SugarCrepe's release is (what `--sugarcrepe` names: its data/ folder with COCO's val2017 images beside)
SUGARCREPE_JSONS = "https://github.com/RAIVNLab/sugar-crepe/tree/main/data"
COCO_VAL2017 = "http://images.cocodataset.org/zips/val2017.zip"


@dataclass(frozen=True)
class BindingSet:
    """Items of one or more tasks: item i is image ``image_of[i]`` (a row of ``split.records``) with caption
    ``split.captions[i]`` and negative ``split.captions[n + i]`` (n items); ``task`` and ``kind`` name each item's."""

    split: RetrievalSplit  # every image once; captions: the n positives, then the n negatives
    image_of: np.ndarray
    task: list[str]
    kind: list[str]

    def __len__(self) -> int:
        return len(self.task)


def _read_task(path: Path) -> dict:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a SugarCrepe JSON ({err})") from None
    if not isinstance(entries, dict):
        raise DataError(f"{path}: not a SugarCrepe JSON (an object of id → entry expected, got "
                        f"{type(entries).__name__})")
    for key, entry in entries.items():
        if not isinstance(entry, dict):
            raise DataError(f"{path}: entry {key!r} is not an object")
        for field in FIELDS:
            if not isinstance(entry.get(field), str) or not entry[field].strip():
                raise DataError(f"{path}: entry {key!r}: field {field!r} is missing or not a non-empty string")
    return entries


def read_binding_set(folder: str | Path, images: str | Path | None = None,
                     tasks: tuple[str, ...] | None = None) -> BindingSet:
    """The ``<task>.json`` files of ``folder`` (every SugarCrepe task present, or exactly ``tasks``) with their images
    (default ``folder/val2017``). Missing files and malformed entries are errors naming the file and entry."""
    folder = Path(folder)
    image_root = Path(images) if images else folder / SUGARCREPE_IMAGES
    wanted = tasks or tuple(t for t in SUGARCREPE_TASKS if (folder / f"{t}.json").is_file())
    missing = [f"{t}.json" for t in wanted if not (folder / f"{t}.json").is_file()]
    if not wanted or missing:
        raise DataError(f"{folder}: no SugarCrepe task file {'(' + ', '.join(missing) + ')' if missing else ''}"
                        f"; expected <task>.json for tasks {', '.join(SUGARCREPE_TASKS)}")
    if not image_root.is_dir():
        raise DataError(f"{image_root}: the images folder is missing (SugarCrepe: COCO's val2017)")
    rows: dict[str, int] = {}
    ids: dict[str, int] = {}
    image_of, positives, negatives, task_of, kind_of = [], [], [], [], []
    for task in wanted:
        path = folder / f"{task}.json"
        for key, entry in _read_task(path).items():
            name = entry["filename"]
            if name not in rows:
                if not (image_root / name).is_file():
                    raise DataError(f"{path}: entry {key!r}: image {image_root / name} is missing")
                rows[name] = len(rows)
                if isinstance(entry.get("image_id"), int):
                    ids[name] = entry["image_id"]
            image_of.append(rows[name])
            positives.append(entry["caption"])
            negatives.append(entry["negative_caption"])
            task_of.append(task)
            kind_of.append(entry.get("kind", task))
    # a synthetic set keeps its images' ids and split, so what is cached for that split (front-end outputs) serves it
    source = json.loads((folder / SOURCE_FILE).read_text()) if (folder / SOURCE_FILE).is_file() else {}
    records = [ImageRecord(ids.get(name, row) if source else row, image_root / name, (), ())
               for name, row in rows.items()]
    t2i = np.asarray(image_of * 2, dtype=np.int64)
    split = RetrievalSplit(f"binding {folder.name}", records, positives + negatives, t2i,
                           Path(source["index_dir"]) if source else None, source.get("split"))
    return BindingSet(split, np.asarray(image_of), task_of, kind_of)


def missing_sugarcrepe(folder: str | Path) -> list[str]:
    """What a folder lacks to be SugarCrepe's release with its images: the 7 task JSONs and ``val2017/``."""
    folder = Path(folder)
    missing = [f"{t}.json" for t in SUGARCREPE_TASKS if not (folder / f"{t}.json").is_file()]
    return missing + ([f"{SUGARCREPE_IMAGES}/"] if not (folder / SUGARCREPE_IMAGES).is_dir() else [])


def set_digest(folder: str | Path) -> str:
    """What a set's scores are valid for: a synthetic set's making (``source.json``: its test index, image count,
    phrasing and seed; not the index's folder, so a copied study keeps its scores), else its task files."""
    folder = Path(folder)
    if (folder / SOURCE_FILE).is_file():
        made = json.loads((folder / SOURCE_FILE).read_text())
        made.pop("index_dir", None)
        return hashlib.sha256(json.dumps(made, sort_keys=True).encode()).hexdigest()
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.json")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def pair_scores(image_emb: torch.Tensor, text_emb: torch.Tensor, items: BindingSet) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(image, caption) and cos(image, negative) of every item."""
    image = F.normalize(image_emb.float(), dim=-1)[torch.as_tensor(items.image_of)]
    text = F.normalize(text_emb.float(), dim=-1)
    n = len(items)
    return (image * text[:n]).sum(-1), (image * text[n:]).sum(-1)


def failures(image_emb: torch.Tensor, text_emb: torch.Tensor, items: BindingSet, per_kind: int = 1) -> list[dict]:
    """The first ``per_kind`` items of each kind whose negative scored at least as high as the caption."""
    positive, negative = pair_scores(image_emb, text_emb, items)
    n, found = len(items), defaultdict(list)
    for i in torch.nonzero(positive <= negative).flatten().tolist():
        if len(found[items.kind[i]]) < per_kind:
            found[items.kind[i]].append({
                "kind": items.kind[i], "image": str(items.split.records[items.image_of[i]].path),
                "caption": items.split.captions[i], "negative": items.split.captions[n + i],
                "caption_score": positive[i].item(), "negative_score": negative[i].item()})
    return [f for kind in sorted(found) for f in found[kind]]


def selection_scores(image_emb: torch.Tensor, text_emb: torch.Tensor, items: BindingSet) -> dict:
    """Accuracy (%, a tie counting half) and ties per task, per kind and per group of kinds (``BINDING_GROUPS``; sets
    with kinds), and over all items, from the embeddings of
    ``items.split``'s images and captions (any scale: they are normalised here)."""
    n = len(items)
    positive, negative = pair_scores(image_emb, text_emb, items)
    correct = (positive > negative).tolist()
    tie = (positive == negative).tolist()
    groups: dict[str, dict[str, list[int]]] = {"task": defaultdict(list), "kind": defaultdict(list),
                                               "group": defaultdict(list)}
    group_of = {kind: group for group, kinds in BINDING_GROUPS.items() for kind in kinds}
    for i, (task, kind) in enumerate(zip(items.task, items.kind)):
        groups["task"][task].append(i)
        groups["kind"][kind].append(i)
        if kind in group_of:
            groups["group"][group_of[kind]].append(i)

    def score(members) -> dict:
        wins, ties = sum(correct[i] for i in members), sum(tie[i] for i in members)
        return {"items": len(members), "accuracy": 100 * (wins + 0.5 * ties) / len(members), "ties": ties}

    return {"all": score(range(n)), **{f"by_{g}": {name: score(m) for name, m in sorted(members.items())}
                                        for g, members in groups.items()}}


def blind_embeddings(image_emb: torch.Tensor, items: BindingSet) -> torch.Tensor:
    """Image embeddings for the text-prior row: every image replaced by the mean of the set's images, so only the
    captions decide (above chance: the negatives' wording gives them away)."""
    mean = F.normalize(image_emb.float(), dim=-1).mean(0, keepdim=True)
    return mean.expand(len(items.split.records), -1)


def evaluate_binding(model, items: BindingSet, images, tokenizer, batch_size: int = 256, device: str = "cpu",
                     precision: str = "fp32") -> dict:
    """A model's selection scores on ``items`` and the blind row of its own caption embeddings (``images``: the
    model's pixel transform; see ``embed.embed_split`` for the rest)."""
    from .embed import embed_split

    emb = embed_split(model, items.split, images, tokenizer, batch_size, device, precision=precision)
    return {"items": len(items), "images": len(items.split.records), "precision": precision,
            "model": selection_scores(emb.image, emb.text, items),
            "blind": selection_scores(blind_embeddings(emb.image, items), emb.text, items)}
