"""The report's sections: per notebook, the pieces it shows (recipes, tables, figures, readings), each returned as
Markdown that the notebook displays and the report keeps. Readings are computed from the results: a sentence
changes when the numbers do. Figures and tables are saved under ``reports/``."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import torch

from data_prep.synth.render import HELD_OUT_LOOKS
from data_prep.synth.transfer import HELD_OUT_DRAWINGS

from ..data.datasets import RetrievalSplit
from ..data.rendering import GEOMETRIC_CHANGES, TEST_TRAITS_COVERED, TRAITS as VIEW_FAMILIES
from ..data.index import load_manifest, read_split
from ..errors import DataError
from ..eval.embed import embed_split, student_inputs
from ..eval.zeroshot import attribute_zero_shot
from ..plan import plan_markdown, time_plan
from ..student.presets import preset_from_config
from ..study import CONVERGED_GAIN, DIRECTIONS, FROZEN_INPUT_BASELINES, Study, convergence, run_summary
from ..teachers.cache import TargetCache
from ..teachers.geometry import ATTRIBUTES, attribute_shares
from ..teachers.inspect import inspect_teacher
from ..teachers.registry import get_spec, teacher_from_config, weights_location
from ..teachers.whitening import TargetWhitening
from ..train.checkpoint import load_trained_student
from ..viz.browser import RetrievalBrowser
from ..viz.curves import plot_training_curves
from ..viz.embeddings import embedding_map
from ..viz.gallery import plot_binding_failures, plot_gallery
from ..viz.samples import plot_drawings, plot_samples
from .findings import BINDING_CLAIMS, Claim, check_claims, findings_markdown
from .recipes import recipe_markdown
from .tables import (SimpleTable, Table, ablation_table, load_references, mean_rows, quoted_comparison,
                     render_markdown, seed_tables, simple_markdown, write_tables)


def _rel(path: Path, reports_dir: Path) -> str:
    return path.relative_to(reports_dir).as_posix()


def data_section(study: Study, domains: dict[str, Path], reports_dir: Path,
                 transfer: dict[str, Path] | None = None) -> str:
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
                          reports_dir / "figures" / ("synthetic_samples.png" if study.profile.synthetic else "samples.png"))
    return "\n".join([*lines, "", f"![samples]({_rel(figure, reports_dir)})"] + _drawings_lines(transfer, reports_dir))


def data_reading(domains: dict[str, Path], train: str, zero_shot: str) -> str:
    """How far the zero-shot test set's words are from the training captions'."""
    def vocabulary(domain, split):
        return {w for r in read_split(domains[domain], split) for c in r.captions for w in re.findall(r"[a-z]+", c.lower())}

    seen, test = vocabulary(train, "train"), vocabulary(zero_shot, "test")
    unseen = sorted(test - seen)
    return (f"Reading: {len(unseen)} of the {len(test)} distinct words of the `{zero_shot}` test captions never occur "
            f"in `{train}` training captions" + (f" (e.g. {', '.join(unseen[:6])})" if unseen else "")
            + ": a student can only reach them through the word embeddings it starts from. "
            + ("So the zero-shot set differs in phrasing as well as in images." if unseen else
               "So the zero-shot set differs in images and word order, not in vocabulary."))


def _drawings_lines(transfer: dict[str, Path] | None, reports_dir: Path) -> list[str]:
    if not transfer:
        return []
    figure = plot_drawings({name: read_split(folder, "test") for name, folder in transfer.items()},
                           reports_dir / "figures" / "transfer_drawings.png")
    return ["", f"For the transfer analysis (notebook 05), the `synth-flickr` test scenes are also drawn in the training "
                f"style (`coco`), in the training style with one test-style trait each and with each held-out look "
                f"({', '.join(f'`{d}`' for d in HELD_OUT_DRAWINGS)}), and captioned in the training phrasing "
                f"({len(transfer)} sets, `data_prep/synth/transfer.py`):", "",
            f"![drawings]({_rel(figure, reports_dir)})"]


def targets_section(study: Study, caches: dict[str, dict], photos: list[str]) -> str:
    if not study.profile.synthetic:
        return teachers_section(study)
    lines = ["| cache | teacher | items | dim | shards computed now | seconds |", "|---|---|---:|---:|---:|---:|"]
    for key, c in caches.items():
        lines.append(f"| {key} | {c['teacher']} | {c['items']:,} | {c['dim']} | {c['computed_shards']} | {c['seconds']} |")
    lines += target_geometry_lines(study)
    teacher = teacher_from_config(study.config("smke", 0, ["teacher.cache=null"]).teacher)
    if teacher.spec.num_classes and photos:
        report = inspect_teacher(teacher, photos, top=1)
        lines += ["", f"Sanity check of the teacher's weights on real photographs (top-1 ImageNet class of "
                      f"`{teacher.spec.name}`{' — tiny random-init, so meaningless' if teacher.tiny else ''}):", ""]
        for path, top in report["predictions"].items():
            lines.append(f"- `{Path(path).name}`: {top[0]['name']} ({top[0]['probability']:.0%})")
    return "\n".join(lines)


def teachers_section(study: Study) -> str:
    """The real profile: each run's teacher, its target and where its weights were found (teachers run online)."""
    lines = ["Each teacher runs on every training batch's own crops, as in the thesis (no target cache).", "",
             "| run | teacher | target | weights |", "|---|---|---|---|"]
    for run in study.runs:
        t = study.config(run, study.profile.seeds[0]).teacher
        where = "—" if t.name == "none" else weights_location(get_spec(t.name), t.weights, t.weights_dir)
        where = f"`{get_spec(t.name).hub_id}` (Hugging Face cache)" if where == "hub cache" else where or "missing"
        lines.append(f"| {study.labels[run]} | {t.name}{' (tiny)' if t.tiny else ''} | "
                     f"{'—' if t.name == 'none' else t.target} | {where} |")
    return "\n".join(lines)


