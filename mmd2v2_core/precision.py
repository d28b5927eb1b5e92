"""The number format each computation runs in on this machine: bf16 only where the device computes it natively.

A CPU with AVX512-BF16 multiplies bf16 matrices about 2× faster than fp32, one with AMX about 6×; a CPU with AVX2 only
emulates bf16 and runs it several times slower (synth-coco 5K scored in 278 s under bf16 autocast against 43 s in fp32
on an AMD EPYC with AVX2). ``auto`` — the default of training and of the synthetic profiles' scoring — is therefore
resolved per machine, and the report names the machine and what ``auto`` became on it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """``auto`` → ``bf16`` where the device computes it natively (``native_bf16``), ``fp32`` elsewhere; other values
    as they are."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def cpu_description() -> str:
    """This CPU as a report names it: model, cores this process may use, and its bf16 class."""
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")),
                 "unknown CPU")
    if torch.cpu._is_amx_tile_supported():
        kind = "AMX and AVX512-BF16: bf16 native"
    elif torch.cpu._is_avx512_bf16_supported():
        kind = "AVX512-BF16: bf16 native"
    else:
        kind = f"{torch.backends.cpu.get_cpu_capability()}, no native bf16: fp32"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores ({kind})"


def _cpuinfo() -> str:
    path = Path("/proc/cpuinfo")
    return path.read_text() if path.is_file() else ""
