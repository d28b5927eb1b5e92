"""Target kinds computed from teacher outputs, checked by hand."""

import pytest
import torch

from mmd2v2_core.errors import ConfigError
from mmd2v2_core.teachers.base import TeacherOutput
from mmd2v2_core.teachers.targets import compute_target


def _out(with_mask=False):
    torch.manual_seed(0)
    layers = [torch.randn(2, 4, 3) for _ in range(3)]
    tokens = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]) if with_mask else None
    return TeacherOutput(pooled=tokens[:, 0], tokens=tokens, tokens_prenorm=layers[-1], layers=layers,
                         logits=torch.randn(2, 5), attention_mask=mask)


def test_cls_kinds_and_logits():
    out = _out()
    assert torch.equal(compute_target(out, "cls"), out.tokens[:, 0])
    assert torch.equal(compute_target(out, "cls_prenorm"), out.layers[-1][:, 0])
    assert torch.equal(compute_target(out, "logits"), out.logits)
    assert torch.equal(compute_target(out, "pooled"), out.pooled)


def test_mean_includes_the_cls_token_as_the_original_and_excludes_padding():
    out = _out(with_mask=True)
    mean = compute_target(out, "mean")
    assert torch.allclose(mean[0], out.tokens[0, :3].mean(0))  # CLS in, the pad out
    assert torch.allclose(mean[1], out.tokens[1].mean(0))


def test_layer_average_of_instance_normalised_layers():
    out = _out()
    target = compute_target(out, "layer_avg", top_k=2)
    normed = [torch.nn.functional.instance_norm(l[:, 1:].transpose(1, 2)).transpose(1, 2) for l in out.layers[-2:]]
    assert torch.allclose(target, torch.stack(normed).mean(0).mean(1), atol=1e-5)


def test_kind_errors():
    cnn = TeacherOutput(pooled=torch.zeros(1, 4))
    with pytest.raises(ConfigError, match="for a CNN teacher use 'pooled' or 'logits'"):
        compute_target(cnn, "cls")
    with pytest.raises(ConfigError, match="needs a teacher with a classifier head"):
        compute_target(cnn, "logits")
    with pytest.raises(ConfigError, match="unknown target kind 'clss'"):
        compute_target(cnn, "clss")
