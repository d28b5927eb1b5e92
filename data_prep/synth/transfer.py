"""The zero-shot test scenes drawn and phrased the other way: how much of the transfer gap is rendering, how
much phrasing, and which rendering trait costs most.

For the test split of a prepared synthetic domain (synth-flickr's 1K), one prepared dataset per drawing,
each captioned in the *training* domain's phrasing (coco)::

    out/flickr/          the test set's own pixels (same seeds: identical images)
    out/coco/            the same scenes in the training domain's style
    out/coco+<trait>/    the training style plus one of the test style's traits (outline, shadow, …)
    out/coco+mat/        the training style in a mat and frame: a held-out look (``render.HELD_OUT_TRAITS``)

Images keep the test set's order and caption counts, so every image set pairs with both caption sets:
the test set's own captions (flickr phrasing) and these (coco phrasing). Rendering × phrasing on the same
1K scenes is the 2×2 the report shows; ``coco+<trait>`` against ``coco`` is what one trait alone costs.
"""

from __future__ import annotations

import json
import random
from functools import cache
from pathlib import Path

from mmd2v2_core.errors import DataError

from .captions import captions_for
from .generate import DOMAINS, GENERATOR_VERSION, karpathy_entry, render_seed, write_dataset
from .render import HELD_OUT_TRAITS, STYLE_TRAITS, TRAITS

TRAINING_STYLE = "coco"


HELD_OUT_DRAWINGS = tuple(f"{TRAINING_STYLE}+{t}" for t in HELD_OUT_TRAITS)  # looks no training view imitates


def drawings(test_style: str = "flickr") -> dict[str, tuple[str, ...]]:
    """Name → rendering traits of every drawing of the test scenes: the test style, the training style, the
    training style with each test-style trait, and the training style with each held-out trait."""
    return {test_style: STYLE_TRAITS[test_style], TRAINING_STYLE: STYLE_TRAITS[TRAINING_STYLE],
            **{f"{TRAINING_STYLE}+{t}": (t,) for t in TRAITS if t in STYLE_TRAITS[test_style]},
            **{f"{TRAINING_STYLE}+{t}": (t,) for t in HELD_OUT_TRAITS}}


def generate_transfer_sets(source: str | Path, out: str | Path, workers: int | None = None) -> dict[str, Path]:
    """Every drawing of ``source``'s test scenes, captioned in the training phrasing, under ``out``."""
    source, out = Path(source), Path(out)
    params_file = source / "synth.json"
    if not params_file.is_file():
        raise DataError(f"{source}: not a generated synthetic dataset (no synth.json)")
    params = json.loads(params_file.read_text())
    domain = params["domain"]
    entries = [e for e in json.loads((source / f"dataset_{domain}.json").read_text())["images"]
               if e["split"] == "test"]

    @cache
    def phrased() -> list[dict]:  # one caption set for every drawing (each image's RNG is seeded by its id alone),
        out = []                  # made only when a drawing is missing
        for e in entries:
            raws = captions_for(e["scene"], TRAINING_STYLE, len(e["sentences"]),
                                random.Random(f"{params['seed']}/transfer/{e['imgid']}"))
            out.append(karpathy_entry(e["imgid"], e["sentids"][0], e["filename"], "test", e["scene"], raws))
        return out

    made = {}
    for name, traits in drawings(DOMAINS[domain]).items():
        spec = {"generator_version": GENERATOR_VERSION, "transfer_of": params, "drawing": name,
                "traits": list(traits), "phrasing": TRAINING_STYLE}
        made[name] = write_dataset(out / name, f"{domain}-{name}", spec,
                                   lambda traits=traits: [(e, traits, render_seed(params["seed"], domain, e))
                                                          for e in phrased()],
                                   params["image_size"], workers, overwrite=True)
    return made
