import os

import pytest

os.environ.setdefault("MMD2V2_PROGRESS", "off")


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory):
    """Both synthetic domains at smoke scale, generated once per test session."""
    from data_prep.synth import generate

    return generate(tmp_path_factory.mktemp("synth"), "smoke", seed=0, workers=2)


@pytest.fixture(scope="session")
def tokenizer():
    from mmd2v2_core.data.tokenizer import CaptionTokenizer

    return CaptionTokenizer()
