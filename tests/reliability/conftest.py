"""Shared pieces of the reliability sweep: a private smoke dataset per test, the CLI as a user runs it,
and a record of what the user saw in each case (``tests/reliability/make_report.py`` turns it into
``reports/reliability.md``)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import pytest

from mmd2v2_core.cli import main


@dataclass
class Outcome:
    code: int
    out: str
    err: str


@pytest.fixture
def seen(request):
    """Call with what the user saw (an error line, a result); it goes into the reliability report."""
    lines: list[str] = []
    request.node.user_properties.append(("seen", lines))
    return lines.append


@pytest.fixture
def cli(capsys, seen):
    """Run ``mmd2v2 ARGS`` in-process: anything but a clean exit or a one-line KitError fails the test
    with its traceback (exactly what a user must never get)."""
    def run(*args) -> Outcome:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        outcome = Outcome(code, captured.out, captured.err)
        seen(outcome.err.strip() if code else f"exit 0: {outcome.out.strip().splitlines()[-1] if outcome.out.strip() else ''}")
        return outcome
    return run


def assert_clear_error(outcome: Outcome, *names: str) -> str:
    """Exit status 2 and a single ``error:`` line that names every one of ``names``."""
    assert outcome.code == 2, f"expected a clear error, got exit {outcome.code}: {outcome.out}{outcome.err}"
    lines = outcome.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not one error line: {outcome.err!r}"
    assert "Traceback" not in outcome.err
    for name in names:
        assert str(name) in lines[0], f"error does not name {name!r}: {lines[0]}"
    return lines[0]


@pytest.fixture(scope="session")
def smoke_source(tmp_path_factory):
    from data_prep.synth import generate

    return generate(tmp_path_factory.mktemp("reliability-synth"), "smoke", seed=0, workers=2)


@pytest.fixture
def smoke(smoke_source, tmp_path):
    """A private copy of the smoke synth-coco dataset, free to be damaged."""
    return shutil.copytree(smoke_source["synth-coco"], tmp_path / "synth-coco")
