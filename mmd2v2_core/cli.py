"""The ``mmd2v2`` command: ``data synth|karpathy|vg|webdataset``, ``teachers list|inspect``, ``targets``,
``eval``, ``export``, ``report tables``, ``study``.

Errors the user can fix (``KitError``, a bad option, a full or read-only disk) are printed as one line
naming the file, field, key or option, with exit status 2; Ctrl-C ends with one line and status 130
(training first saves a checkpoint). Anything else is a bug and keeps its traceback.

Each subcommand imports what it needs when it runs, so ``mmd2v2 --help`` and the light commands do not load torch.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import shutil
import sys
from pathlib import Path

from .errors import KitError
from .lock import folder_lock
from .paths import check_output
from .profiles import PROFILES

# What the machine, not the kit, refuses: the message names the file, no traceback needed.
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}


def _data_synth(args: argparse.Namespace) -> None:
    from data_prep.synth import generate

    check_output(args.out, "--out")

    for domain, path in generate(args.out, args.profile, args.seed, args.workers, args.overwrite).items():
        print(f"{domain}: {path}")


def _data_karpathy(args: argparse.Namespace) -> None:
    from data_prep.coco_instances import dominant_supercategories
    from data_prep.karpathy import index_karpathy

    check_output(args.out, "--out")
    manifest = index_karpathy(args.json, args.images, args.out, on_bad_image=args.on_bad_image,
                              verify=args.verify, merge_restval=not args.keep_restval, workers=args.workers,
                              allow_outside_root=args.allow_images_outside_root,
                              supercategories=dominant_supercategories(args.instances) if args.instances else None,
                              resize=args.resize)
    for split, n in manifest["splits"].items():
        print(f"{manifest['dataset']} {split}: {n['images']:,} images, {n['captions']:,} captions")
    for note in manifest["notes"]:
        print(f"note: {note}")
    if manifest["dropped"]:
        print(f"dropped {len(manifest['dropped'])} bad images, listed in {Path(args.out) / 'dropped.json'}")


def _teachers_list(args: argparse.Namespace) -> None:
    from .teachers.inspect import list_teachers

    rows = list_teachers(args.weights_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'name':<19}{'modality':<9}{'params':>8} {'dim':>5} {'classes':>7}  available  architecture")
    for r in rows:
        print(f"{r['name']:<19}{r['modality']:<9}{r['parameters'] / 1e6:>7.1f}M {r['feature_dim']:>5} {r['classes']:>7}  "
              f"{(r['found_at'] or 'no'):<9}  {r['architecture']}")
        print(f"{'':<19}weights: {r['weights']}" + (f" — file {r['file']}" if r["file"] else ""))


def _teachers_inspect(args: argparse.Namespace) -> None:
    from .teachers.inspect import inspect_teacher
    from .teachers.registry import create_teacher

    report = inspect_teacher(create_teacher(args.name, args.weights, args.tiny, args.weights_dir), args.images)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['name']}{' (tiny, random init)' if report['tiny'] else ''}: {report['architecture']}")
    print(f"  parameters {report['parameters']:,}  feature dim {report['feature_dim']}  "
          f"weights sha256 {report['weights_sha256']}")
    print("  outputs: " + ", ".join(f"{k} {v}" for k, v in report["outputs"].items() if v is not None))
    for path, top in report.get("predictions", {}).items():
        print(f"  {path}:")
        for p in top:
            print(f"    {p['probability']:6.1%}  {p['class']:>4}  {p['name']}")


def _targets(args: argparse.Namespace) -> None:
    from .teachers.cache import build_cache
    from .teachers.inspect import preprocess_of
    from .teachers.registry import create_teacher

    check_output(args.out, "--out")
    teacher = create_teacher(args.teacher, args.weights, args.tiny, args.weights_dir)
    result = build_cache(teacher, args.kind, args.data, args.split, args.out, preprocess_of(teacher, args.image_size),
                         top_k=args.top_k, batch_size=args.batch_size, shard_size=args.shard_size,
                         device=args.device, num_workers=args.workers, overwrite=args.overwrite)
    print(f"{result.folder}: computed shards {result.computed or 'none'}, reused {result.reused or 'none'}")


def _model_summary(args: argparse.Namespace) -> None:
    from .student.presets import summarize

    summary = summarize(args.preset, args.size, **({"attention": args.attention} if args.attention else {}))
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    cfg = summary["config"]
    print(f"{args.preset} ({args.size}): {cfg['depth'] - cfg['n_shared']} modality-specific ({cfg['attention']} "
          f"attention) + {cfg['n_shared']} shared blocks, width {cfg['width']}, {cfg['heads']} heads")
    print(f"  image side from {summary['image_init']}, text side from {summary['text_init']}, "
          f"tokenizer {summary['tokenizer']}")
    layers = summary["layers"]
    front = layers["image_frontend"]
    print(f"  image front end: {' + '.join(front['parts'])}{' (frozen)' if front['frozen'] else ''}")
    print(f"  image layers ← {', '.join(layers['image_layers'])}")
    print(f"  text layers  ← {', '.join(layers['text_layers'])}")
    if layers["shared_attention_from"]:
        print(f"  shared attention initialised from the {layers['shared_attention_from']}")
    print(f"  KD head: {layers['kd_head']}")
    for part, n in summary["parameters"].items():
        print(f"  {part:<16}{n:>14,}")


def _train(args: argparse.Namespace) -> int | None:
    from .config import check_out_dir, load_config, to_yaml, unvalidated_config

    if args.print_config:
        print(to_yaml(load_config(args.config, args.overrides)), end="")
        return
    # the writer's lock first, before torch is imported: a second writer into the folder is refused in a second
    unchecked = unvalidated_config(args.config, args.overrides)
    check_out_dir(unchecked)
    out_dir = Path(unchecked.run.out_dir)
    made = not out_dir.exists()
    with folder_lock(out_dir, "mmd2v2 train", "pass another run.out_dir"):
        try:
            cfg = load_config(args.config, args.overrides)
        except KitError:
            if made:  # a refused config leaves no run folder behind, only its error
                shutil.rmtree(out_dir, ignore_errors=True)
            raise
        return _train_locked(cfg)


def _train_locked(cfg) -> int | None:
    from .train.loop import TrainingInterrupted, train

    try:
        result = train(cfg)
    except TrainingInterrupted as exc:  # Ctrl-C saved the run: say how to finish it
        again = "the same command" + ("" if cfg.run.resume == "latest" else " with run.resume=latest")
        print(f"error: {exc}. To continue, run {again}", file=sys.stderr)
        return 130
    last = result.val_history[-1] if result.val_history else {}
    print(f"{result.out_dir}: step {result.step}{' (stopped by SIGTERM)' if result.stopped_early else ''}, "
          f"val mean recall {last.get('mean', float('nan')):.2f}, best checkpoint {result.best_checkpoint}")
    if result.skipped_images:
        print(f"warning: skipped {len(result.skipped_images)} unreadable image(s) that broke after indexing, "
              f"listed in {result.out_dir / 'skipped_images.jsonl'}", file=sys.stderr)


def _write_result(out: Path | None, result: dict) -> None:
    """An evaluation's results JSON at ``--out``, when one was given."""
    from .data.index import write_text_atomic

    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(result, indent=2) + "\n")
        print(f"  written to {out}")


