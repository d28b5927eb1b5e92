"""Configs: unknown keys, wrong types, impossible values, devices and missing paths, through `mmd2v2 train`.

Every case must be refused before any work starts: no run folder is created.
"""

from __future__ import annotations

import pytest
import torch

from .conftest import assert_clear_error

ABSENT_GPU = f"cuda:{torch.cuda.device_count()}"  # one past the last CUDA device: absent on every machine

BAD_OVERRIDES = {
    # case: (override, words the error must contain)
    "unknown key (typo)": ("optim.lrr=0.1", ["'optim.lrr'", "did you mean optim.lr"]),
    "unknown section": ("optimizer.lr=0.1", ["'optimizer.lr'", "optim.lr"]),
    "section set as a value": ("optim=3", ["'optim' is a section"]),
    "wrong type: text for an int": ("optim.steps=abc", ["'optim.steps'", "expected int", "'abc'"]),
    "wrong type: float for an int": ("optim.batch_size=1.5", ["'optim.batch_size'", "expected int"]),
    "wrong type: text for a bool": ("run.tensorboard=maybe", ["'run.tensorboard'", "expected bool"]),
    "wrong type: scalar for a pair": ("data.crop_scale=0.5", ["'data.crop_scale'", "list of 2"]),
    "negative learning rate": ("optim.lr=-0.001", ["optim.lr=-0.001", "must be > 0"]),
    "batch size 0": ("optim.batch_size=0", ["optim.batch_size=0", "must be >= 1"]),
    "n_shared > depth": ("student.n_shared=9", ["student.n_shared=9", "student.depth=6"]),
    "unknown attention type": ("student.attention=cross", ["student.attention"]),
    "unknown preset": ("student.preset=mmd2v2_9", ["'mmd2v2_9'", "mmd2v2_7_2"]),
    "warm-up fraction of 1.5": ("optim.warmup=1.5", ["optim.warmup"]),
    "override without '='": ("optim.steps", ["'optim.steps' is not key=value"]),
    # values that type-check but are impossible: each key has a range or choices
    "AdamW beta of 1.5": ("optim.betas=[1.5, 0.98]", ["optim.betas[0]=1.5", "must be in [0, 1)"]),
    "AdamW beta of exactly 1": ("optim.betas=[0.9, 1.0]", ["optim.betas[1]=1.0", "must be in [0, 1)"]),
    "negative epsilon": ("optim.eps=-1e-6", ["optim.eps=-1e-06", "must be > 0"]),
    "infinite learning rate": ("optim.lr=.inf", ["optim.lr=inf", "must be > 0"]),
    "negative seed": ("optim.seed=-1", ["optim.seed=-1", "must be in [0, 4294967295]"]),
    "crop scale lower end above upper": ("data.crop_scale=[0.9, 0.5]", ["data.crop_scale=[0.9, 0.5]", "lower end"]),
    "crop scale of zero area": ("data.crop_scale=[0, 0]", ["data.crop_scale[0]=0.0", "must be in (0, 1]"]),
    "crop scale beyond the image": ("data.crop_scale=[0.9, 2]", ["data.crop_scale[1]=2.0", "must be in (0, 1]"]),
    "teacher top-k of 0": ("teacher.top_k=0", ["teacher.top_k=0", "must be >= 1"]),
    "ITC scale cap below 1": ("loss.itc_max_scale=0.5", ["loss.itc_max_scale=0.5", "must be >= 1"]),
    "unknown layer selection": ("student.layers=every_third", ["student.layers='every_third'", "every_other"]),
    "unknown teacher": ("teacher.name=beitv3", ["'beitv3'", "beitv2"]),
    "device that is no device": ("run.device=tpu", ["run.device='tpu'", "cpu", "cuda:<n>"]),
    "GPU this machine lacks": (f"run.device={ABSENT_GPU}", [f"run.device='{ABSENT_GPU}'", "CUDA device"]),
    # plausible numbers only: a count no run could reach is a typo, not a plan
    "10^20 steps": ("optim.steps=100000000000000000000", ["optim.steps=100000000000000000000",
                                                          "must be in [1, 10000000]"]),
    "one step past the limit": ("optim.steps=10000001", ["optim.steps=10000001", "must be in [1, 10000000]"]),
    "blank tokenizer": ("data.tokenizer='  '", ["data.tokenizer is empty"]),
    "no tokenizer": ("data.tokenizer=", ["data.tokenizer"]),
}