def time_plan_section(study: Study, warmup_steps: int = 5) -> str:
    """Real profile: what each run will cost on this machine, from a measured warm-up of its own config."""
    if study.profile.synthetic:
        return ""
    rows = time_plan(study, warmup_steps, study.nproc_per_node)
    return "\n".join([f"Time plan: each run's expected hours from {warmup_steps} warm-up steps of its own config on "
                      f"{study.device} (the first step, start-up, left out; {study.nproc_per_node} process(es) per run "
                      "assumed to scale linearly). `mmd2v2 study --profile real --plan` writes the same runs as "
                      "torchrun lines for a cluster.", "", plan_markdown(rows, study.device)])


def target_geometry_lines(study: Study) -> list[str]:
    """Per candidate target (teacher × raw or whitened), the share of its variance each scene attribute explains."""
    records = RetrievalSplit.from_index(study.train_data, "train").records
    if not records or "scene" not in records[0].extra:
        return []
    width = preset_from_config(study.config("mmd2v2_6", 0).student).config.width
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


def recipes(study: Study, runs: tuple[str, ...]) -> str:
    """Each run's recipe, read off the resolved config it trains with (seed 0's; seeds differ only in the seed)."""
    seeds = study.profile.seeds
    yamls = ", ".join(f"`configs/{name}.yaml`" for name in dict.fromkeys(study.config_name(r) for r in runs))
    return "\n".join([f"{len(runs)} run(s) × {len(seeds)} seed(s) ({study.profile.layout_note}): {yamls}"
                      + (f" with `{' '.join(study.profile.overrides)}`" if study.profile.overrides else "")
                      + ", then each run's own overrides. Resolved:", "",
                      recipe_markdown({study.labels[r]: study.config(r, seeds[0], inputs=False) for r in runs})])


def training_curves(study: Study, runs: tuple[str, ...], reports_dir: Path, name: str) -> str:
    """Every run's loss terms and val mean recall against steps, all seeds (``reports/figures/<name>.png``), and the
    convergence table."""
    curves = {study.labels[r]: {s: study.run_out(r, s) / "metrics.jsonl" for s in study.profile.seeds} for r in runs}
    missing = [str(path) for seeds in curves.values() for path in seeds.values() if not path.is_file()]
    if missing:  # an empty panel would read as a run that did not learn
        raise DataError(f"no training log yet: {', '.join(missing)} (train the run before plotting its curves)")
    figure = plot_training_curves(curves, reports_dir / "figures" / f"{name}.png")
    return (f"![training curves]({_rel(figure, reports_dir)})\n\nVal R@1 at 50, 75 and 100 % of the steps: did each run "
            f"converge?\n\n{convergence_table(training_summaries(study, runs))}")


def training_summaries(study: Study, runs: tuple[str, ...]) -> dict[str, list[dict]]:
    """label → per-seed ``run_summary`` (steps, first and final loss, pairs/s) of the runs that logged, each with its
    ``convergence`` (None when the run was not validated twice)."""
    found = {study.labels[r]: [{**summary, "convergence": convergence(study.run_out(r, s))}
                               for s in study.profile.seeds if (summary := run_summary(study.run_out(r, s)))]
             for r in runs}
    return {label: summaries for label, summaries in found.items() if summaries}


def convergence_table(summaries: dict[str, list[dict]]) -> str:
    """Per run: val R@1 image→text / text→image at 50 % and 75 % of its steps and at the end (means over seeds), the
    largest last-quarter gain of any seed in either direction, and the verdict: converged when every seed gained under
    ``CONVERGED_GAIN`` in both."""
    lines = ["| run | seeds | val R@1 I→T / T→I at 50 % of steps | at 75 % | at the end | largest last-quarter gain "
             "(any seed, either direction) | converged |", "|---|---:|---:|---:|---:|---:|---|"]
    for label, runs in summaries.items():
        checks = [s["convergence"] for s in runs if s.get("convergence")]
        if not checks:
            lines.append(f"| {label} | {len(runs)} | – | – | – | – | not validated |")
            continue
        done = sum(c["converged"] for c in checks)

        def r1(point: str) -> str:
            found = [c[point] for c in checks if c[point]]
            return " / ".join(f"{statistics.fmean(f[d] for f in found):.1f}" for d in DIRECTIONS) if found else "–"

        lines.append(f"| {label} | {len(checks)} | {r1('half')} | {r1('late')} | {r1('final')} | "
                     f"{max(c['gain'] for c in checks):+.1f} | "
                     + ("yes" if done == len(checks) else f"no ({len(checks) - done} of {len(checks)} seeds gained "
                                                          f"≥ {CONVERGED_GAIN:g})") + " |")
    return "\n".join(lines)


