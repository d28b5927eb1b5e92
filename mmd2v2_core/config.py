"""One configuration schema for training: typed dataclasses, YAML presets, dotted ``key=value`` overrides.

    cfg = load_config("smoke", ["data.root=data/smoke/synth-coco", "optim.steps=50", "run.out_dir=runs/a"])

The same override list is a CLI argument (``mmd2v2 train --config smoke k=v …``), a papermill
parameter and a Python argument. Presets live in ``mmd2v2_core/configs/<name>.yaml`` (or pass a YAML
path). Every key is checked: a misspelled key names the closest valid keys, a value of the wrong type
names the key and the expected type, and impossible values (negative learning rate, batch 0, an AdamW beta
of 1.5, a device this machine lacks, more shared blocks than blocks, a batch larger than the train split,
an output folder that is a file) are refused, naming the key, before anything runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from .errors import ConfigError
from .paths import output_problem

EVAL_PRECISIONS = ("auto", "fp32", "bf16")  # what evaluation encoders may run under (bf16: bfloat16 autocast; auto:
# bf16 where the device computes it natively, ``precision.resolve_precision``)


@dataclass
class DataConfig:
    root: str = ""  # prepared dataset folder (manifest.json) with the training and validation splits
    train_split: str = "train"
    val_split: str = "val"
    tokenizer: str = "packaged-minilm"  # packaged-minilm, a Hugging Face name, or a local tokenizer folder
    crop_scale: tuple[float, float] = (0.9, 1.0)
    hflip: float = 0.5  # 0 for the synthetic data, whose captions say left and right
    num_workers: int = 2
    rendering_views: int = 0  # with student.frontend_cache: rendering-augmented views cached per training image
    # More training data beside data.root's train split: prepared indexes (`mmd2v2 data vg`, `mmd2v2 data webdataset`,
    # `mmd2v2 data karpathy`) whose train splits join it; a relative path is a folder beside data.root.
    sources: tuple[str, ...] = ()


@dataclass
class TeacherConfig:
    name: str = "efficientnet-lite0"  # see `mmd2v2 teachers list`; "none" trains without a teacher
    tiny: bool = False
    weights: str | None = None
    weights_dir: str | None = None
    target: str = "pooled"  # cls | cls_prenorm | mean | layer_avg | pooled | logits
    normalize: bool = False  # parameter-free LayerNorm on each target (as data2vec): regress its pattern, not its scale
    top_k: int = 8
    whiten: bool = False  # centre and PCA-whiten targets to the student's width with train statistics
    whiten_sample: int = 4096  # training images the whitening is fitted on when targets come from the teacher online
    image_size: int | None = None  # default: the teacher's own
    cache: str | None = None  # a `mmd2v2 targets` folder; the teacher is then never loaded


@dataclass
class StudentSection:
    preset: str = "mmd2v2_6"
    size: str = "embedded"
    attention: str = "separate"
    depth: int | None = None  # override the preset's layout: total blocks …
    n_shared: int | None = None  # … of which the last n_shared are shared (e.g. depth=6 n_shared=3: 3+3)
    init: bool = True  # copy pretrained unimodal weights (the preset says from which models)
    layers: str = "first"  # first | every_other
    freeze_embeddings: bool = False
    frontend_cache: str | None = None  # folder of cached frozen front-end outputs (computed on first use)
    image_weights: str | None = None
    text_weights: str | None = None


@dataclass
class LossConfig:
    kd: str = "mse"  # mse | cosine | cdl (contrastive distillation) | shre (KL on logits) | none
    kd_weight: float = 1.0
    itc_weight: float = 0.0  # CLIP-style image-text contrastive loss (S-SMKE: 1.0)
    memory_bank: int = 0  # teacher memory bank size for cdl (thesis: 65,536)
    bank_negatives: str = "local"  # cdl + bank: local batch + bank (the original code) | global (gathered batch + bank)
    kd_temperature: str = "fixed"  # cdl: fixed at 0.07 (what the original code ran) | learned
    itc_max_scale: float = 100.0
    itc_hidden: bool = False  # also ITC on the last block's FFN hidden CLS, averaged with the final CLS's (S-SMKE code)
    # NegCLIP-style ITC: each image's row also scores one hard negative of its caption, made from the image's scene
    # graph (synthetic data; ``data_prep.synth.negatives``)
    hard_negatives: bool = False


@dataclass
class OptimConfig:
    steps: int = 1000
    batch_size: int = 256  # global batch (all ranks, all accumulation steps)
    accum: int = 1
    lr: float = 1e-4  # base learning rate at a global batch of 256; scaled linearly with batch_size
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of steps with linear warm-up, then cosine decay
    clip: float = 1.0  # gradient-norm clipping (0: off)
    # fp32 | bf16 | fp16 (fp16 uses a gradient scaler; CPU runs use fp32 or bf16) | auto: bf16 where the device
    # computes it natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX), else fp32; the run's config.yaml records
    # what it resolved to
    precision: str = "fp32"
    grad_checkpointing: bool = False
    seed: int = 0


@dataclass
class RunConfig:
    out_dir: str = "runs/default"
    resume: str | None = None  # latest | a checkpoint folder | None
    checkpoint_every: int = 200
    keep_checkpoints: int = 2  # newest step checkpoints kept (the best one is kept besides); each real one ≈ 1.5 GB
    val_every: int = 200  # 0: never validate (the study scores each run on the test splits right after)
    val_at_start: bool = True  # validate the untrained student first (the curves' step-0 baseline)
    log_every: int = 10
    tensorboard: bool = True
    wandb: bool = False
    device: str = "auto"  # auto | cpu | cuda
    # Under torchrun: seconds a rank waits in a collective for the others before it stops, naming the rank that died
    # or hung. Longer than the longest step rank 0 takes alone (a validation, a checkpoint save); PyTorch's own
    # default is 30 minutes.
    collective_timeout: int = 600


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentSection = field(default_factory=StudentSection)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass(frozen=True)
class Range:
    """The numbers a key allows; ``ends`` marks each end closed ``[ ]`` or open ``( )``; None: unbounded."""

    low: float
    high: float | None = None
    ends: str = "[]"

    def __contains__(self, x) -> bool:
        if not math.isfinite(x):
            return False
        above = x >= self.low if self.ends[0] == "[" else x > self.low
        below = self.high is None or (x <= self.high if self.ends[1] == "]" else x < self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>=' if self.ends[0] == '[' else '>'} {self.low}"
        return f"in {self.ends[0]}{self.low}, {self.high}{self.ends[1]}"


def limits() -> dict[str, Range | tuple[str, ...]]:
    """The allowed range or choices of every numeric and enumerated key (a tuple key is checked per element).

    A function, not a constant: the target kinds live with their code, which imports torch. Checked
    elsewhere in ``validate``: run.device (``device_problem``), teacher.name, student.preset and student.size
    (their registries).
    """
    from .teachers.targets import TARGET_KINDS

    return {
        "data.crop_scale": Range(0, 1, "(]"),  # a share of the image's area: 0 would be no crop at all
        "data.hflip": Range(0, 1),
        "data.num_workers": Range(0),
        "data.rendering_views": Range(0),
        "teacher.target": TARGET_KINDS,
        "teacher.top_k": Range(1),
        "teacher.whiten_sample": Range(2),
        "teacher.image_size": Range(1),
        "student.attention": ("separate", "shared"),
        "student.depth": Range(1),
        "student.n_shared": Range(0),
        "student.layers": ("first", "every_other"),
        "loss.kd": ("mse", "cosine", "cdl", "shre", "none"),
        "loss.kd_weight": Range(0),
        "loss.itc_weight": Range(0),
        "loss.memory_bank": Range(0),
        "loss.bank_negatives": ("local", "global"),
        "loss.kd_temperature": ("fixed", "learned"),
        "loss.itc_max_scale": Range(1),  # the learned scale is clamped to [1, itc_max_scale]
        # the thesis' longest run is 60k steps; 10 million is months of steps, and more only follows a typo
        "optim.steps": Range(1, 10_000_000),
        "optim.batch_size": Range(1),
        "optim.accum": Range(1),
        "optim.lr": Range(0, None, "()"),
        "optim.betas": Range(0, 1, "[)"),
        "optim.eps": Range(0, None, "()"),
        "optim.weight_decay": Range(0),
        "optim.warmup": Range(0, 1, "[)"),
        "optim.clip": Range(0),
        "optim.precision": ("fp32", "bf16", "fp16", "auto"),
        "optim.seed": Range(0, 2**32 - 1),  # what numpy and the sampler's generator accept
        "run.checkpoint_every": Range(1),
        "run.keep_checkpoints": Range(1),
        "run.collective_timeout": Range(1),
        "run.val_every": Range(0),
        "run.log_every": Range(1),
    }


DEVICES = ("auto", "cpu", "cuda", "mps")


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot be used on this machine (unknown, or absent), or None."""
    kind, _, index = device.partition(":")
    if kind not in DEVICES or (index and not (kind == "cuda" and index.isdigit())):
        return f"must be one of {', '.join(DEVICES)} or cuda:<n>"
    import torch

    n = torch.cuda.device_count() if kind == "cuda" else 0
    if kind == "cuda" and int(index or 0) >= n:
        return "this machine has no CUDA device; use cpu (or auto)" if n == 0 else \
            f"this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}"
    if kind == "mps" and not torch.backends.mps.is_available():
        return "this machine has no MPS device; use cpu (or auto)"
    return None


