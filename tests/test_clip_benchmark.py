"""The kit's metric against the field's reference: CLIP_benchmark's own retrieval evaluation of a kit student, on a
kit test split written in the layout its Flickr loader reads, gives the recalls of `mmd2v2 eval retrieval`."""

from __future__ import annotations

import json

import pytest

from mmd2v2_core.cli import main
from mmd2v2_core.eval.clip_benchmark import write_flickr_layout

pytest.importorskip("clip_benchmark")  # the 'bench' extra; `make test` installs it


@pytest.mark.parametrize("exported", [False, True])
def test_clip_benchmark_scores_a_student_as_the_kit_does(smoke_checkpoint, smoke_data, tmp_path, capsys, exported):
    data = smoke_data["synth-coco"]
    checkpoint = student = smoke_checkpoint
    if exported:
        main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "export")])
        student = tmp_path / "export"
    assert main(["eval", "retrieval", "--checkpoint", str(checkpoint), "--data", str(data), "--split", "val",
                 "--out", str(tmp_path / "kit.json")]) == 0
    kit = json.loads((tmp_path / "kit.json").read_text())["metrics"]
    annotations = write_flickr_layout(data, "val", tmp_path / "flickr")
    assert main(["eval", "clip-benchmark", "--checkpoint", str(student), "--dataset", "flickr30k", "--dataset-root",
                 str(tmp_path / "flickr"), "--split", "val", "--annotation-file", str(annotations),
                 "--out", str(tmp_path / "cb.json")]) == 0
    theirs = json.loads((tmp_path / "cb.json").read_text())["metrics"]
    assert 0 < kit["i2t_r10"] < 100  # a partly trained student: recalls that can differ
    for k in (1, 5, 10):  # fp32 on both sides; one caption of the split is 0.05 points
        assert 100 * theirs[f"text_retrieval_recall@{k}"] == pytest.approx(kit[f"i2t_r{k}"], abs=0.1)
        assert 100 * theirs[f"image_retrieval_recall@{k}"] == pytest.approx(kit[f"t2i_r{k}"], abs=0.1)
    assert "text_retrieval_recall@1" in capsys.readouterr().out
