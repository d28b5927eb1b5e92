"""``mmd2v2 study``: execute the study notebooks in order with papermill and assemble the report.

Each finished notebook leaves a marker in ``<run_dir>/done/``; a rerun starts at the first notebook
without one (``--from NAME`` restarts there, ``--only NAME`` runs one). A failing notebook stops the
study with its name, the failing cell and the error; its executed copy (with the error highlighted)
stays in ``<reports>/notebooks/``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .data.index import write_text_atomic
from .errors import ConfigError, KitError
from .preflight import disk_problem
from .report.builder import assemble
from .study import NOTEBOOKS, Study


class StudyFailed(KitError):
    """A study notebook raised."""


def _selection(done_dir: Path, only: str | None, start: str | None) -> list[str]:
    for name in (only, start):
        if name is not None and name not in NOTEBOOKS:
            raise ConfigError(f"unknown notebook {name!r}; the study's notebooks: {', '.join(NOTEBOOKS)}")
    if only:
        return [only]
    if start:
        chosen = list(NOTEBOOKS[NOTEBOOKS.index(start):])
        for name in chosen:
            (done_dir / f"{name}.json").unlink(missing_ok=True)
        return chosen
    return [n for n in NOTEBOOKS if not (done_dir / f"{n}.json").is_file()]


def check_inputs(study: Study) -> None:
    """Refuse, before anything trains, a study whose data or weights are missing (one line per missing item) or whose
    checkpoints and caches will not fit its disk."""
    missing = study.preflight() if not study.profile.synthetic else []
    if missing:
        raise ConfigError(f"the {study.profile.name} study cannot start; {len(missing)} input(s) missing:\n"
                          + "\n".join(f"  {line}" for line in missing))
    problem = disk_problem(study)
    if problem:
        raise ConfigError(problem)


def _kernel_manager():
    """A kernel manager that talks to the notebook's kernel over local IPC sockets where the OS has them: over TCP,
    ipykernel warns on every start that traffic is unencrypted (7 lines in a study's log), and rightly so."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum

    if os.name != "posix":
        return AsyncKernelManager

    class LocalKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        def _ip_default(self) -> str:
            # The sockets are files <ip>-<n>; jupyter_client's default prefix is "kernel-ipc" in the working folder,
            # where two kernels started at once (two studies) would bind each other's: one private folder each.
            return str(Path(tempfile.mkdtemp(prefix="mmd2v2-kernel-")) / "ipc")

        def cleanup_ipc_files(self) -> None:
            super().cleanup_ipc_files()
            shutil.rmtree(Path(self.ip).parent, ignore_errors=True)

    return LocalKernelManager


def run_study(profile: str = "embedded", run_dir: str | Path | None = None, reports_dir: str | Path = "reports",
              only: str | None = None, start: str | None = None, params: list[str] = (),
              notebooks_dir: str | Path = "notebooks", log=print, data_dir: str | Path | None = None,
              nproc_per_node: int = 1, imagenet_dir: str | Path | None = None) -> Path:
    import papermill as pm

    run_dir = Path(run_dir or f"runs/study-{profile}").resolve()
    data_dir = Path(data_dir).resolve() if data_dir else None
    imagenet_dir = Path(imagenet_dir).resolve() if imagenet_dir else None
    check_inputs(Study(profile, run_dir, list(params), data_dir=data_dir, nproc_per_node=nproc_per_node,
                       imagenet_dir=imagenet_dir))
    reports_dir, notebooks_dir = Path(reports_dir).resolve(), Path(notebooks_dir).resolve()
    if not notebooks_dir.is_dir():
        raise ConfigError(f"{notebooks_dir}: notebooks folder not found (run from the repository root or pass --notebooks)")
    done_dir = run_dir / "done"
    done_dir.mkdir(parents=True, exist_ok=True)
    executed = reports_dir / "notebooks"
    executed.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MMD2V2_PROGRESS", "plain")  # papermill shows a notebook's bars as log lines
    kernel_manager = _kernel_manager()
    parameters = {"profile": profile, "run_dir": str(run_dir), "reports_dir": str(reports_dir), "overrides": list(params),
                  "data_dir": str(data_dir) if data_dir else None, "nproc_per_node": nproc_per_node,
                  "imagenet_dir": str(imagenet_dir) if imagenet_dir else None}
    for name in _selection(done_dir, only, start):
        source, target = notebooks_dir / f"{name}.ipynb", executed / f"{name}.ipynb"
        log(f"[study] {name} …")
        began = time.perf_counter()
        try:
            # the notebook's own printing (each run's start and end lines, its progress bars) streams through
            pm.execute_notebook(str(source), str(target), parameters=parameters, kernel_name="python3",
                                cwd=str(notebooks_dir.parent), progress_bar=False, stdout_file=sys.stdout,
                                stderr_file=sys.stderr, kernel_manager_class=kernel_manager)
        except pm.PapermillExecutionError as exc:
            raise StudyFailed(f"notebook {name} failed in cell {exc.exec_count} ({exc.ename}: {exc.evalue.strip()}); "
                              f"executed copy with the error: {target}") from None
        seconds = time.perf_counter() - began
        write_text_atomic(done_dir / f"{name}.json", json.dumps({"seconds": round(seconds, 1)}) + "\n")
        log(f"[study] {name} done in {seconds:.0f} s")
    return assemble(run_dir, reports_dir, profile, NOTEBOOKS, notebooks_dir)
