"""Where a command will write, checked before it computes anything.

A wrong output path (a file where a folder should be, a folder where a file should be, a parent that is
a file, a read-only disk) is known in advance; finding it only when the first result is saved would cost
the whole computation. Every command that writes calls ``check_output`` (training: ``run.out_dir`` in the
config validation) first.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError


def output_problem(path: str | Path, folder: bool = True) -> str | None:
    """Why nothing can be written at ``path`` (a folder to create or fill, or else a file to write), or None."""
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            return "is a file, not a folder"
        if not folder and path.is_dir():
            return "is a folder; give a file name"
        writable = path if folder else path.parent
    else:
        writable = next(p for p in path.absolute().parents if p.exists())  # the nearest ancestor that exists
        if not writable.is_dir():
            return f"cannot be created: {writable} is a file"
    if not os.access(writable, os.W_OK | os.X_OK):
        return f"cannot be written: {writable} is read-only (read-only disk or no permission)"
    return None


def check_output(path: str | Path, what: str, folder: bool = True) -> None:
    """Raise a ConfigError naming ``what`` (the option) and the path when nothing can be written there."""
    problem = output_problem(path, folder)
    if problem:
        raise ConfigError(f"{what} {path}: {problem}")


def project_root(start: str | Path | None = None) -> Path:
    """The kit's repository root: the nearest folder at or above ``start`` (default: the working directory)
    holding both ``pyproject.toml`` and ``notebooks/``; the working directory itself when there is none. A
    JupyterLab kernel starts in ``notebooks/``: relative study paths resolve from here, not from there."""
    here = Path(start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "notebooks").is_dir():
            return folder
    return here


def from_root(path: str | Path) -> Path:
    """``path`` made absolute: as given when absolute, else under ``project_root()``."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path
