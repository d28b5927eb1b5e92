"""Data2Vec2-text: converter from fairseq's layout, forward semantics, tokenizer ids, errors.

The checkpoint and BPE files here are tiny stand-ins written in the original formats; the references
(forward pass, GPT-2 BPE + dict.txt lookup) are written from the original semantics with plain Python/torch.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mmd2v2_core.errors import DataError
from mmd2v2_core.teachers.data2vec2_text import (build_data2vec2_text, convert_data2vec2_text,
                                                 convert_data2vec2_tokenizer, load_data2vec2_text)
from real_fixture import (GPT2_SPLIT, TEXT as EMB, TextGeometry, bytes_to_unicode, d2v2_text_state, save_d2v2_text,
                          write_bpe_files)

V, D, HEADS, FFN, DEPTH, MAX_POS = 40, 32, 2, 64, 2, 16
GEO = TextGeometry(vocab=V, dim=D, heads=HEADS, ffn=FFN, depth=DEPTH, max_pos=MAX_POS)
PAD = 1


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    state, training_only = d2v2_text_state(GEO)
    path = save_d2v2_text(tmp_path_factory.mktemp("d2v2") / "nlp_tiny.pt", {**state, **training_only}, GEO)
    return path, state


def _reference_forward(state, tokens):
    """data2vec 2.0 text with the original tensors: TextLocalEncoder, then post-LN AltBlocks."""
    pad = tokens.eq(PAD)
    positions = (torch.cumsum(~pad, dim=1) * ~pad) + PAD  # fairseq make_positions
    x = state[EMB + "embed_tokens.weight"][tokens] + state[EMB + "embed_positions.weight"][positions]
    x = F.layer_norm(x, (D,), state[EMB + "layernorm_embedding.weight"], state[EMB + "layernorm_embedding.bias"], 1e-5)
    B, T, _ = x.shape
    for i in range(DEPTH):
        p = lambda name: (state[f"blocks.{i}.{name}.weight"], state[f"blocks.{i}.{name}.bias"])  # noqa: E731
        q, k, v = F.linear(x, *p("attn.qkv")).reshape(B, T, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        attn = (q * (D // HEADS) ** -0.5) @ k.transpose(-2, -1)
        attn = attn.masked_fill(pad[:, None, None, :], float("-inf")).softmax(-1)
        x = F.layer_norm(x + F.linear((attn @ v).transpose(1, 2).reshape(B, T, D), *p("attn.proj")), (D,),
                         *p("norm1"), 1e-5)
        x = F.layer_norm(x + F.linear(F.gelu(F.linear(x, *p("mlp.fc1"))), *p("mlp.fc2")), (D,), *p("norm2"), 1e-5)
    return x


def _padded_batch():
    g = torch.Generator().manual_seed(1)
    lengths = [12, 7, 3]
    tokens = torch.full((len(lengths), max(lengths)), PAD)
    for row, n in enumerate(lengths):
        tokens[row, :n] = torch.cat([torch.tensor([0]), torch.randint(4, V, (n - 2,), generator=g), torch.tensor([2])])
    return tokens


def _expected_target_state(state):
    """What each transformers key must hold, written out independently of the converter's tables."""
    names = {"attn.proj": "attention.output.dense", "norm1": "attention.output.LayerNorm",
             "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense", "norm2": "output.LayerNorm"}
    out = {"embeddings.word_embeddings.weight": EMB + "embed_tokens.weight",
           "embeddings.position_embeddings.weight": EMB + "embed_positions.weight",
           "embeddings.LayerNorm.weight": EMB + "layernorm_embedding.weight",
           "embeddings.LayerNorm.bias": EMB + "layernorm_embedding.bias"}
    out = {dst: state[src] for dst, src in out.items()}
    out["embeddings.token_type_embeddings.weight"] = torch.zeros(1, D)
    for i in range(DEPTH):
        for kind in ("weight", "bias"):
            qkv = state[f"blocks.{i}.attn.qkv.{kind}"]
            for j, part in enumerate(("query", "key", "value")):
                out[f"encoder.layer.{i}.attention.self.{part}.{kind}"] = qkv[j * D:(j + 1) * D]
            for src, dst in names.items():
                out[f"encoder.layer.{i}.{dst}.{kind}"] = state[f"blocks.{i}.{src}.{kind}"]
    return out


