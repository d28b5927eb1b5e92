"""Data2Vec2-text (data2vec 2.0 NLP base, fairseq's ``nlp_base.pt``) as a transformers ``Data2VecTextModel``.

What the original code does (fairseq ``examples/data2vec/models/data2vec2.py``, ``modalities/text.py``,
``modalities/modules.py``, ``config/v2/base_text_only_task.yaml``; ``fairseq/data/dictionary.py``,
``fairseq/modules/positional_embedding.py``, ``fairseq/tasks/masked_lm.py``):

* Embeddings (``modality_encoders.TEXT.local_encoder``): ``embed_tokens`` (unscaled: ``no_scale_embedding``)
  plus learned ``embed_positions`` — positions count non-pad tokens from ``padding_idx + 1`` (= 2), pads sit
  at position 1, the table has ``512 + 2`` rows — then ``layernorm_embedding`` (fairseq LayerNorm, eps 1e-5).
* The base text model has ``prenet_depth: 0``: the modality's ``context_encoder`` has no blocks and no norm,
  so it holds no weights. Then 12 main ``blocks.N`` (``AltBlock``, ``layer_norm_first=False``, qkv bias on,
  exact GELU, LayerNorm eps ``norm_eps`` = 1e-5): ``x = norm1(x + attn(x)); x = norm2(x + mlp(x))``, padded
  keys masked out of the attention; no final norm. No alibi, no extra (CLS) tokens.
* That is RoBERTa's post-LN encoder exactly, so it maps onto ``Data2VecTextModel`` (transformers' RoBERTa
  architecture under the data2vec name, so ``AutoModel`` and the config say what the weights are; pooler
  off: fairseq has none). ``qkv`` splits into query/key/value in that order; fairseq has no token types, so
  ``type_vocab_size`` is 1 with a zero embedding. transformers has one LayerNorm eps: the checkpoint's
  ``norm_eps``, which in the base config equals the embedding norm's 1e-5. Heads come from the config too
  (tensors do not show them).
* Training-only parts are dropped: the EMA teacher (``_ema``), regression decoders
  (``modality_encoders.TEXT.decoder``, ``shared_decoder``), ``recon_proj``, other modalities' encoders. The
  student's weights are the model, as fairseq's own fine-tuning loads them. Any other key is an error.
* Ids: GPT-2 byte-level BPE (``encoder.json`` + ``vocab.bpe``) gives GPT-2 ids, which are then looked up *as
  words* in fairseq's ``dict.txt``: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, then the file's lines
  from 4 (RoBERTa's file ends with three ``madeupword`` fillers), then ``<mask>`` added by the masked-LM task:
  50265 ids. A BPE token whose GPT-2 id is not in ``dict.txt`` becomes ``<unk>``. A text is ``<s> … </s>``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn
from transformers import Data2VecTextConfig, Data2VecTextModel

from ..errors import DataError
from .checkpoints import Foreign, load_original_checkpoint, model_state

BOS, PAD, EOS, UNK = 0, 1, 2, 3  # fairseq Dictionary's first four symbols
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
MAX_TOKENS = 512  # fairseq max_source_positions; the position table has 2 more rows (offset padding_idx + 1)
HEAD_DIM = 64  # for checkpoints without a config: every released data2vec 2.0 model uses 64-wide heads

EMBED = "modality_encoders.TEXT.local_encoder."
EMBEDDINGS = {  # fairseq key -> transformers key
    EMBED + "embed_tokens.weight": "embeddings.word_embeddings.weight",
    EMBED + "embed_positions.weight": "embeddings.position_embeddings.weight",
    EMBED + "layernorm_embedding.weight": "embeddings.LayerNorm.weight",
    EMBED + "layernorm_embedding.bias": "embeddings.LayerNorm.bias",
}
BLOCK = {  # blocks.N.<fairseq> -> encoder.layer.N.<transformers>
    "attn.proj": "attention.output.dense",
    "norm1": "attention.output.LayerNorm",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
    "norm2": "output.LayerNorm",
}
TRAINING_ONLY = re.compile(
    r"_ema|shared_decoder\.|recon_proj\.|modality_encoders\.TEXT\.decoder\.|modality_encoders\.(?!TEXT\.)")


def _config(vocab_size: int, hidden: int, layers: int, heads: int, ffn: int, positions: int,
            eps: float = 1e-5) -> Data2VecTextConfig:
    return Data2VecTextConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                              num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=positions,
                              type_vocab_size=1, layer_norm_eps=eps, hidden_act="gelu",
                              pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)


def build_data2vec2_text(tiny: bool = False, vocab_size: int = 50265) -> nn.Module:
    """A randomly initialised model: base size, or tiny (width 32, 2 layers, 2 heads) for tests and smoke runs.

    ``vocab_size`` is honoured in both cases, so ids from the real tokenizer stay valid in a tiny model; tests
    pass a small one.
    """
    if tiny:
        config = _config(vocab_size, hidden=32, layers=2, heads=2, ffn=128, positions=64 + PAD + 1)
    else:
        config = _config(vocab_size, hidden=768, layers=12, heads=12, ffn=3072, positions=MAX_TOKENS + PAD + 1)
    return Data2VecTextModel(config, add_pooling_layer=False)


def _fields(node) -> dict:
    """A configuration node as a dict: fairseq saves ``cfg`` as plain dicts; a Namespace arrives as a stand-in."""
    if isinstance(node, Foreign):
        node = node.state
    return node if isinstance(node, dict) else {}


def _key_map(depth: int) -> dict[str, list[str]]:
    """fairseq key -> transformers key(s) for ``depth`` blocks (``qkv`` feeds three)."""
    keys = {src: [dst] for src, dst in EMBEDDINGS.items()}
    for i in range(depth):
        for kind in ("weight", "bias"):
            keys[f"blocks.{i}.attn.qkv.{kind}"] = [f"encoder.layer.{i}.attention.self.{part}.{kind}"
                                                  for part in ("query", "key", "value")]
            keys.update({f"blocks.{i}.{src}.{kind}": [f"encoder.layer.{i}.{dst}.{kind}"] for src, dst in BLOCK.items()})
    return keys


def _from_checkpoint(path: str | Path) -> Data2VecTextModel:
    """The fairseq checkpoint as a transformers model; sizes from the tensors, heads and eps from its config."""
    checkpoint = load_original_checkpoint(path)
    state = model_state(checkpoint, path)  # the nested ``_ema`` dict is not a tensor: model_state leaves it out
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    keys = _key_map(depth)
    for key in state:
        if key not in keys and not TRAINING_ONLY.match(key):
            raise DataError(f"{path}: unknown key {key!r}: not part of data2vec 2.0 base text (prenet, alibi, "
                            "extra tokens or a pre-LN final norm would change the model; nothing maps them)")
    missing = [key for key in keys if key not in state]
    if missing or depth == 0:
        raise DataError(f"{path}: not a data2vec 2.0 text checkpoint: missing {missing[:5] or 'blocks.0.*'}")

    cfg = _fields(checkpoint.get("cfg")) or _fields(checkpoint.get("args"))
    cfg = _fields(cfg.get("model")) or cfg
    vocab_size, hidden = state[EMBED + "embed_tokens.weight"].shape
    config = _config(vocab_size, hidden, depth, heads=int(cfg.get("num_heads", hidden // HEAD_DIM)),
                     ffn=state["blocks.0.mlp.fc1.weight"].shape[0],
                     positions=state[EMBED + "embed_positions.weight"].shape[0],
                     eps=float(cfg.get("norm_eps", 1e-5)))
    if config.num_attention_heads <= 0 or hidden % config.num_attention_heads:
        raise DataError(f"{path}: {config.num_attention_heads} heads do not divide width {hidden}")
    model = Data2VecTextModel(config, add_pooling_layer=False)
    expected = model.state_dict()

    converted = {"embeddings.token_type_embeddings.weight": torch.zeros(1, hidden)}
    for src, dsts in keys.items():
        tensor = state[src]
        want = expected[dsts[0]].shape
        if tensor.shape != (len(dsts) * want[0], *want[1:]):
            raise DataError(f"{path}: {src} has shape {tuple(tensor.shape)}; expected "
                            f"{(len(dsts) * want[0], *want[1:])} for this model")
        converted.update(zip(dsts, tensor.float().chunk(len(dsts))))
    model.load_state_dict(converted, strict=True)
    return model.eval()


def convert_data2vec2_text(src: str | Path, dst_dir: str | Path) -> Path:
    """fairseq ``nlp_base.pt`` -> a transformers folder (``model.safetensors`` + ``config.json``)."""
    dst = Path(dst_dir)
    _from_checkpoint(src).save_pretrained(dst)
    return dst


def load_data2vec2_text(path: str | Path) -> nn.Module:
    """The model in eval mode, from the original ``.pt`` (converted in memory) or from a converted folder."""
    path = Path(path)
    if not path.is_dir():
        return _from_checkpoint(path)
    if not (path / "config.json").is_file():
        raise DataError(f"{path}: no config.json; not a converted Data2Vec2-text folder")
    model, info = Data2VecTextModel.from_pretrained(path, add_pooling_layer=False, output_loading_info=True)
    # from_pretrained would quietly leave random weights where keys are missing; a teacher must not.
    problems = {kind: keys for kind, keys in info.items() if keys and kind != "error_msgs"}
    if problems:
        raise DataError(f"{path}: weights do not match config.json: {problems}")
    return model.eval()


def _open_text(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return open(path, encoding="utf-8")


def _read_dictionary(path: Path) -> dict[str, int]:
    """fairseq ``Dictionary.load`` + the masked-LM task's ``<mask>``: word -> index."""
    indices = {word: i for i, word in enumerate(SPECIALS)}
    size = len(indices)
    with _open_text(path) as lines:
        for n, line in enumerate(lines, 1):
            fields = line.rstrip().rsplit(" ", 1)
            overwrite = fields[-1] == "#fairseq:overwrite"
            if overwrite:
                fields = fields[0].rsplit(" ", 1)
            if len(fields) != 2 or not re.fullmatch(r"[+-]?\d+", fields[1]):
                raise DataError(f"{path} line {n}: expected '<token> <count>', found {line.rstrip()!r}")
            if fields[0] in indices and not overwrite:
                raise DataError(f"{path} line {n}: duplicate token {fields[0]!r} (fairseq needs '#fairseq:overwrite')")
            indices[fields[0]] = size  # an overwrite re-points the word to its new, last index, as fairseq does
            size += 1
    indices.setdefault("<mask>", size)  # add_symbol returns the existing index if dict.txt already has one
    return indices


