"""``mmd2v2 study``: execute the study notebooks in order with papermill and assemble the report.

``mmd2v2 study --check`` (``check_study``) runs the same notebooks up to their first computation, in seconds: a
broken config, label or recipe shows there, not an hour into a study.

Each finished notebook leaves a marker in ``<run_dir>/done/``; a rerun starts at the first notebook
without one (``--from NAME`` restarts there, ``--only NAME`` runs one). A failing notebook stops the
study with its name, the failing cell and the error; its executed copy (with the error highlighted)
stays in ``<reports>/notebooks/``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .data.index import write_text_atomic
from .errors import ConfigError, KitError
from .eta import TRAINING_LOG, eta_lines, probe, record_reference
from .precision import cpu_description, resolve_precision
from .preflight import disk_problem
from .report.builder import assemble
from .study import NOTEBOOKS, CheckStop, Study


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


def unfinished_notebooks(run_dir: Path) -> list[str]:
    """The notebooks a plain ``mmd2v2 study`` on ``run_dir`` would run."""
    return _selection(Path(run_dir) / "done", None, None)


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


def notebook_parameters(study: Study, reports_dir: Path) -> dict:
    """What papermill gives each notebook's ``parameters`` cell: the study's own settings (its folders absolute)."""
    return {"profile": study.profile.name, "run_dir": str(study.run_dir), "reports_dir": str(reports_dir),
            "overrides": list(study.overrides), "run_overrides": study.run_overrides,
            "data_dir": str(study.data_dir) if study.data_dir != study.run_dir / "data" else None,
            "nproc_per_node": study.nproc_per_node,
            "imagenet_dir": str(study.imagenet_dir) if study.imagenet_dir else None,
            "sugarcrepe_dir": str(study.sugarcrepe_dir) if study.sugarcrepe_dir else None}


def run_study(profile: str = "embedded", run_dir: str | Path | None = None, reports_dir: str | Path = "reports",
              only: str | None = None, start: str | None = None, params: list[str] = (),
              notebooks_dir: str | Path = "notebooks", log=print, data_dir: str | Path | None = None,
              nproc_per_node: int = 1, imagenet_dir: str | Path | None = None,
              sugarcrepe_dir: str | Path | None = None) -> Path:
    import papermill as pm

    run_dir = Path(run_dir or f"runs/study-{profile}").resolve()
    data_dir = Path(data_dir).resolve() if data_dir else None
    imagenet_dir = Path(imagenet_dir).resolve() if imagenet_dir else None
    sugarcrepe_dir = Path(sugarcrepe_dir).resolve() if sugarcrepe_dir else None
    study = Study(profile, run_dir, list(params), data_dir=data_dir, nproc_per_node=nproc_per_node,
                  imagenet_dir=imagenet_dir, sugarcrepe_dir=sugarcrepe_dir)
    check_inputs(study)
    reports_dir, notebooks_dir = Path(reports_dir).resolve(), Path(notebooks_dir).resolve()
    if not notebooks_dir.is_dir():
        raise ConfigError(f"{notebooks_dir}: notebooks folder not found (run from the repository root or pass --notebooks)")
    done_dir = run_dir / "done"
    done_dir.mkdir(parents=True, exist_ok=True)
    executed = reports_dir / "notebooks"
    executed.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MMD2V2_PROGRESS", "plain")  # papermill shows a notebook's bars as log lines
    kernel_manager = _kernel_manager()
    parameters = notebook_parameters(study, reports_dir)
    selection = _selection(done_dir, only, start)
    here = probe(study.profile.data_profile) if study.profile.synthetic and selection else None
    for line in eta_lines(study, selection, here):
        log(line)
    for name in selection:
        source, target = notebooks_dir / f"{name}.ipynb", executed / f"{name}.ipynb"
        log(f"[study] {name} …")
        began, trained_before = time.perf_counter(), _training_records(done_dir)
        try:
            # the notebook's own printing (each run's start and end lines, its progress bars) streams through
            pm.execute_notebook(str(source), str(target), parameters=parameters, kernel_name="python3",
                                cwd=str(notebooks_dir.parent), progress_bar=False, stdout_file=sys.stdout,
                                stderr_file=sys.stderr, kernel_manager_class=kernel_manager)
        except pm.PapermillExecutionError as exc:
            raise StudyFailed(f"notebook {name} failed in cell {exc.exec_count} ({exc.ename}: {exc.evalue.strip()}); "
                              f"executed copy with the error: {target}") from None
        seconds = time.perf_counter() - began
        trained = _training_records(done_dir)[len(trained_before):]
        write_text_atomic(done_dir / f"{name}.json", json.dumps({
            "seconds": round(seconds, 1), "cpu": cpu_description(), "auto_precision": resolve_precision("auto"),
            "training_seconds": round(sum(t["seconds"] for t in trained), 1), "pairs": sum(t["pairs"] for t in trained),
            "side_by_side": max((t["side_by_side"] for t in trained), default=0)}) + "\n")
        log(f"[study] {name} done in {seconds:.0f} s")
    report = assemble(run_dir, reports_dir, profile, NOTEBOOKS, notebooks_dir)
    if here and only is None and start is None and len(selection) == len(NOTEBOOKS):
        log(f"[study] timings recorded for later estimates: {record_reference(study, NOTEBOOKS, done_dir, reports_dir, here)}")
    return report


def _training_records(done_dir: Path) -> list[dict]:
    """What ``Study.train_all`` logged: pairs, seconds and runs side by side of each call."""
    path = done_dir / TRAINING_LOG
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def check_study(study: Study, notebooks_dir: str | Path = "notebooks", reports_dir: str | Path = "reports",
                log=print) -> list[str]:
    """Everything the study asks before it computes: each run's resolved config for every seed (before the data and
    caches it names exist), the labels, the closed-form rows, the disk budget, the real profile's preflight and data
    mix, then each notebook's cells in order, with papermill's parameters, up to its first computation
    (``Study(check=True)`` raises ``CheckStop`` there). Trains, scores and writes nothing. Returns one line per
    notebook; raises what the study would raise."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from .plan import data_mix

    for run in study.runs:
        for seed in study.profile.seeds:
            study.config(run, seed, inputs=False)
    _ = study.labels, study.baselines  # cached properties: each resolves configs
    check_inputs(study)
    if (study.train_data / "manifest.json").is_file():
        data_mix(study)
    lines = []
    for name in NOTEBOOKS:
        notebook = parameterize_notebook(load_notebook_node(str(Path(notebooks_dir) / f"{name}.ipynb")),
                                         {**notebook_parameters(study, Path(reports_dir).resolve()), "check": True}, kernel_name="python3",
                                         language="python")
        cells = [c.source for c in notebook.cells if c.cell_type == "code"]
        namespace: dict = {"__name__": "__check__"}  # each notebook in a kernel of its own
        ran, stop = 0, ""
        for source in cells:
            where = f"<{name} code cell {ran + 1}>"
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # the cells' tables are not shown
                    exec(compile(source, where, "exec"), namespace)  # noqa: S102 (the kit's own notebooks)
            except CheckStop as stop_here:
                stop = _line_of(source, where, stop_here)
                break
            except Exception as exc:  # noqa: BLE001 (any error of a cell fails the check, named)
                raise StudyFailed(f"check: notebook {name} failed in code cell {ran + 1}, "
                                  f"`{_line_of(source, where, exc)}` ({type(exc).__name__}: {str(exc).strip()})") \
                    from None
            ran += 1
        line = f"[check] {name}: {ran} of {len(cells)} code cells ran" + (
            f"; cell {ran + 1} stops at the first computation: {stop}" if stop else "")
        log(line)
        lines.append(line)
    return lines


def _line_of(source: str, where: str, error: BaseException) -> str:
    """The line of a cell (compiled as ``where``) that raised ``error``."""
    lineno, tb = None, error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == where:
            lineno = tb.tb_lineno
        tb = tb.tb_next
    lines = source.splitlines()
    return lines[lineno - 1].strip() if lineno else lines[0].strip()