# --- model converter ---------------------------------------------------------------------------------------------

def test_converter_fills_every_key_from_the_original(original, tmp_path):
    path, state = original
    out = convert_data2vec2_text(path, tmp_path / "converted")
    assert {"config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    model = load_data2vec2_text(out)  # raises on any missing/unexpected key
    config = model.config
    assert (config.model_type, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.intermediate_size, config.vocab_size, config.max_position_embeddings, config.type_vocab_size,
            config.pad_token_id, config.layer_norm_eps) == ("data2vec-text", D, DEPTH, HEADS, FFN, V, MAX_POS + 2, 1,
                                                            PAD, 1e-5)
    expected = _expected_target_state(state)
    got = model.state_dict()
    assert set(got) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key
    assert not model.training


@pytest.mark.parametrize("cfg_style", ["dict", "namespace"])
def test_converted_model_matches_reference_forward_on_padded_batch(original, tmp_path, cfg_style):
    _, state = original
    path = save_d2v2_text(tmp_path / "nlp_tiny.pt", state, GEO, cfg_style)
    tokens = _padded_batch()
    mask = tokens.ne(PAD).long()
    expected = _reference_forward(state, tokens)
    for model in (load_data2vec2_text(path), load_data2vec2_text(convert_data2vec2_text(path, tmp_path / "hf"))):
        with torch.no_grad():
            got = model(input_ids=tokens, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)  # padded rows included
    # Padding changes nothing at real tokens: the shortest sentence alone gives the same states.
    with torch.no_grad():
        alone = model(input_ids=tokens[2:, :3], attention_mask=mask[2:, :3]).last_hidden_state
    torch.testing.assert_close(alone, got[2:, :3], atol=1e-5, rtol=1e-5)


def test_build_tiny_runs():
    model = build_data2vec2_text(tiny=True, vocab_size=V)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_attention_heads) == (32, 2, 2)
    tokens = _padded_batch()
    out = model(input_ids=tokens, attention_mask=tokens.ne(PAD).long()).last_hidden_state
    assert out.shape == (*tokens.shape, 32)


def test_unknown_missing_and_misshapen_keys_are_named(tmp_path):
    state, _ = d2v2_text_state(GEO)
    save_d2v2_text(tmp_path / "unknown.pt", {**state, "modality_encoders.TEXT.alibi_scale": torch.ones(1, 1, 1, 1, 1)},
                   GEO)
    with pytest.raises(DataError, match=r"unknown\.pt.*'modality_encoders\.TEXT\.alibi_scale'"):
        load_data2vec2_text(tmp_path / "unknown.pt")
    save_d2v2_text(tmp_path / "missing.pt", {k: v for k, v in state.items() if k != "blocks.1.norm2.bias"}, GEO)
    with pytest.raises(DataError, match=r"missing.*blocks\.1\.norm2\.bias"):
        convert_data2vec2_text(tmp_path / "missing.pt", tmp_path / "out")
    save_d2v2_text(tmp_path / "shape.pt", {**state, "blocks.0.mlp.fc2.weight": torch.zeros(D, FFN + 1)}, GEO)
    with pytest.raises(DataError, match=r"blocks\.0\.mlp\.fc2\.weight has shape \(32, 65\)"):
        load_data2vec2_text(tmp_path / "shape.pt")
    with pytest.raises(DataError, match="not found"):
        load_data2vec2_text(tmp_path / "absent.pt")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="config.json"):
        load_data2vec2_text(tmp_path / "empty_dir")
    # A converted folder whose weights lost a key must not load with a randomly initialised stand-in.
    folder = convert_data2vec2_text(save_d2v2_text(tmp_path / "ok.pt", state, GEO), tmp_path / "hf")
    weights = load_file(folder / "model.safetensors")
    del weights["encoder.layer.1.output.LayerNorm.bias"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(DataError, match=r"missing_keys.*encoder\.layer\.1\.output\.LayerNorm\.bias"):
        load_data2vec2_text(folder)


# --- tokenizer ---------------------------------------------------------------------------------------------------

MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("l", "o"), ("lo", "w"), ("e", "r"), ("Ġ", "low"), ("Ġlow", "er")]
OMITTED = "lo"  # an intermediate of the merges: fairseq's lookup turns it into <unk> only where it survives