@pytest.mark.parametrize("case", list(BAD_OVERRIDES))
def test_bad_override_is_refused_naming_the_key(smoke, tmp_path, cli, case):
    """Exit 2 with one line naming the key (and the closest valid key for a typo); nothing runs."""
    override, words = BAD_OVERRIDES[case]
    out = cli("train", "--config", "smoke", f"data.root={smoke}", f"run.out_dir={tmp_path / 'run'}", override)
    assert_clear_error(out, *words)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(smoke, tmp_path, cli):
    """run.device=cuda on a machine without a GPU: refused by key before anything runs, not PyTorch's driver error."""
    out = cli("train", "--config", "smoke", f"data.root={smoke}", f"run.out_dir={tmp_path / 'run'}", "run.device=cuda")
    assert_clear_error(out, "run.device='cuda'", "no CUDA device")
    assert not (tmp_path / "run").exists()


def test_evaluation_on_a_device_this_machine_lacks(smoke, tmp_path, cli):
    """`eval retrieval --device` names the option and the device, before the checkpoint is even read."""
    out = cli("eval", "retrieval", "--checkpoint", tmp_path / "none", "--data", smoke, "--device", ABSENT_GPU)
    assert_clear_error(out, "--device", ABSENT_GPU, "CUDA device")


SPLIT_CASES = {
    # case: (override, words the error must contain)
    "train split smaller than one batch": ("optim.batch_size=4096", ["optim.batch_size=4096", "training pairs",
                                                                       "'train'", "one batch must fit"]),
    "train split that does not exist": ("data.train_split=training", ["data.train_split='training'", "test, train, val"]),
    "val split that does not exist": ("data.val_split=dev", ["data.val_split='dev'", "test, train, val"]),
}


@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_split_that_cannot_train_is_refused_before_the_run_folder(smoke, tmp_path, cli, case):
    """Known from the manifest alone: exit 2 naming the key and the split, and no run folder left behind."""
    override, words = SPLIT_CASES[case]
    out = cli("train", "--config", "smoke", f"data.root={smoke}", f"run.out_dir={tmp_path / 'run'}", override)
    assert_clear_error(out, *words)
    assert not (tmp_path / "run").exists()


MISSING_PATHS = {
    "data.root": ("data.root={missing}", ["data.root=", "no manifest.json"]),
    "teacher.cache": ("teacher.cache={missing}", ["teacher.cache=", "folder not found"]),
    "teacher.weights": ("teacher.weights={missing}/w.safetensors", ["w.safetensors"]),
    "run.resume": ("run.resume={missing}", ["run.resume", "not found"]),
    "data.tokenizer": ("data.tokenizer={missing}", ["tokenizer", "could not be loaded"]),
}


@pytest.mark.parametrize("key", list(MISSING_PATHS))
def test_path_that_does_not_exist_is_named(smoke, tmp_path, cli, key):
    """A path key pointing nowhere: exit 2 naming the key or the path; no training step runs."""
    template, words = MISSING_PATHS[key]
    missing = tmp_path / "does-not-exist"
    args = [f"data.root={smoke}", f"run.out_dir={tmp_path / 'run'}", template.format(missing=missing)]
    if key == "teacher.weights":
        args.append("teacher.tiny=false")
    out = cli("train", "--config", "smoke", *args)
    assert_clear_error(out, *words)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("content,words", [
    ("optim:\n  steps: [1, 2\n", ["invalid YAML"]),
    ("optim:\n  stepz: 10\n", ["'optim.stepz'", "optim.steps"]),
    ("- just\n- a list\n", ["expected a mapping"]),
], ids=["invalid YAML", "unknown key in the file", "not a mapping"])
def test_bad_config_file_names_file_and_key(tmp_path, cli, content, words):
    """A YAML config file with a syntax error, an unknown key or the wrong shape: exit 2 naming the file."""
    path = tmp_path / "my_config.yaml"
    path.write_text(content)
    assert_clear_error(cli("train", "--config", path, "--print-config"), "my_config.yaml", *words)


def test_config_file_that_does_not_exist(tmp_path, cli):
    """--config pointing at a missing YAML file, or at a preset that does not exist."""
    assert_clear_error(cli("train", "--config", tmp_path / "nope.yaml"), "nope.yaml", "not found")
    assert_clear_error(cli("train", "--config", "embeded"), "'embeded'", "embedded")


@pytest.mark.parametrize("gib", ["inf", "1e400", "nan", "1e9", "513", "0", "-24", "lots", ""])
def test_a_device_memory_no_device_has_is_refused_before_the_plan(tmp_path, cli, gib):
    """`--plan --gpu-memory GIB`: a finite size up to the largest device made; anything else is one line naming the
    flag and its limit, and no plan (no memory.json) is left behind."""
    out = cli("study", "--profile", "real", "--run-dir", tmp_path / "run", "--plan", "--gpu-memory", gib)
    assert_clear_error(out, "--gpu-memory", "(0, 512] GiB" if gib not in ("lots", "") else "expected a number")
    assert not (tmp_path / "run").exists()