def _eval_retrieval(args: argparse.Namespace) -> None:
    from .config import to_dict
    from .eval.embed import evaluate_retrieval, student_inputs
    from .train.checkpoint import load_trained_student

    if args.out:
        check_output(args.out, "--out", folder=False)
    student, cfg = load_trained_student(args.checkpoint)
    transform, tokenizer = student_inputs(student, cfg.data.tokenizer, args.frontend_cache, args.device)
    result = evaluate_retrieval(student, args.data, args.split, transform, tokenizer,
                                batch_size=args.batch_size, device=args.device, precision=args.precision)
    result.update(row=args.row or f"{cfg.student.preset} ({cfg.student.size}, teacher {cfg.teacher.name})",
                  checkpoint=str(Path(args.checkpoint).resolve()), config=to_dict(cfg))
    m = result["metrics"]
    print(f"{result['dataset']} {result['split']}: {result['images']:,} images, {result['captions']:,} captions")
    print(f"  image→text  R@1 {m['i2t_r1']:6.2f}  R@5 {m['i2t_r5']:6.2f}  R@10 {m['i2t_r10']:6.2f}")
    print(f"  text→image  R@1 {m['t2i_r1']:6.2f}  R@5 {m['t2i_r5']:6.2f}  R@10 {m['t2i_r10']:6.2f}")
    print(f"  mean {m['mean']:.2f}   median rank i2t {result['ranks']['i2t_median_rank']:.0f}, "
          f"t2i {result['ranks']['t2i_median_rank']:.0f}")
    _write_result(args.out, result)