def training_reading(summaries: dict[str, list[dict]]) -> str:
    """How far each objective fell and how fast the runs went, from ``training_summaries``."""
    if not summaries:
        return "Reading: no run has logged a training step yet."
    kept = {label: statistics.fmean(s["final_loss"] / s["first_loss"] for s in runs) for label, runs in summaries.items()}
    speed = {label: statistics.fmean(s["pairs_per_s"] for s in runs) for label, runs in summaries.items()}
    most, least = min(kept, key=kept.get), max(kept, key=kept.get)
    slowest = min(speed, key=speed.get)
    return (f"Reading: each run's loss is its own objective, so losses compare within a run, not across runs. From the "
            f"first logged window to the last, {most} kept the least of its loss ({100 * kept[most]:.0f} %), {least} "
            f"the most ({100 * kept[least]:.0f} %)"
            + (": a run that keeps more than half of its loss has barely trained." if kept[least] > 0.5 else ".")
            + f" Training ran at {statistics.fmean(speed.values()):.0f} pairs/s on average (slowest: {slowest}, "
              f"{speed[slowest]:.0f} pairs/s; the window means logged in `metrics.jsonl`)." + _convergence_reading(summaries))


def _convergence_reading(summaries: dict[str, list[dict]]) -> str:
    checked = {label: [s["convergence"] for s in runs if s.get("convergence")] for label, runs in summaries.items()}
    checked = {label: checks for label, checks in checked.items() if checks}
    if not checked:
        return " No run was validated during training, so none can be called converged."
    open_ = [label for label, checks in checked.items() if not all(c["converged"] for c in checks)]
    rule = (f"a run is converged when the last quarter of its steps added under {CONVERGED_GAIN:g} point of val R@1, "
            "image→text and text→image, on every seed")
    if not open_:
        return f" Every run converged (the test: {rule})."
    return (f" Not converged (the test: {rule}): {', '.join(open_)}; "
            f"{len(checked) - len(open_)} of {len(checked)} runs converged.")


def table1_section(study: Study, runs: tuple[str, ...], reports_dir: Path) -> str:
    """Table 1 on the profile's test sets (means over seeds) and the quoted reference tables, saved as md/tex/csv;
    on COCO and Flickr30K each measured row also stands under the thesis row it reproduces, with the difference."""
    measured = mean_rows(study.results, (*study.baselines, "unaligned", *runs), study.test_sets)
    tables = seed_tables(load_references(), measured)
    intro = ["Zero-shot retrieval on the test splits (BEiT-3 / CLIP_benchmark protocol: all captions, an image query "
             "hits when any of its captions is in its top K). Measured rows are means over the seeds; the per-seed "
             "results are in the run directory's `results/`." + _baselines_note(study.baselines), ""]
    if study.profile.synthetic:
        shown = [next(t for t in tables if t.name == "table1_synthetic")]
    else:
        tables.insert(0, _quoted_table(study, measured))
        shown = tables[:1]
    write_tables(tables, reports_dir / "tables")
    return "\n".join([*intro, *[render_markdown(t) for t in shown], "",
                      "Reference tables with the published numbers (quoted, with sources in "
                      "`mmd2v2_core/report/references.yaml`; also as `.tex` and `.csv` in `reports/tables/`):", "",
                      *[render_markdown(t) for t in tables if t not in shown]])


def _baselines_note(baselines: tuple[str, ...]) -> str:
    if not baselines:
        return ""
    return (" The CCA rows train nothing: a closed-form CCA fitted on the training pairs, its ridge picked on val "
            "(`mmd2v2_core/eval/baseline.py`), on the frozen features the students start from (the strongest cheap "
            "alternative)" + (", or on 16×16 thumbnails (the trivial row)." if "cca" in baselines else "."))


def _quoted_table(study: Study, measured: list[dict], **name_and_title) -> Table:
    """The measured rows (``mean_rows``) that reproduce a thesis row, each under it with the difference; the
    unaligned towers under the thesis' Data2Vec2 row."""
    quoted = {}
    for row in _with_runs(study, measured):
        spec = study.runs.get(row["run"])
        key = "data2vec2_unaligned" if row["run"] == "unaligned" else spec.quoted if spec else None
        if key:
            quoted[row["row"]] = key
    return quoted_comparison(load_references(), measured, quoted, **name_and_title)


def _with_runs(study: Study, measured: list[dict]) -> list[dict]:
    """``mean_rows`` rows with the run each came from (matched by label)."""
    by_label = {label: run for run, label in study.labels.items()}
    return [{**row, "run": by_label.get(row["row"].split(" — mean of")[0])} for row in measured]


def _mean(results: list[dict], dataset: str, key: str = "mean") -> float | None:
    values = [r["metrics"][key] for r in results if r["dataset"] == dataset]
    return statistics.fmean(values) if values else None


# Table 1's headline comparisons; a claim whose runs the profile does not make is left out.
TABLE1_CLAIMS = (Claim("Strong vs weak teacher (MM-D2V2 5+1)", "mmd2v2_6", "mmd2v2_6_weak"),
                 Claim("BEiT-v2 vs D2V2-image teacher (MM-D2V2 5+1)", "mmd2v2_6", "mmd2v2_6_d2v2"),
                 Claim("S-SMKE vs MM-D2V2 5+1", "smke", "mmd2v2_6"))


