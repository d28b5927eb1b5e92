"""The install story: pyproject and environment.yml agree, the README's commands are what CI runs."""

import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _normalised(reqs):
    return {(Requirement(r).name.lower().replace("_", "-"), str(Requirement(r).specifier)) for r in reqs}


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_reqs = [r for r in pip_section if not r.startswith("-")]
    assert _normalised(conda_reqs) == _normalised(declared)
    assert "-e ." in pip_section
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"])


def test_console_script_points_at_cli():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    module, func = project["scripts"]["mmd2v2"].split(":")
    import importlib

    assert callable(getattr(importlib.import_module(module), func))


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands[:2] == ["make study", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_the_wheel_ships_the_training_configs(tmp_path):
    """Built and installed like a release (not editable, away from the checkout), the packaged presets load."""
    source = tmp_path / "source"
    source.mkdir()
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source / part)
    for part in ("mmd2v2_core", "data_prep"):  # a copy: building in the checkout would leave build/ there
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, timeout=300)
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True)
    fresh = env_dir / "bin" / "python"
    site = subprocess.run([fresh, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, timeout=300).stdout.strip()
    # the dependencies come from this environment's site-packages (not the kit: its editable hook is not loaded)
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next((tmp_path / "dist").glob("mmd2v2-*.whl"))
    subprocess.run([fresh, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], check=True,
                   timeout=300)
    out = subprocess.run([env_dir / "bin" / "mmd2v2", "train", "--config", "smoke", "--print-config"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "steps: 60" in out.stdout and "preset: mmd2v2_6" in out.stdout
    where = subprocess.run([fresh, "-c", "import mmd2v2_core; print(mmd2v2_core.__file__)"], capture_output=True,
                           text=True, cwd=tmp_path, check=True, timeout=300).stdout
    assert where.startswith(site)


def test_imports_run_one_way_down_the_layers():
    """Library modules never import the study, the report, the runner or the CLI (which sit on top of them)."""
    import ast

    top = {"study", "report", "runner", "cli"}
    for path in (ROOT / "mmd2v2_core").rglob("*.py"):
        module = path.relative_to(ROOT / "mmd2v2_core").with_suffix("").parts
        if module[0] in top:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                target = list(module[:len(module) - node.level]) + (node.module or "").split(".")
                assert target[0] not in top, f"{path}: imports {'.' * node.level}{node.module}"
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mmd2v2_core."):
                assert node.module.split(".")[1] not in top, f"{path}: imports {node.module}"
