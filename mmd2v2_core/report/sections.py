"""The report's sections, one function per notebook: each runs its stage's analysis, saves its figures
and tables under ``reports/``, and returns the Markdown the notebook shows and the report keeps."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from ..data.index import load_manifest, read_log_lines, read_split
from ..study import ATTENTION_ABLATION, RUNS, TABLE1, TEACHER_ABLATION, TEST_SETS, TRANSFER_ABLATION, Study


def _rel(path: Path, reports_dir: Path) -> str:
    return path.relative_to(reports_dir).as_posix()


def data_section(study: Study, domains: dict[str, Path], reports_dir: Path,
                 transfer: dict[str, Path] | None = None) -> str:
    from ..viz.samples import plot_samples

    lines = ["| dataset | split | images | captions | captions/image | mean words | distinct words |",
             "|---|---|---:|---:|---|---:|---:|"]
    for domain, folder in domains.items():
        for split in load_manifest(folder)["splits"]:
            records = read_split(folder, split)
            counts = [len(r.captions) for r in records]
            words = [re.findall(r"[a-z]+", c.lower()) for r in records for c in r.captions]
            lines.append(f"| {domain} | {split} | {len(records):,} | {sum(counts):,} | {min(counts)}–{max(counts)} | "
                         f"{statistics.fmean(map(len, words)):.1f} | {len({w for ws in words for w in ws})} |")
    figure = plot_samples({d: read_split(f, "test")[:4] for d, f in domains.items()},
                          reports_dir / "figures" / "synthetic_samples.png")
    return "\n".join(["## 00 Data", "",
                      "Synthetic Karpathy-format datasets: `synth-coco` (the COCO 5K analogue, trained on) and "
                      "`synth-flickr` (another rendering style and phrasing, never trained on: the Flickr30K 1K "
                      "analogue). Every caption names every object, so perfect retrieval is possible.", "",
                      *lines, "", f"![samples]({_rel(figure, reports_dir)})"] + _drawings_lines(transfer, reports_dir))


def _drawings_lines(transfer: dict[str, Path] | None, reports_dir: Path) -> list[str]:
    if not transfer:
        return []
    from ..viz.samples import plot_drawings

    figure = plot_drawings({name: read_split(folder, "test") for name, folder in transfer.items()},
                           reports_dir / "figures" / "transfer_drawings.png")
    return ["", f"For the transfer analysis (notebook 05), the `synth-flickr` test scenes are also drawn in the training "
                f"style (`coco`) and in the training style with one test-style trait each, and captioned in the training "
                f"phrasing ({len(transfer)} sets, `data_prep/synth/transfer.py`):", "",
            f"![drawings]({_rel(figure, reports_dir)})"]


def targets_section(study: Study, caches: dict[str, dict], photos: list[str]) -> str:
    from ..teachers.inspect import inspect_teacher
    from ..teachers.registry import create_teacher

    lines = ["## 01 Teacher targets", "",
             "| cache | teacher | items | dim | shards computed now | seconds |", "|---|---|---:|---:|---:|---:|"]
    for key, c in caches.items():
        lines.append(f"| {key} | {c['teacher']} | {c['items']:,} | {c['dim']} | {c['computed_shards']} | {c['seconds']} |")
    lines += target_geometry_lines(study)
    cfg = study.base_config(RUNS["smke"], 0, ["teacher.cache=null"])
    teacher = create_teacher(cfg.teacher.name, cfg.teacher.weights, cfg.teacher.tiny, cfg.teacher.weights_dir)
    if teacher.spec.num_classes and photos:
        report = inspect_teacher(teacher, photos, top=1)
        lines += ["", f"Sanity check of the teacher's weights on real photographs (top-1 ImageNet class of "
                      f"`{teacher.spec.name}`{' — tiny random-init, so meaningless' if teacher.tiny else ''}):", ""]
        for path, top in report["predictions"].items():
            lines.append(f"- `{Path(path).name}`: {top[0]['name']} ({top[0]['probability']:.0%})")
    return "\n".join(lines)


def target_geometry_lines(study: Study) -> list[str]:
    """Per candidate target (teacher × raw or whitened), the share of its variance each scene attribute explains."""
    from ..data.datasets import RetrievalSplit
    from ..student.presets import get_preset
    from ..teachers.cache import TargetCache
    from ..teachers.geometry import ATTRIBUTES, attribute_shares
    from ..teachers.whitening import TargetWhitening

    records = RetrievalSplit.from_index(study.data("synth-coco"), "train").records
    if not records or "scene" not in records[0].extra:
        return []
    cfg = study.base_config(RUNS["mmd2v2_6"], 0)
    width = get_preset(cfg.student.preset, cfg.student.size).config.width
    scenes = [r.extra["scene"] for r in records]
    shares = {}  # (teacher, whitened?) → {attribute: share}
    for key in ("pretrained", "random"):
        raw = TargetCache(study.cache(key)).lookup([r.image_id for r in records])
        shares[key, False] = attribute_shares(raw, scenes)
        shares[key, True] = attribute_shares(TargetWhitening.fit(raw, width)(raw), scenes)
    names = {"pretrained": "pretrained", "random": "random-init"}
    lines = ["", "What each candidate target encodes: the share of its variance (R², train split) that each scene "
             "attribute explains by a least-squares fit on its indicators (one-hot background and object count; "
             "per-value object counts of shape, colour, size, position).", "",
             "| target | " + " | ".join(ATTRIBUTES) + " |", "|---|" + "---:|" * len(ATTRIBUTES)]
    for (key, whitened), row in shares.items():
        kind = f"centred + PCA-whitened to {width}" if whitened else f"pooled ({raw.shape[1]}-d)"
        lines.append(f"| {names[key]}: {kind} | " + " | ".join(f"{100 * row[a]:.0f} %" for a in ATTRIBUTES) + " |")

    def top(row: dict[str, float]) -> str:
        name = max(row, key=row.get)
        return f"{name} ({100 * row[name]:.0f} %)"

    whitened_max = max(v for (_, whitened), row in shares.items() if whitened for v in row.values())
    lines += ["", f"Reading: the pretrained teacher's pooled feature is organised most by "
                  f"{top(shares['pretrained', False])}, the random-init one's by {top(shares['random', False])}; "
                  f"whitened, no attribute explains more than {100 * whitened_max:.0f} % linearly."]
    return lines


def training_section(study: Study, runs: tuple[str, ...], reports_dir: Path) -> str:
    from ..viz.curves import plot_training_curves

    curves = {f"{RUNS[r].label} (seed {s})": study.run_out(r, s) / "metrics.jsonl"
              for r in runs for s in study.profile.seeds}
    figure = plot_training_curves(curves, reports_dir / "figures" / "training_curves.png")
    p = study.profile
    rates = [r["samples_per_s"] for path in curves.values() if path.is_file()
             for r in read_log_lines(path) if r.get("kind") == "train"][1:]  # the first window holds start-up
    speed = (f" Training ran at {statistics.fmean(rates):.0f} pairs/s on average (the window means logged in "
             f"`metrics.jsonl`)." if rates else "")
    return "\n".join(["## 02 Distillation pretraining", "",
                      f"{len(runs)} recipes × {len(p.seeds)} seed(s), {p.steps} steps of {p.batch_size} pairs each: "
                      f"{p.steps * p.batch_size:,} pairs seen per run ({p.layout_note}).{speed} No validation pass: each "
                      "run is scored on the test splits once, in notebook 03 (the untrained student's level is "
                      "Table 1's unaligned-towers row).", "",
                      f"![training curves]({_rel(figure, reports_dir)})"])


def retrieval_section(study: Study, reports_dir: Path) -> str:
    from ..report.tables import load_references, render_markdown, seed_tables, write_tables

    measured = study.mean_rows(("cca", "unaligned", *TABLE1))
    tables = seed_tables(load_references(), measured)
    write_tables(tables, reports_dir / "tables")
    synthetic = next(t for t in tables if t.name == "table1_synthetic")
    unaligned = [r for r in measured if r["row"].startswith("Unaligned") and r["dataset"] == "synth-coco"]
    lines = ["## 03 Retrieval evaluation", "",
             "Zero-shot retrieval on the test splits (BEiT-3 / CLIP_benchmark protocol: all captions, an image "
             "query hits when any of its captions is in its top K). Measured rows are means over the seeds; the "
             "per-seed results are in the run directory's `results/`.", "", render_markdown(synthetic)]
    if unaligned:
        chance = 100 / unaligned[0]["images"]  # a random ranking puts the true image first once in N
        lines += [f"The unaligned towers score a mean recall of {unaligned[0]['metrics']['mean']:.2f} on synth-coco "
                  f"(chance R@1 for text→image is {chance:.2f}%)."]
    lines += ["", "Reference tables with the published numbers (quoted, with sources in "
              "`mmd2v2_core/report/references.yaml`; also as `.tex` and `.csv` in `reports/tables/`):", "",
              *[render_markdown(t) for t in tables if t.name != "table1_synthetic"]]
    return "\n".join(lines)


def attribute_section(study: Study, runs: tuple[str, ...]) -> str:
    from ..eval.embed import student_inputs
    from ..eval.zeroshot import attribute_zero_shot
    from ..train.loop import load_trained_student

    lines = ["### Zero-shot attribute classification", "",
             "Single-object `synth-coco` test images, prompts per attribute value averaged into class prototypes "
             "(CLIP-style); seed 0 of each run.", "",
             "| run | shape | colour | size | position |", "|---|---|---|---|---|"]
    chance_row = None
    for name in runs:
        student, cfg = load_trained_student(study.train(name, study.profile.seeds[0]))
        result = attribute_zero_shot(student, study.data("synth-coco"), "test",
                                     *student_inputs(student, cfg.data.tokenizer, study.frontend_cache))
        lines.append(f"| {RUNS[name].label} | " + " | ".join(f"{result[a]['accuracy']:.1f}" for a in
                                                             ("shape", "color", "size", "position")) + " |")
        chance_row = result
    if chance_row:
        lines.append("| *chance (majority class)* | " + " | ".join(
            f"{chance_row[a]['chance']:.1f} ({chance_row[a]['majority']:.1f})" for a in ("shape", "color", "size", "position"))
            + " |")
        lines.append(f"\n{chance_row['shape']['images']} images.")
    return "\n".join(lines)


def ablation_section(study: Study, reports_dir: Path, name: str, title: str, runs: tuple[str, ...],
                     comparisons: list[tuple[str, str]], heading: str) -> str:
    from ..report.tables import simple_markdown, write_tables

    table = study.ablation_table(name, runs, title)
    write_tables([table], reports_dir / "tables")
    lines = [heading, "", simple_markdown(table), f"Also as `.tex` and `.csv`: `tables/{name}.*`.", ""]
    for a, b in comparisons:
        if not (study.results(a) and study.results(b)):
            continue
        diff, spread, noise = study.within_noise(a, b)
        seeds = len(study.profile.seeds)
        verdict = ("within the seed-to-seed spread: not a measured difference" if noise else
                   "larger than the seed-to-seed spread")
        if seeds < 2:
            verdict = "one seed only: no spread to compare against"
        lines.append(f"- {RUNS[a].label} vs {RUNS[b].label}: {diff:+.2f} points of mean recall on synth-coco "
                     f"(largest spread {spread:.2f}) — {verdict}.")
    return "\n".join(lines)


def embeddings_section(study: Study, run: str, reports_dir: Path, n: int = 300):
    """The embedding map and the retrieval gallery of one run; returns (markdown, browser)."""
    import torch

    from ..data.datasets import RetrievalSplit
    from ..eval.embed import embed_split, student_inputs
    from ..train.loop import load_trained_student
    from ..viz.browser import RetrievalBrowser
    from ..viz.embeddings import embedding_map
    from ..viz.gallery import plot_gallery

    student, cfg = load_trained_student(study.train(run, study.profile.seeds[0]))
    images, tokenizer = student_inputs(student, cfg.data.tokenizer, study.frontend_cache)
    split = RetrievalSplit.from_index(study.data("synth-coco"), "test")
    n = min(n, len(split.records))
    emb = embed_split(student, split, images, tokenizer, batch_size=512, precision=study.profile.eval_precision)
    first_caption = torch.tensor([int((emb.text_to_image == i).nonzero()[0]) for i in range(n)])
    backgrounds = [r.extra["scene"]["background"] for r in split.records[:n]]
    figure = reports_dir / "figures" / "embeddings_tsne.png"
    stats = embedding_map(emb.image[:n], emb.text[first_caption], backgrounds, "background", figure)
    browser = RetrievalBrowser(split, emb.image, emb.text, lambda texts: student.encode_text(**tokenizer(texts)))
    gallery = plot_gallery(browser, reports_dir / "figures" / "retrieval_gallery.png")
    reading = (
        f"Reading: on average a caption is far closer to its own image than to a random other one (cosine "
        f"{stats['matched_cosine']:.2f} vs {stats['unmatched_cosine']:.2f}), but images with the same background score "
        f"almost as high ({stats['same_attribute_cosine']:.2f}): an image's nearest caption among the {n} shares its "
        f"background {stats['nearest_caption_same_attribute']:.0%} of the time (most common background: "
        f"{stats['attribute_chance']:.0%}). "
        + ("So the student has learned the background well above chance, and its retrieval failures are mostly "
           "images of the right background with the wrong objects. "
           if stats["nearest_caption_same_attribute"] > 2 * stats["attribute_chance"] else
           "The background is not what the student has learned either. ")
        + f"The two modalities' point clouds are offset by {stats['modality_gap']:.2f} standard deviations of the map.")
    text = "\n".join(["## 06 Embeddings and retrieval browser", "",
                      f"t-SNE of {n} `synth-coco` test images and one caption of each, from {RUNS[run].label} "
                      f"(seed {study.profile.seeds[0]}).", "", f"![embeddings]({_rel(figure, reports_dir)})", "",
                      reading, "", "Retrieval successes (green: the true image is first) and failures, "
                      "caption → top-3 images:", "", f"![gallery]({_rel(gallery, reports_dir)})", "",
                      "The interactive browser (ipywidgets) is in `notebooks/06_embeddings_and_browser.ipynb`."])
    shot = reports_dir / "figures" / "browser_jupyterlab.png"
    if shot.is_file():  # taken in a live JupyterLab page with headless Chromium (see the README)
        text += f"\n\nThe browser in JupyterLab, stepping through failures:\n\n![browser]({_rel(shot, reports_dir)})"
    return text, browser


def _seed_mean(decompositions: list[dict], get) -> float:
    return statistics.fmean(get(d) for d in decompositions)


def transfer_decomposition_lines(study: Study, runs: tuple[str, ...]) -> list[str]:
    """Rendering × phrasing and per-trait I→T R@1 on the zero-shot test scenes (means over seeds), what fails,
    and a reading computed from them."""
    found = {run: [study.transfer_decomposition(run, seed) for seed in study.profile.seeds] for run in runs}
    first = found[runs[0]]
    drawings = list(first[0]["recall"])
    n = first[0]["images"]
    header = " | ".join(f"{RUNS[r].label.split(' (')[0]} · {p} phrasing" for r in runs for p in ("test", "training"))
    lines = [f"Where the transfer is lost: the {n:,} `synth-flickr` test scenes drawn in every way and captioned in "
             "both phrasings (`data_prep/synth/transfer.py`); image→text R@1 on the 1K gallery, mean of "
             f"{len(first)} seed(s). `flickr` is the test set's drawing, `coco` the training style, `coco+<trait>` "
             "the training style with one of the test style's traits.", "",
             f"| drawing | {header} |", "|---|" + "---:|" * (2 * len(runs))]
    mean = {r: {(d, p): _seed_mean(found[r], lambda x, d=d, p=p: x["recall"][d][p]["i2t_r1"])
                for d in drawings for p in ("test", "training")} for r in runs}
    for d in drawings:
        lines.append(f"| {d} | " + " | ".join(f"{mean[r][(d, p)]:.1f}" for r in runs for p in ("test", "training")) + " |")
    lines.append("")
    for r in runs:
        m = mean[r]
        rendering = m[("coco", "test")] - m[("flickr", "test")]
        phrasing = m[("coco", "training")] - m[("coco", "test")]
        traits = {d: m[("coco", "training")] - m[(d, "training")] for d in drawings if d.startswith("coco+")}
        worst = max(traits, key=traits.get)
        lines.append(f"- {RUNS[r].label}: the test set's drawing costs {rendering:.1f} points of R@1 against the "
                     f"training style (both with test phrasing), its phrasing {phrasing:.1f} points (both in the "
                     f"training style) — {'rendering' if rendering > phrasing else 'phrasing'} is the larger shift. "
                     f"The costliest single trait is `{worst.split('+')[1]}` ({traits[worst]:.1f} points), then " +
                     ", ".join(f"`{d.split('+')[1]}` {c:.1f}" for d, c in sorted(traits.items(), key=lambda x: -x[1])
                               if d != worst) + ".")
    best = found[runs[0]]
    failures = _seed_mean(best, lambda x: x["failures"]["failures"])
    near = _seed_mean(best, lambda x: x["failures"]["near_misses"])
    wrong = {a: _seed_mean(best, lambda x, a=a: x["failures"]["wrong"][a]) for a in best[0]["failures"]["wrong"]}
    lines += ["", f"What {RUNS[runs[0]].label} still gets wrong on the test set (mean of {len(best)} seed(s)): "
                  f"{failures:.0f} of {n:,} images do not retrieve one of their captions first; only {near:.0f} of "
                  "those are near misses (a scene that differs in one attribute). The retrieved caption's scene has "
                  "another " + ", ".join(f"{a} {100 * v:.0f} %" for a, v in sorted(wrong.items(), key=lambda x: -x[1]))
              + " of the time. Image→text R@1 by group of test images:", "",
              "| group | value | images | I→T R@1 |", "|---|---|---:|---:|"]
    spreads = []
    for group, values in best[0]["failures"]["i2t_r1_by"].items():
        recall = {v: _seed_mean(best, lambda x, g=group, v=v: x["failures"]["i2t_r1_by"][g][v]["i2t_r1"]) for v in values}
        spreads.append((max(recall.values()) - min(recall.values()), group, max(recall, key=recall.get),
                        min(recall, key=recall.get)))
        for v, info in values.items():
            lines.append(f"| {group} | {v} | {info['images']} | {recall[v]:.1f} |")
    spread, group, high, low = max(spreads)
    lines += ["", f"The largest gap between groups is by {group}: {high} {spread:.1f} points above {low}."]
    return lines


def findings_section(study: Study, reports_dir: Path) -> str:
    """The transfer ablation (rendering views or not), then every qualitative claim of the seed and the thesis
    with its measurement and a computed verdict."""
    from .findings import check_claims, findings_markdown

    transfer = ablation_section(study, reports_dir, "ablation_transfer",
                                "Zero-shot transfer: S-SMKE with and without rendering-augmented views",
                                TRANSFER_ABLATION, [("smke", "smke_no_views")], "### Zero-shot transfer")
    transfer += ("\n\nThe rendering views change outline, shadow, background gradient and texture, rotation, blur and "
                 "foreground colour of training images (`mmd2v2_core/data/rendering.py`); no test image or statistic "
                 "is used, but the traits were chosen knowing the kinds of rendering change a test set may bring.")
    transfer += "\n\n" + "\n".join(transfer_decomposition_lines(study, TRANSFER_ABLATION))
    rows = check_claims(study.results, TEST_SETS)
    unaligned = [r for r in study.results("unaligned")]
    return "\n".join(["## Findings", "", transfer, "", "### The seed's claims, measured", "",
                      findings_markdown(rows, unaligned)])
