"""Ranks: one of 2 training processes (gloo, CPU) killed or frozen mid-run. The other stops within
run.collective_timeout with one line naming the rank and how to resume (exit 2); `run.resume=latest` then ends with
the weights of an uninterrupted run, and under `torchrun --max-restarts` the run restarts from its last checkpoint
by itself."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from .test_interruptions import REPO, _one_error_line

STEPS = 8
ENV = {**os.environ, "MMD2V2_PROGRESS": "off", "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(data, out, *extra) -> list[str]:
    return ["train", "--config", "smoke", f"data.root={data}", f"run.out_dir={out}", f"optim.steps={STEPS}",
            "run.checkpoint_every=2", "run.val_every=100", "run.val_at_start=false", "data.num_workers=0",
            "run.resume=latest", *extra]


def _ranks(data, out, *extra) -> list[subprocess.Popen]:
    """`mmd2v2 train` as 2 ranks of one run, started as torchrun starts them (its environment variables)."""
    port = _free_port()
    return [subprocess.Popen([sys.executable, "-m", "mmd2v2_core.cli", *_args(data, out, *extra)], cwd=REPO,
                             env={**ENV, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                  "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]


def _finish(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]


def _wait_for(path: Path, procs, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, "the run ended or stalled"
        time.sleep(0.05)


def _assert_same_weights(run: Path, reference: Path) -> None:
    final = f"checkpoints/step_{STEPS:07d}/model.safetensors"
    a, b = load_file(run / final), load_file(reference / final)
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a), "weights differ"


@pytest.fixture(scope="module")
def reference(smoke_source, tmp_path_factory):
    """The same 2-rank run, undisturbed."""
    out = tmp_path_factory.mktemp("ranks") / "reference"
    _finish(_ranks(smoke_source["synth-coco"], out))
    return out


def _survivor(seen, procs, out: Path, stop: signal.Signals) -> tuple[str, float]:
    """Send ``stop`` to rank 1 once step 4 is saved; rank 0's exit status, error line and seconds to exit."""
    _wait_for(out / "checkpoints" / "step_0000004", procs)
    procs[1].send_signal(stop)
    start = time.monotonic()
    try:
        _, err = procs[0].communicate(timeout=120)
    finally:
        procs[1].kill()
        procs[1].wait()
    seconds = time.monotonic() - start
    seen(f"{stop.name} to rank 1 after step 4; rank 0: exit {procs[0].returncode} after {seconds:.1f} s")
    seen(err.strip())
    assert procs[0].returncode == 2 and "Traceback" not in err
    return _one_error_line(subprocess.CompletedProcess(procs[0].args, 2, "", err)), seconds


def test_a_killed_rank(smoke_source, tmp_path, seen):
    """SIGKILL of rank 1 (out of memory, a lost node, a kill): rank 0 stops well within run.collective_timeout=60,
    naming rank 1 and the checkpoint to resume from. That the rerun then ends with the weights of the uninterrupted
    run is the next test's: torchrun restarts both ranks with the same command."""
    data, out = smoke_source["synth-coco"], tmp_path / "run"
    procs = _ranks(data, out, "run.collective_timeout=60")
    line, seconds = _survivor(seen, procs, out, signal.SIGKILL)
    assert seconds < 60
    assert line.startswith(f"error: rank 1 (pid {procs[1].pid}) died at step ")
    latest = (out / "checkpoints" / "latest").read_text().strip()
    assert line.endswith(f"the last checkpoint is {out / 'checkpoints' / latest}: to continue from it, run the same "
                         "command (torchrun --max-restarts does that by itself)")


def test_a_frozen_rank(smoke_source, tmp_path, seen):
    """SIGSTOP of rank 1 (a hung process or a node that stops answering without closing its connections): rank 0
    waits run.collective_timeout=10, then stops naming rank 1."""
    data, out = smoke_source["synth-coco"], tmp_path / "run"
    procs = _ranks(data, out, "run.collective_timeout=10")
    line, seconds = _survivor(seen, procs, out, signal.SIGSTOP)
    assert 10 <= seconds < 30
    assert line.startswith(f"error: rank 1 (pid {procs[1].pid}) stopped answering at step ")


def _pid_of_rank(agent: int, rank: int) -> int:
    """The worker of ``rank`` among the torchrun agent's child processes (by the RANK in its environment)."""
    for pid in subprocess.run(["pgrep", "-P", str(agent)], capture_output=True, text=True, timeout=300).stdout.split():
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no rank {rank} among the children of {agent}")


def test_torchrun_restarts_a_run_whose_rank_died(smoke_source, reference, tmp_path, seen):
    """Under `torchrun --max-restarts=1`, SIGKILL of rank 1 after step 4: torchrun restarts both ranks, which resume
    from the last checkpoint and end with the weights of the uninterrupted run; torchrun exits 0."""
    data, out = smoke_source["synth-coco"], tmp_path / "run"
    agent = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              "--max-restarts=1", "-m", "mmd2v2_core.cli", *_args(data, out)], cwd=REPO, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "checkpoints" / "step_0000004", [agent])
    os.kill(_pid_of_rank(agent.pid, 1), signal.SIGKILL)
    _, err = agent.communicate(timeout=300)
    seen(f"SIGKILL of rank 1 after step 4 under torchrun --max-restarts=1: torchrun exit {agent.returncode}")
    assert agent.returncode == 0 and "Traceback" not in err, err[-3000:]
    inits = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "init"]
    resumed = inits[-1]["resumed_from"]
    seen(f"restarted, resumed from {Path(resumed).name}")
    assert len(inits) == 2 and Path(resumed).name in ("step_0000004", "step_0000006")
    _assert_same_weights(out, reference)