def _above(study, scored: dict[str, float], floor: float, name: str) -> str:
    """Which trained rows (``scored``: run → mean recall) are above a baseline's mean recall."""
    above = [study.labels[r] for r, v in scored.items() if v > floor]
    below = [study.labels[r] for r, v in scored.items() if v <= floor]
    return (f"every trained row is above the {name}" if not below else
            f"no trained row is above the {name}" if not above else
            f"above the {name}: {', '.join(above)} (not: {', '.join(below)})")


def table1_reading(study, runs: tuple[str, ...]) -> str:
    """Which row leads on each test set, against both closed-form baselines — the trivial thumbnail CCA and the best
    CCA on the students' own frozen inputs, the strong one — and the unaligned towers, then which trained rows beat
    each baseline, and the headline comparisons with computed verdicts. ``study``: anything with ``results(run)``,
    ``labels`` and ``test_sets`` (a ``Study``)."""
    lines = []
    for dataset in study.test_sets:
        scored = {r: _mean(study.results(r), dataset) for r in runs}
        scored = {r: v for r, v in scored.items() if v is not None}
        if not scored:
            continue
        best = max(scored, key=scored.get)
        frozen = {k: v for k in FROZEN_INPUT_BASELINES if (v := _mean(study.results(k), dataset)) is not None}
        strong = max(frozen, key=frozen.get, default=None)
        floors = [(name, value) for name, value in (("thumbnail CCA", _mean(study.results("cca"), dataset)),
                                                    (f"frozen-input CCA (`{strong}`)", frozen.get(strong)),
                                                    ("unaligned towers", _mean(study.results("unaligned"), dataset)))
                  if value is not None]
        against = "; ".join(f"{name} {value:.1f}" for name, value in floors)
        verdicts = [_above(study, scored, value, name) for name, value in floors if "CCA" in name]
        lines.append(f"- {dataset}: {study.labels[best]} leads with a mean recall of {scored[best]:.1f}"
                     + (f" ({against})" if against else "") + "".join(f"; {v}" for v in verdicts) + ".")
    lines += comparison_lines(study, TABLE1_CLAIMS)
    return "Reading:\n\n" + "\n".join(lines) if lines else "Reading: no run has been scored yet."


def comparison_lines(study, claims, claimed: bool = True) -> list[str]:
    """One line per claim and test set: the difference of mean recall, the seed spread, the computed verdict
    (``claimed``: of the seed's claim — reproduced / contradicted; else which run is higher, or within noise)."""
    def said(r):
        if claimed or r["verdict"].startswith(("within", "one seed")):
            return r["verdict"]
        return "the first higher, beyond the seed range" if r["diff"] > 0 else "the second higher, beyond the seed range"

    return [f"- {r['claim']}, {r['dataset']}: {r['diff']:+.2f} points of mean recall ({r['a']:.1f} vs {r['b']:.1f}; "
            f"larger seed range {r['spread']:.2f}) — {said(r)}{_unconverged_note(study, r['runs'])}."
            for r in check_claims(study.results, study.test_sets, claims)]


def _unconverged_note(study, runs: tuple[str, ...]) -> str:
    """Names the compared training runs whose val recall was still rising: their difference may not last."""
    late = [study.labels[r] for r in runs if study.converged(r) is False]
    return f" (not converged: {', '.join(late)})" if late else ""


def zero_shot_section(study: Study, runs: tuple[str, ...]) -> str:
    """Zero-shot classification by seed 0 of each run: per scene attribute on synthetic test images; on real data
    ImageNet-1k, when the study was given its validation folder."""
    return attribute_section(study, runs) if study.profile.synthetic else imagenet_section(study, runs)


def imagenet_section(study: Study, runs: tuple[str, ...]) -> str:
    lines = ["### Zero-shot ImageNet-1k classification", ""]
    if study.imagenet_dir is None:
        return "\n".join([*lines, "Not run: give the study an ImageNet-1k validation folder laid out as "
                           "`<wnid>/*.JPEG` (`mmd2v2 study --profile real --imagenet <folder>`)."])
    results = {name: study.imagenet(name, study.profile.seeds[0]) for name in runs}
    images = next(iter(results.values()))["images"]
    lines += [f"{images:,} validation images of `{study.imagenet_dir}`; prompts: CLIP's 80 templates × the OpenAI "
              f"class names, averaged into class prototypes; seed {study.profile.seeds[0]} of each run. Chance: "
              "top-1 0.1 %, top-5 0.5 %.", "", "| run | top-1 | top-5 |", "|---|---:|---:|"]
    lines += [f"| {study.labels[name]} | {r['top1']:.2f} | {r['top5']:.2f} |" for name, r in results.items()]
    return "\n".join(lines)


