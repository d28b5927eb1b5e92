"""The study: which runs it makes, with which recipe, and where their results go (the report reads them).

The notebooks in ``notebooks/`` call these functions in order; ``runner.py`` executes the notebooks.
Everything is written under one run directory and every stage skips work whose results already exist,
so a rerun continues where the last one stopped::

    <run_dir>/data/<domain>/           synthetic datasets (prepared indexes)
    <run_dir>/cache/<teacher>/         teacher targets of the train split
    <run_dir>/runs/<run>/seed<k>-<key>/                 training runs (checkpoints, metrics.jsonl, config.yaml)
    <run_dir>/results/<run>/seed<k>-<key>-<dataset>.json   test-split retrieval results

``<key>`` is a short hash of the run's resolved training config (what it learns from, not where it writes): change
one setting of one run (``run_overrides``) and that run alone trains and is scored again; the others are reused.

Runs (``RUNS``) and the rows they feed:

* Table 1 — the student before distillation (its towers never aligned: the seed's "Data2Vec2" row),
  MM-D2V2 with the 5+1, 5+2 and 6+1 layouts (KD = MSE on the teacher target, the seed's loss), and the
  successor S-SMKE (ITC + contrastive distillation; + teacher memory bank where the profile has one);
* teacher ablation on the S-SMKE recipe (as the thesis): pretrained teacher, random-init teacher of the
  same architecture, no teacher (ITC only);
* attention ablation on the MM-D2V2 recipe: separate vs shared self-attention, and the three layouts.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from data_prep.synth import generate
from data_prep.synth.transfer import generate_transfer_sets

from .config import TrainConfig, load_config, to_dict
from .data.datasets import RetrievalSplit
from .data.index import load_manifest, read_log_lines, write_text_atomic
from .errors import ConfigError
from .eval.baseline import fit_cca
from .eval.embed import evaluate_retrieval, student_inputs
from .eval.transfer import transfer_decomposition
from .paths import from_root
from .profiles import get_profile
from .student.frontend_cache import CachedFrontEnd
from .student.presets import student_from_config
from .teachers.cache import TargetCache, build_cache
from .teachers.inspect import preprocess_of
from .teachers.registry import teacher_from_config
from .train.checkpoint import checkpoint_root, load_trained_student
from .train.loop import train

NOTEBOOKS = ("00_data_prep", "01_teacher_targets", "02_distillation_pretraining", "03_retrieval_eval",
             "04_ablation_teacher", "05_ablation_attention", "06_embeddings_and_browser")
TEST_SETS = ("synth-coco", "synth-flickr")


@dataclass(frozen=True)
class RunSpec:
    name: str
    label: str
    overrides: tuple[str, ...]
    teacher: str  # which target cache: "pretrained" | "random" | "none"


# S-SMKE: ITC + contrastive distillation (+ memory bank) on the raw (unwhitened) teacher feature through its KD head;
# the distillation term weighs 3× the ITC term (the embedded measurement: 3× beat 1× and 10×).
_SMKE = ("student.preset=smke", "loss.kd=cdl", "loss.kd_weight=3.0", "loss.itc_weight=1.0", "teacher.whiten=false")
RUNS = {r.name: r for r in [
    RunSpec("mmd2v2_6", "MM-D2V2 5+1, strong teacher (KD only)", (), "pretrained"),
    RunSpec("mmd2v2_6_weak", "MM-D2V2 5+1, weak teacher (random-init, KD only)", ("teacher.tiny=true",), "random"),
    RunSpec("mmd2v2_7_2", "MM-D2V2 7_2 (5+2)", ("student.preset=mmd2v2_7_2",), "pretrained"),
    RunSpec("mmd2v2_7", "MM-D2V2 7 (6+1)", ("student.preset=mmd2v2_7",), "pretrained"),
    RunSpec("mmd2v2_6_shared", "MM-D2V2 5+1, shared attention", ("student.attention=shared",), "pretrained"),
    RunSpec("smke", "S-SMKE (ITC + contrastive distillation)", _SMKE, "pretrained"),
    RunSpec("smke_random_teacher", "S-SMKE, random-init teacher", (*_SMKE, "teacher.tiny=true"), "random"),
    RunSpec("smke_no_teacher", "S-SMKE without teacher (ITC only)",
            ("student.preset=smke", "loss.kd=none", "loss.itc_weight=1.0", "teacher.name=none"), "none"),
    RunSpec("smke_no_views", "S-SMKE without rendering views", (*_SMKE, "data.rendering_views=0"), "pretrained"),
]}
TABLE1 = ("mmd2v2_6_weak", "mmd2v2_6", "mmd2v2_7_2", "mmd2v2_7", "smke")
TEACHER_ABLATION = ("smke", "smke_random_teacher", "smke_no_teacher")
ATTENTION_ABLATION = ("mmd2v2_6", "mmd2v2_6_shared", "mmd2v2_7_2", "mmd2v2_7")
TRANSFER_ABLATION = ("smke", "smke_no_views")
LABELS = {**{name: run.label for name, run in RUNS.items()}, "unaligned": "Unaligned towers (step 0)",
          "cca": "Trivial baseline: 16×16 thumbnails + bag of words, CCA"}


# What decides where a run writes or how fast it goes, not what it learns: left out of its key.
_NOT_IN_KEY = ("run", "data.num_workers")
_PATHS = ("data.root", "teacher.cache", "student.frontend_cache")


def run_key(cfg: TrainConfig, study_dir: Path) -> str:
    """8 hex digits of the resolved config's hash, without the settings in ``_NOT_IN_KEY`` and with the study's own
    data and caches as paths inside its folder (moving the folder keeps every key)."""
    tree = to_dict(cfg)
    for key in _NOT_IN_KEY + _PATHS:
        section, _, name = key.partition(".")
        value = tree[section].pop(name) if name else tree.pop(section)
        if key in _PATHS and value:
            tree[section][name] = Path(value).relative_to(study_dir).as_posix() \
                if Path(value).is_relative_to(study_dir) else value
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_summary(out_dir: str | Path) -> dict:
    """From a run's metrics.jsonl: steps logged, final loss terms, mean pairs/s (the first window holds start-up)."""
    rows = [r for r in read_log_lines(Path(out_dir) / "metrics.jsonl") if r.get("kind") == "train"]
    if not rows:
        return {}
    rates = [r["samples_per_s"] for r in rows[1:]] or [rows[0]["samples_per_s"]]
    first, last = rows[0], rows[-1]
    return {"step": last["step"], "pairs_per_s": statistics.fmean(rates), "first_loss": first["loss"],
            "final_loss": last["loss"], "final": {k: v for k, v in last.items() if k in ("kd", "itc", "loss")}}


