"""Hard negatives from the scene graphs, written in SugarCrepe's format (Hsieh et al., NeurIPS 2023 D&B).

Each kind changes a test scene in one way. Both scenes are captioned with the same draws (``captions.draw`` and
``render``): the positive and the negative share their sentence frame, object order, synonyms and punctuation, and
differ only in the words that name the change. Every negative is a scene the generator could have drawn (no fourth
object, no colour the background hides), so its wording alone does not give it away.

=================  ===============  ======================================================================
kind               SugarCrepe task  the negative
=================  ===============  ======================================================================
swap_color         swap_att         two objects exchange their colours
swap_size          swap_att         two objects exchange their sizes
swap_position      swap_att         two objects exchange their grid cells
swap_shape         swap_obj         two objects exchange their shapes
replace_color      replace_att      one object gets a colour that no object has
replace_size       replace_att      one object gets the other size, where every object has the same size
replace_position   replace_att      one object moves to a free cell
replace_shape      replace_obj      one object gets a shape that no object has
replace_rel        replace_rel      the two objects of the caption's relation clause trade cells, so "left of"
                                    becomes "right of" (or "above" "below") and the position phrases follow
add_obj            add_obj          an object that is not there, in a free cell (scenes of 1–2 objects)
=================  ===============  ======================================================================

A swap's caption has no relation clause (which would name the swapped objects by their new colours or shapes): its
words are the positive's in another order (an "a" may become "an" before "orange"), and a bag of words cannot tell
the two apart. replace_rel's has one.
SugarCrepe's ``add_att`` has no counterpart, because every caption already names every attribute of every object.

``write_binding_set`` writes ``<out>/<task>.json`` (``{id: {filename, caption, negative_caption, kind, image_id}}``:
SugarCrepe's fields plus the kind and the image's id in its split) and the images under ``<out>/val2017/``, so
CLIP_benchmark's ``sugar_crepe/<task>`` reads the set with ``--dataset_root <out>`` as it reads SugarCrepe's;
``<out>/source.json`` names the split it was made from (so features cached for that split serve its images).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from pathlib import Path

from mmd2v2_core.data.index import load_manifest, read_split, write_text_atomic
from mmd2v2_core.errors import DataError
from mmd2v2_core.eval.binding import SOURCE_FILE

from .captions import STYLES, CaptionDraws, draw, draw_object, render
from .generate import DOMAINS
from .scenes import COLORS, COLS, HIDDEN_ON, ROWS, SHAPES, SIZES, position_name, relation

KIND_TASK = {
    "swap_color": "swap_att", "swap_size": "swap_att", "swap_position": "swap_att", "swap_shape": "swap_obj",
    "replace_color": "replace_att", "replace_size": "replace_att", "replace_position": "replace_att",
    "replace_shape": "replace_obj", "replace_rel": "replace_rel", "add_obj": "add_obj",
}
KINDS = tuple(KIND_TASK)
IMAGE_FOLDER = "val2017"  # where CLIP_benchmark's SugarCrepe loader looks for the images


def _with_relations(background: str, objects: list[dict]) -> dict:
    objects = [{**o, "position": position_name(o["row"], o["col"])} for o in objects]
    return {"background": background, "objects": objects,
            "relations": [{"subject": i, "relation": relation(objects[i], objects[j]), "object": j}
                          for i in range(len(objects)) for j in range(len(objects)) if i != j]}


def _free_cells(scene: dict) -> list[tuple[str, str]]:
    taken = {(o["row"], o["col"]) for o in scene["objects"]}
    return [(r, c) for r in ROWS for c in COLS if (r, c) not in taken]


IDENTITY = ("shape", "color", "size")
SYNONYM_SLOT = {"size": 1, "row": 2}  # where CaptionDraws.objects keeps the word choice of a size, a position


def _swap(scene: dict, keys: tuple[str, ...], draws: CaptionDraws, rng: random.Random,
          pair: tuple[int, int] | None = None) -> tuple[dict | None, CaptionDraws]:
    """Two objects (``pair``, or two drawn among those whose exchange changes the scene) exchange their ``keys``, and
    the words that name them: a size or position keeps its synonym, so the caption's words stay the same multiset."""
    objects = scene["objects"]
    differ = IDENTITY if keys == ("row", "col") else keys  # cells always differ: trading them needs another difference
    pairs = [(i, j) for i in range(len(objects)) for j in range(i + 1, len(objects))
             if any(objects[i][k] != objects[j][k] for k in differ)]
    if pair:
        pairs = [p for p in pairs if set(p) == set(pair)]
    if not pairs:
        return None, draws
    i, j = rng.choice(pairs)
    swapped = [dict(o) for o in objects]
    for k in keys:
        swapped[i][k], swapped[j][k] = objects[j][k], objects[i][k]
    slot = SYNONYM_SLOT.get(keys[0])
    if slot is not None:
        picks = {i: list(draws.objects[i]), j: list(draws.objects[j])}
        picks[i][slot], picks[j][slot] = draws.objects[j][slot], draws.objects[i][slot]
        draws = dataclasses.replace(draws, objects={**draws.objects, **{k: tuple(v) for k, v in picks.items()}})
    return _with_relations(scene["background"], swapped), draws


