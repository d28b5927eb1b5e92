"""Distillation pretraining: one readable loop for a laptop CPU and for ``torchrun`` on many GPUs.

    result = train(load_config("smoke", ["data.root=…", "run.out_dir=runs/a"]))

Per step: a global batch of (image, caption) pairs is split across ranks (and accumulation steps);
teacher targets come from the cache or from the frozen teacher on the same augmented crop; the losses
of the config (KD regression, contrastive distillation with a memory bank, SHRe KL, ITC) are weighted
and summed; AdamW with a linear warm-up and cosine schedule takes the step. Every ``val_every`` steps (0: never)
(and at step 0) the val split is scored by retrieval (mean of R@1/5/10 both ways), the best checkpoint is
marked; checkpoints every ``checkpoint_every`` steps make ``run.resume=latest`` continue exactly.
SIGTERM ends the step under way, saves a checkpoint and returns; Ctrl-C (SIGINT) does the same, then raises
``TrainingInterrupted``; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import signal
import socket
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from data_prep.synth.generate import DOMAINS

from ..config import TrainConfig, source_folders, to_dict, to_yaml
from ..data.datasets import PairCollator, RetrievalSplit
from ..data.images import open_record
from ..data.index import load_manifest, read_log_lines, read_split, write_text_atomic
from ..data.tokenizer import CaptionTokenizer
from ..data.transforms import ImageTransformConfig, eval_transform
from ..errors import ConfigError, DataError, KitError, clean_worker_errors
from ..eval.embed import embed_split
from ..eval.retrieval import recall_at_k
from ..lock import folder_lock
from ..precision import resolve_precision
from ..losses import gather_no_grad
from ..progress import progress
from ..student.frontend_cache import CachedFrontEnd
from ..student.presets import preset_from_config, student_from_config
from ..teachers.cache import TargetCache, dataset_fingerprint, fingerprint
from ..teachers.inspect import preprocess_of
from ..teachers.registry import teacher_from_config
from ..teachers.targets import compute_target
from ..teachers.whitening import TargetWhitening
from .checkpoint import (check_compatible, find_checkpoint, load_checkpoint, mark_best, rng_state, save_checkpoint,
                         set_rng_state)
from .objective import Objective, Trainable
from .data import CachedPairs, StepSampler, TrainPairs, View, skipped_images

SKIPPED_LOG = "skipped_images.jsonl"


class TrainingDiverged(KitError):
    """The loss became NaN or infinite."""


class RankLost(KitError):
    """Under torchrun, this rank's collectives failed: another rank died, or hung past ``run.collective_timeout``."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after the step under way, which was saved. A KeyboardInterrupt, so that a caller
    (a notebook cell, a script) stops too instead of carrying on with a half-trained student."""

    def __init__(self, step: int, checkpoint: Path | None):
        super().__init__(f"interrupted at step {step}; saved {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    stopped_early: bool
    val_history: list[dict]
    best_checkpoint: Path | None
    skipped_images: list[dict] = field(default_factory=list)  # files that broke after indexing


def _distributed(timeout_s: int) -> tuple[int, int, int]:
    """(rank, world, local_rank) from torchrun's environment; initialises the process group once, its collectives
    giving up after ``timeout_s`` seconds."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not torch.distributed.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        store, rank, world = next(torch.distributed.rendezvous("env://", timeout=timeout))
        # torchrun --max-restarts keeps its store across restarts: keyed by the restart, a restarted rank cannot read
        # the address of a worker that died (gloo then failed with "Connection refused")
        store = torch.distributed.PrefixStore(f"restart{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}/", store)
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo", store=store, rank=rank,
                                             world_size=world, timeout=timeout)
    return int(os.environ.get("RANK", 0)), world, int(os.environ.get("LOCAL_RANK", 0))


def _peers(world: int) -> list[tuple[str, int]]:
    """(host, pid) of every rank, gathered at the start: what names a rank that dies later."""
    if world == 1:
        return [(socket.gethostname(), os.getpid())]
    peers = [None] * world
    torch.distributed.all_gather_object(peers, (socket.gethostname(), os.getpid()))
    return peers


def _process_state(pid: int) -> str:
    """A process's state: "dead", "stopped" or "running"; killed but not yet reaped by its parent (a zombie) is dead."""
    if not Path("/proc/self/stat").is_file():  # no /proc (macOS): only dead or alive
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "dead"
        return "running"
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "dead"
    return {"Z": "dead", "X": "dead", "T": "stopped", "t": "stopped"}.get(state, "running")


