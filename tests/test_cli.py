"""The `mmd2v2` command as a user types it."""

import json
import subprocess
import sys

from mmd2v2_core.cli import main


def test_data_synth_and_karpathy_commands(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--profile", "smoke", "--seed", "3"]) == 0
    assert "synth-coco: " in capsys.readouterr().out
    domain = tmp_path / "d" / "synth-flickr"
    assert main(["data", "karpathy", "--json", str(domain / "dataset_synth-flickr.json"),
                 "--images", str(domain / "images"), "--out", str(tmp_path / "idx")]) == 0
    assert "synth-flickr test: 128 images, 643 captions" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_status_2(tmp_path):
    bad = tmp_path / "dataset_coco.json"
    bad.write_text(json.dumps({"dataset": "coco", "images": [{"filename": "a.jpg", "imgid": 0, "split": "test"}]}))
    (tmp_path / "img").mkdir()
    proc = subprocess.run([sys.executable, "-m", "mmd2v2_core.cli", "data", "karpathy", "--json", str(bad),
                           "--images", str(tmp_path / "img"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {bad}: images[0]: missing field 'sentences'"


def test_report_tables_command(tmp_path, capsys):
    result = tmp_path / "r.json"
    result.write_text(json.dumps({"row": "kit", "dataset": "synth-coco", "split": "test",
                                  "metrics": {f"{d}_r{k}": 1.0 for d in ("i2t", "t2i") for k in (1, 5, 10)}}))
    assert main(["report", "tables", "--results", str(result), "--out", str(tmp_path / "t")]) == 0
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == sorted(
        f"{t}.{e}" for t in ("table1", "table2", "table1_synthetic") for e in ("md", "tex", "csv"))


def test_study_profiles_are_listed_and_an_unknown_one_refused(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--help"])
    assert exit_info.value.code == 0 and "{smoke,embedded,real}" in capsys.readouterr().out
    assert main(["study", "--profile", "huge"]) == 2
    assert "invalid choice: 'huge' (choose from 'smoke', 'embedded', 'real')" in capsys.readouterr().err
