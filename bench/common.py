"""Shared by the benchmarks: each one owns a marked section of reports/benchmarks.md and rewrites it."""

from __future__ import annotations

import re
from pathlib import Path

REPORT = Path(__file__).resolve().parents[1] / "reports" / "benchmarks.md"
HEADER = "# Benchmarks\n\nWritten by the scripts in `bench/`; each section is replaced when its script reruns.\n"


def machine() -> str:
    """The CPU by model, cores and bf16 class (what a timing depends on), and the torch it ran."""
    import torch

    from mmd2v2_core.precision import cpu_description

    return f"{cpu_description()}, torch {torch.__version__}"


def write_section(name: str, body: str) -> None:
    text = REPORT.read_text() if REPORT.exists() else HEADER
    block = f"<!-- bench:{name} -->\n{body.strip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text)
