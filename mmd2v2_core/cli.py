"""The ``mmd2v2`` command: ``data synth``, ``data karpathy``, ``report tables``, ``study``.

Errors the user can fix (``KitError``) are printed as one line naming the file, field or key, with
exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import KitError


def _data_synth(args: argparse.Namespace) -> None:
    from data_prep.synth import generate

    for domain, path in generate(args.out, args.profile, args.seed, args.workers, args.overwrite).items():
        print(f"{domain}: {path}")


def _data_karpathy(args: argparse.Namespace) -> None:
    from data_prep.karpathy import index_karpathy

    manifest = index_karpathy(args.json, args.images, args.out, on_bad_image=args.on_bad_image,
                              verify=args.verify, merge_restval=not args.keep_restval, workers=args.workers)
    for split, n in manifest["splits"].items():
        print(f"{manifest['dataset']} {split}: {n['images']:,} images, {n['captions']:,} captions")
    if manifest["dropped"]:
        print(f"dropped {len(manifest['dropped'])} bad images, listed in {Path(args.out) / 'dropped.json'}")


def _report_tables(args: argparse.Namespace) -> None:
    from .report.tables import load_references, load_results, seed_tables, write_tables

    tables = seed_tables(load_references(args.references), load_results(args.results))
    for path in write_tables(tables, args.out):
        print(path)


def _study(args: argparse.Namespace) -> None:
    from .study import run_study

    report = run_study(args.profile, args.data_dir, args.reports, args.seed)
    print(f"report: {report}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmd2v2", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="make or prepare datasets").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="generate the synthetic Karpathy-format datasets")
    synth.add_argument("--out", required=True, type=Path)
    synth.add_argument("--profile", choices=("smoke", "embedded"), default="embedded")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, default=None, help="render processes (default: all cores)")
    synth.add_argument("--overwrite", action="store_true", help="replace a dataset made with other parameters")
    synth.set_defaults(func=_data_synth)

    karpathy = data.add_parser("karpathy", help="validate and index a Karpathy JSON against its image folder")
    karpathy.add_argument("--json", required=True, type=Path, help="dataset_coco.json or dataset_flickr30k.json")
    karpathy.add_argument("--images", required=True, type=Path, help="image root (COCO: holds train2014/, val2014/)")
    karpathy.add_argument("--out", required=True, type=Path, help="index folder to write")
    karpathy.add_argument("--on-bad-image", choices=("error", "skip"), default="error")
    karpathy.add_argument("--verify", choices=("decode", "header", "exists"), default="decode",
                          help="how hard to check each image (decode catches truncated files)")
    karpathy.add_argument("--keep-restval", action="store_true", help="keep COCO 'restval' as its own split")
    karpathy.add_argument("--workers", type=int, default=None)
    karpathy.set_defaults(func=_data_karpathy)

    report = sub.add_parser("report", help="regenerate report pieces").add_subparsers(dest="report_command",
                                                                                     required=True)
    tables = report.add_parser("tables", help="the seed's Tables 1 and 2 (+ synthetic companions) as md, tex, csv")
    tables.add_argument("--results", nargs="*", type=Path, default=[], help="results JSON files of measured rows")
    tables.add_argument("--references", type=Path, default=None, help="quoted numbers (default: the packaged file)")
    tables.add_argument("--out", type=Path, default=Path("reports/tables"))
    tables.set_defaults(func=_report_tables)

    study = sub.add_parser("study", help="run the study and regenerate reports/")
    study.add_argument("--profile", default="embedded", help="smoke | embedded | real")
    study.add_argument("--data-dir", type=Path, default=Path("data"))
    study.add_argument("--reports", type=Path, default=Path("reports"))
    study.add_argument("--seed", type=int, default=0)
    study.set_defaults(func=_study)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