def _eval_binding(args: argparse.Namespace) -> None:
    from .eval.binding import evaluate_binding, read_binding_set
    from .eval.clip_benchmark import load_student_any
    from .eval.embed import student_inputs

    if args.out:
        check_output(args.out, "--out", folder=False)
    items = read_binding_set(args.sugarcrepe, args.images)
    student, tokenizer_name = load_student_any(args.checkpoint)
    transform, tokenizer = student_inputs(student, tokenizer_name)
    result = evaluate_binding(student, items, transform, tokenizer, args.batch_size, args.device, args.precision)
    result.update(checkpoint=str(Path(args.checkpoint).resolve()), sugarcrepe=str(Path(args.sugarcrepe).resolve()))
    print(f"{args.sugarcrepe}: {result['items']:,} items on {result['images']:,} images; accuracy % "
          "(a tie counts half; chance 50), blind = the captions against the mean image")
    print(f"  {'':<18}{'items':>7}{'model':>8}{'ties':>6}{'blind':>8}")
    for group in ("by_task", "by_kind"):
        if group == "by_kind" and result["model"]["by_kind"].keys() == result["model"]["by_task"].keys():
            continue  # SugarCrepe's own files name no kinds
        for name, s in result["model"][group].items():
            print(f"  {name:<18}{s['items']:>7,}{s['accuracy']:>8.1f}{s['ties']:>6}"
                  f"{result['blind'][group][name]['accuracy']:>8.1f}")
    print(f"  {'all':<18}{result['items']:>7,}{result['model']['all']['accuracy']:>8.1f}"
          f"{result['model']['all']['ties']:>6}{result['blind']['all']['accuracy']:>8.1f}")
    _write_result(args.out, result)


def _data_binding(args: argparse.Namespace) -> None:
    from data_prep.synth.negatives import write_binding_set

    check_output(args.out, "--out")
    counts = write_binding_set(args.data, args.out, args.split, args.images, args.style, args.seed)
    print(f"{args.out}: {sum(counts.values()):,} image / caption / hard negative items in SugarCrepe's layout")
    print("  " + ", ".join(f"{kind} {n:,}" for kind, n in counts.items()))


def _data_vg(args: argparse.Namespace) -> None:
    from data_prep.visual_genome import index_visual_genome

    check_output(args.out, "--out")
    manifest = index_visual_genome(args.regions, args.images, args.out, verify=args.verify,
                                   on_bad_image=args.on_bad_image, workers=args.workers)
    n = manifest["splits"]["train"]
    print(f"visual genome regions: {n['images']:,} images, {n['captions']:,} region phrases (training pairs)")
    if manifest["dropped"]:
        print(f"dropped {len(manifest['dropped'])} missing or unreadable images, listed in {args.out / 'manifest.json'}")


def _data_webdataset(args: argparse.Namespace) -> None:
    from data_prep.webdataset_index import index_webdataset

    check_output(args.out, "--out")
    manifest = index_webdataset(args.shards, args.out, limit=args.limit)
    print(f"{manifest['dataset']}: {manifest['splits']['train']['captions']:,} pairs from {manifest['shards']} shards")
    for note in manifest["notes"]:
        print(f"note: {note}")


