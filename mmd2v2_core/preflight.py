"""Before a real study trains anything: every prepared dataset, weight file and tokenizer its runs need, checked at
once, so that a 10-hour plan does not stop at its fourth run for a file that was never downloaded; and the disk its
checkpoints and caches will fill, against the free space of its folder (every profile).

Each missing item is one line naming it, where it was looked for, and how to get it; an item several runs need is
listed once, with the runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .config import TrainConfig
from .data.index import load_manifest
from .errors import DataError
from .eval.binding import COCO_VAL2017, SUGARCREPE_JSONS, missing_sugarcrepe, read_binding_set
from .memory import target_dim
from .runs import REAL_BASELINES
from .student.presets import preset_from_config
from .train.checkpoint import checkpoint_bytes
from .teachers.pretrained import cached_hub_file
from .teachers.registry import get_spec, weights_dir, weights_location

# What `mmd2v2 data karpathy --images` wants for each dataset (README: "Reproduce the thesis on GPUs").
IMAGE_ROOTS = {"coco": "the COCO 2014 folder holding train2014/ and val2014/",
               "flickr30k": "the folder of the 31,783 Flickr30K images"}


# How to prepare each extra training source the real configs name (data.sources).
SOURCES = {
    "vg": "mmd2v2 data vg --regions region_descriptions.json --images <folder of VG_100K/ and VG_100K_2/>",
    "cc3m": "mmd2v2 data webdataset --shards <CC3M img2dataset webdataset shards>",
    "cc3m_500k": "mmd2v2 data webdataset --shards <CC3M img2dataset webdataset shards> --limit 500000",
    "cc12m": "mmd2v2 data webdataset --shards <CC12M img2dataset webdataset shards>",
}


def _source_line(study, source: str) -> str | None:
    folder = study.data(source) if not Path(source).is_absolute() else Path(source)
    if (folder / "manifest.json").is_file():
        return None
    how = SOURCES.get(source, "mmd2v2 data vg|webdataset|karpathy …")
    return (f"data {source}: no prepared index in {folder}; make it with `{how} --out {folder}`, or train without "
            f"it: -p data.sources=[] (the report labels those rows COCO only)")


def _data_names(study) -> list[str]:
    return list(dict.fromkeys([study.train_data.name, *study.test_sets]))


def missing_data(study) -> list[str]:
    lines = []
    for name in _data_names(study):
        folder = study.data(name)
        if not (folder / "manifest.json").is_file():
            lines.append(f"data {name}: no prepared index in {folder}; make it with `mmd2v2 data karpathy --json "
                         f"dataset_{name}.json --images <{IMAGE_ROOTS.get(name, 'its image folder')}> --out {folder}`")
    if study.imagenet_dir and not study.imagenet_dir.is_dir():
        lines.append(f"data imagenet: {study.imagenet_dir} is not a folder (ImageNet-1k val laid out as <wnid>/*.JPEG)")
    if study.sugarcrepe_dir:
        lines += filter(None, [_sugarcrepe_line(study.sugarcrepe_dir)])
    return lines


def _sugarcrepe_line(folder: Path) -> str | None:
    """What SugarCrepe's folder lacks (the files to download), or the first malformed entry or missing image."""
    missing = missing_sugarcrepe(folder)
    if missing:
        return (f"data sugarcrepe: {folder} lacks {', '.join(missing)}; put SugarCrepe's task JSONs ({SUGARCREPE_JSONS}) "
                f"there and COCO val2017's images in its val2017/ ({COCO_VAL2017})")
    try:
        read_binding_set(folder)
    except DataError as err:
        return f"data sugarcrepe: {err}"
    return None


def check_data(study) -> dict[str, Path]:
    """The prepared datasets by name, or a DataError with one line per missing one."""
    missing = missing_data(study)
    if missing:
        raise DataError("the study's data is not prepared:\n" + "\n".join(missing))
    return {name: study.data(name) for name in _data_names(study)}


def _weights_line(name: str, explicit: str | None, folder: str | None) -> str | None:
    spec = get_spec(name)
    if weights_location(spec, explicit, folder) is not None:
        return None
    if explicit:
        where = f"{explicit} does not exist"
    elif spec.default_file:
        where = f"{weights_dir(folder) / spec.default_file} not found"
    else:
        where = f"not in the Hugging Face cache (`hf download {spec.hub_id}`)"
    return f"weights {name}: {where}; from {spec.weights}"