def attribute_section(study: Study, runs: tuple[str, ...]) -> str:
    lines = ["### Zero-shot attribute classification", "",
             "Single-object `synth-coco` test images, prompts per attribute value averaged into class prototypes "
             "(CLIP-style); seed 0 of each run.", "",
             "| run | shape | colour | size | position |", "|---|---|---|---|---|"]
    chance_row = None
    for name in runs:
        student, cfg = load_trained_student(study.train(name, study.profile.seeds[0]))
        result = attribute_zero_shot(student, study.data("synth-coco"), "test",
                                     *student_inputs(student, cfg.data.tokenizer, study.frontend_cache))
        lines.append(f"| {study.labels[name]} | " + " | ".join(f"{result[a]['accuracy']:.1f}" for a in
                                                             ("shape", "color", "size", "position")) + " |")
        chance_row = result
    if chance_row:
        lines.append("| *chance (majority class)* | " + " | ".join(
            f"{chance_row[a]['chance']:.1f} ({chance_row[a]['majority']:.1f})" for a in ("shape", "color", "size", "position"))
            + " |")
        lines.append(f"\n{chance_row['shape']['images']} images.")
    return "\n".join(lines)


def ablation_section(study: Study, reports_dir: Path, name: str, title: str, runs: tuple[str, ...]) -> str:
    """The ablation's table (mean ± spread over seeds), saved as md/tex/csv."""
    table = ablation_table(study.results, name, runs, title, study.labels, study.test_sets)
    write_tables([table], reports_dir / "tables")
    lines = [simple_markdown(table), f"Also as `.tex` and `.csv`: `tables/{name}.*`."]
    if not study.profile.synthetic:  # on COCO and Flickr30K: each row the thesis reports, under its number
        quoted = _quoted_table(study, mean_rows(study.results, runs, study.test_sets), name=f"{name}_quoted",
                               title=f"{title}: the thesis' rows and this kit's measurement of each")
        write_tables([quoted], reports_dir / "tables")
        lines += ["", render_markdown(quoted), f"Also as `.tex` and `.csv`: `tables/{name}_quoted.*`."]
    return "\n".join(lines)


def ablation_reading(study, comparisons: list[tuple[str, str]]) -> str:
    """Each comparison (a, b) on every test set, with the verdict computed from the seed spread."""
    lines = comparison_lines(study, [Claim(f"{study.labels[a]} vs {study.labels[b]}", a, b) for a, b in comparisons],
                             claimed=False)
    return "Reading:\n\n" + "\n".join(lines) if lines else "Reading: the compared runs have not been scored yet."


# Real photos carry no scene labels: the map is coloured by each image's dominant COCO supercategory when the index
# has them (`mmd2v2 data karpathy --instances`), else by whether any caption mentions people (COCO's most frequent
# category): splits a student that has learned content should show.
PEOPLE_WORDS = {"man", "men", "woman", "women", "person", "people", "boy", "boys", "girl", "girls", "child",
                "children", "kid", "kids", "player", "players", "guy", "lady", "skier", "surfer", "skateboarder"}


def _map_attribute(study: Study, records) -> tuple[str, list[str]]:
    if study.profile.synthetic:
        return "background", [r.extra["scene"]["background"] for r in records]
    if all("supercategory" in r.extra for r in records):
        return "COCO supercategory", [r.extra["supercategory"] for r in records]
    return "people in the captions", ["people" if PEOPLE_WORDS & {w for c in r.captions for w in re.findall(
        r"[a-z]+", c.lower())} else "no people" for r in records]


def embeddings_section(study: Study, run: str, reports_dir: Path, n: int = 300):
    """The embedding map and the retrieval gallery of one run on the first test set; returns (markdown, browser)."""
    student, cfg = load_trained_student(study.train(run, study.profile.seeds[0]))
    images, tokenizer = student_inputs(student, cfg.data.tokenizer, study.frontend_cache)
    test_set = study.test_sets[0]
    split = RetrievalSplit.from_index(study.data(test_set), "test")
    n = min(n, len(split.records))
    emb = embed_split(student, split, images, tokenizer, batch_size=512, precision=study.profile.eval_precision)
    first_caption = torch.tensor([int((emb.text_to_image == i).nonzero()[0]) for i in range(n)])
    name, attribute = _map_attribute(study, split.records[:n])
    figure = reports_dir / "figures" / "embeddings_tsne.png"
    stats = embedding_map(emb.image[:n], emb.text[first_caption], attribute, name, figure)
    browser = RetrievalBrowser(split, emb.image, emb.text, lambda texts: student.encode_text(**tokenizer(texts)))
    gallery = plot_gallery(browser, reports_dir / "figures" / "retrieval_gallery.png")
    reading = embedding_reading(stats, n, name)
    text = "\n".join([f"t-SNE of {n} `{test_set}` test images and one caption of each, from {study.labels[run]} "
                      f"(seed {study.profile.seeds[0]}).", "", f"![embeddings]({_rel(figure, reports_dir)})", "",
                      reading, "", "Retrieval successes (green: the true image is first) and failures, "
                      "caption → top-3 images:", "", f"![gallery]({_rel(gallery, reports_dir)})", "",
                      "The interactive browser (ipywidgets) is in `notebooks/06_embeddings_and_browser.ipynb`."])
    shot = reports_dir / "figures" / "browser_jupyterlab.png"
    if shot.is_file():  # taken in a live JupyterLab page with headless Chromium (see the README)
        text += f"\n\nThe browser in JupyterLab, stepping through failures:\n\n![browser]({_rel(shot, reports_dir)})"
    return text, browser


