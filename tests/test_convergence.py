"""A run's convergence verdict is read off its validations: the last quarter's gain in val R@1, both directions."""

import json
from pathlib import Path

from mmd2v2_core.study import CONVERGED_GAIN, convergence

MEASURED = Path(__file__).parent / "data" / "convergence"


def _log(folder, vals, steps=100):
    """``vals``: (step, I→T R@1, T→I R@1)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"step": s, "kind": "train", "loss": 1.0} for s in range(25, steps + 1, 25)]
    rows += [{"step": s, "kind": "val", "i2t_r1": i2t, "t2i_r1": t2i, "mean": (i2t + t2i) / 2} for s, i2t, t2i in vals]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_a_plateau_is_converged_and_a_late_climb_in_either_direction_is_not(tmp_path):
    flat = convergence(_log(tmp_path / "flat", [(25, 60, 58), (50, 85, 84), (75, 90, 89), (100, 90.4, 89.8)]))
    assert flat["converged"] and flat["late_step"] == 75 and flat["half_step"] == 50
    assert flat["half"] == {"i2t": 85, "t2i": 84} and abs(flat["gain"] - 0.8) < 1e-9
    text_late = convergence(_log(tmp_path / "text", [(25, 60, 50), (50, 85, 70), (75, 90, 80), (100, 90.5, 83.0)]))
    assert not text_late["converged"] and text_late["gains"] == {"i2t": 0.5, "t2i": 3.0} and text_late["gain"] == 3.0
    assert text_late["final"] == {"i2t": 90.5, "t2i": 83.0} and text_late["step"] == 100


def test_the_points_are_the_last_validations_by_half_and_three_quarters_of_the_steps(tmp_path):
    got = convergence(_log(tmp_path, [(30, 50, 50), (60, 70, 70), (90, 75, 75), (120, 75.5, 75.2)], steps=120))
    assert (got["half_step"], got["late_step"]) == (60, 90) and got["converged"]  # 60 ≤ 0.5 · 120, 90 ≤ 0.75 · 120


def test_a_run_not_validated_by_three_quarters_of_its_steps_has_no_verdict(tmp_path):
    assert convergence(_log(tmp_path / "once", [(100, 80, 80)])) is None
    assert convergence(_log(tmp_path / "late", [(80, 70, 70), (100, 80, 80)])) is None


def test_the_check_tells_600_steps_of_s_smke_from_1800(tmp_path):
    """The curves the margin was set on (``configs/embedded.yaml``): S-SMKE, embedded profile, seed 0, validated at
    every eighth of its steps. 600 steps are not converged (its last quarter still gains), 1,800 steps are."""
    short, long = convergence(MEASURED / "smke-600"), convergence(MEASURED / "smke-1800")
    assert not short["converged"] and short["gain"] >= CONVERGED_GAIN
    assert long["converged"] and long["gain"] < CONVERGED_GAIN


def test_the_report_says_which_runs_converged():
    from mmd2v2_core.report.sections import convergence_table, training_reading

    def summary(late, final):
        gains = {"i2t": final - late, "t2i": 0.0}
        return {"step": 100, "pairs_per_s": 900.0, "first_loss": 4.0, "final_loss": 1.0,
                "convergence": {"step": 100, "half_step": 50, "half": {"i2t": late - 5, "t2i": 80.0}, "late_step": 75,
                                "late": {"i2t": late, "t2i": 85.0}, "final": {"i2t": final, "t2i": 85.0},
                                "gains": gains, "gain": max(gains.values()), "converged": final - late < CONVERGED_GAIN}}

    summaries = {"flat run": [summary(90.0, 90.5), summary(91.0, 91.2)],
                 "climbing run": [summary(90.0, 90.5), summary(70.0, 75.0)]}
    table = convergence_table(summaries)
    assert "| flat run | 2 | 85.5 / 80.0 | 90.5 / 85.0 | 90.8 / 85.0 | +0.5 | yes |" in table
    assert "| climbing run | 2 | 75.0 / 80.0 | 80.0 / 85.0 | 82.8 / 85.0 | +5.0 | no (1 of 2 seeds gained ≥ 1) |" in table
    reading = training_reading(summaries)
    assert "Not converged" in reading and "climbing run" in reading.split("Not converged")[1]
    assert "1 of 2 runs converged" in reading and "val R@1, image→text and text→image" in reading
    assert "Every run converged" in training_reading({"flat run": summaries["flat run"]})