def _replace(scene: dict, changes: list[dict], rng: random.Random) -> dict | None:
    """One object changed by one of ``changes`` (attribute values to set), drawn."""
    if not changes:
        return None
    objects = [dict(o) for o in scene["objects"]]
    objects[rng.randrange(len(objects))].update(rng.choice(changes))
    return _with_relations(scene["background"], objects)


def negative(scene: dict, kind: str, style: str, draws: CaptionDraws,
             rng: random.Random) -> tuple[dict, CaptionDraws] | None:
    """The negative scene of ``kind`` and the draws that caption it (those of the positive, plus the new object's),
    or None where the scene does not allow the kind. Object i of the negative is object i of the positive, changed."""
    objects, background = scene["objects"], scene["background"]
    absent = lambda key, values: [{key: v} for v in values if v not in {o[key] for o in objects}]  # noqa: E731
    colors = [c for c in COLORS if c not in HIDDEN_ON[background]]
    if kind == "swap_position":
        changed, draws = _swap(scene, ("row", "col"), draws, rng)
    elif kind.startswith("swap_"):
        changed, draws = _swap(scene, (kind.removeprefix("swap_"),), draws, rng)
    elif kind == "replace_color":
        changed = _replace(scene, absent("color", colors), rng)
    elif kind == "replace_shape":
        changed = _replace(scene, absent("shape", SHAPES), rng)
    elif kind == "replace_size":
        changed = _replace(scene, absent("size", SIZES), rng)
    elif kind == "replace_position":
        changed = _replace(scene, [{"row": r, "col": c} for r, c in _free_cells(scene)], rng)
    elif kind == "replace_rel":
        if draws.relation is None:
            return None
        changed, draws = _swap(scene, ("row", "col"), draws, rng, draws.relation[:2])
    elif kind == "add_obj":
        if len(objects) > 2:  # the generator never draws a fourth object
            return None
        row, col = rng.choice(_free_cells(scene))
        new = {"shape": rng.choice(SHAPES), "color": rng.choice(colors), "size": rng.choice(SIZES), "row": row,
               "col": col}
        order = list(draws.order)
        order.insert(rng.randrange(len(order) + 1), len(objects))
        changed = _with_relations(background, [*objects, new])
        draws = dataclasses.replace(draws, order=tuple(order),
                                    objects={**draws.objects, len(objects): draw_object(new, STYLES[style], rng)})
    else:
        raise ValueError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    return (changed, draws) if changed else None


def hard_negative(scene: dict, style: str, kind: str, seed: str) -> tuple[str, str] | None:
    """(positive, negative) captions of one kind for one scene, or None where the scene does not allow it;
    ``seed`` fixes every draw."""
    rng = random.Random(seed)
    frames = STYLES[style].frames
    if kind == "replace_rel":
        frames = [f for f in frames if "{rel}" in f]
    elif kind.startswith("swap_"):  # a relation clause names objects by colour and shape, and would change with them
        frames = [f for f in frames if "{rel}" not in f]
    draws = draw(scene, style, rng, rng.choice(frames))
    made = negative(scene, kind, style, draws, rng)
    return made and (render(scene, style, draws), render(made[0], style, made[1]))


