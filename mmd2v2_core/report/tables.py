"""The seed's retrieval tables, regenerated from quoted references plus this kit's measured results.

Quoted rows come from ``references.yaml`` (digits exactly as published). Measured rows come from the
results JSON files that ``evaluate_retrieval`` writes (one per model, dataset and split), grouped by
their ``row`` label. A measured row goes into the table whose column groups are the datasets it was
measured on: real COCO / Flickr30K results join the seed tables (section "Measured with this kit");
synthetic results get tables of their own, headed ``synth-coco`` / ``synth-flickr``, so a synthetic
number can never sit under an MSCOCO or Flickr30K heading.

Every table is written as Markdown, LaTeX (booktabs) and CSV — also the study's ablation tables
(``SimpleTable``: one header row, free columns).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from ..data.index import write_text_atomic
from ..errors import DataError

DATASET_HEADINGS = {
    "coco": "MSCOCO (5K test set)",
    "flickr30k": "Flickr30K (1K test set)",
    "synth-coco": "synth-coco (5K test set)",
    "synth-flickr": "synth-flickr (1K test set)",
}
REAL = ("coco", "flickr30k")
SYNTHETIC = ("synth-coco", "synth-flickr")
DATASET_SHORT = {"coco": "MSCOCO 5K", "flickr30k": "Flickr30K 1K", "synth-coco": "synth-coco 5K",
                 "synth-flickr": "synth-flickr 1K"}
DIRECTIONS = (("i2t", "Image → Text"), ("t2i", "Text → Image"))
KS = (1, 5, 10)
MISSING = "-"


@dataclass
class Row:
    label: str
    cells: dict[str, list[str]]  # dataset -> [i2t R@1, R@5, R@10, t2i R@1, R@5, R@10]
    source: str


@dataclass
class Table:
    name: str
    title: str
    datasets: tuple[str, ...]
    sections: list[tuple[str | None, list[Row]]]
    notes: list[str] = field(default_factory=list)


@dataclass
class SimpleTable:
    """A table with a single header row (ablations): the same three output formats as the seed tables."""

    name: str
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def load_references(path: str | Path | None = None) -> dict:
    text = (Path(path).read_text() if path else
            resources.files("mmd2v2_core.report").joinpath("references.yaml").read_text())
    return yaml.safe_load(text)


def reference_row(entry: dict) -> Row:
    return Row(entry["label"], {d: list(entry[d]["i2t"]) + list(entry[d]["t2i"]) for d in REAL if d in entry},
               entry["source"])


def _fmt(value: float) -> str:
    return f"{value:.2f}"


def measured_rows(results: list[dict]) -> list[Row]:
    """One row per ``row`` label, with a cell list per dataset it was measured on."""
    rows: dict[str, Row] = {}
    for r in results:
        for key in ("row", "dataset", "metrics"):
            if key not in r:
                raise DataError(f"results file {r.get('_file', '?')}: missing field {key!r}")
        m = r["metrics"]
        cells = [_fmt(m[f"{d}_r{k}"]) for d, _ in DIRECTIONS for k in KS]
        row = rows.setdefault(r["row"], Row(r["row"], {}, f"measured: {r.get('checkpoint', 'this kit')}"))
        row.cells[r["dataset"]] = cells
    return list(rows.values())


def load_results(paths: list[str | Path]) -> list[dict]:
    out = []
    for p in paths:
        try:
            data = json.loads(Path(p).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"results file {p}: {exc}") from None
        for r in data if isinstance(data, list) else [data]:
            out.append({**r, "_file": str(p)})
    return out


def seed_tables(references: dict, results: list[dict] = ()) -> list[Table]:
    """Tables 1 and 2 of the seed (quoted rows + measured real-data rows) and synthetic companions."""
    entries = references["entries"]
    measured = measured_rows(list(results))
    real_measured = [r for r in measured if set(r.cells) & set(REAL)]
    synth_measured = [r for r in measured if set(r.cells) & set(SYNTHETIC)]
    tables = []
    for name, spec in references["tables"].items():
        sections = [(s["title"], [reference_row(entries[k]) for k in s["rows"]]) for s in spec["sections"]]
        if real_measured:
            sections.append(("Measured with this kit", real_measured))
        tables.append(Table(name, spec["title"], REAL, sections, list(spec.get("notes", []))))
    if synth_measured:
        tables.append(Table(
            "table1_synthetic",
            "Table 1 (synthetic): the same measurements on the kit's synthetic benchmarks",
            SYNTHETIC, [(None, synth_measured)],
            ["Measured on generated data (synth-coco 5K test, synth-flickr 1K test, never trained on); "
             "not comparable with MSCOCO or Flickr30K numbers."],
        ))
    return tables


def mean_rows(results_of, runs: tuple[str, ...], datasets: tuple[str, ...]) -> list[dict]:
    """Per run and test set: the mean over seeds of every recall (what Table 1's measured rows show).
    ``results_of(run) -> list of per-seed result dicts`` (as ``Study.results``)."""
    rows = []
    for name in runs:
        for dataset in datasets:
            found = [r for r in results_of(name) if r["dataset"] == dataset]
            if not found:
                continue
            keys = found[0]["metrics"].keys()
            label = found[0]["row"] + (f" — mean of {len(found)} seeds" if len(found) > 1 else "")
            rows.append({"row": label, "dataset": dataset, "split": "test", "images": found[0]["images"],
                         "metrics": {k: statistics.fmean(r["metrics"][k] for r in found) for k in keys}})
    return rows


def ablation_table(results_of, name: str, runs: tuple[str, ...], title: str, labels: dict[str, str],
                   datasets: tuple[str, ...] = SYNTHETIC) -> SimpleTable:
    """Mean ± spread (half the range over seeds) of the mean recall and of I→T R@1, per test set, with seed counts
    and I→T R@1 as a multiple of chance."""
    rows = []
    for run in runs:
        res = results_of(run)
        if not res:
            continue

        def stat(dataset, key):
            values = [r["metrics"][key] for r in res if r["dataset"] == dataset]
            if not values:
                return MISSING
            half = (max(values) - min(values)) / 2
            return f"{statistics.fmean(values):.2f} ± {half:.2f}" if len(values) > 1 else f"{values[0]:.2f}"

        def times_chance(dataset):
            values = [r["metrics"]["i2t_r1"] * r["images"] / 100 for r in res if r["dataset"] == dataset]
            return f"{statistics.fmean(values):.0f}×" if values else MISSING

        rows.append([labels[run], str(len({r["seed"] for r in res})), *[stat(d, "mean") for d in datasets],
                     *[stat(d, "i2t_r1") for d in datasets], *[times_chance(d) for d in datasets]])
    return SimpleTable(name, title, ["run", "seeds", *[f"{d} mean R" for d in datasets],
                                     *[f"{d} I→T R@1" for d in datasets], *[f"{d} I→T R@1 × chance" for d in datasets]],
                       rows, ["Mean recall = mean of R@1/5/10 both ways; ± is half the range over seeds. × chance: "
                              "image→text R@1 over a random ranking's (100 / images), so the 5K and 1K sets compare."])


def quoted_comparison(references: dict, measured: list[dict], quoted: dict[str, str], name: str = "quoted_vs_measured",
                      title: str = "The thesis' rows and this kit's measurement of each") -> Table:
    """Each measured row (``mean_rows``) under the thesis row it reproduces (``quoted``: measured label → entry of
    ``references.yaml``), with the difference measured − quoted per recall."""
    entries = references["entries"]
    by_label = {row.label: row for row in measured_rows(measured)}
    sections = []
    for label, key in quoted.items():
        row = by_label.get(label)
        if row is None:
            continue
        ref = reference_row(entries[key])
        ref = Row(f"{ref.label} (thesis)", ref.cells, ref.source)  # measured rows may carry the same name
        diff = {d: [MISSING if MISSING in (q, m) else f"{float(m) - float(q):+.2f}" for q, m in zip(ref.cells[d], cells)]
                for d, cells in row.cells.items() if d in ref.cells}
        sections.append((label, [ref, row, Row("difference (measured − quoted)", diff, "computed")]))
    return Table(name, title, REAL, sections,
                 ["Quoted rows exactly as the thesis prints them (sources in references.yaml); measured rows from this "
                  "kit's runs (mean over seeds)."])


def _cells(row: Row, datasets) -> list[str]:
    return [c for d in datasets for c in row.cells.get(d, [MISSING] * 6)]


def render_markdown(table: Table) -> str:
    # Markdown has one header row: name the dataset and direction where their column groups start.
    heads = [(f"{DATASET_SHORT[d]} " if (i, k) == (0, 1) else "") + (f"{dir_.upper().replace('2', '→')} " if k == 1 else "")
             + f"R@{k}" for d in table.datasets for i, (dir_, _) in enumerate(DIRECTIONS) for k in KS]
    lines = [f"**{table.title}**", "", "| Model | " + " | ".join(heads) + " |",
             "|---|" + "---:|" * len(heads)]
    for title, rows in table.sections:
        if title:
            lines.append(f"| *{title}* |" + " |" * len(heads))
        lines += ["| " + " | ".join([row.label, *_cells(row, table.datasets)]) + " |" for row in rows]
    lines += [""] + [f"{note}  " for note in table.notes]
    return "\n".join(lines).rstrip() + "\n"


def _tex(text: str) -> str:
    return (text.replace("\\", r"\textbackslash{}").replace("&", r"\&").replace("%", r"\%")
            .replace("_", r"\_").replace("#", r"\#").replace("†", r"$^\dagger$"))


def _latex_float(columns: str, body: list[str], caption: str) -> str:
    """A booktabs ``table`` float: tabular with these column types, header + body lines, caption."""
    return "\n".join([r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{columns}}}", r"\toprule",
                      *body, r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}"]) + "\n"


def render_latex(table: Table) -> str:
    n = len(table.datasets)
    out = [" & " + " & ".join(rf"\multicolumn{{6}}{{c}}{{{_tex(DATASET_HEADINGS[d])}}}" for d in table.datasets)
           + r" \\"]
    out.append(" ".join(rf"\cmidrule(lr){{{2 + 6 * i}-{7 + 6 * i}}}" for i in range(n)))
    out.append(" & " + " & ".join(r"\multicolumn{3}{c}{" + a.replace("→", r"$\rightarrow$") + "}"
                                  for _ in table.datasets for _, a in DIRECTIONS) + r" \\")
    out.append(r"Model & " + " & ".join(f"R@{k}" for _ in range(2 * n) for k in KS) + r" \\")
    out.append(r"\midrule")
    for title, rows in table.sections:
        if title:
            out.append(rf"\multicolumn{{{1 + 6 * n}}}{{l}}{{\textit{{{_tex(title)}}}}} \\")
        out += [" & ".join([_tex(row.label), *_cells(row, table.datasets)]) + r" \\" for row in rows]
    return _latex_float("l" + "rrr" * 2 * n, out, f"{_tex(table.title)}. {' '.join(_tex(n_) for n_ in table.notes)}")


def render_csv(table: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["section", "model", *[f"{d}/{dir_}/R@{k}" for d in table.datasets for dir_, _ in DIRECTIONS
                                           for k in KS], "source"])
    for title, rows in table.sections:
        for row in rows:
            writer.writerow([title or "", row.label, *_cells(row, table.datasets), row.source])
    return buf.getvalue()


def simple_markdown(table: SimpleTable) -> str:
    lines = [f"**{table.title}**", "", "| " + " | ".join(table.header) + " |",
             "|---|" + "---:|" * (len(table.header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    lines += [""] + [f"{note}  " for note in table.notes]
    return "\n".join(lines).rstrip() + "\n"


def simple_latex(table: SimpleTable) -> str:
    def cell(text: str) -> str:
        return _tex(text).replace("±", r"$\pm$").replace("→", r"$\rightarrow$")

    body = [" & ".join(cell(h) for h in table.header) + r" \\", r"\midrule",
            *(" & ".join(cell(c) for c in row) + r" \\" for row in table.rows)]
    return _latex_float("l" + "r" * (len(table.header) - 1), body,
                        f"{cell(table.title)}. {' '.join(cell(n) for n in table.notes)}")


def simple_csv(table: SimpleTable) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows([table.header, *table.rows])
    return buf.getvalue()


RENDERERS = {Table: (render_markdown, render_latex, render_csv), SimpleTable: (simple_markdown, simple_latex, simple_csv)}


def write_tables(tables: list[Table | SimpleTable], out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for table in tables:
        for ext, render in zip(("md", "tex", "csv"), RENDERERS[type(table)]):
            path = out_dir / f"{table.name}.{ext}"
            write_text_atomic(path, render(table))
            written.append(path)
    return written
