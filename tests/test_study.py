"""The study as a user runs it: notebooks executed by papermill on the smoke profile, the report they
produce, resuming, and a failing notebook named with its cell."""

import json
import re
from pathlib import Path

import nbformat
import pytest

from mmd2v2_core.cli import main
from mmd2v2_core.lock import LOCK_FILE
from mmd2v2_core.study import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[1]
RUNS_OF_THE_STUDY = ("mmd2v2_6", "mmd2v2_6_weak", "mmd2v2_7_2", "mmd2v2_7", "mmd2v2_6_shared", "smke",
                     "smke_random_teacher", "smke_no_teacher", "smke_no_views", "smke_hard_negatives")


def test_notebooks_are_thin_clean_and_parameterised():
    for name in NOTEBOOKS:
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert not any(c.get("outputs") for c in code), f"{name} has stored outputs"
        params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1 and "profile" in params[0].source and "run_dir" in params[0].source
        assert all(len(c.source.splitlines()) <= 12 for c in code), f"{name}: logic belongs in mmd2v2_core"


def test_smoke_study_produces_the_report(smoke_study):
    root, _ = smoke_study
    reports = root / "reports"
    report = (reports / "report.md").read_text()
    for heading in ("## 00 · Data preparation", "## 01 · Teacher targets", "## 02 · Distillation pretraining",
                    "## 03 · Retrieval evaluation", "## 04 · Teacher ablation", "## 05 · Attention and layout ablation",
                    "## 06 · Embeddings"):
        assert heading in report
    assert "Not run" not in report
    from mmd2v2_core.precision import cpu_description, resolve_precision

    # the header names the CPU every notebook ran on and what `auto` precision became there
    assert f"on {cpu_description()}, where `auto` precision is {resolve_precision('auto')} — 00 " in report
    assert "Val R@1 at 50, 75 and 100 % of the steps: did each run converge?" in report
    assert "| Unaligned towers (step 0) |" in report and "| S-SMKE (ITC + contrastive distillation) |" in report
    assert "What each candidate target encodes" in report and "| pretrained: centred + PCA-whitened to 32 |" in report
    assert "| FLAVA | 42.74 | 76.76 | - |" in report  # quoted rows carried along
    for figure in ("synthetic_samples", "transfer_drawings", "training_curves", "training_curves_teacher",
                   "training_curves_attention", "embeddings_tsne", "retrieval_gallery"):
        assert (reports / "figures" / f"{figure}.png").stat().st_size > 5000
    for table in ("table1", "table2", "table1_synthetic", "ablation_teacher", "ablation_attention",
                  "ablation_transfer"):
        assert {p.suffix for p in (reports / "tables").glob(f"{table}.*")} == {".md", ".tex", ".csv"}
    executed = nbformat.read(reports / "notebooks" / "06_embeddings_and_browser.ipynb", as_version=4)
    assert any(o.get("data", {}).get("application/vnd.jupyter.widget-view+json")
               for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
    results = [p for p in (root / "run" / "results").rglob("*.json") if p.parent.name not in ("transfer", "binding")]
    # 10 runs + the unaligned towers + the thumbnail and frozen-input CCA (smoke trains without rendering views: no
    # row fitted with them), on 2 test sets
    assert len(results) == 2 * 13
    assert "| Trivial baseline: 16×16 thumbnails + bag of words, CCA |" in report
    assert "| CCA on the student's frozen inputs (EfficientNet-Lite0 stem × bag of words) |" in report
    assert "fitted with the rendering views" not in report
    assert "### The seed's claims, measured" in report and "Rendering views help zero-shot transfer" in report
    assert re.search(r"\| Training beats a linear alignment of the same frozen inputs \(S-SMKE vs the best "
                     r"frozen-input CCA\) — best: `cca_frozen` \| synth-flickr \| [\d.]+ \| [\d.]+ \| [-+][\d.]+ \| "
                     r"[\d.]+ \| one seed: no spread to judge( \(not converged: S-SMKE[^|]*\))? \|", report)
    r1 = r"[\d.]+ / [\d.]+"  # val R@1 image→text / text→image
    assert re.search(rf"\| MM-D2V2 5\+1, strong teacher \(KD only\) \| 1 \| {r1} \| {r1} \| {r1} \| [-+][\d.]+ \| "
                     r"(yes|no \(1 of 1 seeds gained ≥ 1\)) \|", report)
    assert re.search(r"synth-coco: .* leads with a mean recall of [\d.]+ \(thumbnail CCA [\d.]+; frozen-input CCA "
                     r"\(`cca_frozen`\) [\d.]+; unaligned towers [\d.]+\); .*above the frozen-input CCA", report)
    assert "| coco+outline |" in report and "The largest gap between groups is by" in report
    assert "| CCA on the student's frozen inputs · test phrasing |" in report
    # with and without views, with hard negatives (1 seed), and the frozen-input CCA
    assert len(list((root / "run" / "results" / "transfer").glob("*.json"))) == 4
    assert {json.loads(p.read_text())["dataset"] for p in results} == {"synth-coco", "synth-flickr"}


def test_binding_scores_every_row_and_a_bag_of_words_ties_on_every_swap(smoke_study):
    from data_prep.synth.negatives import KIND_TASK
    from mmd2v2_core.eval.binding import BINDING_GROUPS
    from mmd2v2_core.study import Study

    root, _ = smoke_study
    study = Study("smoke", root / "run")
    report = (root / "reports" / "report.md").read_text()
    assert "### Binding or a bag of words?" in report
    for dataset in study.test_sets:
        assert f"**Binding on `{dataset}`'s hard negatives (" in report
        assert {p.suffix for p in (root / "reports" / "tables").glob(f"binding_{dataset}.*")} == {".md", ".tex", ".csv"}
    assert (root / "reports" / "figures" / "binding_failures.png").stat().st_size > 5000
    assert len(list((root / "run" / "results" / "binding").glob("*.json"))) == len(study.runs) + len(study.baselines)
    for run in (*study.runs, *study.baselines):
        results = study.binding_results(run)
        assert {r["dataset"] for r in results} == set(study.test_sets), run
        for r in results:
            assert set(r["metrics"]) >= set(BINDING_GROUPS) and 0 <= r["metrics"]["swaps"] <= 100
    for baseline in study.baselines:  # bag-of-words captions: a swap's words are the positive's, every one a tie
        for r in study.binding_results(baseline):
            for kind in [k for k in KIND_TASK if KIND_TASK[k].startswith("swap_")]:
                score = r["scores"]["by_kind"][kind]
                if r["dataset"] == "synth-coco" or kind != "swap_color":  # flickr: "an orange" vs "a red"
                    assert score["ties"] == score["items"] > 0 and score["accuracy"] == 50, (baseline, kind)
    assert re.search(r"\| S-SMKE binds attributes beyond a bag of words \(swap accuracy vs the best frozen-input CCA\) "
                     r"— best: `cca_frozen` \| synth-coco \| [\d.]+ \| 50.00 \|", report)
    assert "row × set × kind cells lie beyond two binomial standard errors of chance" in report


def test_the_frozen_input_baselines_record_their_fit_and_use_the_rendering_views(smoke_study):
    from mmd2v2_core.eval.baseline import RIDGES
    from mmd2v2_core.study import Study

    root, _ = smoke_study
    study = Study("smoke", root / "run")
    assert study.baselines == ("cca", "cca_frozen")
    for result in study.results("cca_frozen"):
        scores = result["val_mean_recall"]
        assert [float(r) for r in scores] == list(RIDGES) and scores[f"{result['ridge']:g}"] == max(scores.values())
        assert result["fitted_on"] == "train (clean)" and result["row"].startswith("CCA on the student's frozen")
    log = (root / "study.log").read_text()
    assert re.search(r"\[run\] cca_frozen · fitted in \d+ s \(ridge [\d.e-]+, picked on val\) · mean recall", log)
    # with rendering views the row fitted on them exists, on the clean view + each cached rendering view
    with_views = Study("smoke", root / "run", ["data.rendering_views=1"])
    assert with_views.baselines == ("cca", "cca_frozen", "cca_frozen_views")
    clean, _ = with_views.fit_baseline("cca_frozen")
    views, fitted_on = with_views.fit_baseline("cca_frozen_views")
    assert fitted_on == {"fitted_on": "train (clean + 1 rendering views)"}
    assert not (clean.cca.moments.xx == views.cca.moments.xx).all()


def test_every_run_shows_its_resolved_recipe_and_curves_and_the_log_has_its_start_and_end(smoke_study):
    from mmd2v2_core.profiles import PROFILES

    root, _ = smoke_study
    shown = {}
    smoke = PROFILES["smoke"]
    for name, runs in (("02_distillation_pretraining", smoke.table1), ("04_ablation_teacher", smoke.teacher_ablation),
                       ("05_ablation_attention", smoke.attention_ablation + smoke.transfer_ablation[1:])):
        executed = nbformat.read(root / "reports" / "notebooks" / f"{name}.ipynb", as_version=4)
        outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
        assert sum("image/png" in o.get("data", {}) for o in outputs) >= 1, f"{name}: no curves shown"
        for run in runs:
            row = next(line for line in markdown.splitlines() if line.startswith(f"| {smoke.labels[run]} |"))
            shown[run] = row
    # read off the resolved config: the smoke YAML's 60 steps × 32, the profile's memory bank, the run's own changes
    assert "60 × 32" in shown["smke"] and "3 × contrastive distillation + bank 64 + 1 × ITC" in shown["smke"]
    assert "1 × KD MSE (image + text) + 1 × ITC |" in shown["mmd2v2_6"]  # smoke.yaml adds ITC and "| shared |" in shown["mmd2v2_6_shared"]
    assert "(random-init)" in shown["smke_random_teacher"] and "| none | - |" in shown["smke_no_teacher"]
    log = (root / "study.log").read_text()
    for run in RUNS_OF_THE_STUDY:
        assert f"[run] {run} seed 0 · start · 60 steps × 32 pairs" in log
        assert re.search(rf"\[run\] {run} seed 0 · trained in \d+ s · \d+ pairs/s · loss [\d.]+ → [\d.]+", log)
        assert re.search(rf"\[run\] {run} seed 0 · scored in \d+ s · mean recall synth-coco [\d.]+", log)
    assert len(log.splitlines()) < 100


def test_changing_one_runs_recipe_retrains_only_that_run(smoke_study):
    from mmd2v2_core.profiles import PROFILES
    from mmd2v2_core.study import Study

    runs = PROFILES["smoke"].run
    root, _ = smoke_study
    lines = []
    before, after = Study("smoke", root / "run"), Study("smoke", root / "run", run_overrides={"smke": ["optim.steps=10"]},
                                                          log=lines.append)
    assert [r for r in runs if before.run_out(r, 0) != after.run_out(r, 0)] == ["smke"]
    assert after.results("smke") == []  # the new recipe has no results yet; the old ones stay where they were
    assert all(after.results(r) == before.results(r) for r in runs if r != "smke")
    result = after.evaluate("smke", 0)
    assert len(lines) == 3 and "10 steps × 32 pairs" in lines[0]
    assert result[0]["metrics"] != before.results("smke")[0]["metrics"]
    assert before.results("smke") and after.results("smke") == result


def test_curves_of_a_run_that_has_not_trained_are_refused(smoke_study, tmp_path):
    from mmd2v2_core.errors import DataError
    from mmd2v2_core.report.sections import training_curves
    from mmd2v2_core.study import Study

    root, _ = smoke_study
    untrained = Study("smoke", root / "run", run_overrides={"smke": ["optim.steps=7"]})
    with pytest.raises(DataError, match="no training log yet: .*smke/seed0-"):
        training_curves(untrained, ("mmd2v2_6", "smke"), tmp_path, "curves")


def test_rerun_continues_and_only_or_from_rerun_parts(smoke_study, capsys):
    root, args = smoke_study
    capsys.readouterr()
    assert main(args) == 0
    assert "[study]" not in capsys.readouterr().out  # everything was done: nothing executes
    assert main([*args, "--only", "05_ablation_attention"]) == 0
    out = capsys.readouterr().out
    assert "05_ablation_attention done" in out and "04_" not in out


def test_failing_notebook_is_named_with_its_cell(smoke_study, capsys, tmp_path):
    """Runs last in this module: it leaves the smoke study with a failed notebook."""
    import shutil

    root, args = smoke_study
    # a bad override is refused before any notebook runs: the disk budget resolves every run's config first
    assert main([*args, "--only", "01_teacher_targets", "-p", "optim.steps=abc"]) == 2
    assert capsys.readouterr().err == "error: config key 'optim.steps': expected int, got str 'abc'\n"
    broken = shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    notebook = nbformat.read(broken / "01_teacher_targets.ipynb", as_version=4)
    cell = [c for c in notebook.cells if c.cell_type == "code"][2]
    cell.source = 'raise ValueError("broken on purpose")\n' + cell.source
    nbformat.write(notebook, broken / "01_teacher_targets.ipynb")
    assert main([*args, "--only", "01_teacher_targets", "--notebooks", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "notebook 01_teacher_targets failed in cell" in err and "ValueError: broken on purpose" in err
    assert (root / "reports" / "notebooks" / "01_teacher_targets.ipynb").is_file()
    assert main([*args, "--only", "07_nothing"]) == 2
    assert "unknown notebook '07_nothing'" in capsys.readouterr().err


def test_notebooks_run_from_the_notebooks_folder_reuse_the_study(smoke_study, monkeypatch):
    """JupyterLab starts a kernel in notebooks/: the default relative paths must still reach the study's folders,
    so rerunning a notebook there after a study recomputes nothing. Each notebook's cells run in this process, in a
    namespace of their own, with the working directory and parameters a kernel there would have."""
    import contextlib
    import io
    import shutil

    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    root, _ = smoke_study
    (root / "pyproject.toml").write_text("")  # the repository root's markers: pyproject.toml and notebooks/
    shutil.copytree(ROOT / "notebooks", root / "notebooks", dirs_exist_ok=True)

    def computed():  # everything but the report sections each notebook rewrites
        return {p: p.stat().st_mtime_ns for p in (root / "run").rglob("*")
                if p.is_file() and "report" not in p.parts and p.name != LOCK_FILE}  # a lock records its holder

    before = computed()
    monkeypatch.chdir(root / "notebooks")
    for name in NOTEBOOKS:
        notebook = parameterize_notebook(load_notebook_node(f"{name}.ipynb"),
                                         {"profile": "smoke", "run_dir": "run", "reports_dir": "reports"},
                                         kernel_name="python3", language="python")
        namespace = {"__name__": "__main__"}
        for i, cell in enumerate(c for c in notebook.cells if c.cell_type == "code"):
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(cell.source, f"<{name} code cell {i + 1}>", "exec"), namespace)  # noqa: S102
    assert computed() == before  # nothing retrained, re-cached, re-scored or regenerated
    assert not (root / "notebooks" / "run").exists() and not (root / "notebooks" / "reports").exists()


def test_relative_study_paths_resolve_from_the_repository_root(tmp_path, monkeypatch):
    from mmd2v2_core.paths import from_root, project_root
    from mmd2v2_core.study import Study

    (tmp_path / "repo" / "notebooks").mkdir(parents=True)
    (tmp_path / "repo" / "pyproject.toml").write_text("")
    monkeypatch.chdir(tmp_path / "repo" / "notebooks")
    assert project_root() == tmp_path / "repo"
    assert Study("smoke", "runs/s").run_dir == tmp_path / "repo" / "runs" / "s"
    assert from_root(tmp_path / "elsewhere") == tmp_path / "elsewhere"  # absolute paths are kept
    monkeypatch.chdir(tmp_path)  # no repository above: the working directory
    assert from_root("runs/s") == tmp_path / "runs" / "s"


def test_more_than_one_process_per_run_trains_under_torchrun(smoke_study):
    """``nproc_per_node`` > 1: the study launches the run with torchrun (here 2 CPU processes on gloo)."""
    from mmd2v2_core.study import Study

    root, _ = smoke_study
    lines = []
    study = Study("smoke", root / "run", run_overrides={"smke": ["optim.steps=4"]}, log=lines.append,
                  nproc_per_node=2)
    final = study.train("smke", 0)
    assert (final / "model.safetensors").is_file() and final.name == "step_0000004"
    assert "torchrun × 2" in lines[0] and "trained in" in lines[1]
    config = next((root / "run" / "plan").glob("smke-seed0-*.yaml"))
    assert config.stem.endswith(study.run_out("smke", 0).name)  # the resolved config torchrun trained


def test_runs_trained_side_by_side_end_as_runs_trained_one_after_another(smoke_study, tmp_path, monkeypatch):
    """With a budget of 2 threads, 2 runs train at once, each in a process of its own on one thread: their weights are
    the ones this process trains one after another on one thread, and the log has one start and one end line each."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from mmd2v2_core.study import Study

    root, _ = smoke_study
    short = {run: ["optim.steps=6"] for run in ("smke", "mmd2v2_6")}
    folders, logs = {}, {}
    for budget in (1, 2):
        run_dir = tmp_path / f"threads{budget}"
        for part in ("data", "cache"):
            shutil.copytree(root / "run" / part, run_dir / part)
        monkeypatch.setattr(torch, "get_num_threads", lambda budget=budget: budget)
        logs[budget] = []
        study = Study("smoke", run_dir, run_overrides=short, log=logs[budget].append)
        assert study.side_by_side(2) == budget and study.side_by_side(1) == 1
        study.train_all(tuple(short))
        folders[budget] = study
    assert [line.split(" · ")[0] for line in logs[2]].count("[run] smke seed 0") == 2  # start and end
    assert sum("its own process, 1 thread(s)" in line for line in logs[2]) == 2 and len(logs[2]) == 4
    for run in short:
        alone, beside = (load_file(folders[b].final_checkpoint(run, 0) / "model.safetensors") for b in (1, 2))
        assert alone.keys() == beside.keys()
        assert all(torch.allclose(alone[k], beside[k], atol=1e-5) for k in alone), run
