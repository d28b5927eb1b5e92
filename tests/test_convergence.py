"""A run's convergence verdict is read off its validations: the gain of its last 20 % of steps."""

import json

from mmd2v2_core.study import CONVERGED_GAIN, convergence


def _log(folder, vals, steps=100):
    rows = [{"step": s, "kind": "train", "loss": 1.0} for s in range(25, steps + 1, 25)]
    rows += [{"step": s, "kind": "val", "mean": m} for s, m in vals]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_a_plateau_is_converged_and_a_late_climb_is_not(tmp_path):
    (tmp_path / "flat").mkdir(), (tmp_path / "climbing").mkdir()
    flat = convergence(_log(tmp_path / "flat", [(20, 60.0), (40, 80.0), (60, 88.0), (80, 90.0), (100, 90.4)]))
    assert flat["converged"] and flat["late_step"] == 80 and abs(flat["gain"] - 0.4) < 1e-9
    climbing = convergence(_log(tmp_path / "climbing", [(20, 30.0), (40, 45.0), (60, 60.0), (80, 70.0), (100, 78.0)]))
    assert not climbing["converged"] and climbing["gain"] == 8.0 > CONVERGED_GAIN
    assert (climbing["late"], climbing["final"], climbing["step"]) == (70.0, 78.0, 100)


def test_the_late_point_is_the_last_validation_at_or_before_80_percent(tmp_path):
    got = convergence(_log(tmp_path, [(30, 50.0), (60, 70.0), (90, 75.0), (120, 75.5)], steps=120))
    assert got["late_step"] == 90 and got["converged"]  # 90 ≤ 0.8 · 120 = 96


def test_a_run_validated_once_has_no_verdict(tmp_path):
    assert convergence(_log(tmp_path, [(100, 80.0)])) is None


def test_the_report_says_which_runs_converged():
    from mmd2v2_core.report.sections import convergence_table, training_reading

    def summary(late, final):
        return {"step": 100, "pairs_per_s": 900.0, "first_loss": 4.0, "final_loss": 1.0,
                "convergence": {"step": 100, "late_step": 80, "late": late, "final": final, "gain": final - late,
                                "converged": final - late < CONVERGED_GAIN}}

    summaries = {"flat run": [summary(90.0, 90.5), summary(91.0, 91.2)],
                 "climbing run": [summary(90.0, 90.5), summary(70.0, 75.0)]}
    table = convergence_table(summaries)
    assert "| flat run | 2 | 90.5 | 90.8 | +0.50 | yes |" in table
    assert "| climbing run | 2 | 80.0 | 82.8 | +5.00 | no (1 of 2 seeds gained ≥ 1) |" in table
    reading = training_reading(summaries)
    assert "Not converged" in reading and "climbing run" in reading.split("Not converged")[1]
    assert "1 of 2 runs converged" in reading
    assert "Every run converged" in training_reading({"flat run": summaries["flat run"]})