def _check_limit(key: str, value, rule: Range | tuple[str, ...]) -> None:
    if value is None:  # an optional key left unset: its default applies
        return
    if isinstance(value, tuple):
        for i, item in enumerate(value):
            _check_limit(f"{key}[{i}]", item, rule)
        return
    if isinstance(rule, Range) and value not in rule:
        raise ConfigError(f"{key}={value!r}: must be {rule}")
    if isinstance(rule, tuple) and value not in rule:
        raise ConfigError(f"{key}={value!r}: must be one of {', '.join(rule)}")


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _all_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    for name, f in _fields(cls).items():
        sub = typing.get_type_hints(cls)[name]
        keys += _all_keys(sub, f"{prefix}{name}.") if dataclasses.is_dataclass(sub) else [f"{prefix}{name}"]
    return keys


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, _all_keys(TrainConfig), n=3, cutoff=0.5)
    return ConfigError(f"unknown config key {key!r}" + (f"; did you mean {', '.join(close)}?" if close else
                                                         "; see `mmd2v2 train --print-config` for all keys"))


def _coerce(key: str, value, hint):
    """Check (and lightly convert) a value against its annotation, or raise naming the key."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # tuple[str, ...]: any length
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        return tuple(_coerce(key, v, args[0]) for v in value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"config key {key!r}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-6 (no dot) as text; the user meant a number
            return float(value)
        except ValueError:
            pass
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. resume=123 written without quotes
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"config key {key!r}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _apply(obj, updates: dict, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if name not in hints:
            while isinstance(value, dict) and value:  # name the whole dotted key the user wrote
                sub, value = next(iter(value.items()))
                key += f".{sub}"
            raise _unknown(key)
        if dataclasses.is_dataclass(hints[name]):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {key!r} is a section; set its keys, e.g. {key}.<key>=…")
            _apply(getattr(obj, name), value, key + ".")
        else:
            setattr(obj, name, _coerce(key, value, hints[name]))


def parse_overrides(overrides: list[str]) -> dict:
    """['a.b=1', 'c=x'] → {'a': {'b': 1}, 'c': 'x'}; values are read as YAML (numbers, booleans, null, lists)."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("mmd2v2_core.configs").iterdir() if p.name.endswith(".yaml"))


