"""The memory plan: saved-activation counting, the batch that fits, and the model against a measured CPU step."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from mmd2v2_core.memory import GIB, HEADROOM, StepMemory, fit_batch, saved_bytes

# A real-size S-SMKE student (ITC only: no teacher weights needed) trained 2 steps on this CPU in fp32: peak resident
# memory above the start, against the model's prediction for the same precision and attention path.
MEASURED_STEP = """
import json, resource, sys, torch
from mmd2v2_core.config import load_config
from mmd2v2_core.memory import build_trainable, example_batch, measure_step_memory, target_dim

cfg = load_config("real_smke", ["teacher.name=none", "loss.kd=none", "optim.precision=fp32", "data.tokenizer=minilm"])
batch = int(sys.argv[1])
start = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
model = build_trainable(cfg).train()
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
inputs = example_batch(model, batch, target_dim(cfg))
for _ in range(2):  # AdamW's moments exist after the first step: the second is the steady state
    optimizer.zero_grad(set_to_none=True)
    model(**inputs)["loss"].backward()
    optimizer.step()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
predicted = measure_step_memory(cfg, accelerator=False).at(batch)
print(json.dumps({"measured": peak - start, "predicted": predicted}))
"""


def test_saved_bytes_counts_each_saved_activation_once_and_no_parameter():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    # the first Linear saves its input (3×4 fp32), ReLU its output (3×8), which the second Linear saves again
    assert saved_bytes(model, {"input": torch.randn(3, 4)}) == 4 * (3 * 4 + 3 * 8)


def test_the_largest_batch_fills_the_usable_share_of_the_device():
    memory = StepMemory(weights=2 * GIB, optimizer=4 * GIB, activations_fixed=GIB, per_sample=GIB // 16)
    largest = memory.largest_batch(24 * GIB)
    assert memory.at(largest) <= HEADROOM * 24 * GIB < memory.at(largest + 1)


def test_fit_keeps_the_global_batch_with_the_fewest_accumulation_steps():
    memory = StepMemory(weights=GIB, optimizer=GIB, activations_fixed=0, per_sample=GIB // 10)  # a tenth of a GiB a pair
    fit = fit_batch(memory, 10, 512, 2)  # 8 GiB usable: 60 pairs per device
    assert fit["largest_batch"] == 60
    assert (fit["micro_batch"], fit["accum"]) == (32, 8)  # 256 per process: 128 and 64 do not fit
    assert fit_batch(memory, 80, 512, 2)["accum"] == 1
    assert fit_batch(memory, 2, 512, 2)["accum"] is None  # not even one pair


def test_the_memory_model_is_within_15_percent_of_a_measured_cpu_step():
    done = subprocess.run([sys.executable, "-c", MEASURED_STEP, "8"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["predicted"] > 2 * GIB  # a real-size student: the weights and AdamW state alone
    assert abs(result["measured"] / result["predicted"] - 1) < 0.15, result


def test_gpu_memory_needs_a_plan(capsys):
    from mmd2v2_core.cli import main

    assert main(["study", "--profile", "real", "--gpu-memory", "24"]) == 2
    assert "--gpu-memory sizes the batches of a plan: use it with --plan" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-3", "lots"])
def test_gpu_memory_must_be_a_positive_number(capsys, value):
    from mmd2v2_core.cli import main

    assert main(["study", "--profile", "real", "--plan", "--gpu-memory", value]) == 2
    assert "--gpu-memory" in capsys.readouterr().err
