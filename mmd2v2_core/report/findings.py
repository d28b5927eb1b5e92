"""The seed's and the thesis' qualitative claims, each checked against the study's measurements.

A claim compares two runs (or a run against chance, or against the best of several rows on each test set) on one
quantity; its verdict is computed, never written:

* **reproduced** — the difference has the claimed sign and is larger than the seed-to-seed spread
  (the larger of the two runs' ranges over seeds);
* **contradicted** — the opposite sign, larger than the spread;
* **within noise** — smaller than the spread (or one seed only: no spread to judge against).

Recall is also given as a multiple of chance (image→text R@1 of a random ranking ≈ 100 / images), so the 5K and
the 1K test sets compare.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..study import FROZEN_INPUT_BASELINES


@dataclass(frozen=True)
class Claim:
    text: str
    a: str  # run whose value should be the larger (per the claim)
    # the other run, or several: the best of them on each test set; None: compare ``a`` with its own ``key_b``
    b: str | tuple[str, ...] | None
    key: str = "mean"
    key_b: str | None = None  # compare two metrics of one run (e.g. i2t vs t2i)
    at_least: bool = False  # "≥": a tie within noise agrees with the claim


CLAIMS = (
    Claim("KD-only MM-D2V2 aligns the towers (strong teacher vs unaligned)", "mmd2v2_6", "unaligned"),
    Claim("A strong teacher beats a weak one (MM-D2V2, KD only)", "mmd2v2_6", "mmd2v2_6_weak"),
    Claim("5+2 ≥ 5+1 (MM-D2V2 layouts)", "mmd2v2_7_2", "mmd2v2_6", at_least=True),
    Claim("5+1 ≥ 6+1 (MM-D2V2 layouts)", "mmd2v2_6", "mmd2v2_7", at_least=True),
    Claim("Image→text beats text→image (S-SMKE, R@1)", "smke", None, key="i2t_r1", key_b="t2i_r1"),
    Claim("S-SMKE beats MM-D2V2 5+1", "smke", "mmd2v2_6"),
    Claim("A pretrained teacher beats none (S-SMKE vs ITC only)", "smke", "smke_no_teacher"),
    Claim("Separate attention ≥ shared attention (MM-D2V2 5+1)", "mmd2v2_6", "mmd2v2_6_shared", at_least=True),
    Claim("Rendering views help zero-shot transfer (S-SMKE)", "smke", "smke_no_views"),
    Claim("Hard negatives cost no retrieval (S-SMKE with vs without)", "smke_hard_negatives", "smke", at_least=True),
    # DESIGN.md's findings discipline: against the strongest cheap alternative, a closed-form map of the same inputs
    Claim("Training beats a linear alignment of the same frozen inputs (S-SMKE vs the best frozen-input CCA)", "smke",
          FROZEN_INPUT_BASELINES),
    # the real profile's (COCO / Flickr30K) runs; a profile without them leaves these out
    Claim("A BEiT-v2 teacher beats a D2V2-image one (MM-D2V2 5+1)", "mmd2v2_6", "mmd2v2_6_d2v2"),
    Claim("Self-supervised BEiT-v2 beats its ImageNet-fine-tuned version as teacher (S-SMKE)", "smke",
          "smke_beitv2_ft"),
    Claim("BEiT-v2 beats D2V2-image as teacher (S-SMKE)", "smke", "smke_d2v2"),
    Claim("BEiT-v2 ≥ DINO as teacher (S-SMKE)", "smke", "smke_dino", at_least=True),
)


# Binding (notebook 05): swap accuracy on the synthetic hard negatives, where a bag of words ties (50 %)
BINDING_CLAIMS = (
    Claim("S-SMKE binds attributes beyond a bag of words (swap accuracy vs the best frozen-input CCA)", "smke",
          FROZEN_INPUT_BASELINES, key="swaps"),
    Claim("MM-D2V2 5+1 binds attributes beyond a bag of words (swap accuracy vs the best frozen-input CCA)", "mmd2v2_6",
          FROZEN_INPUT_BASELINES, key="swaps"),
    Claim("Separate attention binds at least as well as shared (MM-D2V2 5+1, swap accuracy)", "mmd2v2_6",
          "mmd2v2_6_shared", key="swaps", at_least=True),
    Claim("Hard negatives improve binding (S-SMKE with vs without, swap accuracy)", "smke_hard_negatives", "smke",
          key="swaps"),
)


def _values(results: list[dict], dataset: str, key: str) -> list[float]:
    return [r["metrics"][key] for r in results if r["dataset"] == dataset]


def verdict(diff: float, spread: float, seeds: int, at_least: bool = False) -> str:
    if seeds < 2:
        return "one seed: no spread to judge"
    if abs(diff) <= spread:
        return "within noise (agrees: ≥)" if at_least else "within noise"
    return "reproduced" if diff > 0 else "contradicted"


def _other(claim: Claim, results_of, dataset: str) -> tuple[list[float], str | None]:
    """The values ``claim.a`` is compared with on ``dataset``, and which of several rows they are (the best one)."""
    if claim.b is None:
        return _values(results_of(claim.a), dataset, claim.key_b), None
    if isinstance(claim.b, str):
        return _values(results_of(claim.b), dataset, claim.key), None
    scored = {b: v for b in claim.b if (v := _values(results_of(b), dataset, claim.key))}
    best = max(scored, key=lambda b: statistics.fmean(scored[b]), default=None)
    return scored.get(best, []), best


def check_claims(results_of, datasets: tuple[str, ...], claims=CLAIMS) -> list[dict]:
    """``results_of(run) -> list of per-seed result dicts`` (as ``Study.results``); one row per claim and dataset
    whose runs exist. A claim against several rows names the best one in its text."""
    rows = []
    for claim in claims:
        for dataset in datasets:
            va = _values(results_of(claim.a), dataset, claim.key)
            vb, best = _other(claim, results_of, dataset)
            if not va or not vb:
                continue
            seeds = max(len(va), len(vb))  # the unaligned towers and closed-form rows are deterministic: one seed
            spread = max(max(va) - min(va), max(vb) - min(vb))
            diff = statistics.fmean(va) - statistics.fmean(vb)
            rows.append({"claim": claim.text + (f" — best: `{best}`" if best else ""), "dataset": dataset,
                         "runs": tuple(r for r in (claim.a, best or claim.b) if isinstance(r, str)),
                         "a": statistics.fmean(va), "b": statistics.fmean(vb), "diff": diff, "spread": spread,
                         "seeds": seeds, "verdict": verdict(diff, spread, seeds, claim.at_least)})
    return rows


def chance_multiple(result: dict) -> float:
    """Image→text R@1 as a multiple of a random ranking's (≈ 100 / images)."""
    return result["metrics"]["i2t_r1"] / (100 / result["images"])


def findings_markdown(rows: list[dict], unaligned: list[dict]) -> str:
    lines = ["| claim (seed / thesis) | test set | measured | other | difference | seed spread | verdict |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['claim']} | {r['dataset']} | {r['a']:.2f} | {r['b']:.2f} | {r['diff']:+.2f} | "
                     f"{r['spread']:.2f} | {r['verdict']} |")
    for u in unaligned:
        multiple = chance_multiple(u)
        verdict_text = "reproduced" if multiple < 5 else "contradicted"
        lines.append(f"| Unaligned towers ≈ chance (I→T R@1 as × chance) | {u['dataset']} | {multiple:.1f}× | 1× | "
                     f"| | {verdict_text} (< 5× chance) |")
    lines += ["", "Measured / other: mean recall (mean of R@1/5/10 both ways, %) averaged over seeds, unless the claim "
              "names R@1 or swap accuracy (% of hard-negative swaps where the caption scores above the negative); "
              "seed spread: the larger range over seeds of the two; a verdict needs the difference to "
              "exceed it."]
    return "\n".join(lines)