def _eval_clip_benchmark(args: argparse.Namespace) -> None:
    from .eval.clip_benchmark import run_clip_benchmark

    check_output(args.out, "--out", folder=False)
    result = run_clip_benchmark(args.checkpoint, args.dataset, args.dataset_root, args.out, args.split,
                                args.batch_size, amp=args.amp, annotation_file=args.annotation_file)
    for name, value in result["metrics"].items():
        print(f"  {name} {100 * value:.2f}" if "recall" in name or "acc" in name else f"  {name} {value}")
    print(f"  written to {args.out}")


def _export(args: argparse.Namespace) -> None:
    from .export import export_student

    check_output(args.out, "--out")
    results = [json.loads(Path(r).read_text()) for r in args.results] if args.results else None
    out, others = export_student(args.checkpoint, args.out, results, overwrite=args.overwrite)
    print(f"exported to {out}: model.safetensors, config.json, tokenizer, README.md (model card)")
    if others:
        print(f"note: {out} also holds {', '.join(others)}, not the export's own: left as they were")


def _report_tables(args: argparse.Namespace) -> None:
    from .report.tables import load_references, load_results, seed_tables, write_tables

    check_output(args.out, "--out")
    tables = seed_tables(load_references(args.references), load_results(args.results))
    for path in write_tables(tables, args.out):
        print(path)


def _study(args: argparse.Namespace) -> None:
    check_output(args.reports, "--reports")
    if args.run_dir:
        check_output(args.run_dir, "--run-dir")
    if args.check:  # reads only: no lock, so a study may be running in the folder
        return _study_check(args)
    # held before the heavy imports: a second study on the folder is refused in a second, having written nothing
    with folder_lock(args.run_dir or Path(f"runs/study-{args.profile}"), "mmd2v2 study", "pass another --run-dir"):
        _study_locked(args)


def _study_check(args: argparse.Namespace) -> None:
    from .runner import check_study
    from .study import Study

    if args.plan or args.only or args.start:
        raise KitError("--check runs every notebook up to its first computation: use it without --plan, --only, --from")
    study = Study(args.profile, (args.run_dir or Path(f"runs/study-{args.profile}")).resolve(), args.params,
                  data_dir=args.data.resolve() if args.data else None, nproc_per_node=args.nproc_per_node or 1,
                  imagenet_dir=args.imagenet.resolve() if args.imagenet else None,
                  sugarcrepe_dir=args.sugarcrepe.resolve() if args.sugarcrepe else None, check=True)
    check_study(study, args.notebooks, args.reports)
    print(f"check: the {args.profile} study's {len(study.runs)} runs × {len(study.profile.seeds)} seeds resolve; "
          "every notebook ran to its first computation")


def _study_locked(args: argparse.Namespace) -> None:
    from .eta import eta_lines
    from .runner import check_inputs, run_study, unfinished_notebooks

    nproc = args.nproc_per_node or max(1, _cuda_count())
    if args.gpu_memory and not args.plan:
        raise KitError("--gpu-memory sizes the batches of a plan: use it with --plan")
    if args.plan:
        from .plan import (data_mix, input_markdown, input_plan, memory_markdown, memory_plan, mix_markdown,
                           plan_markdown, time_plan)
        from .study import Study

        study = Study(args.profile, args.run_dir or f"runs/study-{args.profile}", args.params, data_dir=args.data,
                      nproc_per_node=nproc, imagenet_dir=args.imagenet, sugarcrepe_dir=args.sugarcrepe)
        check_inputs(study)
        for line in eta_lines(study, unfinished_notebooks(study.run_dir)):
            print(line)
        if not (study.train_data / "manifest.json").is_file():  # a synthetic study generates it in notebook 00
            print(f"plan: the runs' plan reads their data, which notebook 00 makes: "
                  f"mmd2v2 study --profile {args.profile} --only 00_data_prep, then --plan again")
            return
        print(mix_markdown(data_mix(study)) + "\n")
        if args.gpu_memory:
            print(memory_markdown(memory_plan(study, args.gpu_memory, nproc)) + "\n")
        print(input_markdown(input_plan(study)) + "\n")
        if args.warmup_steps:
            print(plan_markdown(time_plan(study, args.warmup_steps, nproc), study.device))
        print(f"plan: {study.plan(nproc, args.warmup_steps, args.gpu_memory)}")
        return
    report = run_study(args.profile, args.run_dir, args.reports, args.only, args.start, args.params, args.notebooks,
                       data_dir=args.data, nproc_per_node=nproc, imagenet_dir=args.imagenet,
                       sugarcrepe_dir=args.sugarcrepe)
    print(f"report: {report}")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


