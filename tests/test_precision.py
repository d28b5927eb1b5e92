"""Precision per machine: ``auto`` is bf16 only where the CPU computes bf16 natively (AVX512-BF16 or AMX), for training
and for scoring alike, and the report names the CPU and its class."""

import pytest
import torch

from mmd2v2_core.eval.embed import precision_context
from mmd2v2_core.precision import cpu_description, native_bf16, resolve_precision

CPUS = {"AMX": (False, True), "AVX512-BF16": (True, False), "AVX2 only": (False, False)}


@pytest.fixture(params=list(CPUS))
def cpu(request, monkeypatch):
    avx512_bf16, amx = CPUS[request.param]
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    return request.param


def test_auto_is_bf16_only_where_the_cpu_computes_it(cpu):
    native = cpu != "AVX2 only"
    assert native_bf16("cpu") is native
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"  # as asked


def test_scoring_under_auto_encodes_in_bf16_only_on_a_native_cpu(cpu):
    layer = torch.nn.Linear(8, 8)
    with precision_context("auto", "cpu"):
        out = layer(torch.randn(2, 8))
    assert out.dtype == (torch.float32 if cpu == "AVX2 only" else torch.bfloat16)
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        precision_context("fp16", "cpu")


def test_the_cpu_is_described_with_its_bf16_class(cpu):
    text = cpu_description()
    assert " cores (" in text
    assert ("no native bf16: fp32" in text) is (cpu == "AVX2 only")
    assert ("AMX" in text) is (cpu == "AMX")