def embedding_reading(stats: dict, n: int, attribute: str = "background") -> str:
    """What the embedding statistics (``viz.embeddings.embedding_map``) say about the student's space."""
    matched, same, other = stats["matched_cosine"], stats["same_attribute_cosine"], stats["unmatched_cosine"]
    nearest, chance = stats["nearest_caption_same_attribute"], stats["attribute_chance"]
    aligned = ("far closer to" if matched > other + 0.1 else "closer to" if matched > other + 0.02 else
               "no closer to")  # an untrained or collapsed student: its own image is not nearer
    closeness = ("almost as high" if same > 0.5 * matched > 0.5 * other else
                 "far lower but above a random pair" if same > other + 0.05 else "no higher than a random pair")
    learned = (f"so the student's space is organised by {attribute} well above chance, and a caption that misses "
               "its image mostly lands on one with the same value." if nearest > min(2 * chance, (1 + chance) / 2) else
               f"so {attribute} is not what organises the student's space.")
    return (f"Reading: a caption is {aligned} its own image than to a random other one (cosine {matched:.2f} vs "
            f"{other:.2f}); images with the same {attribute} score {closeness} ({same:.2f}). An image's nearest "
            f"caption among the {n} shares its {attribute} {nearest:.0%} of the time (most common value: "
            f"{chance:.0%}), {learned} The two modalities' point clouds are offset by {stats['modality_gap']:.2f} "
            "standard deviations of the map.")


def _seed_mean(decompositions: list[dict], get) -> float:
    return statistics.fmean(get(d) for d in decompositions)


