import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("MMD2V2_PROGRESS", "off")

# `make test` runs the suite on 2 pytest-xdist workers (README, Tests): each worker and every process it starts (CLI
# subprocesses, notebook kernels, torchrun ranks) computes on one thread, so the two never compete for a core.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# A run writes up to ≈ 3 GB under the temp folder (2.9 GB at its peak, 2026-12-07). With less free it fails midway in
# errors that do not say why, as a CI run did beside a 6.5 GB .venv on a disk with 6.7 GB free.
SUITE_TEMP_BYTES = 4e9


def pytest_sessionstart(session):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the controller checks once
    where = Path(session.config.option.basetemp or tempfile.gettempdir())
    free = shutil.disk_usage(next(p for p in (where, *where.parents) if p.exists())).free
    if free < SUITE_TEMP_BYTES:
        pytest.exit(f"{where}: the test suite writes up to ≈ 3 GB of studies and fixtures there, but its disk has "
                    f"{free / 1e9:.1f} GB free: free some space, or point TMPDIR at another disk", returncode=1)


# Session fixtures that cost minutes are built once: every test using one runs on the same worker (--dist loadgroup).
SHARED_ONCE = ("smoke_study", "real_fixture")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    for item in items:
        group = next((name for name in SHARED_ONCE if name in getattr(item, "fixturenames", ())), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory):
    """Both synthetic domains at smoke scale, generated once per test session."""
    from data_prep.synth import generate

    return generate(tmp_path_factory.mktemp("synth"), "smoke", seed=0, workers=2)


@pytest.fixture(scope="session")
def smoke_checkpoint(smoke_data, tmp_path_factory):
    """A smoke student after 30 steps on synth-coco: partly trained, so its scores can differ between scorers."""
    from mmd2v2_core.config import load_config
    from mmd2v2_core.train.loop import train

    out = tmp_path_factory.mktemp("run")
    cfg = load_config("smoke", [f"data.root={smoke_data['synth-coco']}", f"run.out_dir={out}", "optim.steps=30",
                                "teacher.tiny=true", "run.val_every=0"])
    train(cfg)
    return out / "checkpoints" / "step_0000030"


@pytest.fixture(scope="session")
def tokenizer():
    from mmd2v2_core.data.tokenizer import CaptionTokenizer

    return CaptionTokenizer()


@pytest.fixture(scope="session")
def real_fixture(tmp_path_factory):
    """The real-format fixture (``real_fixture.py``: Karpathy data, extra sources, release-layout weights, a hub cache),
    built once per session. Tests read it; what they compute goes in folders of their own."""
    from real_fixture import build_real_fixture

    return build_real_fixture(tmp_path_factory.mktemp("real-fixture"))


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory):
    """The whole smoke study, run once per session as `mmd2v2 study --profile smoke` (in-process; its notebooks in
    kernels of their own): (folder with run/, reports/ and study.log, the CLI arguments). Tests that change it work on
    a copy; the interrupted and concurrent studies of tests/reliability compare their tables with it."""
    from mmd2v2_core.cli import main

    root = tmp_path_factory.mktemp("study")
    args = ["study", "--profile", "smoke", "--run-dir", str(root / "run"), "--reports", str(root / "reports"),
            "--notebooks", str(Path(__file__).resolve().parents[1] / "notebooks")]
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        assert main(args) == 0
    (root / "study.log").write_text(log.getvalue())
    return root, args
