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

Which runs a study makes and which table each feeds is its profile's (``profiles.py``; the runs' recipes are in
``runs.py``). The synthetic profiles generate their data and precompute teacher targets; the real profile reads
prepared COCO / Flickr30K indexes (``mmd2v2 data karpathy``), runs its teachers on each batch as the thesis did, checks
every data folder and weight file before anything trains (``preflight``), and can write each run's command for a
cluster (``plan``: torchrun lines) whose finished runs a later study picks up.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from data_prep.synth import generate
from data_prep.synth.negatives import binding_set_current, write_binding_set
from data_prep.synth.transfer import generate_transfer_sets

from .config import TrainConfig, load_config, read_preset, to_dict, to_yaml
from .data.datasets import RetrievalSplit
from .data.index import read_log_lines, write_text_atomic
from .data.rendering import VERSION as RENDERING_VERSION
from .data.tokenizer import CaptionTokenizer
from .errors import ConfigError, DataError, KitError
from .eta import TRAINING_LOG, pairs_to_train
from .eval.binding import blind_embeddings, failures, read_binding_set, selection_scores, set_digest
from .eval.baseline import CCABaseline, bag_of_words, fit_baseline, thumbnails
from .eval.embed import encode_captions, encode_images, evaluate_retrieval, student_inputs
from .eval.transfer import transfer_decomposition
from .eval.zeroshot import imagenet_zero_shot
from .lock import folder_lock
from .paths import from_root
from .plan import write_plan
from .preflight import check_data, missing_inputs
from .profiles import get_profile
from .runs import REAL_BASELINES
from .student.frontend_cache import CachedFrontEnd
from .student.presets import student_from_config
from .teachers.cache import TargetCache, build_cache, build_caption_cache
from .teachers.inspect import preprocess_of
from .teachers.registry import create_teacher, teacher_from_config
from .train.checkpoint import checkpoint_root, load_trained_student
from .train.loop import train

# The closed-form rows (labels in ``runs.EXTRA_LABELS``; ``eval/baseline.py``), the strongest alternatives that cost no
# training. Synthetic: ``cca`` links 16×16 thumbnails to a bag of words (the trivial row); the frozen-input rows link
# the students' own frozen image inputs to it, fitted on the clean training view or also on its rendering views.
SYNTHETIC_BASELINES = ("cca", "cca_frozen", "cca_frozen_views")
# Real: the frozen features the real towers start from (``runs.REAL_BASELINES``).
FROZEN_INPUT_BASELINES = ("cca_frozen", "cca_frozen_views", *REAL_BASELINES)

# torchrun restarts of a run whose rank died: each resumes from the last checkpoint (losing the steps since); an error
# that comes back every time (a bug, an out-of-memory batch) stops the run after these.
MAX_RESTARTS = 2

NOTEBOOKS = ("00_data_prep", "01_teacher_targets", "02_distillation_pretraining", "03_retrieval_eval",
             "04_ablation_teacher", "05_ablation_attention", "06_embeddings_and_browser")


# What decides where a run writes or how fast it goes, not what it learns: left out of its key. Gradient accumulation
# is how a memory plan fits the global batch on a device (``plan.memory_plan``), as the process count is.
_NOT_IN_KEY = ("run", "data.num_workers", "optim.accum")
_PATHS = ("data.root", "teacher.cache", "student.frontend_cache")


class CheckStop(Exception):
    """Raised by a study in check mode where a stage would start computing: the check of that notebook ends there."""


def run_key(cfg: TrainConfig, *roots: Path) -> str:
    """8 hex digits of the resolved config's hash, without the settings in ``_NOT_IN_KEY`` and with the study's data
    and caches as paths inside the folders ``roots`` (moving the study or its data keeps every key)."""
    tree = to_dict(cfg)
    for key in _NOT_IN_KEY + _PATHS:
        section, _, name = key.partition(".")
        value = tree[section].pop(name) if name else tree.pop(section)
        if key in _PATHS and value:
            inside = [Path(value).relative_to(r).as_posix() for r in roots if Path(value).is_relative_to(r)]
            tree[section][name] = inside[0] if inside else value
    if cfg.data.rendering_views:  # views drawn by other code are another run
        tree["data"]["rendering_version"] = RENDERING_VERSION
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:8]


# A run counts as converged when the last quarter of its steps added less than this to val R@1 (points), image→text
# and text→image alike, on every seed. R@1, the report's headline, not the mean of R@1/5/10, which ends near 98 % on
# the 1,000 val images and cannot move; see ``configs/embedded.yaml`` for the curves this margin was checked on.
CONVERGED_GAIN = 1.0
DIRECTIONS = ("i2t", "t2i")


