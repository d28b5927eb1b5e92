"""Run ``mmd2v2 ARGS`` and SIGKILL this very process at the N-th call of a function.

    python tests/reliability/kill_at.py MODULE:ATTR N MODE -- ARGS...

MODE ``before`` kills as the call starts; ``half-written:K`` lets the call write its file (positional
argument K), cuts that file to half its size, and then kills — the state a power cut leaves mid-write.
The kill is real (no exception, no cleanup, no ``finally``); only its moment is chosen.

MODE ``ctrl-c:K`` instead sends SIGINT K times to the whole process group, as Ctrl-C in a terminal does
(run it in a session of its own), and lets the call go on: what happens next is the command's own doing.

MODE ``pause:S`` sleeps S seconds before the call: the command stays busy there, holding what it holds.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
import time
from pathlib import Path


def _patch(target: str, nth: int, mode: str) -> None:
    module_name, attr_path = target.split(":")
    owner = importlib.import_module(module_name)
    *parents, name = attr_path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)
    calls = {"n": 0}

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth and mode.startswith("pause:"):
            time.sleep(float(mode.split(":")[1]))
        elif calls["n"] == nth and mode.startswith("ctrl-c:"):
            for _ in range(int(mode.split(":")[1])):
                os.killpg(os.getpgid(0), signal.SIGINT)  # Python runs the handler before the next line
        elif calls["n"] == nth:
            if mode.startswith("half-written:"):
                result = original(*args, **kwargs)
                path = Path(args[int(mode.split(":")[1])])
                path = path if path.exists() else path.with_name(path.name + ".npy")  # np.save adds .npy
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
                del result
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


if __name__ == "__main__":
    target, nth, mode, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: kill_at.py MODULE:ATTR N MODE -- ARGS"
    # as in a terminal: a test suite started in the background inherits SIGINT ignored, and Python keeps it so
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _patch(target, int(nth), mode)
    from mmd2v2_core.cli import main

    sys.exit(main(args))