def read_preset(preset: str | Path) -> dict:
    """A preset's YAML (a name in ``configs/`` or a path) as its mapping of sections, not yet applied or validated:
    what the file itself says (a study's overrides may complete it)."""
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        text = path.read_text()
    elif preset in preset_names():
        text = resources.files("mmd2v2_core.configs").joinpath(f"{preset}.yaml").read_text()
    else:
        raise ConfigError(f"unknown config preset {preset!r}; presets: {', '.join(preset_names())} "
                          "(or a path to a .yaml file)")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config {preset}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {preset}: expected a mapping of sections (data:, optim:, …), "
                          f"got a {type(data).__name__}")
    return data


def load_config(preset: str | Path | None = None, overrides: list[str] = (), inputs: bool = True) -> TrainConfig:
    """The preset with ``overrides`` applied, validated. ``inputs=False``: the dataset, teacher cache and checkpoint it
    names may not exist yet (a later stage of a study makes them); each is checked only where it already exists."""
    cfg = unvalidated_config(preset, overrides)
    validate(cfg, inputs)
    return cfg


def unvalidated_config(preset: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """The preset with ``overrides`` applied, types checked but no value: what a writer needs to know before anything
    slow (its ``run.out_dir``, to lock it), without importing torch as ``validate`` does."""
    cfg = TrainConfig()
    if preset:
        data = read_preset(preset)
        try:
            _apply(cfg, data)
        except ConfigError as exc:
            raise ConfigError(f"config {preset}: {exc}") from None
    _apply(cfg, parse_overrides(list(overrides)))
    return cfg


def check_out_dir(cfg: TrainConfig) -> None:
    """A run folder that can be written: refused by key before a writer takes its lock there."""
    problem = output_problem(cfg.run.out_dir)
    if problem:
        raise ConfigError(f"run.out_dir={cfg.run.out_dir!r}: {problem}")


def validate(cfg: TrainConfig, inputs: bool = True) -> None:
    """Values that type-check but cannot work; with ``inputs=False``, the inputs it names only where they exist."""
    for key, rule in limits().items():
        section, name = key.split(".")
        _check_limit(key, getattr(getattr(cfg, section), name), rule)
    o = cfg.optim
    checks = [
        (o.batch_size % o.accum == 0, "optim.batch_size must be a positive multiple of optim.accum"),
        (bool(str(cfg.data.tokenizer).strip()), "data.tokenizer is empty: name a tokenizer (a packaged one such as "
                                                f"{DataConfig.tokenizer!r}, a Hugging Face name or a folder)"),
        (cfg.data.crop_scale[0] <= cfg.data.crop_scale[1],
         f"data.crop_scale={list(cfg.data.crop_scale)}: the lower end must not exceed the upper"),
        (cfg.loss.kd_weight > 0 or cfg.loss.itc_weight > 0, "at least one of loss.kd_weight, loss.itc_weight must be > 0"),
        (cfg.loss.kd == "none" or cfg.teacher.name != "none", "loss.kd needs a teacher (teacher.name is 'none')"),
        (not cfg.loss.hard_negatives or (cfg.loss.itc_weight > 0 and bool(cfg.student.frontend_cache)),
         "loss.hard_negatives needs loss.itc_weight > 0 and student.frontend_cache (negatives join the ITC of cached "
         "pairs)"),
        (cfg.data.rendering_views == 0 or bool(cfg.student.frontend_cache),
         "data.rendering_views needs student.frontend_cache (the views are cached front-end outputs)"),
        (not cfg.data.sources or not (cfg.teacher.cache or cfg.student.frontend_cache),
         "data.sources trains on more data than data.root: its targets and front-end outputs are computed on each "
         "batch, so it cannot be combined with teacher.cache or student.frontend_cache"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    problem = device_problem(cfg.run.device)
    if problem:
        raise ConfigError(f"run.device={cfg.run.device!r}: {problem}")
    if cfg.data.root and (inputs or (Path(cfg.data.root) / "manifest.json").is_file()):
        _check_dataset(cfg, inputs)
    check_out_dir(cfg)
    if inputs and cfg.teacher.cache and not Path(cfg.teacher.cache).is_dir():
        raise ConfigError(f"teacher.cache={cfg.teacher.cache!r}: folder not found")
    if inputs and cfg.run.resume not in (None, "latest") and not Path(cfg.run.resume).is_dir():
        raise ConfigError(f"run.resume={cfg.run.resume!r}: checkpoint folder not found (or use run.resume=latest)")
    from .student.presets import preset_from_config
    from .teachers.registry import get_spec

    preset_from_config(cfg.student)  # layout errors, early
    if cfg.teacher.name != "none":
        get_spec(cfg.teacher.name)


def _check_dataset(cfg: TrainConfig, inputs: bool = True) -> None:
    """The splits exist and one batch fits in the train split: known from the manifest, before a run folder exists."""
    from .data.index import load_manifest

    if not (Path(cfg.data.root) / "manifest.json").is_file():
        raise ConfigError(f"data.root={cfg.data.root!r}: no prepared dataset there (no manifest.json)")
    splits = load_manifest(cfg.data.root)["splits"]
    for key in ("train_split", "val_split"):
        name = getattr(cfg.data, key)
        if name not in splits:
            raise ConfigError(f"data.{key}={name!r}: no such split in data.root={cfg.data.root!r}, "
                              f"which has {', '.join(sorted(splits))}")
    pairs, counted = splits[cfg.data.train_split]["captions"], True  # one training pair per caption
    for source in source_folders(cfg.data):
        if not (source / "manifest.json").is_file():
            if not inputs:  # not prepared yet: its pairs are counted once it is
                counted = False
                continue
            raise ConfigError(f"data.sources: {source} is not a prepared dataset (no manifest.json); prepare it "
                              "(`mmd2v2 data vg`, `mmd2v2 data webdataset`) or leave it out of data.sources")
        pairs += load_manifest(source)["splits"].get("train", {}).get("captions", 0)
    if counted and pairs < cfg.optim.batch_size:
        raise ConfigError(f"optim.batch_size={cfg.optim.batch_size}: more than the {pairs} training pairs of split "
                          f"{cfg.data.train_split!r} in data.root={cfg.data.root!r}; one batch must fit")


def source_folders(data: DataConfig) -> list[Path]:
    """The folders of ``data.sources``: relative ones beside ``data.root``."""
    return [Path(data.root).parent / s if not Path(s).is_absolute() else Path(s) for s in data.sources]


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: TrainConfig) -> str:
    def plain(x):
        return [plain(v) for v in x] if isinstance(x, (list, tuple)) else \
            {k: plain(v) for k, v in x.items()} if isinstance(x, dict) else x

    return yaml.safe_dump(plain(to_dict(cfg)), sort_keys=False)


def from_dict(data: dict) -> TrainConfig:
    cfg = TrainConfig()
    _apply(cfg, data)
    return cfg
