"""Training-step throughput of the real-size students on one accelerator: samples/s and model-FLOPs utilisation.

    .venv/bin/python bench/bench_gpu_train.py                       # CUDA: bf16, batch 256, both recipes
    .venv/bin/python bench/bench_gpu_train.py --device cpu --batch 4 --steps 2 --no-write   # a check anywhere

The real S-SMKE (``configs/real_smke.yaml``: 6-block towers + 1 shared block, ITC on two features + contrastive
distillation with a 65,536-entry memory bank) and MM-D2V2 5+1 (``configs/real_mmd2v2.yaml``: KD regression)
students at ViT-B width, built from those configs with random weights (no checkpoint needed), trained by the
trainer's own ``Trainable`` (student + objective) and fused AdamW on synthetic tensors: 224-px images, captions of
the preset's full length, 768-d teacher targets. The step is forward + backward + optimiser under bf16 autocast.
FLOPs per step are counted by ``torch.utils.flop_counter`` on one step; utilisation = FLOPs/s over the device's
dense bf16 peak (``--peak-tflops``, or known from the device name).
"""

from __future__ import annotations

import argparse
import time

import torch
from common import write_section
from torch.utils.flop_counter import FlopCounterMode

from mmd2v2_core.config import load_config
from mmd2v2_core.student.presets import student_from_config
from mmd2v2_core.train.objective import Objective, Trainable

RECIPES = {"S-SMKE": "real_smke", "MM-D2V2 5+1": "real_mmd2v2"}
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}  # dense, per GPU


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def build(config: str, batch: int, device: torch.device):
    # the packaged tokenizers stand in for the real ones: only the vocabulary size matters here
    cfg = load_config(config, ["student.init=false", f"optim.batch_size={batch}", "data.tokenizer=minilm"])
    torch.manual_seed(0)
    student, _ = student_from_config(cfg, kd_dim=768)
    model = Trainable(student, Objective(cfg, target_dim=768)).to(device)
    s = student.cfg
    data = {"images": torch.randn(batch, 3, s.image_size, s.image_size, device=device),
            "input_ids": torch.randint(1000, s.vocab_size, (batch, s.max_text_len), device=device),
            "attention_mask": torch.ones(batch, s.max_text_len, dtype=torch.long, device=device),
            "targets": torch.randn(batch, 768, device=device)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                  fused=device.type in ("cuda", "cpu"))
    return model, data, optimizer


def step(model, data, optimizer, device: torch.device) -> None:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        terms = model(**data)
    terms["loss"].backward()
    optimizer.step()
    if model.objective.bank is not None:
        model.objective.bank.push(data["targets"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(config: str, batch: int, steps: int, warmup: int, device: torch.device) -> dict:
    model, data, optimizer = build(config, batch, device)
    with FlopCounterMode(display=False) as counter:
        step(model, data, optimizer, device)
    for _ in range(warmup):
        step(model, data, optimizer, device)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(model, data, optimizer, device)
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"samples_per_s": batch / seconds, "step_ms": 1000 * seconds, "tflop_per_step": counter.get_total_flops() / 1e12,
            "trainable_m": trainable / 1e6,
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device")
    parser.add_argument("--no-write", action="store_true", help="print only; leave reports/benchmarks.md alone")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    peak = peak_tflops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows = []
    for label, config in RECIPES.items():
        r = measure(config, args.batch, args.steps, args.warmup, device)
        mfu = r["tflop_per_step"] / (r["step_ms"] / 1000) / peak if peak else None
        print(f"{label}: {r['samples_per_s']:.0f} samples/s, {r['step_ms']:.1f} ms/step, "
              f"{r['tflop_per_step']:.2f} TFLOP/step, MFU {f'{100 * mfu:.1f} %' if mfu else 'n/a'}", flush=True)
        memory = f"{r['peak_gib']:.1f}" if r["peak_gib"] else "-"
        rows.append(f"| {label} | {r['trainable_m']:.0f} M | {r['samples_per_s']:,.0f} | {r['step_ms']:.1f} | "
                    f"{r['tflop_per_step']:.2f} | {f'{100 * mfu:.1f} %' if mfu else '-'} | {memory} |")
    if not args.no_write:
        write_section("gpu_train", "\n".join([
            "## Real-size training step on one accelerator (`bench/bench_gpu_train.py`)", "",
            f"{name}, torch {torch.__version__}; bf16 autocast, batch {args.batch}, synthetic tensors (224 px, full "
            f"caption length), mean of {args.steps} steps after {args.warmup} warm-up steps. MFU: model FLOPs "
            f"(counted by torch.utils.flop_counter) per second over a dense bf16 peak of "
            f"{peak or '?'} TFLOP/s.", "",
            "| recipe | trainable | samples/s | ms/step | TFLOP/step | MFU | peak memory (GiB) |",
            "|---|---:|---:|---:|---:|---:|---:|", *rows]))


if __name__ == "__main__":
    main()