def _tokenizer_line(name: str) -> str | None:
    """A tokenizer is a folder (a name with a path in it), a packaged one, or a hub name in the Hugging Face cache."""
    if name.startswith("packaged-") or Path(name).expanduser().is_dir():
        return None
    if "/" in name:
        return (f"tokenizer: folder {name} not found (the Data2Vec2 tokenizer is converted from GPT-2's encoder.json "
                "and vocab.bpe and the release's dict.txt: mmd2v2_core.teachers.data2vec2_text."
                "convert_data2vec2_tokenizer)")
    for repo in (name, f"google-bert/{name}"):
        if cached_hub_file(repo, ("tokenizer_config.json", "vocab.txt", "tokenizer.json")) is not None:
            return None
    return f"tokenizer {name}: not in the Hugging Face cache (`hf download {name}`)"


def missing_weights(cfg: TrainConfig) -> list[str]:
    """The teacher's weights, the weights the student is initialised from, and the tokenizer."""
    lines = []
    t, s = cfg.teacher, cfg.student
    if t.name != "none" and not t.tiny and not t.cache:
        lines.append(_weights_line(t.name, t.weights, t.weights_dir))
    if s.init:
        preset = preset_from_config(s)
        for name, explicit in ((preset.image_init, s.image_weights), (preset.text_init, s.text_weights)):
            if name:
                lines.append(_weights_line(name, explicit, t.weights_dir))
    lines.append(_tokenizer_line(cfg.data.tokenizer))
    return [line for line in lines if line]


def missing_inputs(study) -> list[str]:
    """Every missing dataset and weight file of every run of the study (seed 0's config: seeds share inputs)."""
    needs: dict[str, list[str]] = {}
    for run in study.runs:
        # a missing dataset or source is reported here, not as a config error
        cfg = study.config(run, study.profile.seeds[0], inputs=False)
        sources = [_source_line(study, source) for source in cfg.data.sources]
        for line in dict.fromkeys([*filter(None, sources), *missing_weights(cfg)]):  # the teacher may also be a tower
            needs.setdefault(line, []).append(run)
    return missing_data(study) + [f"{line} (runs: {', '.join(runs)})" for line, runs in needs.items()]


def _frozen_cache_bytes(study) -> int:
    """The real profile's frozen-feature caches not made yet (fp16 rows: the images or captions of the training
    data's train and val splits and of the test sets)."""
    if study.profile.synthetic:
        return 0  # generated data, tens of megabytes of caches
    splits = [(study.train_data, split) for split in ("train", "val")] + [(study.data(t), "test") for t in study.test_sets]
    total = 0
    for image, text, _ in REAL_BASELINES.values():
        for (model, kind), rows in ((image, "images"), (text, "captions")):
            if not (study.run_dir / "cache" / "frozen" / f"{model}-{kind}").is_dir():
                n = sum(load_manifest(folder)["splits"].get(split, {}).get(rows, 0) for folder, split in splits)
                total += n * get_spec(model).feature_dim * 2
    return total // 2  # each (model, kind) appears in two rows


def disk_problem(study) -> str | None:
    """Why the study's unfinished runs will not fit its folder's disk, with the numbers, or None. Each run keeps its
    newest ``run.keep_checkpoints`` checkpoints and its best one; one more exists while a save is written."""
    data_made = (study.train_data / "manifest.json").is_file()  # synthetic profiles generate theirs first
    sizes = []
    for run in study.runs:
        for seed in study.profile.seeds:
            if data_made and study.trained(run, seed):
                continue
            # the layout alone sizes a checkpoint: the data and caches may not be made yet
            cfg = study.config(run, seed, inputs=False)
            sizes.append((checkpoint_bytes(cfg, target_dim(cfg)), cfg.run.keep_checkpoints))
    if not sizes:
        return None
    caches = _frozen_cache_bytes(study)
    need = sum(size * (keep + 1) for size, keep in sizes) + max(size for size, _ in sizes) + caches
    where = next(p for p in (study.run_dir, *study.run_dir.parents) if p.exists())
    free = shutil.disk_usage(where).free
    if need <= free:
        return None
    keeps = sorted({keep for _, keep in sizes})
    return (f"{study.run_dir}: the study needs ≈ {need / 1e9:,.1f} GB but its disk has {free / 1e9:,.1f} GB free: "
            f"{len(sizes)} unfinished run(s), checkpoints of {min(s for s, _ in sizes) / 1e9:,.2f}–"
            f"{max(s for s, _ in sizes) / 1e9:,.2f} GB each (weights + AdamW state), {keeps[-1]} kept per run "
            f"(run.keep_checkpoints) + its best + one being written" + (f", caches {caches / 1e9:,.1f} GB" if caches
                                                                        else "") +
            f". Free space, keep fewer checkpoints (-p run.keep_checkpoints=1) or pass another --run-dir")
