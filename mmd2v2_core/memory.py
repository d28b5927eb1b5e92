"""Accelerator memory of one training step, as a function of the per-device batch, and the batch that fits.

A step holds every weight (the student, the objective's memory bank, the frozen teacher), the trainable parameters'
gradients and AdamW's two moments (fp32), DDP's gradient buckets when several processes train, the batch itself,
and the activations autograd saves for the backward pass. The last is measured, not estimated: a forward pass of
the run's own student and objective at batch 1 and 2, under bf16 autocast with PyTorch's fused attention (what an
accelerator runs), counting the bytes of every tensor autograd saves (``torch.autograd.graph.saved_tensors_hooks``).
Its batch-independent part (bf16 copies of the weights) and its per-sample part follow. What the count leaves out
(the CUDA context, the caching allocator's fragmentation, the backward pass's transient buffers, the teacher's
forward pass) is ``HEADROOM``: a plan fills at most that share of the device.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace

import torch

from .student.blocks import fused_attention
from .student.presets import preset_from_config, student_from_config
from .teachers.registry import get_spec, parameter_count
from .train.objective import Objective, Trainable

GIB = 2**30
HEADROOM = 0.8  # share of the device's memory a plan may fill


@dataclass(frozen=True)
class StepMemory:
    """Bytes of one training step on one device: ``at(batch)`` = static + activations_fixed + batch × per_sample."""
    weights: int  # student + objective (memory bank) + teacher, as they sit on the device
    optimizer: int  # gradients and AdamW moments of the trainable parameters (+ DDP buckets)
    activations_fixed: int  # saved tensors that do not grow with the batch (bf16 copies of weights)
    per_sample: int  # saved activations and inputs per pair

    @property
    def static(self) -> int:
        return self.weights + self.optimizer + self.activations_fixed

    def at(self, batch: int) -> int:
        return self.static + batch * self.per_sample

    def largest_batch(self, device_bytes: float) -> int:
        """The largest per-device batch whose step fits ``HEADROOM`` of ``device_bytes`` (0: not even one pair)."""
        return max(0, math.floor((HEADROOM * device_bytes - self.static) / self.per_sample))

    def as_dict(self) -> dict:
        return asdict(self)


def saved_bytes(model: torch.nn.Module, inputs: dict) -> int:
    """Bytes of the tensors autograd saves in one forward pass (each storage counted once; the model's own
    parameters and buffers, which it saves by reference, are counted with the weights)."""
    owned = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in owned:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(**inputs)
    return sum(seen.values())


def target_dim(cfg) -> int:
    """Width of the run's teacher target as the trainer sees it: the student's own when whitened to it, or where its
    CLS regresses the target (no KD head: training requires that width), else the real teacher's features (its
    logits for a ``logits`` target)."""
    if cfg.teacher.name == "none":
        return 0
    preset = preset_from_config(cfg.student)
    if cfg.teacher.whiten or (not preset.config.kd_head and cfg.loss.kd != "shre"):
        return preset.config.width
    spec = get_spec(cfg.teacher.name)
    return spec.num_classes if cfg.teacher.target == "logits" else spec.feature_dim


def build_trainable(cfg) -> Trainable:
    """The run's student (random weights: memory does not depend on them) and objective."""
    dim = target_dim(cfg)
    torch.manual_seed(0)
    student, _ = student_from_config(replace(cfg, student=replace(cfg.student, init=False)),
                                     **({"kd_dim": 0, "num_classes": dim} if cfg.loss.kd == "shre" else {"kd_dim": dim}))
    student.grad_checkpointing = cfg.optim.grad_checkpointing
    return Trainable(student, Objective(cfg, dim))


def example_batch(model: Trainable, batch: int, dim: int, device="cpu") -> dict:
    """Random inputs of the model's own shapes: full-size images, captions at the preset's full length, ``dim``-wide
    targets."""
    s = model.student.cfg
    return {"images": torch.randn(batch, 3, s.image_size, s.image_size, device=device),
            "input_ids": torch.randint(0, s.vocab_size, (batch, s.max_text_len), device=device),
            "attention_mask": torch.ones(batch, s.max_text_len, dtype=torch.long, device=device),
            "targets": torch.randn(batch, dim, device=device) if dim else None}


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure_step_memory(cfg, processes: int = 1, accelerator: bool = True) -> StepMemory:
    """The step memory of a training config, counted on this machine's CPU. ``accelerator``: activations as a GPU
    saves them (bf16 autocast, fused attention); else as this CPU trains under ``cfg.optim.precision``."""
    model = build_trainable(cfg).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    weights = tensor_bytes(model.parameters()) + tensor_bytes(model.buffers())
    if cfg.teacher.name != "none" and not cfg.teacher.cache:  # an online teacher sits beside the student, fp32
        weights += 4 * parameter_count(get_spec(cfg.teacher.name))
    optimizer = tensor_bytes(trainable) * (3 + (processes > 1))  # gradient, 2 moments (+ a DDP bucket copy)
    bf16 = accelerator or cfg.optim.precision == "bf16"
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    counted = {}
    with autocast, fused_attention() if accelerator else nullcontext():
        for batch in (1, 2):
            inputs = example_batch(model, batch, target_dim(cfg))
            counted[batch] = saved_bytes(model, inputs) + tensor_bytes(t for t in inputs.values() if t is not None)
    per_sample = counted[2] - counted[1]
    return StepMemory(weights, optimizer, counted[1] - per_sample, per_sample)


def fit_batch(memory: StepMemory, device_gib: float, global_batch: int, processes: int) -> dict:
    """The per-device batch and gradient accumulation that keep ``global_batch`` on ``processes`` devices of
    ``device_gib`` each: the fewest accumulation steps whose micro-batch fits."""
    largest = memory.largest_batch(device_gib * GIB)
    per_process = global_batch // processes
    fits = [accum for accum in range(1, per_process + 1)
            if per_process % accum == 0 and per_process // accum <= largest]
    if global_batch % processes or not fits:
        return {"largest_batch": largest, "micro_batch": None, "accum": None, "gib": None}
    accum = fits[0]
    micro = per_process // accum
    return {"largest_batch": largest, "micro_batch": micro, "accum": accum, "gib": memory.at(micro) / GIB}
