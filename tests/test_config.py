"""The config's range and choice table: every numeric and enumerated key has one, and it reads as written."""

import dataclasses
import typing

import pytest

from mmd2v2_core.config import Range, TrainConfig, device_problem, limits, load_config
from mmd2v2_core.errors import ConfigError

# Enumerated keys whose choices live in a registry, checked by validate() through it.
CHECKED_BY_REGISTRY = {"teacher.name", "student.preset", "student.size"}
FREE_TEXT = {"data.root", "data.sources", "data.train_split", "data.val_split", "data.tokenizer", "teacher.weights",
             "teacher.weights_dir", "teacher.cache", "student.image_weights", "student.text_weights", "student.frontend_cache",
             "run.out_dir", "run.resume", "run.device"}  # paths, names, and the device (device_problem)


def _keys_by_type():
    hints = typing.get_type_hints(TrainConfig)
    for section in dataclasses.fields(TrainConfig):
        cls = hints[section.name]
        for name, hint in typing.get_type_hints(cls).items():
            yield f"{section.name}.{name}", hint


def test_every_numeric_and_enumerated_key_has_a_range_or_choices():
    table = limits()
    for key, hint in _keys_by_type():
        if hint is bool or key in CHECKED_BY_REGISTRY | FREE_TEXT:
            continue
        assert key in table, f"{key} ({hint}) has no range or choices in config.limits()"
    assert set(table) <= {key for key, _ in _keys_by_type()}, "limits() names a key the config does not have"


def test_ranges_read_as_written():
    assert str(Range(0, 1, "[)")) == "in [0, 1)" and str(Range(0, None, "()")) == "> 0" and str(Range(1)) == ">= 1"
    assert 0 in Range(0, 1, "[)") and 1 not in Range(0, 1, "[)") and 0 not in Range(0, 1, "(]")
    assert float("nan") not in Range(0) and float("inf") not in Range(0)


def test_numbers_in_scientific_notation_are_numbers(smoke_data):
    cfg = load_config("smoke", [f"data.root={smoke_data['synth-coco']}", "optim.eps=1e-8", "optim.lr=5e-4"])
    assert cfg.optim.eps == 1e-8 and cfg.optim.lr == 5e-4
    with pytest.raises(ConfigError, match=r"optim.betas\[0\]=1.5: must be in \[0, 1\)"):
        load_config("smoke", ["optim.betas=[1.5, 0.98]"])


def test_devices():
    assert device_problem("cpu") is None and device_problem("auto") is None
    assert "must be one of" in device_problem("gpu") and "must be one of" in device_problem("cpu:0")
    assert "CUDA device" in device_problem("cuda:99")