class _Parser(argparse.ArgumentParser):
    """A bad option ends like every other user error: one ``error:`` line naming the command and option."""

    def error(self, message: str):
        raise KitError(f"{self.prog}: {message}")


def _at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _warmup_steps(text: str) -> int:
    value = _at_least(0)(text)
    if 0 < value < 3:  # the first logged step (start-up) is left out of the rate
        raise argparse.ArgumentTypeError(f"must be 0 (no time plan) or >= 3, got {value}")
    return value


# The largest memory of one accelerator made (AMD MI355X and NVIDIA B300: 288 GB), with room for the next ones
MAX_DEVICE_GIB = 512


def _device_gib(text: str) -> float:
    """--gpu-memory: the GiB of one device, a finite number in (0, MAX_DEVICE_GIB]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GiB, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_DEVICE_GIB):
        raise argparse.ArgumentTypeError(f"must be in (0, {MAX_DEVICE_GIB}] GiB (no device holds more), got {text}")
    return value


def _device(text: str) -> str:
    from .config import device_problem

    problem = device_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return ("cuda" if _cuda() else "cpu") if text == "auto" else text


def _teacher_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, default=None, help="the teacher's weight file or folder")
    parser.add_argument("--weights-dir", type=Path, default=None, help="folder of weight files (default: $MMD2V2_WEIGHTS_DIR or ./weights)")
    parser.add_argument("--tiny", action="store_true", help="tiny random-init variant of the same architecture")


def build_parser() -> argparse.ArgumentParser:
    from .config import EVAL_PRECISIONS  # light: the config module needs only yaml

    parser = _Parser(prog="mmd2v2", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="make or prepare datasets").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="generate the synthetic Karpathy-format datasets")
    synth.add_argument("--out", required=True, type=Path)
    synth.add_argument("--profile", choices=("smoke", "embedded"), default="embedded")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=_at_least(0), default=None, help="render processes (default: all cores)")
    synth.add_argument("--overwrite", action="store_true", help="replace a dataset made with other parameters")
    synth.set_defaults(func=_data_synth)

    neg = data.add_parser("binding", help="hard negatives from a synthetic split's scene graphs, in SugarCrepe's layout")
    neg.add_argument("--data", required=True, type=Path, help="a prepared synthetic dataset (synth-coco, synth-flickr)")
    neg.add_argument("--out", required=True, type=Path)
    neg.add_argument("--split", default="test")
    neg.add_argument("--images", type=_at_least(1), default=1000, help="the split's first N images")
    neg.add_argument("--style", choices=("coco", "flickr"), default=None,
                     help="the captions' phrasing (default: the dataset's own)")
    neg.add_argument("--seed", type=int, default=0)
    neg.set_defaults(func=_data_binding)

    karpathy = data.add_parser("karpathy", help="validate and index a Karpathy JSON against its image folder")
    karpathy.add_argument("--json", required=True, type=Path, help="dataset_coco.json or dataset_flickr30k.json")
    karpathy.add_argument("--images", required=True, type=Path, help="image root (COCO: holds train2014/, val2014/)")
    karpathy.add_argument("--out", required=True, type=Path, help="index folder to write")
    karpathy.add_argument("--on-bad-image", choices=("error", "skip"), default="error")
    karpathy.add_argument("--verify", choices=("decode", "header", "exists"), default="decode",
                          help="how hard to check each image (decode catches truncated files)")
    karpathy.add_argument("--keep-restval", action="store_true", help="keep COCO 'restval' as its own split")
    karpathy.add_argument("--allow-images-outside-root", action="store_true",
                          help="let file names in the JSON lead outside --images ('../…', absolute paths)")
    karpathy.add_argument("--workers", type=_at_least(0), default=None, help="image-checking threads")
    karpathy.add_argument("--resize", type=_at_least(32), default=None, metavar="SIDE",
                          help="index copies of the images with the shorter side at most SIDE px (e.g. 256), written "
                               "under --out/images: training decodes them ~2.2× faster per worker")
    karpathy.add_argument("--instances", type=Path, action="append", default=[],
                          help="COCO instances_*.json (repeat for train2014 and val2014): stores each image's "
                               "dominant supercategory, which colours the real study's embedding map")
    karpathy.set_defaults(func=_data_karpathy)

    vg = data.add_parser("vg", help="index Visual Genome region descriptions as training pairs (image × phrase)")
    vg.add_argument("--regions", required=True, type=Path, help="region_descriptions.json")
    vg.add_argument("--images", required=True, type=Path, help="folder holding VG_100K/ and VG_100K_2/ (or the JPEGs)")
    vg.add_argument("--out", required=True, type=Path, help="index folder to write (a name in data.sources)")
    vg.add_argument("--verify", choices=("decode", "header", "exists"), default="header")
    vg.add_argument("--on-bad-image", choices=("error", "skip"), default="skip")
    vg.add_argument("--workers", type=_at_least(0), default=None, help="image-checking threads")
    vg.set_defaults(func=_data_vg)

    web = data.add_parser("webdataset", help="index img2dataset webdataset shards (CC3M, CC12M) as training pairs")
    web.add_argument("--shards", required=True, type=Path, help="folder of the *.tar shards")
    web.add_argument("--out", required=True, type=Path, help="index folder to write (a name in data.sources)")
    web.add_argument("--limit", type=_at_least(1), default=None,
                     help="the first N pairs only (the thesis' MM-D2V2 used about 500,000 of CC3M)")
    web.set_defaults(func=_data_webdataset)

    teachers = sub.add_parser("teachers", help="the teacher registry").add_subparsers(dest="teachers_command",
                                                                                       required=True)
    tlist = teachers.add_parser("list", help="every teacher, its size, and whether its weights are here")
    tlist.add_argument("--json", action="store_true")
    tlist.add_argument("--weights-dir", type=Path, default=None, help="folder of weight files (default: $MMD2V2_WEIGHTS_DIR or ./weights)")
    tlist.set_defaults(func=_teachers_list)
    tinspect = teachers.add_parser("inspect", help="load a teacher and show what it produces")
    tinspect.add_argument("name")
    tinspect.add_argument("--images", nargs="*", default=[], help="photos to classify (teachers with an ImageNet head)")
    tinspect.add_argument("--json", action="store_true")
    _teacher_source_args(tinspect)
    tinspect.set_defaults(func=_teachers_inspect)

    targets = sub.add_parser("targets", help="compute a teacher's targets for a split once, into a cache")
    targets.add_argument("--teacher", required=True)
    targets.add_argument("--data", required=True, type=Path, help="prepared dataset folder")
    targets.add_argument("--split", default="train")
    targets.add_argument("--out", required=True, type=Path, help="cache folder")
    targets.add_argument("--kind", default="cls", help="cls | cls_prenorm | mean | layer_avg | pooled | logits")
    targets.add_argument("--top-k", type=_at_least(1), default=8, help="layers averaged by layer_avg")
    targets.add_argument("--image-size", type=_at_least(1), default=None, help="default: the teacher's")
    targets.add_argument("--batch-size", type=_at_least(1), default=64)
    targets.add_argument("--shard-size", type=_at_least(1), default=4096)
    targets.add_argument("--device", type=_device, default="auto", help="auto | cpu | cuda | cuda:<n> | mps")
    targets.add_argument("--workers", type=_at_least(0), default=0, help="DataLoader workers")
    targets.add_argument("--overwrite", action="store_true", help="replace a cache made with another fingerprint")
    _teacher_source_args(targets)
    targets.set_defaults(func=_targets)

    train = sub.add_parser("train", help="distillation pretraining (torchrun-ready)")
    train.add_argument("--config", default="smoke", help="preset name (smoke, embedded, real_mmd2v2, real_smke) or a YAML file")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. data.root=DIR optim.steps=100")
    train.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    train.set_defaults(func=_train)

    evaluate = sub.add_parser("eval", help="evaluate a trained student").add_subparsers(dest="eval_command",
                                                                                        required=True)
    retrieval = evaluate.add_parser("retrieval", help="zero-shot image↔text retrieval, R@1/5/10 both ways")
    retrieval.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint folder of `mmd2v2 train`")
    retrieval.add_argument("--data", required=True, type=Path, help="prepared dataset folder")
    retrieval.add_argument("--split", default="test")
    retrieval.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    retrieval.add_argument("--row", default=None, help="row label in the report tables")
    retrieval.add_argument("--batch-size", type=_at_least(1), default=256)
    retrieval.add_argument("--device", type=_device, default="auto", help="auto | cpu | cuda | cuda:<n> | mps")
    retrieval.add_argument("--precision", choices=EVAL_PRECISIONS, default="fp32",
                           help="encode under bfloat16 autocast (faster on CPUs with AMX and on GPUs)")
    retrieval.add_argument("--frontend-cache", type=Path, default=None,
                           help="read (or first compute) the student's frozen front-end outputs here")
    retrieval.set_defaults(func=_eval_retrieval)
    binding = evaluate.add_parser("binding", help="SugarCrepe's image–caption selection: does the student bind "
                                                  "attributes, or read a bag of words?")
    binding.add_argument("--checkpoint", required=True, type=Path,
                         help="an exported student (`mmd2v2 export`) or a checkpoint folder of `mmd2v2 train`")
    binding.add_argument("--sugarcrepe", required=True, type=Path,
                         help="a folder of SugarCrepe task JSONs (<task>.json), SugarCrepe's own or `mmd2v2 data binding`'s")
    binding.add_argument("--images", type=Path, default=None, help="the images (default: <sugarcrepe>/val2017)")
    binding.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    binding.add_argument("--batch-size", type=_at_least(1), default=256)
    binding.add_argument("--device", type=_device, default="auto", help="auto | cpu | cuda | cuda:<n> | mps")
    binding.add_argument("--precision", choices=EVAL_PRECISIONS, default="fp32",
                         help="encode under bfloat16 autocast (faster on CPUs with AMX and on GPUs)")
    binding.set_defaults(func=_eval_binding)
    bench = evaluate.add_parser("clip-benchmark", help="CLIP_benchmark's own evaluation of a student (pip install "
                                                        "'mmd2v2[bench]')")
    bench.add_argument("--checkpoint", required=True, type=Path,
                       help="an exported student (`mmd2v2 export`) or a checkpoint folder of `mmd2v2 train`")
    bench.add_argument("--dataset", required=True, help="a CLIP_benchmark dataset name: flickr30k, mscoco_captions, "
                                                        "xtd10, imagenet1k, cifar10, …")
    bench.add_argument("--dataset-root", required=True, type=Path, help="its files, in CLIP_benchmark's layout")
    bench.add_argument("--split", default="test")
    bench.add_argument("--annotation-file", default=None, help="retrieval datasets: the captions file")
    bench.add_argument("--out", type=Path, default=Path("clip_benchmark.json"), help="CLIP_benchmark's result JSON")
    bench.add_argument("--batch-size", type=_at_least(1), default=64)
    bench.add_argument("--amp", action="store_true", help="encode under autocast (bf16 on a CPU)")
    bench.set_defaults(func=_eval_clip_benchmark)

    model = sub.add_parser("model", help="student presets").add_subparsers(dest="model_command", required=True)
    summary = model.add_parser("summary", help="parameter counts of a student preset (total, trainable, per part)")
    summary.add_argument("preset", help="mmd2v2_6 | mmd2v2_7 | mmd2v2_7_2 | smke")
    summary.add_argument("--size", default="real", help="real | embedded | minilm | smoke")
    summary.add_argument("--attention", default=None, help="separate | shared (default: the preset's)")
    summary.add_argument("--json", action="store_true")
    summary.set_defaults(func=_model_summary)

    report = sub.add_parser("report", help="regenerate report pieces").add_subparsers(dest="report_command",
                                                                                     required=True)
    tables = report.add_parser("tables", help="the seed's Tables 1 and 2 (+ synthetic companions) as md, tex, csv")
    tables.add_argument("--results", nargs="*", type=Path, default=[], help="results JSON files of measured rows")
    tables.add_argument("--references", type=Path, default=None, help="quoted numbers (default: the packaged file)")
    tables.add_argument("--out", type=Path, default=Path("reports/tables"))
    tables.set_defaults(func=_report_tables)

    export = sub.add_parser("export", help="a trained student as a self-contained folder (safetensors, config, "
                                           "tokenizer, model card)")
    export.add_argument("--checkpoint", required=True, type=Path, help="a training checkpoint folder (step_…)")
    export.add_argument("--out", required=True, type=Path, help="folder to write (Hugging Face Hub layout)")
    export.add_argument("--results", type=Path, nargs="*", default=None,
                        help="result JSONs for the model card (default: the study's results of the run, if any)")
    export.add_argument("--overwrite", action="store_true",
                        help="--out may hold an earlier export: its own files are replaced, any other file is kept "
                             "(and named)")
    export.set_defaults(func=_export)

    study = sub.add_parser("study", help="execute the study notebooks with papermill and regenerate the report")
    study.add_argument("--profile", default="embedded", choices=list(PROFILES),
                       help="the study size (mmd2v2_core/profiles.py)")
    study.add_argument("--run-dir", type=Path, default=None, help="where the study's data, caches and runs go "
                                                                  "(default: runs/study-<profile>)")
    study.add_argument("--reports", type=Path, default=Path("reports"), help="report, tables, figures, executed notebooks")
    study.add_argument("--only", default=None, help="run just this notebook, e.g. 03_retrieval_eval")
    study.add_argument("--from", dest="start", default=None, help="rerun from this notebook on")
    study.add_argument("-p", dest="params", action="append", default=[], metavar="KEY=VALUE",
                       help="training override for every run, e.g. -p optim.steps=300 (repeatable)")
    study.add_argument("--notebooks", type=Path, default=Path("notebooks"))
    study.add_argument("--data", type=Path, default=None,
                       help="real profile: folder of the prepared indexes coco/ and flickr30k/ (`mmd2v2 data karpathy`)")
    study.add_argument("--imagenet", type=Path, default=None,
                       help="real profile: ImageNet-1k val folder (<wnid>/*.JPEG) for zero-shot classification")
    study.add_argument("--sugarcrepe", type=Path, default=None,
                       help="real profile: SugarCrepe's 7 task JSONs with COCO val2017 in val2017/, for binding")
    study.add_argument("--nproc-per-node", type=_at_least(1), default=None,
                       help="processes per training run; more than 1 launches torchrun (default: the GPU count)")
    study.add_argument("--check", action="store_true",
                       help="run every notebook up to its first computation (configs, labels, recipes, preflight, disk "
                            "budget) in seconds; trains, scores and writes nothing")
    study.add_argument("--plan", action="store_true",
                       help="write plan/plan.sh (one torchrun line per unfinished run) and the time plan, train nothing")
    study.add_argument("--warmup-steps", type=_warmup_steps, default=5,
                       help="--plan: steps of each run's measured warm-up (0: no time plan)")
    study.add_argument("--gpu-memory", type=_device_gib, default=None, metavar="GIB",
                       help="--plan: memory of one device; the plan gives each run the per-device batch and gradient "
                            "accumulation that keep its global batch (step memory measured on this machine)")
    study.set_defaults(func=_study)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args) or 0
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in DISK_ERRORS:
            raise
        print(f"error: {f'{exc.filename}: ' if exc.filename else ''}{exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