def _collective_failure(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, torch.distributed.DistError) or "gloo" in text or "NCCL" in text


def _rank_lost(exc: BaseException, rank: int, peers: list[tuple[str, int]], step: int, timeout_s: int) -> str:
    """What this rank can say about the others after its collectives failed: the ranks on its host whose process died
    or stopped, else that some rank (elsewhere, or hung) did not answer."""
    host = socket.gethostname()
    for _ in range(20):  # a killed process closes its sockets a moment before the kernel marks it dead
        found = [f"rank {r} (pid {pid}) {'died' if state == 'dead' else 'stopped answering'}"
                 for r, (h, pid) in enumerate(peers) if r != rank and h == host
                 for state in [_process_state(pid)] if state != "running"]
        if found:
            break
        time.sleep(0.1)
    if found:
        return f"{', '.join(found)} at step {step + 1}"
    elsewhere = [str(r) for r, (h, _) in enumerate(peers) if h != host]
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return (f"rank {rank} lost the other ranks at step {step + 1} (a rank died or hung longer than "
            f"run.collective_timeout={timeout_s} s" + (f"; ranks on other hosts: {', '.join(elsewhere)}" if elsewhere
                                                        else "") + f": {reason[:200]})")


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    want = cfg.run.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(want)


# Parameters without weight decay besides biases and norms (all 1-D): token, position and type embeddings, CLS
# tokens, temperatures — the original's "no decay for 1-D, bias, *embeddings*"; the patch-embedding convolution
# (``image_embed.proj``) is a weight like any other and decays, as it did there.
NO_DECAY = ("pos_embed", "cls_token", "type_", "text_embed.position", "text_embed.word", "log_scale")


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.ndim < 2 or any(k in name for k in NO_DECAY)
        (no_decay if plain else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _ignore_interrupts(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the trainer: a terminal sends SIGINT to every process of the group."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _schedule(optim_cfg) -> callable:
    warm = int(optim_cfg.warmup * optim_cfg.steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress_ = (step - warm) / max(1, optim_cfg.steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(progress_, 1.0)))
    return factor


class _Targets:
    """Teacher targets for a batch: from the cache (by image id) or from the frozen teacher online."""

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.teacher, self.cache = None, None
        if cfg.teacher.name == "none":
            self.dim = 0
            return
        self.teacher = teacher_from_config(cfg.teacher)
        self.preprocess = preprocess_of(self.teacher, cfg.teacher.image_size)
        if cfg.teacher.cache:
            expected = fingerprint(self.teacher, cfg.teacher.target, cfg.teacher.top_k, self.preprocess,
                                   dataset_fingerprint(cfg.data.root, cfg.data.train_split))
            self.cache = TargetCache(cfg.teacher.cache, expected)
            self.dim, self.teacher = self.cache.dim, None  # checked against the cache, then not needed
        else:
            self.teacher = self.teacher.to(device)
            probe = torch.zeros(1, 3, self.preprocess.size, self.preprocess.size, device=device)
            self.dim = compute_target(self.teacher(probe), cfg.teacher.target, cfg.teacher.top_k).shape[1]

        self.whitening = None

    @property
    def view(self) -> View | None:
        return None if self.teacher is None else View(self.preprocess.size, self.preprocess.mean, self.preprocess.std)

    def whiten_to(self, dim: int, records) -> None:
        """Fit the whitening on the training targets: all of the cache, or the online teacher's on the first
        ``teacher.whiten_sample`` readable training images (un-augmented view, a fixed choice: resumes refit the
        same; an image that broke after indexing is left out here and skipped, with a note, by training)."""
        if self.cache is not None:
            raw = self.cache.all()
        else:
            transform = eval_transform(self.preprocess)
            images = []
            for record in records[:self.cfg.teacher.whiten_sample]:
                try:
                    images.append(transform(open_record(record.path, record.extra)))
                except DataError:
                    continue
            with torch.no_grad():
                raw = torch.cat([self._teacher_targets(torch.stack(images[i:i + 64])).cpu()
                                 for i in range(0, len(images), 64)])
        self.whitening = TargetWhitening.fit(self._normalized(raw), dim).to(self.device)
        self.dim = dim

    def _teacher_targets(self, images: torch.Tensor) -> torch.Tensor:
        out = self.teacher(images.to(self.device))
        return compute_target(out, self.cfg.teacher.target, self.cfg.teacher.top_k,
                              getattr(self.teacher.model, "num_prefix_tokens", 1)).float()

    def _normalized(self, target: torch.Tensor) -> torch.Tensor:
        if self.cfg.teacher.normalize and self.cfg.loss.kd != "shre":  # logits keep their scale
            target = torch.nn.functional.layer_norm(target, target.shape[-1:])
        return target

    def __call__(self, batch: dict) -> torch.Tensor | None:
        if self.cache is not None:
            target = self.cache.lookup(batch["image_id"].tolist()).to(self.device)
        elif self.teacher is None:
            return None
        else:
            with torch.no_grad():
                target = self._teacher_targets(batch["teacher_image"])
        target = self._normalized(target)
        return self.whitening(target) if self.whitening is not None else target


def evaluate_val(student: nn.Module, split: RetrievalSplit, images, tokenizer, device, precision: str = "fp32") -> dict:
    emb = embed_split(student, split, images, tokenizer, batch_size=256, device=device,
                      precision="bf16" if precision == "bf16" else "fp32")
    return recall_at_k(emb.image, emb.text, emb.text_to_image)


class _Logger:
    """metrics.jsonl always; TensorBoard by default; Weights & Biases when asked for (and installed).

    A run resumed at step s first drops what the killed run logged after s (it is about to be logged
    again), so every step appears once — in metrics.jsonl and, via ``purge_step``, in TensorBoard.
    """

    def __init__(self, out_dir: Path, enabled: bool, start_step: int, tensorboard: bool,
                 wandb_config: dict | None = None):
        self.enabled = enabled
        self.tb, self.wandb, self.jsonl = None, None, None
        if not enabled:
            return
        path = out_dir / "metrics.jsonl"
        kept = [r for r in read_log_lines(path) if r["step"] <= start_step] if start_step else []
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
        self.jsonl = open(path, "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_step or None)
        if wandb_config is not None:
            try:
                import wandb
            except ImportError:
                raise ConfigError("run.wandb=true needs the wandb package (pip install wandb)") from None
            self.wandb = wandb.init(project="mmd2v2", name=out_dir.name, dir=str(out_dir), config=wandb_config,
                                    resume="allow")

    def log(self, step: int, kind: str, values: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, "kind": kind, **values}) + "\n")
        self.jsonl.flush()
        scalars = {f"{kind}/{k}": v for k, v in values.items() if isinstance(v, (int, float))}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()
            if self.wandb is not None:
                self.wandb.finish()


def train(cfg: TrainConfig) -> TrainResult:
    if not cfg.data.root:
        raise ConfigError("data.root is not set: point it at a prepared dataset (manifest.json)")
    with folder_lock(cfg.run.out_dir, "mmd2v2 train", "pass another run.out_dir"):  # rank 0 holds it for all ranks
        return _train(cfg)


def _train(cfg: TrainConfig) -> TrainResult:
    rank, world, local_rank = _distributed(cfg.run.collective_timeout)
    peers = _peers(world)
    device = _device(cfg, local_rank)
    cfg = replace(cfg, optim=replace(cfg.optim, precision=resolve_precision(cfg.optim.precision, device)))
    out_dir = Path(cfg.run.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # every rank: rank 0's lock made it, but perhaps not yet
    targets = _Targets(cfg, device)
    records = read_split(cfg.data.root, cfg.data.train_split)
    records += [r for source in source_folders(cfg.data) for r in read_split(source, "train")]
    width = preset_from_config(cfg.student).config.width
    if cfg.teacher.whiten and targets.dim:
        targets.whiten_to(width, records)
    # After the teacher (whose construction may draw random numbers): the student's initial weights depend
    # on the seed and architecture only — the same on every rank, and with any teacher or none.
    torch.manual_seed(cfg.optim.seed)
    student, init_report = student_from_config(cfg, **({"kd_dim": 0, "num_classes": targets.dim}
                                                       if cfg.loss.kd == "shre" else {"kd_dim": targets.dim}))
    student.grad_checkpointing = cfg.optim.grad_checkpointing
    model = Trainable(student, Objective(cfg, targets.dim)).to(device)
    tokenizer = CaptionTokenizer(cfg.data.tokenizer, max_length=student.cfg.max_text_len)
    view = ImageTransformConfig(size=student.cfg.image_size)
    val_split = RetrievalSplit.from_index(cfg.data.root, cfg.data.val_split)
    if cfg.student.frontend_cache:  # the frozen front end's outputs, computed once: a step is the trainable part
        if targets.teacher is not None:
            raise ConfigError("student.frontend_cache needs the teacher's targets from teacher.cache (or no teacher): "
                              "an online teacher needs the pixels of every step")
        frontend = CachedFrontEnd(student, cfg.student.frontend_cache, device, num_workers=cfg.data.num_workers)
        views = [frontend.cache(cfg.data.root, cfg.data.train_split, v) for v in range(1 + cfg.data.rendering_views)]
        dataset = CachedPairs(records, views, student.image_embed.token_dim, tokenizer, cfg.optim.seed,
                              DOMAINS.get(load_manifest(cfg.data.root)["dataset"], "coco") if cfg.loss.hard_negatives
                              else None)
        val_images = frontend
    else:
        dataset = TrainPairs(records, cfg.data.crop_scale, cfg.data.hflip, View(view.size, view.mean, view.std),
                             targets.view, cfg.optim.seed, skipped_log=out_dir / SKIPPED_LOG)
        val_images = eval_transform(view)

    # fused: one kernel for all parameters; the per-tensor default cost 4–9 ms of a 105 ms embedded step
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.optim.weight_decay),
                                  lr=cfg.optim.lr * cfg.optim.batch_size / 256, betas=cfg.optim.betas, eps=cfg.optim.eps,
                                  fused=device.type in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg.optim))
    use_scaler = cfg.optim.precision == "fp16" and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.optim.precision == "bf16" else
                torch.autocast("cuda", dtype=torch.float16) if use_scaler else nullcontext())

    step, best, val_history, tick = 0, -1.0, [], time.perf_counter()
    resume_from = find_checkpoint(out_dir, cfg.run.resume)
    if resume_from is not None:
        check_compatible(resume_from, to_dict(cfg))
        state = load_checkpoint(resume_from, model)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step, best, val_history = state["step"], state["best"], state["val_history"]
    ddp = model
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)

    stop = {"signal": None}

    def request_stop(signum, _frame):
        if stop["signal"] == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        stop["signal"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)} \
        if torch.multiprocessing.current_process().name == "MainProcess" else {}
    logger = _Logger(out_dir, rank == 0, step, cfg.run.tensorboard, to_dict(cfg) if cfg.run.wandb else None)
    if rank == 0:
        if resume_from is None:  # a fresh run: files skipped by an earlier run in this folder are not its own
            (out_dir / SKIPPED_LOG).unlink(missing_ok=True)
        write_text_atomic(out_dir / "config.yaml", to_yaml(cfg))
        logger.log(step, "init", {"image": init_report["image"], "text": init_report["text"],
                                  "resumed_from": str(resume_from) if resume_from else ""})

    def validate() -> dict:
        nonlocal tick
        start = time.perf_counter()
        metrics = evaluate_val(student, val_split, val_images, tokenizer, device, cfg.optim.precision)
        tick += time.perf_counter() - start  # pairs/s counts training only
        val_history.append({"step": step, **metrics})
        logger.log(step, "val", metrics)
        model.train()
        return metrics

    def checkpoint() -> Path | None:
        if rank != 0:
            return None
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict(), "rng": rng_state(), "step": step, "best": best,
                 "val_history": val_history}
        return save_checkpoint(out_dir, step, model, state, to_yaml(cfg), student.config_dict(),
                               keep=cfg.run.keep_checkpoints)

    if step == 0 and rank == 0 and not val_history and cfg.run.val_at_start:
        validate()  # the untrained student: the baseline every later score is read against
    sampler = StepSampler(len(dataset), cfg.optim.batch_size // cfg.optim.accum, cfg.optim.steps * cfg.optim.accum,
                          cfg.optim.seed, rank, world, start_step=step * cfg.optim.accum)
    if isinstance(dataset, CachedPairs):  # whole batches gathered from memory: nothing for loader processes to do
        batches = map(dataset.batch, sampler)
    else:
        batches = clean_worker_errors(DataLoader(dataset, batch_sampler=sampler, collate_fn=PairCollator(tokenizer),
                                                 num_workers=cfg.data.num_workers, persistent_workers=False,
                                                 worker_init_fn=_ignore_interrupts))
    bar = progress(total=cfg.optim.steps, initial=step, desc="train", disable=rank != 0)
    model.train()
    tick, last_good = time.perf_counter(), None  # the clock of the pairs/s windows starts with training
    try:
        while step < cfg.optim.steps:
            optimizer.zero_grad(set_to_none=True)
            terms_sum: dict[str, float] = {}
            for micro in range(cfg.optim.accum):
                batch = next(batches)
                target = targets(batch)
                sync = nullcontext() if (world == 1 or micro == cfg.optim.accum - 1) else ddp.no_sync()
                with sync:
                    with autocast:
                        terms = ddp(batch["images"].to(device), batch["input_ids"].to(device),
                                    batch["attention_mask"].to(device), target,
                                    *[batch[k].to(device) for k in ("negative_ids", "negative_mask") if k in batch])
                    scaler.scale(terms["loss"] / cfg.optim.accum).backward()
                for k, v in terms.items():
                    terms_sum[k] = terms_sum.get(k, 0.0) + float(v.detach()) / cfg.optim.accum
                if model.objective.bank is not None:
                    model.objective.bank.push(gather_no_grad(target))
            if world > 1:  # log the global batch's loss, not this rank's share
                reduced = torch.tensor(list(terms_sum.values()), dtype=torch.float64, device=device)
                torch.distributed.all_reduce(reduced)
                terms_sum = dict(zip(terms_sum, (reduced / world).tolist()))
            if not all(math.isfinite(v) for v in terms_sum.values()):
                raise TrainingDiverged(
                    f"step {step + 1}: loss is not finite ({', '.join(f'{k}={v}' for k, v in terms_sum.items())}); "
                    f"last good checkpoint: {last_good or find_checkpoint(out_dir, 'latest') or 'none'}")
            if cfg.optim.clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            bar.update(1)
            if step % cfg.run.log_every == 0 or step == cfg.optim.steps:
                now = time.perf_counter()
                rate = cfg.optim.batch_size * cfg.run.log_every / (now - tick)
                tick = now
                with torch.no_grad():
                    scales = {"itc_scale": model.objective.itc_scale().item(), "kd_scale": model.objective.kd_scale().item()}
                    if target is not None:  # a teacher that gives every image the same target teaches nothing
                        scales["target_std"] = target.float().std(0).mean().item() if len(target) > 1 else 0.0
                values = {**terms_sum, "lr": scheduler.get_last_lr()[0], "samples_per_s": rate, **scales}
                logger.log(step, "train", values)
                bar.set_postfix(loss=f"{terms_sum['loss']:.4f}", lr=f"{values['lr']:.2e}", sps=f"{rate:.0f}",
                                refresh=False)  # a headless bar redraws on its own rare schedule
            last_step = step == cfg.optim.steps
            due = cfg.run.val_every and (step % cfg.run.val_every == 0 or last_step)
            metrics = validate() if rank == 0 and due else None
            is_best = metrics is not None and metrics["mean"] > best
            if is_best:
                best = metrics["mean"]
            # validated steps are saved too, so the best one can be marked; the state holds this validation
            if metrics is not None or step % cfg.run.checkpoint_every == 0 or last_step or stop["signal"]:
                ckpt = checkpoint()
                last_good = ckpt or last_good
                if is_best and ckpt is not None:
                    mark_best(out_dir, ckpt)
            if stop["signal"]:
                break
    except RuntimeError as exc:
        if world == 1 or not _collective_failure(exc):
            raise
        again = "the same command" + ("" if cfg.run.resume == "latest" else " with run.resume=latest")
        raise RankLost(f"{_rank_lost(exc, rank, peers, step, cfg.run.collective_timeout)}; the last checkpoint is "
                       f"{find_checkpoint(out_dir, 'latest') or 'none'}: to continue from it, run {again} "
                       "(torchrun --max-restarts does that by itself)") from None
    finally:
        bar.close()
        logger.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    best_ptr = out_dir / "checkpoints" / "best"
    if stop["signal"] == "SIGINT":
        raise TrainingInterrupted(step, last_good)
    return TrainResult(out_dir, step, stop["signal"] is not None, val_history,
                       out_dir / "checkpoints" / best_ptr.read_text().strip() if best_ptr.is_file() else None,
                       skipped_images(out_dir / SKIPPED_LOG, compact=rank == 0))
