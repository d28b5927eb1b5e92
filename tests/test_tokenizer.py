"""Captions become BERT-uncased WordPiece ids: [CLS] … [SEP], padded or truncated to 64."""

import pytest
import torch

from mmd2v2_core.data.tokenizer import CaptionTokenizer
from mmd2v2_core.errors import ConfigError

CLS, SEP, PAD = 101, 102, 0  # bert-base-uncased ids


def test_packaged_vocabulary_is_bert_base_uncased(tokenizer):
    assert tokenizer.vocab_size == 30522
    assert tokenizer.hf.convert_tokens_to_ids(["[CLS]", "[SEP]", "[PAD]", "circle"]) == [CLS, SEP, PAD, 4418]


def test_cls_sep_padding_and_mask():
    tokenizer = CaptionTokenizer(pad_to="max_length")
    enc = tokenizer(["A small red circle.", "Two shapes on the grass: a big blue square and a star"])
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape == mask.shape == (2, 64) and ids.dtype == mask.dtype == torch.long
    assert ids[0, :6].tolist() == [CLS, 1037, 2235, 2417, 4418, 1012] and ids[0, 6] == SEP
    assert (ids[0, 7:] == PAD).all() and mask[0].tolist() == [1] * 7 + [0] * 57
    n = int(mask[1].sum())
    assert ids[1, n - 1] == SEP and (ids[1, n:] == PAD).all()


def test_lower_cases_like_uncased_bert(tokenizer):
    assert torch.equal(tokenizer(["A RED Circle"])["input_ids"], tokenizer(["a red circle"])["input_ids"])


def test_long_captions_are_truncated_and_still_end_with_sep(tokenizer):
    enc = tokenizer(["word " * 200])
    assert enc["input_ids"].shape == (1, 64) and enc["input_ids"][0, -1] == SEP and enc["attention_mask"].all()


def test_padding_to_the_longest_caption_gives_the_same_tokens(tokenizer):
    captions = ["a red circle", "two shapes on the grass : a big blue square and a star"]
    longest, fixed = tokenizer(captions), CaptionTokenizer(pad_to="max_length")(captions)
    t = longest["input_ids"].shape[1]
    assert t == int(longest["attention_mask"].sum(1).max()) < 64
    assert torch.equal(fixed["input_ids"][:, :t], longest["input_ids"]) and (fixed["attention_mask"][:, t:] == 0).all()


def test_other_lengths():
    short = CaptionTokenizer(max_length=16, pad_to="max_length")
    assert short(["a caption"])["input_ids"].shape == (1, 16)
    with pytest.raises(ConfigError, match="pad_to"):
        CaptionTokenizer(pad_to="left")


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="could not be loaded"):
        CaptionTokenizer(str(tmp_path / "no-such-tokenizer"))