class Study:
    """One study in one folder. ``overrides`` change every run's config; ``run_overrides`` ({run: [overrides]})
    one run's. ``log`` receives a line when a run starts and when it ends (training, scoring)."""

    def __init__(self, profile: str, run_dir: str | Path, overrides: list[str] = (),
                 run_overrides: dict[str, list[str]] | None = None, log=print):
        self.profile = get_profile(profile)
        self.run_dir = from_root(run_dir)  # a relative run_dir means the same folder from notebooks/ as from the root
        self.overrides = list(overrides)
        self.run_overrides = {name: list(extra) for name, extra in (run_overrides or {}).items()}
        unknown = sorted(set(self.run_overrides) - set(RUNS))
        if unknown:
            raise ConfigError(f"run_overrides: unknown run {unknown[0]!r}; the study's runs: {', '.join(RUNS)}")
        self.log = log
        self._run_outs: dict[tuple[str, int], Path] = {}  # resolving a config reads the dataset manifest

    # -------------------------------------------------------------- paths
    def data(self, domain: str) -> Path:
        return self.run_dir / "data" / domain

    def cache(self, teacher: str) -> Path:
        return self.run_dir / "cache" / teacher

    @property
    def frontend_cache(self) -> Path:
        return self.run_dir / "cache" / "frontend"

    @property
    def transfer_data(self) -> Path:
        return self.run_dir / "data" / "transfer"

    def config(self, run_name: str, seed: int, extra: list[str] = ()) -> TrainConfig:
        """The resolved training config of one run: the profile's YAML, the profile's, the run's and the user's
        overrides, and the study's paths (its run folder is keyed by the rest)."""
        run = RUNS[run_name]
        overrides = [f"data.root={self.data('synth-coco')}", f"optim.seed={seed}", "run.resume=latest",
                     # no validation pass: each run is scored on the test splits right after it ends, and the
                     # untrained level is Table 1's unaligned-towers row
                     "run.val_every=0", "run.val_at_start=false", f"student.frontend_cache={self.frontend_cache}",
                     *(() if run.teacher == "none" else (f"teacher.cache={self.cache(run.teacher)}",)),
                     *self.profile.overrides, *run.overrides, *extra, *self.overrides,
                     *self.run_overrides.get(run_name, ())]
        cfg = load_config(self.profile.train_config, overrides)
        out_dir = self.run_dir / "runs" / run_name / f"seed{seed}-{run_key(cfg, self.run_dir)}"
        return load_config(self.profile.train_config, [*overrides, f"run.out_dir={out_dir}",
                                                       f"run.checkpoint_every={max(1, cfg.optim.steps // 2)}"])

    def run_out(self, run_name: str, seed: int) -> Path:
        """The run's folder (resolved once per study: result lookups ask for it per seed and test set)."""
        if (run_name, seed) not in self._run_outs:
            self._run_outs[run_name, seed] = Path(self.config(run_name, seed).run.out_dir)
        return self._run_outs[run_name, seed]

    def result_path(self, run_name: str, seed: int, dataset: str) -> Path:
        """``results/<run>/<its run folder's name>-<dataset>.json``; the unaligned towers are keyed by the 5+1
        student they are built from, the CCA baseline by nothing."""
        if run_name == "cca":
            stem = f"seed{seed}"
        else:
            stem = self.run_out(run_name if run_name != "unaligned" else "mmd2v2_6", seed).name
        return self.run_dir / "results" / run_name / f"{stem}-{dataset}.json"

    # -------------------------------------------------------------- stages
    def prepare_data(self) -> dict[str, Path]:
        # The study's data folder holds only generated, reproducible data: regenerate it when stale.
        return generate(self.run_dir / "data", self.profile.data_profile, seed=0, overwrite=True)

    def transfer_sets(self) -> dict[str, Path]:
        """The zero-shot test scenes in every drawing, captioned in the training phrasing (``data_prep.synth.transfer``)."""
        return generate_transfer_sets(self.data("synth-flickr"), self.transfer_data)

    def build_caches(self) -> dict[str, dict]:
        """Targets of the pretrained teacher and of its random-init twin, for the train split."""
        report = {}
        for key, run in (("pretrained", "smke"), ("random", "smke_random_teacher")):
            cfg = self.config(run, 0, ["teacher.cache=null"])  # the cache is what is being made
            teacher = teacher_from_config(cfg.teacher)
            start = time.perf_counter()
            built = build_cache(teacher, cfg.teacher.target, cfg.data.root, cfg.data.train_split, self.cache(key),
                                preprocess_of(teacher, cfg.teacher.image_size), batch_size=128, num_workers=2)
            seconds = time.perf_counter() - start
            cache = TargetCache(self.cache(key))
            report[key] = {"teacher": cache.meta["fingerprint"]["teacher"], "items": len(cache), "dim": cache.dim,
                           "computed_shards": len(built.computed), "seconds": round(seconds, 1)}
        report.update(self.build_frontend_caches())
        return report

    def build_frontend_caches(self) -> dict[str, dict]:
        """The students' frozen front end on every image the study reads: the training views and the test sets."""
        cfg = self.config("mmd2v2_6", 0)
        torch.manual_seed(cfg.optim.seed)  # as the trainer: a random-init front end (smoke) is seed 0's, every time
        student, _ = student_from_config(cfg)
        source = CachedFrontEnd(student, self.frontend_cache, num_workers=2)
        jobs = [("synth-coco", cfg.data.train_split, v) for v in range(1 + cfg.data.rendering_views)]
        jobs += [(d, "test", 0) for d in TEST_SETS]
        jobs += [(f"transfer/{name}", "test", 0) for name in self.transfer_sets()]
        report = {}
        for dataset, split, view in jobs:
            start = time.perf_counter()
            cache = source.cache(self.data(dataset), split, view)
            report[f"front end {dataset}/{split}" + (f" view {view}" if view else "")] = {
                "teacher": source.front.describe(), "items": len(cache), "dim": cache.dim,
                "computed_shards": "-", "seconds": round(time.perf_counter() - start, 1)}
        return report

    def train(self, run_name: str, seed: int) -> Path:
        """Train (or finish training) one run; returns its final checkpoint."""
        cfg = self.config(run_name, seed)
        final = checkpoint_root(cfg.run.out_dir) / f"step_{cfg.optim.steps:07d}"
        if not (final / "model.safetensors").is_file():
            self.log(f"[run] {run_name} seed {seed} · start · {cfg.optim.steps} steps × {cfg.optim.batch_size} pairs "
                     f"→ runs/{run_name}/{Path(cfg.run.out_dir).name}")
            start = time.perf_counter()
            train(cfg)
            summary = run_summary(cfg.run.out_dir)
            self.log(f"[run] {run_name} seed {seed} · trained in {time.perf_counter() - start:.0f} s · "
                     f"{summary['pairs_per_s']:.0f} pairs/s · loss {summary['first_loss']:.3f} → "
                     f"{summary['final_loss']:.3f}")
        return final

    def evaluate(self, run_name: str, seed: int) -> list[dict]:
        """Test-split retrieval of one trained run on both test sets (cached in results/)."""
        cached = self._cached(run_name, seed)
        if cached:
            return cached
        student, cfg = load_trained_student(self.train(run_name, seed))
        return self._score(student, cfg.data.tokenizer, run_name, seed)

    def evaluate_unaligned(self, seed: int = 0) -> list[dict]:
        """The student before distillation: towers that never saw each other — the chance-level row."""
        cached = self._cached("unaligned", seed)
        if cached:
            return cached
        cfg = self.config("mmd2v2_6", seed)
        torch.manual_seed(seed)
        student, _ = student_from_config(cfg)
        return self._score(student.eval(), cfg.data.tokenizer, "unaligned", seed)

    def evaluate_baseline(self) -> list[dict]:
        """The trivial non-neural row: thumbnails and bag of words, CCA fitted on synth-coco train."""
        cached = self._cached("cca", 0)
        if cached:
            return cached
        start = time.perf_counter()
        baseline = fit_cca(RetrievalSplit.from_index(self.data("synth-coco"), "train"))
        fitted = time.perf_counter() - start
        results = []
        for dataset in TEST_SETS:
            split = RetrievalSplit.from_index(self.data(dataset), "test")
            result = {"dataset": load_manifest(self.data(dataset))["dataset"], "split": "test",
                      "images": len(split.records), "captions": len(split.captions), "metrics": baseline.evaluate(split),
                      "fit_seconds": round(fitted, 1)}
            results.append(self._save(result, "cca", 0))
        return results

    def _cached(self, run_name: str, seed: int) -> list[dict]:
        paths = [self.result_path(run_name, seed, d) for d in TEST_SETS]
        return [json.loads(p.read_text()) for p in paths] if all(p.is_file() for p in paths) else []

    def _save(self, result: dict, run_name: str, seed: int) -> dict:
        result.update(row=LABELS[run_name], run=run_name, seed=seed, profile=self.profile.name)
        path = self.result_path(run_name, seed, result["dataset"])
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(result, indent=2) + "\n")  # a killed run leaves no half file
        return result

    def _score(self, student, tokenizer_name: str, run_name: str, seed: int) -> list[dict]:
        start = time.perf_counter()
        images, tokenizer = student_inputs(student, tokenizer_name, self.frontend_cache)
        results = [self._save(evaluate_retrieval(student, self.data(dataset), "test", images, tokenizer,
                                                 batch_size=512, precision=self.profile.eval_precision), run_name, seed)
                   for dataset in TEST_SETS]
        self.log(f"[run] {run_name} seed {seed} · scored in {time.perf_counter() - start:.0f} s · mean recall "
                 + ", ".join(f"{r['dataset']} {r['metrics']['mean']:.1f}" for r in results))
        return results

    def transfer_decomposition(self, run_name: str, seed: int) -> dict:
        """One trained run on the zero-shot test scenes in every drawing × phrasing (cached in results/transfer/)."""
        path = self.run_dir / "results" / "transfer" / f"{run_name}-{self.run_out(run_name, seed).name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        student, cfg = load_trained_student(self.train(run_name, seed))
        images, tokenizer = student_inputs(student, cfg.data.tokenizer, self.frontend_cache)
        result = transfer_decomposition(student, self.data("synth-flickr"), self.transfer_sets(), images, tokenizer,
                                        test_drawing="flickr", precision=self.profile.eval_precision)
        result.update(run=run_name, seed=seed, profile=self.profile.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(result, indent=2) + "\n")
        return result

    def run_all(self, runs: tuple[str, ...]) -> list[dict]:
        return [r for name in runs for seed in self.profile.seeds for r in self.evaluate(name, seed)]

    def results(self, run_name: str) -> list[dict]:
        """The test results of a run (or ``unaligned``, ``cca``) under its current config, for every seed scored."""
        return [r for seed in self.profile.seeds for r in self._cached(run_name, seed)]
