"""One writer per folder: a study, a training run and a cache build hold an OS lock on the folder they write.

    with folder_lock(run_dir, "mmd2v2 study", "pass another --run-dir"):
        ...  # a second writer of run_dir ends at once with one line naming the holder

The lock is ``fcntl.flock`` on ``<folder>/.mmd2v2.lock``: the kernel drops it when its process ends, however it
ends, so a killed run never leaves a stale lock. The file also records who holds it (command, pid, since when) for
the refusal message, and a writer token. The holder puts that token in the environment (``MMD2V2_WRITER``), so its
own children — the study's papermill kernels, the torchrun workers it starts — are recognised as the same writer
and pass, in any folder the token holds; so does the holder itself when it comes back to a folder it holds.

Readers take no lock: every file the kit writes appears whole (temporary file + rename), so reading finished
checkpoints and results beside a writer is safe. Under torchrun only rank 0 locks (the ranks are one writer).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from pathlib import Path

from .errors import KitError

LOCK_FILE = ".mmd2v2.lock"
TOKEN_ENV = "MMD2V2_WRITER"


class FolderInUse(KitError):
    """Another process writes this folder."""


def _holder(handle) -> dict:
    handle.seek(0)
    try:
        return json.loads(handle.read() or "{}")
    except json.JSONDecodeError:  # caught between the holder's lock and its record
        return {}


@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str, hint: str):
    """Hold ``folder`` for writing while the block runs; ``command`` is what the refusal names as the holder, ``hint``
    the way out it offers (``"pass another --run-dir"``). Re-entrant for the holder and its children; a no-op on
    ranks other than 0 of a distributed run."""
    if int(os.environ.get("RANK", 0)) != 0:
        yield
        return
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_FILE, "a+")  # opening changes nothing: the holder's record stays readable
    except OSError as err:  # a path the checks let through (a virtual file system, a race): named, not a traceback
        raise KitError(f"{folder}: cannot be written ({err.strerror})") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
        if not held:
            holder = _holder(handle)
            if holder.get("token") and holder["token"] == os.environ.get(TOKEN_ENV):
                yield  # the holder itself, or a process it started
                return
            since = time.strftime("%H:%M", time.localtime(holder["since"])) if "since" in holder else "?"
            raise FolderInUse(f"{folder} is in use by {holder.get('command', 'another process')} "
                              f"(pid {holder.get('pid', '?')}, since {since}); wait for it or {hint}")
        outermost = TOKEN_ENV not in os.environ
        if outermost:  # its children inherit the token
            os.environ[TOKEN_ENV] = uuid.uuid4().hex
        token = os.environ[TOKEN_ENV]
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"command": command, "pid": os.getpid(), "since": time.time(), "token": token}))
        handle.flush()
        try:
            yield
        finally:
            if outermost:
                os.environ.pop(TOKEN_ENV, None)
    finally:
        handle.close()  # closing the descriptor releases the lock