def _reference_ids(text, encoder, dictionary):
    """fairseq: GPT-2 BPE to GPT-2 ids, ids as words through dict.txt (after 4 specials), <s> … </s>."""
    ranks = {pair: r for r, pair in enumerate(MERGES)}
    table = bytes_to_unicode()
    index = {word: 4 + i for i, word in enumerate(dictionary)}
    ids = [0]
    for piece in GPT2_SPLIT.findall(text):
        word = [table[b] for b in piece.encode("utf-8")]
        while len(word) > 1:
            pairs = [(ranks.get(pair, math.inf), i) for i, pair in enumerate(zip(word, word[1:]))]
            rank, i = min(pairs)
            if rank == math.inf:
                break
            word[i:i + 2] = [word[i] + word[i + 1]]
        ids += [index.get(str(encoder[token]), 3) for token in word]
    return ids + [2]


@pytest.fixture
def bpe_files(tmp_path):
    encoder, words = write_bpe_files(tmp_path, MERGES, omitted=(OMITTED,))
    return tmp_path, encoder, words


def test_tokenizer_reproduces_fairseq_ids(bpe_files, tmp_path):
    from transformers import AutoTokenizer

    src, encoder, words = bpe_files
    out = convert_data2vec2_tokenizer(src / "encoder.json", src / "vocab.bpe", src / "dict.txt", tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(out)
    texts = ["the lower low lol", "The  other\nthe théâtre 42 <|endoftext|>!", "lo", " hello, world's end"]
    for text in texts:
        assert tokenizer(text)["input_ids"] == _reference_ids(text, encoder, words), text
    assert 3 in tokenizer("lol")["input_ids"]  # "lo" survives there and is not in dict.txt
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id,
            tokenizer.mask_token_id) == (0, 1, 2, 3, 4 + len(words))
    assert max(tokenizer.get_vocab().values()) == 4 + len(words)  # <mask> closes the id space
    batch = tokenizer(texts[:2], padding=True)
    assert batch["input_ids"][0][-1] == 1 and batch["attention_mask"][0][-1] == 0


def test_tokenizer_errors_name_file_and_line(bpe_files, tmp_path):
    src, _, _ = bpe_files
    lines = (src / "dict.txt").read_text(encoding="utf-8").splitlines()
    lines[16] = "no-count-here"
    (src / "bad.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.txt line 17: expected '<token> <count>'"):
        convert_data2vec2_tokenizer(src / "encoder.json", src / "vocab.bpe", src / "bad.txt", tmp_path / "t")
    (src / "dup.txt").write_text("5 3\n7 2\n5 1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"dup\.txt line 3: duplicate token '5'"):
        convert_data2vec2_tokenizer(src / "encoder.json", src / "vocab.bpe", src / "dup.txt", tmp_path / "t")
    with pytest.raises(DataError, match=r"missing\.txt: file not found"):
        convert_data2vec2_tokenizer(src / "encoder.json", src / "vocab.bpe", src / "missing.txt", tmp_path / "t")
    # Two missing tokens inside merges would share id 3 in the merge table: refused rather than approximated.
    (src / "two_missing.txt").write_text("".join(f"{i} 1\n" for i in range(260)), encoding="utf-8")
    with pytest.raises(DataError, match=r"two_missing\.txt: \d+ BPE tokens are missing"):
        convert_data2vec2_tokenizer(src / "encoder.json", src / "vocab.bpe", src / "two_missing.txt", tmp_path / "t")
    (src / "merges.bpe").write_text("#version: 0.2\nĠ t\nq z\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"merges\.bpe line 3"):
        convert_data2vec2_tokenizer(src / "encoder.json", src / "merges.bpe", src / "dict.txt", tmp_path / "t")
