"""Quoted numbers match their sources digit for digit; measured rows land under the right headings."""

import csv
import io
import json
import re
from pathlib import Path

import pytest

from mmd2v2_core.errors import DataError
from mmd2v2_core.report.tables import (SimpleTable, load_references, load_results, quoted_comparison, render_csv,
                                       render_latex, render_markdown, seed_tables, write_tables)

HERE = Path(__file__).parent
SHARED = HERE.parents[1] / "shared"
SEED_TABLE1 = ["flava", "data2vec2_unaligned", "mmd2v2_d2v2", "mmd2v2_beitv2", "mmd2v2_7_2", "mmd2v2_7"]
SEED_TABLE2 = ["flava", "clip", "mmd2v2_beitv2", "beit3", "vlmo"]
NUMBER = re.compile(r"^(-|\d+(\.\d+)?)$")


def seed_rows(text: str) -> list[list[str]]:
    """Every line of the seed that carries twelve numbers (or '-'), in order."""
    rows = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split("\t") if f.strip()]
        values = [f for f in fields if NUMBER.match(f)]
        if len(values) == 12:
            rows.append(values)
    return rows


def reference_values(entry) -> list[str]:
    return [v for d in ("coco", "flickr30k") for dir_ in ("i2t", "t2i") for v in entry[d][dir_]]


def test_seed_rows_digit_for_digit():
    refs = load_references()["entries"]
    rows = seed_rows((HERE / "data" / "seed_table.txt").read_text())
    assert len(rows) == 11
    assert rows[:6] == [reference_values(refs[k]) for k in SEED_TABLE1]
    assert rows[6:] == [reference_values(refs[k]) for k in SEED_TABLE2]


def test_tables_reproduce_the_seed_layout():
    refs = load_references()
    t1, t2 = seed_tables(refs)
    assert [r.label for _, rows in t1.sections for r in rows][:2] == ["FLAVA", "Data2Vec2"]
    assert [s for s, _ in t2.sections] == ["Zero-Shot", "Finetune"]
    assert [refs["tables"]["table1"]["sections"][0]["rows"]] == [SEED_TABLE1]


@pytest.mark.skipif(not (SHARED / "seed").is_dir(), reason="../shared not present")
def test_repo_copy_of_the_seed_is_the_seed():
    assert (HERE / "data" / "seed_table.txt").read_bytes() == next((SHARED / "seed").glob("*.txt")).read_bytes()


@pytest.mark.skipif(not (SHARED / "research" / "thesis_digest.md").is_file(), reason="../shared not present")
def test_thesis_digest_numbers():
    digest = (SHARED / "research" / "thesis_digest.md").read_text()
    refs = load_references()["entries"]
    final = next(line for line in digest.splitlines() if "(FINAL, S-SMKE_CDL_MB)" in line)
    groups = [g.replace("*", "").strip() for g in final.split("|")[2:6]]
    assert [v for g in groups for v in g.split("/")] == reference_values(refs["smke_final"])
    vlmo_large = next(line for line in digest.splitlines() if "VLMo (variant used in the first table)" in line)
    assert [v for g in vlmo_large.split("|")[2:6] for v in g.strip().split("/")] == reference_values(refs["vlmo_large"])


def _result(row, dataset, value):
    return {"row": row, "dataset": dataset, "split": "test",
            "metrics": {f"{d}_r{k}": value for d in ("i2t", "t2i") for k in (1, 5, 10)}}


def test_synthetic_results_never_under_real_headings():
    tables = seed_tables(load_references(), [_result("kit 6", "synth-coco", 41.236), _result("kit 6", "synth-flickr", 7)])
    assert [t.name for t in tables] == ["table1", "table2", "table1_synthetic"]
    for t in tables[:2]:
        assert "41.24" not in render_markdown(t) and "kit 6" not in render_csv(t)
    md = render_markdown(tables[2])
    assert "synth-coco 5K I→T R@1" in md and "MSCOCO" not in md.split("\n\n")[1]
    assert "| kit 6 | 41.24 | 41.24 | 41.24 | 41.24 | 41.24 | 41.24 | 7.00 |" in md


def test_real_results_join_the_seed_tables():
    t1 = seed_tables(load_references(), [_result("kit real", "coco", 10.0)])[0]
    assert t1.sections[-1][0] == "Measured with this kit"
    rows = list(csv.reader(io.StringIO(render_csv(t1))))
    measured = next(r for r in rows if r[1] == "kit real")
    assert measured[2:8] == ["10.00"] * 6 and measured[8:14] == ["-"] * 6


def test_each_measured_row_stands_under_its_thesis_row_with_the_difference():
    measured = [_result("MM-D2V2 (Ours)†", "coco", 30.0), _result("MM-D2V2 (Ours)†", "flickr30k", 10.0)]
    table = quoted_comparison(load_references(), measured, {"MM-D2V2 (Ours)†": "mmd2v2_beitv2"})
    rows = list(csv.reader(io.StringIO(render_csv(table))))
    thesis = next(r for r in rows if r[1] == "MM-D2V2 (Ours)† (thesis)")
    kit = next(r for r in rows if r[1] == "MM-D2V2 (Ours)†")
    difference = next(r for r in rows if r[1] == "difference (measured − quoted)")
    assert thesis[2:5] == ["31.72", "56.78", "67.9"] and kit[2:5] == ["30.00"] * 3
    assert difference[2:5] == ["-1.72", "-26.78", "-37.90"] and difference[8] == f"{10 - 7.7:+.2f}"


def test_written_formats(tmp_path):
    paths = write_tables(seed_tables(load_references()), tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"table{i}.{e}" for i in (1, 2) for e in ("md", "tex", "csv"))
    tex = (tmp_path / "table1.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex and "7\\_2" in tex
    assert tex.count(r" \\") == 3 + 6  # 3 header lines + 6 rows
    assert render_latex(seed_tables(load_references())[1]).count(r"\textit{") == 2


def test_simple_tables_in_three_formats(tmp_path):
    table = SimpleTable("ablation", "Teacher ablation", ["run", "seeds", "mean R"],
                        [["S-SMKE", "2", "1.07 ± 0.35"], ["no_teacher", "2", "0.93 ± 0.14"]], ["± is half the range."])
    write_tables([table], tmp_path)
    assert (tmp_path / "ablation.md").read_text().splitlines()[2:5] == [
        "| run | seeds | mean R |", "|---|---:|---:|", "| S-SMKE | 2 | 1.07 ± 0.35 |"]
    tex = (tmp_path / "ablation.tex").read_text()
    assert r"no\_teacher & 2 & 0.93 $\pm$ 0.14 \\" in tex and r"\begin{tabular}{lrr}" in tex
    rows = list(csv.reader(io.StringIO((tmp_path / "ablation.csv").read_text())))
    assert rows == [["run", "seeds", "mean R"], ["S-SMKE", "2", "1.07 ± 0.35"], ["no_teacher", "2", "0.93 ± 0.14"]]


def test_results_files_errors(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text("{oops")
    with pytest.raises(DataError, match="r.json"):
        load_results([bad])
    bad.write_text(json.dumps({"dataset": "coco", "metrics": {}}))
    with pytest.raises(DataError, match=r"r.json: missing field 'row'"):
        seed_tables(load_references(), load_results([bad]))