def _read_merges(path: Path, encoder: dict[str, int]) -> list[tuple[str, str]]:
    merges = []
    with _open_text(path) as lines:
        for n, line in enumerate(lines, 1):
            if (n == 1 and line.startswith("#version")) or not line.strip():
                continue
            pair = tuple(line.split())
            if len(pair) != 2 or any(token not in encoder for token in (*pair, "".join(pair))):
                raise DataError(f"{path} line {n}: expected a merge of two encoder.json tokens, "
                                f"found {line.rstrip()!r}")
            merges.append(pair)
    return merges


def convert_data2vec2_tokenizer(encoder_json: str | Path, vocab_bpe: str | Path, dict_txt: str | Path,
                                out_dir: str | Path) -> Path:
    """GPT-2 BPE files + fairseq ``dict.txt`` -> a RobertaTokenizer folder whose ids are fairseq's ids."""
    encoder_json, vocab_bpe, dict_txt, out = map(Path, (encoder_json, vocab_bpe, dict_txt, out_dir))
    with _open_text(encoder_json) as f:
        try:
            encoder = json.load(f)
        except json.JSONDecodeError as exc:
            raise DataError(f"{encoder_json}: not valid JSON ({exc})") from None
    if not isinstance(encoder, dict) or not all(isinstance(i, int) for i in encoder.values()):
        raise DataError(f"{encoder_json}: expected a JSON object mapping BPE tokens to GPT-2 ids")
    merges = _read_merges(vocab_bpe, encoder)
    indices = _read_dictionary(dict_txt)

    # The remap: BPE token -> its GPT-2 id looked up as a dict.txt word; absent ones share <unk>'s id.
    vocab = {token: indices.get(str(gpt2_id), UNK) for token, gpt2_id in encoder.items()}
    absent = {token for token, i in vocab.items() if i == UNK}
    # tokenizers keys merges by id pairs; two BPE tokens sharing id 3 inside merges would be confused.
    if len(absent) > 1 and any(a in absent or b in absent for a, b in merges):
        raise DataError(f"{dict_txt}: {len(absent)} BPE tokens are missing (e.g. {sorted(absent)[:3]}) and some take "
                        "part in merges; a transformers tokenizer cannot reproduce fairseq's <unk> mapping for that")
    gpt2_words = {str(i) for i in encoder.values()}
    for word, index in indices.items():  # specials, <mask>, madeupword fillers: ids without a BPE token
        if word not in gpt2_words:
            vocab.setdefault(word, index)

    # No tokenizer.json: tokenizers writes its vocab by id, which would keep one of the tokens sharing id 3;
    # transformers builds the same BPE from vocab.json, where shared ids survive.
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    config = {"tokenizer_class": "RobertaTokenizer", "model_max_length": MAX_TOKENS, "add_prefix_space": False,
              "bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
              "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>"}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out
