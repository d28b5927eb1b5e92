"""Training-curve figure: one panel per run, every seed's loss terms, validation recall when logged."""

import json

import pytest

from mmd2v2_core.viz.curves import plot_training_curves


@pytest.mark.parametrize("val_steps", [[], [0, 4, 8]], ids=["not validated", "validated 3 times"])
def test_training_curves(tmp_path, val_steps):
    runs = {}
    for run, scale in (("a", 1.0), ("b", 20.0)):
        runs[f"run {run}"] = {}
        for seed in (0, 1):
            rows = [{"step": s, "kind": "train", "loss": scale / s, "kd": scale / s / 2} for s in (2, 4, 6, 8)]
            rows += [{"step": s, "kind": "val", "i2t_r1": 1.0 + s, "t2i_r1": 0.5 + s, "mean": 2.0 + s} for s in val_steps]
            path = tmp_path / f"{run}{seed}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            runs[f"run {run}"][seed] = path
    out = plot_training_curves(runs, tmp_path / "curves.png")
    assert out.stat().st_size > 5000
