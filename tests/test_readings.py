"""The notebooks' readings and recipes are computed: fed other results (or another config), they say otherwise."""

from types import SimpleNamespace

import pytest

from mmd2v2_core.config import load_config
from mmd2v2_core.profiles import PROFILES
from mmd2v2_core.report.recipes import describe
from mmd2v2_core.report.sections import ablation_reading, embedding_reading, table1_reading, training_reading

TABLE1 = ("mmd2v2_6_weak", "mmd2v2_6", "smke")


def _results(means: dict[str, list[float]], dataset: str = "synth-coco", images: int = 5000) -> dict[str, list[dict]]:
    return {run: [{"dataset": dataset, "images": images, "seed": i, "metrics": {"mean": v, "i2t_r1": v}}
                  for i, v in enumerate(values)] for run, values in means.items()}


def _of(results: dict, profile: str = "embedded", unconverged: tuple[str, ...] = ()) -> SimpleNamespace:
    """What the readings read off a ``Study``: per-seed results by run, the run labels, the test sets and whether
    each run converged (None for rows that are not training runs)."""
    return SimpleNamespace(results=lambda run: results.get(run, []), labels=PROFILES[profile].labels,
                           test_sets=PROFILES[profile].test_sets,
                           converged=lambda run: None if run not in PROFILES[profile].run else run not in unconverged)


def test_table1_reading_names_the_leader_and_follows_the_verdicts():
    strong = _results({"cca": [30], "cca_frozen": [85], "cca_frozen_views": [80], "unaligned": [0.1],
                       "mmd2v2_6_weak": [20, 21, 22], "mmd2v2_6": [78, 79, 80], "smke": [90, 91, 92]})
    text = table1_reading(_of(strong), TABLE1)
    assert "synth-coco: S-SMKE (ITC + contrastive distillation) leads with a mean recall of 91.0" in text
    assert "(thumbnail CCA 30.0; frozen-input CCA (`cca_frozen`) 85.0; unaligned towers 0.1)" in text
    assert ("; above the thumbnail CCA: MM-D2V2 5+1, strong teacher (KD only), S-SMKE (ITC + contrastive "
            "distillation) (not: MM-D2V2 5+1, weak teacher (random-init, KD only))") in text
    assert ("; above the frozen-input CCA (`cca_frozen`): S-SMKE (ITC + contrastive distillation) (not: MM-D2V2 5+1, "
            "weak teacher (random-init, KD only), MM-D2V2 5+1, strong teacher (KD only)).") in text
    assert "Strong vs weak teacher (MM-D2V2 5+1), synth-coco: +58.00 points" in text and "— reproduced." in text

    weak = _results({"cca": [30], "cca_frozen_views": [95], "mmd2v2_6_weak": [40, 41, 42], "mmd2v2_6": [39, 41, 43],
                     "smke": [35, 36, 37]})
    text = table1_reading(_of(weak), TABLE1)
    assert "MM-D2V2 5+1, weak teacher (random-init, KD only) leads with a mean recall of 41.0" in text
    assert "every trained row is above the thumbnail CCA" in text
    assert "no trained row is above the frozen-input CCA (`cca_frozen_views`)." in text
    assert "Strong vs weak teacher (MM-D2V2 5+1), synth-coco: +0.00 points" in text and "within noise" in text
    assert "S-SMKE vs MM-D2V2 5+1, synth-coco: -5.00 points" in text and "contradicted" in text
    assert table1_reading(_of({}), TABLE1) == "Reading: no run has been scored yet."
    below = table1_reading(_of(_results({"cca": [50], "mmd2v2_6": [20], "smke": [30]})), TABLE1)
    assert "no trained row is above the thumbnail CCA." in below and "frozen-input" not in below


def test_ablation_reading_verdict_changes_with_the_seed_spread():
    pair = [("mmd2v2_6", "mmd2v2_6_shared")]
    clear = ablation_reading(_of(_results({"mmd2v2_6": [50, 51, 52], "mmd2v2_6_shared": [40, 41, 42]})), pair)
    noisy = ablation_reading(_of(_results({"mmd2v2_6": [45, 51, 57], "mmd2v2_6_shared": [40, 41, 42]})), pair)
    assert "+10.00 points" in clear and "the first higher, beyond the seed range" in clear
    assert "+10.00 points" in noisy and "larger seed range 12.00" in noisy and "within noise" in noisy
    assert "not converged" not in clear
    late = ablation_reading(_of(_results({"mmd2v2_6": [50, 51, 52], "mmd2v2_6_shared": [40, 41, 42]}),
                                unconverged=("mmd2v2_6_shared",)), pair)
    assert "beyond the seed range (not converged: MM-D2V2 5+1, shared attention)." in late


@pytest.mark.parametrize("final, verdict", [(0.2, "kept the least of its loss (10 %)"),
                                            (1.5, "has barely trained")])
def test_training_reading_follows_the_logged_losses(final, verdict):
    summaries = {"A": [{"first_loss": 2.0, "final_loss": final, "pairs_per_s": 500.0}],
                 "B": [{"first_loss": 4.0, "final_loss": 2.4, "pairs_per_s": 300.0}]}
    text = training_reading(summaries)
    assert verdict in text and "slowest: B, 300 pairs/s" in text


def test_recipe_is_read_off_the_resolved_config():
    mmd = describe(load_config("embedded", ["student.frontend_cache=/tmp/frontend"]))
    assert mmd["layout"] == "2+1 (seed 5+1)" and mmd["attention"] == "separate"
    assert mmd["loss"] == "1 × KD MSE (image + text)" and mmd["steps × batch"] == "1800 × 64"
    assert mmd["teacher"] == "efficientnet-lite0" and mmd["target"] == "pooled, whitened to 128, 64 px"
    smke = describe(load_config("embedded", ["student.frontend_cache=/tmp/frontend", "student.preset=smke", "loss.kd=cdl", "loss.kd_weight=3",
                                             "loss.itc_weight=1", "loss.memory_bank=4096", "teacher.whiten=false",
                                             "optim.steps=500", "student.attention=shared"]))
    assert smke["loss"] == "3 × contrastive distillation + bank 4,096 + 1 × ITC"
    assert smke["steps × batch"] == "500 × 64" and smke["target"] == "pooled, raw, 64 px"
    assert smke["attention"] == "shared"


def test_embedding_reading_follows_the_statistics():
    stats = {"matched_cosine": 0.87, "unmatched_cosine": 0.01, "same_attribute_cosine": 0.18,
             "nearest_caption_same_attribute": 1.0, "attribute_chance": 0.24, "modality_gap": 0.5}
    text = embedding_reading(stats, 300)
    assert "score far lower but above a random pair (0.18)" in text and "well above chance" in text
    text = embedding_reading({**stats, "same_attribute_cosine": 0.6, "nearest_caption_same_attribute": 0.3}, 300)
    assert "score almost as high (0.60)" in text and "not what organises" in text
    assert "a caption is far closer to its own image than to a random other one (cosine 0.87 vs 0.01)" in text
    untrained = {**stats, "matched_cosine": -0.18, "unmatched_cosine": -0.18, "same_attribute_cosine": -0.19}
    text = embedding_reading(untrained, 8)
    assert "a caption is no closer to its own image than to a random other one (cosine -0.18 vs -0.18)" in text
    assert "score no higher than a random pair (-0.19)" in text
