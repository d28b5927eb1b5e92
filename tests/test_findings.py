"""Findings: every verdict is computed from the results, and changes when they change."""

import pytest

from mmd2v2_core.report.findings import CLAIMS, Claim, check_claims, findings_markdown, verdict


def _results(values, dataset="synth-coco", key="mean", images=5000):
    return [{"dataset": dataset, "metrics": {key: v, "i2t_r1": v}, "images": images, "seed": i}
            for i, v in enumerate(values)]


@pytest.mark.parametrize("a, b, expected", [
    ([60, 62, 61], [20, 22, 21], "reproduced"),
    ([20, 22, 21], [60, 62, 61], "contradicted"),
    ([60, 64, 62], [61, 63, 59], "within noise"),
])
def test_verdict_follows_the_numbers(a, b, expected):
    data = {"x": _results(a), "y": _results(b)}
    rows = check_claims(data.get, ("synth-coco",), (Claim("x beats y", "x", "y"),))
    assert rows[0]["verdict"] == expected
    assert rows[0]["diff"] == pytest.approx(sum(a) / 3 - sum(b) / 3)
    assert expected in findings_markdown(rows, [])


def test_at_least_claims_and_single_seeds():
    assert verdict(0.5, 1.0, 3, at_least=True) == "within noise (agrees: ≥)"
    assert verdict(5.0, 1.0, 1) == "one seed: no spread to judge"


def test_missing_runs_are_left_out_and_chance_multiples_are_shown():
    data = {"x": _results([50, 52])}
    assert check_claims(lambda name: data.get(name, []), ("synth-coco",), (Claim("x beats y", "x", "y"),)) == []
    unaligned = _results([0.04], images=5000)
    text = findings_markdown([], unaligned)
    assert "2.0×" in text and "reproduced (< 5× chance)" in text


def test_a_claim_against_several_rows_takes_the_best_on_each_test_set_and_names_it():
    data = {"smke": _results([80, 81, 82]), "cca_frozen": _results([70]), "cca_frozen_views": _results([90])}
    data["smke"] += _results([60, 61, 62], dataset="synth-flickr")
    data["cca_frozen"] += _results([40], dataset="synth-flickr")
    claim = next(c for c in CLAIMS if c.text.startswith("Training beats a linear alignment"))
    rows = check_claims(lambda name: data.get(name, []), ("synth-coco", "synth-flickr"), (claim,))
    coco, flickr = rows
    assert coco["b"] == 90 and coco["verdict"] == "contradicted" and "best: `cca_frozen_views`" in coco["claim"]
    assert flickr["b"] == 40 and flickr["verdict"] == "reproduced" and "best: `cca_frozen`" in flickr["claim"]
    assert coco["spread"] == 2 and coco["seeds"] == 3  # the closed-form row is one deterministic fit
    data["cca_frozen_views"] = _results([81.5])
    assert check_claims(lambda name: data.get(name, []), ("synth-coco",), (claim,))[0]["verdict"] == "within noise"
