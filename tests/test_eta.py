"""The estimate a study prints before it starts: this machine's probe, and a recorded study scaled by it and by the
plan (steps, runs left, runs side by side)."""

from __future__ import annotations

import json

import pytest

from mmd2v2_core import eta
from mmd2v2_core.eta import expected_seconds, eta_lines, probe, training_to_do
from mmd2v2_core.study import NOTEBOOKS, Study

TRAINING = dict(eta.TRAINING_NOTEBOOKS)


@pytest.mark.parametrize("size", ["smoke", "embedded"])
def test_the_probe_measures_training_steps_at_the_students_shapes(size):
    import torch

    threads = torch.get_num_threads()
    assert probe(size, seconds=0.2) > 0
    assert torch.get_num_threads() == threads  # the probe's one thread is given back


def _reference(study: Study, probe_rate: float) -> dict:
    """A record as if ``study`` had run on a machine with ``probe_rate``: 10 s outside training per notebook, each
    training notebook's pairs at 100 pairs/s per run."""
    todo = training_to_do(study)
    notebooks = {}
    for name in NOTEBOOKS:
        runs, pairs = todo.get(name, (0, 0))
        jobs = study.side_by_side(runs) if pairs else 0
        notebooks[name] = {"seconds": 10 + pairs / (100 * max(1, jobs)), "training_seconds": pairs / (100 * max(1, jobs)),
                           "pairs": pairs, "side_by_side": jobs}
    return {"cpu": "the reference CPU", "probe": probe_rate, "notebooks": notebooks}


def test_the_estimate_scales_the_record_by_the_probe_and_the_plan(tmp_path):
    study = Study("smoke", tmp_path / "run")
    reference = _reference(study, probe_rate=500.0)
    same = expected_seconds(study, list(NOTEBOOKS), 500.0, reference)
    assert same == pytest.approx({n: r["seconds"] for n, r in reference["notebooks"].items()})
    # a machine half as fast takes twice as long, everywhere
    assert expected_seconds(study, list(NOTEBOOKS), 250.0, reference) == pytest.approx({n: 2 * s for n, s in same.items()})
    # twice the steps: twice the training, the same rest
    longer = Study("smoke", tmp_path / "run", [f"optim.steps={2 * study.config('smke', 0, inputs=False).optim.steps}"])
    doubled = expected_seconds(longer, list(NOTEBOOKS), 500.0, reference)
    for name, seconds in same.items():
        extra = reference["notebooks"][name]["training_seconds"]
        assert doubled[name] == pytest.approx(seconds + extra), name
    assert doubled["02_distillation_pretraining"] > same["02_distillation_pretraining"] + 1


def test_trained_runs_are_not_expected_again(tmp_path, monkeypatch):
    study = Study("smoke", tmp_path / "run")
    reference = _reference(study, probe_rate=500.0)
    first = study.profile.table1[0]
    monkeypatch.setattr(Study, "trained", lambda self, run, seed: run == first)
    runs, pairs = training_to_do(study)["02_distillation_pretraining"]
    assert runs == len(study.profile.table1) - 1
    left = expected_seconds(study, ["02_distillation_pretraining"], 500.0, reference)["02_distillation_pretraining"]
    assert left < reference["notebooks"]["02_distillation_pretraining"]["seconds"]


def test_the_lines_say_what_the_estimate_rests_on_or_that_there_is_none(tmp_path, monkeypatch):
    study = Study("smoke", tmp_path / "run")
    record = tmp_path / "study_time.json"
    monkeypatch.setattr(eta, "from_root", lambda path: record)
    none = [f"[eta] no recorded smoke study in {eta.REFERENCE} to scale from: no estimate"]
    for text in ("", "{not json", '["smoke"]', '{"smoke": {"probe": 1000}}', '{"embedded": {}}'):
        record.write_text(text)  # missing, malformed, or not a record of this profile: no estimate, no error
        assert eta_lines(study, list(NOTEBOOKS), here=500.0) == none, text
    record.write_text(json.dumps({"smoke": _reference(study, 1000.0)}))
    lines = eta_lines(study, list(NOTEBOOKS), here=500.0)
    assert lines[0].startswith("[eta] expected on ") and "00 20 s" in lines[0]  # 10 s recorded, a machine half as fast
    assert "the reference CPU (its probe 1000 pairs/s, here 500: 2.00× its time)" in lines[1]
    assert eta_lines(Study("real", tmp_path / "real"), list(NOTEBOOKS))[0].startswith("[eta] the real study's")


def test_a_whole_study_records_what_later_estimates_scale(smoke_study):
    """The session's smoke study: each notebook's record holds its training share; the study's reports hold the
    profile's reference; its log printed the estimate (or why there was none) before the first notebook."""
    root, _ = smoke_study
    done = {n: json.loads((root / "run" / "done" / f"{n}.json").read_text()) for n in NOTEBOOKS}
    for name in NOTEBOOKS:
        trains = name in TRAINING
        assert (done[name]["pairs"] > 0) == trains and (done[name]["training_seconds"] > 0) == trains, name
        assert done[name]["training_seconds"] < done[name]["seconds"]
    record = json.loads((root / "reports" / "study_time.json").read_text())["smoke"]
    assert record["notebooks"]["02_distillation_pretraining"]["pairs"] == done["02_distillation_pretraining"]["pairs"]
    assert record["probe"] > 0
    log = (root / "study.log").read_text().splitlines()
    assert log[0].startswith("[eta] ") and log[-2].startswith("[study] timings recorded for later estimates: ")
