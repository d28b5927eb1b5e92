"""What one training pair costs the dataloader at real size, and how many workers feed a GPU.

    .venv/bin/python bench/bench_input.py            # writes its section of reports/benchmarks.md
    .venv/bin/python bench/bench_input.py --no-write

On COCO-sized JPEGs (the real-format fixture's photos at 640 px, ``tests/real_fixture.py``, indexed by
``mmd2v2 data karpathy``), each real recipe's own input path (``plan.input_rate``: decode, RandomResizedCrop at its crop
scale, flip, the student's 224-px view and the online teacher's, tokenisation) in one process on one thread, as a
dataloader worker runs it: pairs/s per worker. Beside it, decoding alone, and the standard remedy when decoding
dominates — images stored pre-resized (shorter side 256, what ``mmd2v2 data karpathy --resize 256`` writes) —
measured the same way. Workers per GPU: the device rate of the GPU benchmark when it has run, else the thesis'
measured rate (``plan.device_rate``), over pairs/s per worker. The packaged MiniLM tokenizer (BERT's
WordPiece vocabulary) stands in for both recipes' tokenizers, which are not downloadable here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_section

from data_prep.karpathy import index_karpathy
from mmd2v2_core.config import load_config
from mmd2v2_core.data.images import open_rgb
from mmd2v2_core.data.index import read_split
from mmd2v2_core.plan import device_rate, input_rate, workers_needed

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"S-SMKE": "real_smke", "MM-D2V2 5+1": "real_mmd2v2"}


def prepare(folder: Path, resize: int | None) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from real_fixture import _photos, _write_coco

    json_path, images = _write_coco(folder / "coco", _photos(side=640, copies=2))
    index_karpathy(json_path, images, folder / "prepared", resize=resize)
    return folder / "prepared"


def decode_rate(prepared: Path) -> float:
    records = read_split(prepared, "train")
    start = time.perf_counter()
    for record in records:
        open_rgb(record.path)
    return len(records) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=256, help="pairs timed per measurement")
    parser.add_argument("--no-write", action="store_true", help="print only; leave reports/benchmarks.md alone")
    args = parser.parse_args()
    rate_per_device, source = device_rate()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, resize in (("COCO-sized JPEG (640 px)", None), ("pre-resized (shorter side 256)", 256)):
            prepared = prepare(Path(tmp) / str(resize), resize)
            decode = decode_rate(prepared)
            for recipe, config in RECIPES.items():
                cfg = load_config(config, [f"data.root={prepared}", "data.tokenizer=packaged-minilm", "optim.batch_size=16",
                                           "data.sources=[]"])  # COCO-sized photos are what is measured
                rate = input_rate(cfg, args.pairs)
                workers = workers_needed(rate_per_device, rate)
                print(f"{label} · {recipe}: {rate:.0f} pairs/s per worker (decode alone {decode:.0f} images/s); "
                      f"{workers} workers per GPU at {rate_per_device:.0f} pairs/s", flush=True)
                rows.append(f"| {label} | {recipe} | {decode:.0f} | {rate:.0f} | {workers} |")
    if not args.no_write:
        write_section("input", "\n".join([
            "## Input pipeline at real size, per dataloader worker (`bench/bench_input.py`)", "",
            f"{machine()}, one thread per worker. Each recipe's own path: decode, RandomResizedCrop at its crop scale, "
            f"flip, the student's 224-px view and the online teacher's, tokenisation. Workers per GPU to feed "
            f"{rate_per_device:.0f} pairs/s ({source}).", "",
            "| images | recipe | decode alone (images/s) | pairs/s per worker | workers per GPU |",
            "|---|---|---:|---:|---:|", *rows]))


if __name__ == "__main__":
    main()