def transfer_decomposition_lines(study: Study, runs: tuple[str, ...], baselines: tuple[str, ...] = ()) -> list[str]:
    """Rendering × phrasing and per-trait I→T R@1 on the zero-shot test scenes (means over seeds; ``baselines``:
    closed-form rows beside the runs), what the first run fails on, and a reading computed from them."""
    found = {run: [study.transfer_decomposition(run, seed) for seed in study.profile.seeds] for run in runs}
    found.update({name: [study.transfer_decomposition(name, 0)] for name in baselines})  # deterministic: one fit
    first = found[runs[0]]
    columns = (*runs, *baselines)
    drawings = list(first[0]["recall"])
    n = first[0]["images"]
    header = " | ".join(f"{study.labels[r].split(' (')[0]} · {p} phrasing" for r in columns
                        for p in ("test", "training"))
    lines = [f"Where the transfer is lost: the {n:,} `synth-flickr` test scenes drawn in every way and captioned in "
             "both phrasings (`data_prep/synth/transfer.py`); image→text R@1 on the 1K gallery, mean of "
             f"{len(first)} seed(s)" + (" (the closed-form rows: one fit)" if baselines else "") + ". `flickr` is the "
             "test set's drawing, `coco` the training style, `coco+<trait>` the training style with one of the test "
             "style's traits (or a held-out look).", "",
             f"| drawing | {header} |", "|---|" + "---:|" * (2 * len(columns))]
    mean = {r: {(d, p): _seed_mean(found[r], lambda x, d=d, p=p: x["recall"][d][p]["i2t_r1"])
                for d in drawings for p in ("test", "training")} for r in columns}
    for d in drawings:
        lines.append(f"| {d} | " + " | ".join(f"{mean[r][(d, p)]:.1f}" for r in columns for p in ("test", "training"))
                     + " |")
    lines.append("")
    for r in columns:
        m = mean[r]
        rendering = m[("coco", "test")] - m[("flickr", "test")]
        phrasing = m[("coco", "training")] - m[("coco", "test")]
        traits = {d: m[("coco", "training")] - m[(d, "training")] for d in drawings
                  if d.startswith("coco+") and d not in HELD_OUT_DRAWINGS}
        worst = max(traits, key=traits.get)
        lines.append(f"- {study.labels[r]}: the test set's drawing costs {rendering:.1f} points of R@1 against the "
                     f"training style (both with test phrasing), its phrasing {phrasing:.1f} points (both in the "
                     f"training style) — {'rendering' if rendering > phrasing else 'phrasing'} is the larger shift. "
                     f"The costliest single trait is `{worst.split('+')[1]}` ({traits[worst]:.1f} points), then " +
                     ", ".join(f"`{d.split('+')[1]}` {c:.1f}" for d, c in sorted(traits.items(), key=lambda x: -x[1])
                               if d != worst) + ".")
    held_out = [d for d in HELD_OUT_DRAWINGS if d in drawings]
    if held_out:
        lines += ["", "Held out: " + "; ".join(f"`{d}` ({HELD_OUT_LOOKS[d.split('+')[1]]})" for d in held_out)
                  + ". No view draws it, so it measures transfer to a look nobody imitated. Image→text R@1 in the "
                  "training phrasing, and its cost against the training style:", ""]
        lines += [f"- {study.labels[r]}: " + "; ".join(
            f"`{d}` {mean[r][(d, 'training')]:.1f} ({mean[r][('coco', 'training')] - mean[r][(d, 'training')]:.1f} "
            "points below `coco`)" for d in held_out) + "." for r in columns]
    best = found[runs[0]]
    failures = _seed_mean(best, lambda x: x["failures"]["failures"])
    near = _seed_mean(best, lambda x: x["failures"]["near_misses"])
    wrong = {a: _seed_mean(best, lambda x, a=a: x["failures"]["wrong"][a]) for a in best[0]["failures"]["wrong"]}
    lines += ["", f"What {study.labels[runs[0]]} still gets wrong on the test set (mean of {len(best)} seed(s)): "
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


def transfer_section(study: Study, reports_dir: Path) -> str:
    """The transfer ablation (S-SMKE with and without rendering views, and with hard negatives) and where the
    transfer is lost (synthetic profiles: it needs the test scenes redrawn)."""
    runs = study.profile.transfer_ablation
    if not runs:
        return ""
    frozen = tuple(b for b in study.baselines if b in FROZEN_INPUT_BASELINES)
    table = ablation_section(study, reports_dir, "ablation_transfer", "Zero-shot transfer: S-SMKE with and without "
                             "rendering-augmented views, with hard negatives, and the CCA on the same frozen inputs",
                             (*runs, *frozen))
    # S-SMKE against each variant: without views, with hard negatives
    comparisons = [(runs[0], runs[1]), *((variant, runs[0]) for variant in runs[2:])]
    return "\n".join([table, "", ablation_reading(study, comparisons), "", views_statement(), "",
                      *transfer_decomposition_lines(study, runs, frozen)])


BINDING_COLUMNS = {"swaps": "swaps", "swap_color": "colour", "swap_size": "size", "swap_position": "cell",
                   "swap_shape": "shape", "replacements": "replacements", "replace_color": "colour",
                   "replace_size": "size", "replace_position": "position", "replace_shape": "shape",
                   "relation": "relation", "addition": "added object"}
SUGARCREPE_COLUMNS = {"swaps": "swaps", "swap_att": "swap att", "swap_obj": "swap obj",
                      "replacements": "replacements", "replace_att": "replace att", "replace_obj": "replace obj",
                      "replace_rel": "replace rel", "addition": "additions", "add_att": "add att", "add_obj": "add obj"}


def _mean_half_range(values: list[float]) -> str:
    half = (max(values) - min(values)) / 2
    return f"{statistics.fmean(values):.1f} ± {half:.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def binding_section(study: Study, reports_dir: Path) -> str:
    """Binding or a bag of words: every trained run and closed-form row on each hard-negative set (accuracy per kind,
    mean ± half the seed range), the blind rows, a computed reading and the failures of seed 0 of S-SMKE. Synthetic
    profiles: each test set's negatives, from its scene graphs; real: SugarCrepe itself, when the study has it."""
    sets = study.binding_sets()
    if not sets:
        return ("Binding is scored from the scene graphs' hard negatives on the synthetic profiles, and on SugarCrepe "
                "(Hsieh et al., NeurIPS 2023) on the real one when the study is given it: `mmd2v2 study --profile real "
                "--sugarcrepe DIR`, DIR holding SugarCrepe's 7 task JSONs and COCO's `val2017/`.")
    synthetic = study.profile.synthetic
    # the real frozen-feature rows read features cached per prepared index, which SugarCrepe's images are not in
    runs = (*study.runs, *(study.baselines if synthetic else ()))
    for run in runs:
        for seed in ((0,) if run in study.baselines else study.profile.seeds):
            study.binding(run, seed)
    first = study.binding_results(runs[0])
    if synthetic:
        columns = BINDING_COLUMNS
        lines = [f"Each test set's first {first[0]['images']:,} images with one hard negative of each kind the scene "
                 "allows (`data_prep/synth/negatives.py`), in SugarCrepe's layout under the study folder's "
                 "`data/binding/`. A swap keeps the caption's words (but for an article before \"orange\"), so a bag "
                 "of words ties on it."]
    else:
        columns = SUGARCREPE_COLUMNS
        lines = [f"SugarCrepe's {len(first[0]['scores']['by_task'])} tasks (Hsieh et al., NeurIPS 2023) on "
                 f"{first[0]['images']:,} COCO val2017 images, from the folder `{study.sugarcrepe_dir.name}` the study "
                 "was given. The frozen-feature CCA rows are not scored here: their features are cached per prepared "
                 "index, and SugarCrepe's images are in none."]
    lines = [lines[0] + " Accuracy: % of items whose caption scores above the negative (a tie counts half; chance 50); "
             "blind: the row's captions against its mean image (above 50: the negatives' wording gives them away).", ""]
    tables = []
    for dataset in sets:
        rows = []
        for run in runs:
            found = [r for r in study.binding_results(run) if r["dataset"] == dataset]
            rows.append([study.labels[run], str(len(found)),
                         *[_mean_half_range([r["metrics"][k] for r in found]) for k in columns],
                         _mean_half_range([r["blind"]["all"]["accuracy"] for r in found]),
                         _mean_half_range([max(v["accuracy"] for v in r["blind"]["by_kind"].values()) for r in found])])
        items = next(r["items"] for r in first if r["dataset"] == dataset)
        table = SimpleTable(f"binding_{dataset}", f"Binding on `{dataset}`'s hard negatives ({items:,} items): "
                            "accuracy %", ["row", "seeds", *columns.values(), "blind (all)", "blind (max kind)"],
                            rows, ["Columns: the swaps pooled and per swapped attribute, the replacements pooled and "
                                   "per replaced attribute, the relation clause flipped, an object added. ± is half "
                                   "the range over seeds." if synthetic else "Columns: SugarCrepe's tasks, pooled "
                                   "into swaps, replacements and additions beside each."])
        tables.append(table)
        lines += [simple_markdown(table), ""]
    write_tables(tables, reports_dir / "tables")
    lines += ["Also as `.tex` and `.csv`: `tables/binding_*`.", "", "Reading:", ""]
    lines += _binding_reading(study, runs, tuple(sets))
    shown = next((r for r in study.binding_results("smke") if r["seed"] == study.profile.seeds[0]), None)
    if shown and shown["failures"]:
        figure = plot_binding_failures(shown["failures"], reports_dir / "figures" / "binding_failures.png")
        lines += ["", f"Hard negatives {shown['row']} (seed {shown['seed']}) got wrong on `{shown['dataset']}`, one per "
                  "kind: the image, its caption and the negative with their cosines.", "",
                  f"![binding failures]({_rel(figure, reports_dir)})"]
    return "\n".join(lines)


def _beyond_chance(accuracy: float, items: int) -> bool:
    """Farther from 50 % than two binomial standard errors of a coin toss on ``items`` items."""
    return abs(accuracy - 50) > 2 * 50 / items ** 0.5


def _binding_reading(study: Study, runs: tuple[str, ...], datasets: tuple[str, ...]) -> list[str]:
    """Each run's swaps against the best frozen-input CCA (synthetic: the bag of words that ties on every swap), or
    against chance where no such row is scored (SugarCrepe); then the blind rows that leave chance."""
    lines = []
    if study.profile.synthetic:
        claims = [Claim(f"{study.labels[r]} vs the best frozen-input CCA, swap accuracy", r,
                        tuple(b for b in study.baselines if b in FROZEN_INPUT_BASELINES), key="swaps")
                  for r in study.runs]
        for r in check_claims(study.binding_results, datasets, claims):
            said = r["verdict"] if r["verdict"].startswith(("within", "one seed")) else \
                ("above, beyond the seed range" if r["diff"] > 0 else "below, beyond the seed range")
            lines.append(f"- {r['claim']}, {r['dataset']}: {r['a']:.1f} vs {r['b']:.1f} ({r['diff']:+.1f}; seed range "
                         f"{r['spread']:.1f}) — {said}{_unconverged_note(study, r['runs'])}.")
    else:
        for run in study.runs:
            for r in study.binding_results(run):
                swaps = r["scores"]["by_group"].get("swaps")
                if swaps:
                    side = "above" if swaps["accuracy"] > 50 else "below"
                    said = f"{side} chance" if _beyond_chance(swaps["accuracy"], swaps["items"]) else "at chance"
                    lines.append(f"- {study.labels[run]} (seed {r['seed']}), {r['dataset']}: swaps "
                                 f"{swaps['accuracy']:.1f} % on {swaps['items']:,} items — {said} (two binomial "
                                 f"standard errors: {100 / swaps['items'] ** 0.5:.1f} points).")
    blind = [(abs(v["accuracy"] - 50), f"{study.labels[run]} on `{r['dataset']}` {kind} {v['accuracy']:.1f} % "
              f"({v['items']} items)", _beyond_chance(v["accuracy"], v["items"]))
             for run in runs for r in study.binding_results(run) if r["seed"] == study.profile.seeds[0]
             for kind, v in r["blind"]["by_kind"].items()]
    leaks = sorted((b for b in blind if b[2]), reverse=True)
    lines.append(f"- Blind rows (seed {study.profile.seeds[0]}): {len(leaks)} of {len(blind)} row × set × kind cells lie "
                 "beyond two binomial standard errors of chance, where the negatives' wording alone moves the score"
                 + (": the largest " + "; ".join(text for _, text, _ in leaks[:5]) if leaks else "") + ".")
    return lines


def views_statement() -> str:
    """Which traits the rendering views contain and which test sets share them (read off ``data.rendering``)."""
    covered = [f"{trait} (as {'/'.join(families)})" for trait, families in TEST_TRAITS_COVERED.items()]
    imitated = {family for families in TEST_TRAITS_COVERED.values() for family in families}
    return (f"The rendering views randomise {len(VIEW_FAMILIES)} families of appearance (`mmd2v2_core/data/rendering.py`; "
            "no test image or statistic is used). They contain every trait of the zero-shot style — "
            f"{', '.join(covered)} — so `synth-flickr` and each `coco+<trait>` set share their traits with the training "
            "views, and the transfer measured on them is to a look the students have been shown. The families no test "
            f"set here has ({', '.join(f for f in VIEW_FAMILIES if f not in imitated)}) are there for renderings "
            "nobody imitated; only a test set outside all of these families measures transfer to an unseen look. "
            "The views change geometry in these ways only: " + "; ".join(f"{family} ({what})" for family, what in
                                                                        GEOMETRIC_CHANGES.items())
            + ". No view crops, zooms in or flips.")


def findings_section(study) -> str:
    """Every qualitative claim of the seed and the thesis with its measurement and a computed verdict, and the
    binding claims where the study scored binding (``binding_section``)."""
    rows = check_claims(study.results, study.test_sets) + check_claims(study.binding_results,
                                                                       tuple(study.binding_sets()), BINDING_CLAIMS)
    for row in rows:
        row["verdict"] += _unconverged_note(study, row["runs"])
    return findings_markdown(rows, study.results("unaligned"))
