"""Findings: every verdict is computed from the results, and changes when they change."""

import pytest

from mmd2v2_core.report.findings import Claim, check_claims, findings_markdown, verdict


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