def any_hard_negative(scene: dict | None, style: str, seed: str) -> tuple[str, str]:
    """A (caption, negative) pair of ``scene`` from the same draws, of the first kind (in an order drawn from
    ``seed``) the scene allows: what a training pair contrasts under ``loss.hard_negatives``."""
    if scene is None:
        raise DataError("loss.hard_negatives needs scene graphs (the synthetic datasets' field 'scene')")
    kinds = list(KINDS)
    random.Random(seed).shuffle(kinds)
    return next(pair for kind in kinds if (pair := hard_negative(scene, style, kind, f"{seed}/{kind}")))


def write_binding_set(index_dir: str | Path, out: str | Path, split: str = "test", images: int | None = 1000,
                      style: str | None = None, seed: int = 0) -> dict:
    """Hard negatives of every kind for the first ``images`` images of a prepared synthetic split (all: None), in
    ``style``'s phrasing (default: the dataset's own), written in SugarCrepe's layout under ``out``; returns the
    number of pairs per kind."""
    index_dir, out = Path(index_dir), Path(out)
    dataset = load_manifest(index_dir)["dataset"]
    asked_style, style = style, style or DOMAINS.get(dataset)
    if style not in STYLES:
        raise DataError(f"{index_dir}: dataset {dataset!r} has no phrasing of its own: pass a style "
                        f"({', '.join(STYLES)})")
    records = read_split(index_dir, split)[:images]
    tasks: dict[str, dict] = {}
    counts = dict.fromkeys(KINDS, 0)
    (out / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
    for name in (SOURCE_FILE, *(f"{task}.json" for task in set(KIND_TASK.values()))):  # an earlier set's files
        (out / name).unlink(missing_ok=True)
    for record in records:
        scene = record.extra.get("scene")
        if scene is None:
            raise DataError(f"{index_dir}: image {record.image_id} has no scene graph (field 'scene'): hard "
                            "negatives are made for the synthetic datasets")
        name = f"{record.image_id}{record.path.suffix}"
        link = out / IMAGE_FOLDER / name
        link.unlink(missing_ok=True)  # a link left by an earlier set may point elsewhere
        os.symlink(record.path.resolve(), link)
        for kind in KINDS:
            pair = hard_negative(scene, style, kind, f"{seed}/{dataset}/{record.image_id}/{kind}")
            if pair:
                tasks.setdefault(KIND_TASK[kind], {})[f"{record.image_id}/{kind}"] = {
                    "filename": name, "caption": pair[0], "negative_caption": pair[1], "kind": kind,
                    "image_id": record.image_id}
                counts[kind] += 1
    for task, entries in tasks.items():
        write_text_atomic(out / f"{task}.json", json.dumps(entries, indent=1) + "\n")
    source = {**_source(index_dir, split, images, asked_style, seed), "dataset": dataset, "items": counts}
    write_text_atomic(out / SOURCE_FILE, json.dumps(source, indent=1) + "\n")
    return counts


def _source(index_dir: Path, split: str, images: int | None, style: str | None, seed: int) -> dict:
    """What a set is made from: the split (its index file's digest: a regenerated dataset makes a new set) and the
    parameters."""
    digest = hashlib.sha256((index_dir / f"{split}.jsonl").read_bytes()).hexdigest()
    return {"index_dir": str(index_dir.resolve()), "split": split, "index_sha256": digest, "images": images,
            "style": style, "seed": seed}


def binding_set_current(out: str | Path, index_dir: str | Path, split: str = "test", images: int | None = 1000,
                        style: str | None = None, seed: int = 0) -> bool:
    """Whether ``out`` holds the set ``write_binding_set`` would make now from these arguments."""
    path = Path(out) / SOURCE_FILE
    if not path.is_file() or not (Path(index_dir) / f"{split}.jsonl").is_file():
        return False
    made = json.loads(path.read_text())
    return {k: made.get(k) for k in ("index_dir", "split", "index_sha256", "images", "style", "seed")} == \
        _source(Path(index_dir), split, images, style, seed)