def convergence(out_dir: str | Path) -> dict | None:
    """From a run's validations (metrics.jsonl): val R@1 in both directions at the last validation by 50 % and by 75 %
    of its steps and at the end, the last quarter's gain in each direction, and whether both gains are under
    ``CONVERGED_GAIN``; None when no validation lies in the run's first three quarters or none at its end."""
    val = [r for r in read_log_lines(Path(out_dir) / "metrics.jsonl") if r.get("kind") == "val"]
    if len(val) < 2:
        return None
    final = val[-1]

    def by(share: float) -> dict | None:
        return max((r for r in val[:-1] if r["step"] <= share * final["step"]), key=lambda r: r["step"], default=None)

    half, late = by(0.5), by(0.75)
    if late is None:
        return None
    r1 = lambda r: {d: r[f"{d}_r1"] for d in DIRECTIONS} if r else None  # noqa: E731
    gains = {d: final[f"{d}_r1"] - late[f"{d}_r1"] for d in DIRECTIONS}
    return {"step": final["step"], "half_step": half and half["step"], "half": r1(half), "late_step": late["step"],
            "late": r1(late), "final": r1(final), "gains": gains, "gain": max(gains.values()),
            "converged": max(gains.values()) < CONVERGED_GAIN}


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
    one run's. ``log`` receives a line when a run starts and when it ends (training, scoring). ``data_dir``: the
    folder holding the prepared test sets and training data by name (real profile; default ``<run_dir>/data``);
    ``nproc_per_node`` > 1 launches each training run with torchrun on that many processes. ``check``: every stage that
    would compute something new (generate data, build a cache, train, score) raises ``CheckStop`` instead, so the
    notebooks can be run up to their first computation (``mmd2v2 study --check``)."""

    def __init__(self, profile: str, run_dir: str | Path, overrides: list[str] = (),
                 run_overrides: dict[str, list[str]] | None = None, log=print, data_dir: str | Path | None = None,
                 nproc_per_node: int = 1, imagenet_dir: str | Path | None = None,
                 sugarcrepe_dir: str | Path | None = None, check: bool = False):
        self.profile = get_profile(profile)
        self.runs, self.test_sets = self.profile.run, self.profile.test_sets
        self.run_dir = from_root(run_dir)  # a relative run_dir means the same folder from notebooks/ as from the root
        self.data_dir = from_root(data_dir) if data_dir else self.run_dir / "data"
        self.overrides = list(overrides)
        self.run_overrides = {name: list(extra) for name, extra in (run_overrides or {}).items()}
        unknown = sorted(set(self.run_overrides) - set(self.runs))
        if unknown:
            raise ConfigError(f"run_overrides: unknown run {unknown[0]!r}; the study's runs: {', '.join(self.runs)}")
        self.log = log
        self.nproc_per_node = nproc_per_node
        self.check = check
        self.imagenet_dir = from_root(imagenet_dir) if imagenet_dir else None  # real: zero-shot ImageNet-1k val
        self.sugarcrepe_dir = from_root(sugarcrepe_dir) if sugarcrepe_dir else None  # real: SugarCrepe + val2017
        given = [flag for flag, folder in (("--imagenet", imagenet_dir), ("--sugarcrepe", sugarcrepe_dir)) if folder]
        if given and self.profile.synthetic:
            raise ConfigError(f"{given[0]} is a real-profile test set: the {profile} profile tests on its generated "
                              "data (its hard negatives come from the scene graphs)")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self._run_outs: dict[tuple[str, int], Path] = {}  # resolving a config reads the dataset manifest
        self._fits: dict[str, tuple[CCABaseline, dict]] = {}  # notebook 05 reads each closed-form row twice

    # -------------------------------------------------------------- paths
    def data(self, domain: str) -> Path:
        return self.data_dir / domain

    def cache(self, teacher: str) -> Path:
        return self.run_dir / "cache" / teacher

    @property
    def frontend_cache(self) -> Path | None:
        """Cached frozen front-end outputs (synthetic profiles); the real student computes its front end."""
        return self.run_dir / "cache" / "frontend" if self.profile.synthetic else None

    @property
    def transfer_data(self) -> Path:
        return self.run_dir / "data" / "transfer"

    @property
    def train_data(self) -> Path:
        return self.data("synth-coco" if self.profile.synthetic else "coco")

    @functools.cached_property
    def labels(self) -> dict[str, str]:
        """Each row's label; a run trained without the extra data its YAML names (``data.sources``, e.g. the thesis'
        Visual Genome and CC3M) says "(COCO only)"."""
        labels = dict(self.profile.labels)
        for run in self.runs:
            named = (read_preset(self.config_name(run)).get("data") or {}).get("sources")
            if named and not self.config(run, self.profile.seeds[0], inputs=False).data.sources:
                labels[run] += " (COCO only)"
        return labels

    @functools.cached_property
    def baselines(self) -> tuple[str, ...]:
        """The closed-form rows this study scores: on real data ``REAL_BASELINES``; on synthetic data
        ``SYNTHETIC_BASELINES``, the one fitted with the rendering views only when the students train on some."""
        if not self.profile.synthetic:
            return tuple(REAL_BASELINES)
        views = self.config("mmd2v2_6", 0, inputs=False).data.rendering_views
        return tuple(b for b in SYNTHETIC_BASELINES if views or b != "cca_frozen_views")

    def overrides_of(self, run_name: str, seed: int, extra: list[str] = ()) -> list[str]:
        run = self.runs[run_name]
        return [f"optim.seed={seed}", "run.resume=latest",
                # no step-0 validation: the untrained level is Table 1's unaligned-towers row
                "run.val_at_start=false",
                *((f"student.frontend_cache={self.frontend_cache}",) if self.frontend_cache else ()),
                *((f"teacher.cache={self.cache(run.teacher)}",) if run.teacher in ("pretrained", "random") else ()),
                *self.profile.overrides, *run.overrides, *extra, *self.overrides, *self.run_overrides.get(run_name, ())]

    def config_name(self, run_name: str) -> str:
        return self.runs[run_name].config or self.profile.train_config

    def config(self, run_name: str, seed: int, extra: list[str] = (), inputs: bool = True) -> TrainConfig:
        """The resolved training config of one run: the profile's (or the run's) YAML, the profile's, the run's and
        the user's overrides, and the study's paths (its run folder is keyed by the rest). ``inputs=False`` for the
        questions asked before a stage has made the data and caches it names (``load_config``)."""
        name, overrides = self.config_name(run_name), [f"data.root={self.train_data}", *self.overrides_of(run_name, seed,
                                                                                                           extra)]
        cfg = load_config(name, overrides, inputs)
        out_dir = self.run_dir / "runs" / run_name / f"seed{seed}-{run_key(cfg, self.run_dir, self.data_dir)}"
        # Synthetic runs are minutes long: one mid-run checkpoint, and a validation at each quarter of the steps for
        # the val curve and the convergence check at 50, 75 and 100 % (``convergence``). Real runs keep their YAML's
        # (every 2,000 steps).
        steps = cfg.optim.steps
        every = (f"run.checkpoint_every={max(1, steps // 2)}", f"run.val_every={max(1, steps // 4)}") \
            if self.profile.synthetic else ()
        return load_config(name, [*overrides, f"run.out_dir={out_dir}", *every], inputs)

    def run_out(self, run_name: str, seed: int) -> Path:
        """The run's folder (resolved once per study: result lookups ask for it per seed and test set)."""
        if (run_name, seed) not in self._run_outs:
            self._run_outs[run_name, seed] = Path(self.config(run_name, seed, inputs=False).run.out_dir)
        return self._run_outs[run_name, seed]

    def result_stem(self, run_name: str, seed: int) -> str:
        """What a run's result files are keyed by: its run folder's name. The unaligned towers and the frozen-input
        baselines are keyed by the 5+1 student whose towers or front end they read (its config holds the front end
        and the rendering views), the thumbnail baseline by nothing."""
        if run_name == "cca":
            return f"seed{seed}"
        return self.run_out(run_name if run_name in self.runs else "mmd2v2_6", seed).name

    def result_path(self, run_name: str, seed: int, dataset: str) -> Path:
        """``results/<run>/<result_stem>-<dataset>.json``."""
        return self.run_dir / "results" / run_name / f"{self.result_stem(run_name, seed)}-{dataset}.json"

    def final_checkpoint(self, run_name: str, seed: int) -> Path:
        cfg = self.config(run_name, seed, inputs=False)
        return checkpoint_root(cfg.run.out_dir) / f"step_{cfg.optim.steps:07d}"

    def trained(self, run_name: str, seed: int) -> bool:
        return (self.final_checkpoint(run_name, seed) / "model.safetensors").is_file()

    def writing(self):
        """Hold the study folder while a stage computes something new into it (``lock.py``): a second study or a
        notebook run beside ``mmd2v2 study`` is refused, the study's own notebooks pass. Stages that find their
        results already made only read, and may run beside a writer."""
        self._computing()
        return folder_lock(self.run_dir, "a study notebook", "pass another run_dir")

    def _computing(self) -> None:
        """Where a stage starts its work (even one that only reads, as the real profile's data stage): a check stops."""
        if self.check:
            raise CheckStop(f"{self.run_dir}: a check computes nothing")

    # -------------------------------------------------------------- before anything runs (real profile)
    def preflight(self) -> list[str]:
        """Every prepared dataset and weight file the study's runs need that is not here: one line each."""
        return missing_inputs(self)

    def plan(self, nproc_per_node: int = 1, warmup_steps: int = 0, device_gib: float | None = None) -> Path:
        """``<run_dir>/plan/plan.sh``: one torchrun line per training run not finished yet, each with its resolved
        config beside it; with ``warmup_steps``, the expected hours of each from a measured warm-up; with
        ``device_gib``, the per-device batch and accumulation of its memory plan on devices of that size."""
        with self.writing():
            return write_plan(self, nproc_per_node, warmup_steps, device_gib)

    # -------------------------------------------------------------- stages
    def prepare_data(self) -> dict[str, Path]:
        """Synthetic profiles: generate the datasets (regenerated when stale: the folder holds only generated,
        reproducible data). Real: the prepared indexes, refused with what is missing and the command that makes it."""
        self._computing()
        if self.profile.synthetic:
            with self.writing():
                return generate(self.run_dir / "data", self.profile.data_profile, seed=0, overwrite=True)
        return check_data(self)

    def transfer_sets(self) -> dict[str, Path]:
        """The zero-shot test scenes in every drawing, captioned in the training phrasing (``data_prep.synth.transfer``;
        synthetic profiles only)."""
        if not self.profile.synthetic:
            return {}
        with self.writing():
            return generate_transfer_sets(self.data("synth-flickr"), self.transfer_data)

    def build_caches(self) -> dict[str, dict]:
        """Targets of the pretrained teacher and of its random-init twin, for the train split (synthetic profiles;
        the real profile's teachers run on each batch's own crops, as the thesis ran them)."""
        self._computing()
        report = {}
        if not self.profile.synthetic:
            return report
        with self.writing():
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

    def frontend(self) -> CachedFrontEnd:
        """The students' frozen front end over its cache (every synthetic run's student starts from the same one)."""
        cfg = self.config("mmd2v2_6", 0)
        torch.manual_seed(cfg.optim.seed)  # as the trainer: a random-init front end (smoke) is seed 0's, every time
        student, _ = student_from_config(cfg)
        return CachedFrontEnd(student, self.frontend_cache, num_workers=2)

    def build_frontend_caches(self) -> dict[str, dict]:
        """The students' frozen front end on every image the study reads: the training views, the val split (the
        frozen-input baselines pick their ridge on it) and the test sets."""
        cfg = self.config("mmd2v2_6", 0)
        source = self.frontend()
        jobs = [("synth-coco", cfg.data.train_split, v) for v in range(1 + cfg.data.rendering_views)]
        jobs += [("synth-coco", cfg.data.val_split, 0)] + [(d, "test", 0) for d in self.test_sets]
        jobs += [(f"transfer/{name}", "test", 0) for name in self.transfer_sets()]
        report = {}
        for dataset, split, view in jobs:
            start = time.perf_counter()
            cache = source.cache(self.data(dataset), split, view)
            report[f"front end {dataset}/{split}" + (f" view {view}" if view else "")] = {
                "teacher": source.front.describe(), "items": len(cache), "dim": cache.dim,
                "computed_shards": "-", "seconds": round(time.perf_counter() - start, 1)}
        return report

    def launch_command(self, run_name: str, seed: int, nproc_per_node: int, cluster: bool = False) -> list[str]:
        """torchrun training one run from its resolved config (written under ``plan/``). A rank that dies (out of
        memory, a lost node, a kill) makes the others stop within ``run.collective_timeout``; torchrun then restarts
        every rank from the last checkpoint, ``MAX_RESTARTS`` times at most. ``cluster``: node count, rank, rendezvous,
        restarts and timeout from the environment (NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, MAX_RESTARTS,
        COLLECTIVE_TIMEOUT; defaults: one node), as a scheduler's script sets them."""
        config_file, timeout = self.write_config(run_name, seed), self.config(run_name, seed).run.collective_timeout
        if cluster:
            where = ["--nnodes=${NNODES:-1}", "--node_rank=${NODE_RANK:-0}",
                     f"--nproc_per_node=${{NPROC_PER_NODE:-{nproc_per_node}}}", "--master_addr=${MASTER_ADDR:-127.0.0.1}",
                     "--master_port=${MASTER_PORT:-29500}", f"--max-restarts=${{MAX_RESTARTS:-{MAX_RESTARTS}}}"]
            return ["torchrun", *where, "-m", "mmd2v2_core.cli", "train", "--config", shlex.quote(str(config_file)),
                    f"run.collective_timeout=${{COLLECTIVE_TIMEOUT:-{timeout}}}"]
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
                f"--max-restarts={MAX_RESTARTS}", "-m", "mmd2v2_core.cli", "train", "--config", str(config_file),
                f"run.collective_timeout={timeout}"]

    def write_config(self, run_name: str, seed: int) -> Path:
        """The run's resolved config as a YAML file under ``plan/`` (what ``mmd2v2 train --config`` reads)."""
        cfg = self.config(run_name, seed)
        path = self.run_dir / "plan" / f"{run_name}-{Path(cfg.run.out_dir).name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, to_yaml(cfg))
        return path

    def train(self, run_name: str, seed: int) -> Path:
        """Train (or finish training) one run; returns its final checkpoint."""
        final = self.final_checkpoint(run_name, seed)
        if not (final / "model.safetensors").is_file():
            with self.writing():
                self._train(run_name, seed)
        return final

    def train_all(self, runs: tuple[str, ...]) -> None:
        """Train every seed of ``runs`` not trained yet, ``side_by_side`` of them at a time, each then in a process of
        its own on one thread (else one after another, in this process, on all of them)."""
        pending = [(run, seed) for run in runs for seed in self.profile.seeds if not self.trained(run, seed)]
        if not pending:
            return
        jobs, began = self.side_by_side(len(pending)), time.perf_counter()
        if jobs == 1:
            for run, seed in pending:
                self.train(run, seed)
        else:
            with self.writing(), ThreadPoolExecutor(jobs) as pool:
                for _ in pool.map(lambda pair: self._train(*pair, threads=1), pending):
                    pass  # the first failure is raised once the runs already started have ended
        (self.run_dir / "done").mkdir(exist_ok=True)
        with self.writing(), open(self.run_dir / "done" / TRAINING_LOG, "a") as log:  # what the study's ETA scales
            log.write(json.dumps({"pairs": pairs_to_train(self, pending),
                                  "seconds": round(time.perf_counter() - began, 1),
                                  "side_by_side": jobs}) + "\n")

    def side_by_side(self, pending: int) -> int:
        """How many of ``pending`` runs train at once: one per thread this study may use (torch's intra-op threads:
        the cores, unless OMP_NUM_THREADS says less) and per 3 GiB of memory, for the synthetic profiles on a CPU. At
        the student's 128-wide shapes a second thread buys a run little; a second run beside it nearly as much again
        (2 cores, Intel Xeon with AMX: S-SMKE 2 × 516 pairs/s side by side against 648 alone on 2 threads)."""
        if not self.profile.synthetic or self.device != "cpu" or self.nproc_per_node > 1:
            return 1
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        return max(1, min(pending, torch.get_num_threads(), int(memory_gib // 3)))

    def _train(self, run_name: str, seed: int, threads: int | None = None) -> None:
        """One run: in this process, under torchrun (``nproc_per_node`` > 1), or in a process of its own on
        ``threads`` threads (``train_all``); one start line and one end line in the study's log either way."""
        cfg = self.config(run_name, seed)
        self.log(f"[run] {run_name} seed {seed} · start · {cfg.optim.steps} steps × {cfg.optim.batch_size} pairs "
                 f"→ runs/{run_name}/{Path(cfg.run.out_dir).name}"
                 + (f" · torchrun × {self.nproc_per_node}" if self.nproc_per_node > 1 else "")
                 + (f" · its own process, {threads} thread(s)" if threads else ""))
        start = time.perf_counter()
        if self.nproc_per_node > 1:
            self._launch(run_name, seed, self.launch_command(run_name, seed, self.nproc_per_node), "torchrun")
        elif threads:
            command = [sys.executable, "-m", "mmd2v2_core.cli", "train", "--config", str(self.write_config(run_name, seed))]
            self._launch(run_name, seed, command, "its training process",
                         {"OMP_NUM_THREADS": str(threads), "MMD2V2_PROGRESS": "off"})
        else:
            train(cfg)
        summary = run_summary(cfg.run.out_dir)
        self.log(f"[run] {run_name} seed {seed} · trained in {time.perf_counter() - start:.0f} s · "
                 f"{summary['pairs_per_s']:.0f} pairs/s · loss {summary['first_loss']:.3f} → "
                 f"{summary['final_loss']:.3f}")

    def _launch(self, run_name: str, seed: int, command: list[str], what: str, env: dict | None = None) -> None:
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
        if done.returncode != 0 or not self.trained(run_name, seed):
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise KitError(f"run {run_name} seed {seed}: {what} exited with {done.returncode}: "
                           f"{' '.join(command)}\n{tail}")

    def evaluate(self, run_name: str, seed: int) -> list[dict]:
        """Test-split retrieval of one trained run on the profile's test sets (cached in results/)."""
        cached = self._cached(run_name, seed)
        if cached:
            return cached
        with self.writing():
            student, cfg = load_trained_student(self.train(run_name, seed))
            return self._score(student, cfg.data.tokenizer, run_name, seed)

    def evaluate_unaligned(self, seed: int = 0) -> list[dict]:
        """The student before distillation: towers that never saw each other — the chance-level row."""
        cached = self._cached("unaligned", seed)
        if cached:
            return cached
        with self.writing():
            cfg = self.config("mmd2v2_6", seed)
            torch.manual_seed(seed)
            student, _ = student_from_config(cfg)
            return self._score(student.eval(), cfg.data.tokenizer, "unaligned", seed)

    def evaluate_baselines(self) -> list[dict]:
        """Every closed-form row of the study (``baselines``) on the test sets."""
        return [r for name in self.baselines for r in self.evaluate_baseline(name)]

    def evaluate_baseline(self, name: str) -> list[dict]:
        """One closed-form row (``baselines``) on the test sets, cached in results/ like a run's."""
        cached = self._cached(name, 0)
        if cached:
            return cached
        with self.writing():
            start = time.perf_counter()
            baseline, fitted_on = self.fit_baseline(name)
            fitted = {"fit_seconds": round(time.perf_counter() - start, 1), **fitted_on, **baseline.describe()}
            results = []
            for dataset in self.test_sets:
                split = RetrievalSplit.from_index(self.data(dataset), "test")
                result = {"dataset": dataset, "split": "test", "images": len(split.records),
                          "captions": len(split.captions), "metrics": baseline.evaluate(split), **fitted}
                results.append(self._save(result, name, 0))
            self.log(f"[run] {name} · fitted in {fitted['fit_seconds']:.0f} s (ridge {fitted['ridge']:g}, picked on "
                     "val) · mean recall " + ", ".join(f"{r['dataset']} {r['metrics']['mean']:.1f}" for r in results))
            return results

    def fit_baseline(self, name: str) -> tuple[CCABaseline, dict]:
        """A closed-form row fitted on the training split (its ridge picked on val), and what it was fitted on;
        fitted once per ``Study``."""
        if name not in self.baselines:
            raise ConfigError(f"baseline {name!r}: this study's closed-form rows are {', '.join(self.baselines)}")
        if name not in self._fits:
            self._fits[name] = self._fit_baseline(name)
        return self._fits[name]

    def _fit_baseline(self, name: str) -> tuple[CCABaseline, dict]:
        data = self.config("mmd2v2_6", 0).data
        train, val = (RetrievalSplit.from_index(self.train_data, s) for s in (data.train_split, data.val_split))
        if name in REAL_BASELINES:
            (image_model, image_kind), (text_model, text_kind), run = REAL_BASELINES[name]
            cfg = self.config(run, 0)
            images, texts = self._frozen(image_model, image_kind, cfg), self._frozen(text_model, text_kind, cfg)
            return fit_baseline(train, val, images, texts), {"fitted_on": f"{data.train_split} (evaluation view)"}
        words = bag_of_words(train)
        if name == "cca":
            return fit_baseline(train, val, thumbnails, words), {"fitted_on": f"{data.train_split} (clean)"}
        source = self.frontend()

        def frozen_inputs(split: RetrievalSplit, view: int = 0):  # the front-end tokens the student reads, flattened
            cache = source.cache(split.index_dir, split.split, view)
            return cache.lookup([r.image_id for r in split.records]).numpy()

        views = range(1 + data.rendering_views) if name == "cca_frozen_views" else range(1)
        baseline = fit_baseline(train, val, frozen_inputs, words, [frozen_inputs(train, v) for v in views])
        return baseline, {"fitted_on": f"{data.train_split} (clean" + (
            f" + {len(views) - 1} rendering views)" if len(views) > 1 else ")")}

    def _frozen(self, model: str, kind: str, cfg: TrainConfig):
        """A split → the ``kind`` features of the frozen ``model`` (registry name; weights from ``cfg``'s folder) on
        its images or its captions (text models: ``cfg``'s tokenizer), cached once per split under ``cache/frozen/``
        (a changed model recomputes them)."""
        source = create_teacher(model, folder=cfg.teacher.weights_dir)
        folder = self.run_dir / "cache" / "frozen" / f"{model}-{kind}"

        def features(split: RetrievalSplit):
            out = folder / split.name.replace("/", "-")
            if source.spec.modality == "image":
                build_cache(source, kind, split.index_dir, split.split, out, preprocess_of(source), batch_size=128,
                            device=self.device, num_workers=cfg.data.num_workers, overwrite=True)
                return TargetCache(out).lookup([r.image_id for r in split.records]).numpy()
            build_caption_cache(source, kind, CaptionTokenizer(cfg.data.tokenizer), split.index_dir, split.split, out,
                                device=self.device, overwrite=True)
            rows = TargetCache(out).all().numpy()
            if len(rows) != len(split.captions):  # the cache's rows are the index's captions, in order
                raise DataError(f"{out}: {len(rows)} caption rows for the {len(split.captions)} captions of "
                                f"{split.name}; delete the folder to recompute it")
            return rows

        return features

    def _cached(self, run_name: str, seed: int) -> list[dict]:
        paths = [self.result_path(run_name, seed, d) for d in self.test_sets]
        return [json.loads(p.read_text()) for p in paths] if all(p.is_file() for p in paths) else []

    def _save(self, result: dict, run_name: str, seed: int) -> dict:
        result.update(row=self.labels[run_name], run=run_name, seed=seed, profile=self.profile.name)
        path = self.result_path(run_name, seed, result["dataset"])
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(result, indent=2) + "\n")  # a killed run leaves no half file
        return result

    def _score(self, student, tokenizer_name: str, run_name: str, seed: int) -> list[dict]:
        start = time.perf_counter()
        student = student.to(self.device)
        images, tokenizer = student_inputs(student, tokenizer_name, self.frontend_cache, self.device)
        results = []
        for dataset in self.test_sets:
            result = evaluate_retrieval(student, self.data(dataset), "test", images, tokenizer, batch_size=512,
                                        device=self.device, precision=self.profile.eval_precision)
            result["dataset"] = dataset  # the study's name for the test set (the index's own may differ)
            results.append(self._save(result, run_name, seed))
        self.log(f"[run] {run_name} seed {seed} · scored in {time.perf_counter() - start:.0f} s · mean recall "
                 + ", ".join(f"{r['dataset']} {r['metrics']['mean']:.1f}" for r in results))
        return results

    def transfer_decomposition(self, run_name: str, seed: int) -> dict:
        """One trained run, or a closed-form row, on the zero-shot test scenes in every drawing × phrasing (cached in
        results/transfer/)."""
        path = self.run_dir / "results" / "transfer" / f"{run_name}-{self.result_stem(run_name, seed)}.json"
        if path.is_file():
            return json.loads(path.read_text())
        with self.writing():
            images_of, texts_of = self._encoders(run_name, seed)
            result = transfer_decomposition(self.data("synth-flickr"), self.transfer_sets(), images_of, texts_of,
                                            test_drawing="flickr")
            result.update(run=run_name, seed=seed, profile=self.profile.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(result, indent=2) + "\n")
            return result

    def binding_sets(self) -> dict[str, Path]:
        """Hard negatives of each synthetic test set's first ``profile.binding_images`` images in SugarCrepe's layout
        (``data_prep.synth.negatives``; made again when the test set changed), under ``data/binding/``; on the real
        profile SugarCrepe's own, where the study was given it (``sugarcrepe_dir``)."""
        if not self.profile.synthetic:
            return {"sugarcrepe": self.sugarcrepe_dir} if self.sugarcrepe_dir else {}
        sets = {d: self.run_dir / "data" / "binding" / d for d in self.test_sets}
        count = self.profile.binding_images
        stale = [d for d, folder in sets.items() if not binding_set_current(folder, self.data(d), images=count)]
        if stale:
            with self.writing():
                for d in stale:
                    write_binding_set(self.data(d), sets[d], images=count)
        return sets

    def binding(self, run_name: str, seed: int = 0) -> list[dict]:
        """SugarCrepe's selection accuracy of a trained run, or a closed-form row, on every synthetic test set's hard
        negatives, with the blind row of its own captions (cached in results/binding/; ``metrics``: per kind, and
        pooled per group of ``BINDING_GROUPS``)."""
        sets = self.binding_sets()
        sources = {d: set_digest(folder) for d, folder in sets.items()}
        path = self.run_dir / "results" / "binding" / f"{run_name}-{self.result_stem(run_name, seed)}.json"
        if path.is_file() and (cached := json.loads(path.read_text()))[0].get("sources") == sources:
            return cached
        with self.writing():
            images_of, texts_of = self._encoders(run_name, seed)
            results = []
            for dataset, folder in sets.items():
                items = read_binding_set(folder)
                image, text = images_of(items.split), texts_of(items.split)
                scores = selection_scores(image, text, items)
                metrics = {**{g: scores["by_group"][g]["accuracy"] for g in scores["by_group"]},
                           **{k: v["accuracy"] for k, v in scores["by_kind"].items()}}
                results.append({"dataset": dataset, "run": run_name, "seed": seed, "row": self.labels[run_name],
                                "items": len(items), "images": len(items.split.records), "metrics": metrics,
                                "scores": scores, "blind": selection_scores(blind_embeddings(image, items), text, items),
                                "failures": failures(image, text, items), "sources": sources})
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(results, indent=2) + "\n")
            return results

    def binding_results(self, run_name: str) -> list[dict]:
        """The binding results scored so far of a run (every seed) or a closed-form row, as ``results`` gives test
        results."""
        folder = self.run_dir / "results" / "binding"
        seeds = (0,) if run_name in self.baselines else self.profile.seeds
        paths = [folder / f"{run_name}-{self.result_stem(run_name, seed)}.json" for seed in seeds]
        return [r for p in paths if p.is_file() for r in json.loads(p.read_text())]

    def _encoders(self, run_name: str, seed: int):
        """A closed-form row's or a trained run's encoders of a split's images and of its captions."""
        if run_name in self.baselines:
            baseline, _ = self.fit_baseline(run_name)
            return baseline.embed_images, baseline.embed_texts
        return self._student_encoders(run_name, seed)

    def _student_encoders(self, run_name: str, seed: int):
        """A trained run's encoders of a split's images and of its captions (at the profile's test precision)."""
        student, cfg = load_trained_student(self.train(run_name, seed))
        student = student.to(self.device)
        images, tokenizer = student_inputs(student, cfg.data.tokenizer, self.frontend_cache, self.device)
        precision, device = self.profile.eval_precision, self.device
        return (lambda split: encode_images(student, split, images, 512, device, precision=precision).cpu(),
                lambda split: encode_captions(student, split.captions, tokenizer, 512, device, precision).cpu())

    def imagenet(self, run_name: str, seed: int) -> dict:
        """Zero-shot ImageNet-1k top-1/top-5 of one trained run on ``imagenet_dir`` (real profile; cached in
        results/imagenet/)."""
        path = self.run_dir / "results" / "imagenet" / f"{run_name}-{self.run_out(run_name, seed).name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        with self.writing():
            student, cfg = load_trained_student(self.train(run_name, seed))
            transform, tokenizer = student_inputs(student.to(self.device), cfg.data.tokenizer, device=self.device)
            start = time.perf_counter()
            result = {**imagenet_zero_shot(student, self.imagenet_dir, transform, tokenizer, device=self.device),
                      "run": run_name, "seed": seed, "folder": str(self.imagenet_dir)}
            self.log(f"[run] {run_name} seed {seed} · ImageNet zero-shot in {time.perf_counter() - start:.0f} s · "
                     f"top-1 {result['top1']:.1f}")
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(result, indent=2) + "\n")
            return result

    def run_all(self, runs: tuple[str, ...]) -> list[dict]:
        """Train what is not trained yet (``train_all``), then score every run and seed."""
        self.train_all(runs)
        return [r for name in runs for seed in self.profile.seeds for r in self.evaluate(name, seed)]

    def converged(self, run_name: str) -> bool | None:
        """Whether every trained seed of a run converged (``convergence``); None for rows that are not training runs
        or runs not validated twice."""
        if run_name not in self.runs:
            return None
        checks = [convergence(self.run_out(run_name, s)) for s in self.profile.seeds if self.trained(run_name, s)]
        checks = [c for c in checks if c]
        return all(c["converged"] for c in checks) if checks else None

    def results(self, run_name: str) -> list[dict]:
        """The test results of a run (or ``unaligned``, or a closed-form row) under its current config, for every
        seed scored; none for a run this profile does not make (a claim about it is then left out)."""
        if run_name not in self.runs and run_name not in ("unaligned", *self.baselines):
            return []
        return [r for seed in self.profile.seeds for r in self._cached(run_name, seed)]
