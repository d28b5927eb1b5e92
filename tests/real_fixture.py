"""A real-format fixture: the kit's real training configs end to end on CPU, with nothing downloaded.

``build_real_fixture(root)`` writes, under ``root``:

* ``coco/dataset_coco.json`` + ``coco/images/{train2014,val2014}/`` and ``flickr30k/dataset_flickr30k.json`` +
  ``flickr30k/images/``: Karpathy splits with the real files' fields over 40 JPEG photographs cut from the sample
  photos scikit-image and matplotlib ship, 5 captions each, and COCO's ``annotations/instances_{train,val}2014.json``
  for those photos; prepared by ``index_karpathy`` (what ``mmd2v2 data karpathy [--instances …]`` runs) into
  ``prepared/coco`` (with each image's supercategory) and ``prepared/flickr30k``.
* The real configs' extra training sources (``data.sources``), in their releases' layouts and prepared by the kit:
  Visual Genome (``vg/region_descriptions.json`` + ``VG_100K/``, ``mmd2v2 data vg``) and img2dataset webdataset
  shards for CC3M, its 500k subset and CC12M (``cc3m/00000.tar`` …, ``mmd2v2 data webdataset``).
* ``weights/``: the registry's default files as tiny random-init checkpoints in the releases' layouts (BEiT-v2
  pt1k ``.pth``; fairseq data2vec 2.0 image and text ``.pt`` with their cfg), and ``weights/d2v2-text-tokenizer``
  converted by ``convert_data2vec2_tokenizer`` from GPT-2-style BPE files and a fairseq ``dict.txt``
  (``downloads/``) that cover the captions' words.
* ``hf/hub``: a Hugging Face hub cache (``models--org--name/refs/main`` + ``snapshots/<commit>/``) with DINO and
  fine-tuned BEiT-v2 (timm ``model.safetensors``) and BERT-base-uncased (the hub file's own layout: ``bert.``
  prefix, LayerNorm ``gamma``/``beta``, pretraining heads; config, WordPiece vocabulary).

Geometry (``size="tiny"``, the tests'): width 32, 2 heads, MLP 128, 32 px images, patch 8. Loaders that build their
tiny variant from a constant (BEiT-v2, DINO) get exactly that variant; the ones that read the size from the file
(Data2Vec2, BERT) get the depth the student's ``tiny`` preset copies from: 2 prenet + 6 main image blocks, 6 text
layers. ``size="real"`` (``bench/dry_run_real.py``) writes every checkpoint at the releases' true geometry — ViT-B/16
at 224 px, BEiT-v2's 8,192 visual tokens, Data2Vec2-image's 2 prenet + 10 blocks, Data2Vec2-text's 50,265-entry
vocabulary and 12 layers, BERT-base's 30,522 — and the photos at COCO's 640 px, 5 copies of the 40 (600 COCO training
pairs, room for the real configs' global batches).

The original-layout builders are shared with tests/teachers, which use them at their own sizes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import random
import re
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib.cbook
import numpy as np
import regex
import skimage.data
import torch
from PIL import Image, ImageOps
from safetensors.torch import save_file
from timm.data import ImageNetInfo
from transformers import BertConfig, BertForPreTraining

from data_prep.coco_instances import dominant_supercategories
from data_prep.karpathy import index_karpathy
from data_prep.visual_genome import index_visual_genome
from data_prep.webdataset_index import index_webdataset
from mmd2v2_core.teachers.beitv2 import build_beitv2
from mmd2v2_core.teachers.data2vec2_text import convert_data2vec2_tokenizer
from mmd2v2_core.teachers.pretrained import build_dino

# ---------------------------------------------------------------------------------------------- original layouts


@dataclass(frozen=True)
class ViTGeometry:
    dim: int = 32
    heads: int = 2
    patch: int = 8
    size: int = 32
    depth: int = 2  # blocks; for Data2Vec2 the main blocks after the prenet
    hidden: int = 128  # MLP width
    prenet: int = 0  # Data2Vec2's image-specific blocks


@dataclass(frozen=True)
class TextGeometry:
    vocab: int
    dim: int = 32
    heads: int = 2
    ffn: int = 128
    depth: int = 6
    max_pos: int = 512  # fairseq max_source_positions; the table has 2 more rows


def _normal(g: torch.Generator):
    def rand(*shape, scale=0.2, mean=0.0):
        return mean + scale * torch.randn(*shape, generator=g)
    return rand


IMG = "modality_encoders.IMAGE."
D2V2_BLOCK = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
              "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")


def mae_positions(grid: int, dim: int) -> torch.Tensor:
    """MAE's get_2d_sincos_pos_embed, re-derived in numpy: np.meshgrid(w, h) puts the column first."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    col, row = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))

    def half(pos):
        angles = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return torch.from_numpy(np.concatenate([half(col), half(row)], axis=1)).float()


def d2v2_image_prefixes(geo: ViTGeometry) -> list[str]:
    return [f"{IMG}context_encoder.blocks.{i}." for i in range(geo.prenet)] + [f"blocks.{i}." for i in range(geo.depth)]


def d2v2_image_state(geo: ViTGeometry, seed: int = 0) -> dict:
    """A data2vec 2.0 image model's state with fairseq's names, training-only parts (decoder, EMA) included."""
    rand = _normal(torch.Generator().manual_seed(seed))
    dim = geo.dim
    state = {
        IMG + "local_encoder.proj.weight": rand(dim, 3, geo.patch, geo.patch),
        IMG + "local_encoder.proj.bias": rand(dim),
        IMG + "extra_tokens": rand(1, 1, dim, scale=1.0),
        IMG + "fixed_positional_encoder.positions": mae_positions(geo.size // geo.patch, dim).unsqueeze(0),
        IMG + "context_encoder.norm.weight": rand(dim, scale=0.1, mean=1.0),
        IMG + "context_encoder.norm.bias": rand(dim, scale=0.1),
    }
    shapes = {"attn.qkv.weight": (3 * dim, dim), "attn.qkv.bias": (3 * dim,), "attn.proj.weight": (dim, dim),
              "mlp.fc1.weight": (geo.hidden, dim), "mlp.fc1.bias": (geo.hidden,), "mlp.fc2.weight": (dim, geo.hidden)}
    for prefix in d2v2_image_prefixes(geo):
        for name in D2V2_BLOCK:
            if name.startswith("norm") and name.endswith("weight"):
                state[prefix + name] = rand(dim, scale=0.1, mean=1.0)
            else:
                state[prefix + name] = rand(*shapes.get(name, (dim,)))
    # the conv decoder (Decoder2d; its LayerNorms have no parameters) and the EMA teacher
    state[IMG + "decoder.blocks.0.0.weight"] = rand(16, dim // 4, 3, 3)
    state[IMG + "decoder.blocks.0.0.bias"] = rand(16)
    state[IMG + "decoder.proj.weight"] = rand(dim, 16)
    state[IMG + "decoder.proj.bias"] = rand(dim)
    state["_ema"] = {key: value + 0.01 for key, value in state.items() if "decoder" not in key}
    return state


def save_d2v2_image(path: Path, state: dict, geo: ViTGeometry, cfg: bool = True) -> Path:
    """Wrapped like fairseq's Trainer.state_dict: cfg as a plain dict, foreign objects elsewhere."""
    checkpoint = {"model": state, "args": None,
                  "extra_state": {"metrics": argparse.Namespace(loss=1.0)}}  # a class weights-only loading refuses
    if cfg:
        checkpoint["cfg"] = {"model": {"_name": "data2vec_multi", "depth": geo.depth, "num_heads": geo.heads,
                                       "embed_dim": geo.dim, "layer_norm_first": False,
                                       "modalities": {"image": {"prenet_depth": geo.prenet, "patch_size": geo.patch}}}}
    torch.save(checkpoint, path)
    return path


TEXT = "modality_encoders.TEXT.local_encoder."


def d2v2_text_state(geo: TextGeometry, seed: int = 0) -> tuple[dict, dict]:
    """Tensors under fairseq's data2vec 2.0 text names (the model), and the training-only entries beside them."""
    rand = _normal(torch.Generator().manual_seed(seed))
    d = geo.dim
    state = {
        TEXT + "embed_tokens.weight": rand(geo.vocab, d, scale=1.0),
        TEXT + "embed_positions.weight": rand(geo.max_pos + 2, d, scale=1.0),
        TEXT + "layernorm_embedding.weight": rand(d, mean=1.0),
        TEXT + "layernorm_embedding.bias": rand(d),
    }
    for i in range(geo.depth):
        for name, out, inp in (("attn.qkv", 3 * d, d), ("attn.proj", d, d), ("mlp.fc1", geo.ffn, d),
                               ("mlp.fc2", d, geo.ffn)):
            state[f"blocks.{i}.{name}.weight"] = rand(out, inp, scale=1 / math.sqrt(inp))
            state[f"blocks.{i}.{name}.bias"] = rand(out)
        for name in ("norm1", "norm2"):
            state[f"blocks.{i}.{name}.weight"] = rand(d, mean=1.0)
            state[f"blocks.{i}.{name}.bias"] = rand(d)
    training_only = {
        "_ema": {"0.attn.qkv.weight": rand(3 * d, d)},  # EMAModule.fp32_params: a nested dict
        "modality_encoders.TEXT.decoder.blocks.0.0.weight": rand(d, d, 9),
        "modality_encoders.TEXT.decoder.proj.0.weight": rand(2 * d, d),
        "shared_decoder.proj.weight": rand(d, d),
        "recon_proj.weight": rand(d, d),
        "modality_encoders.IMAGE.local_encoder.proj.weight": rand(d, 3, 16, 16),
    }
    return state, training_only


def save_d2v2_text(path: Path, state: dict, geo: TextGeometry, cfg_style: str = "dict") -> Path:
    model_cfg = {"_name": "data2vec_multi", "depth": geo.depth, "embed_dim": geo.dim, "num_heads": geo.heads,
                 "norm_eps": 1e-5, "layer_norm_first": False, "supported_modality": "TEXT"}
    if cfg_style == "dict":  # fairseq's trainer saves OmegaConf.to_container(cfg)
        checkpoint = {"args": None, "cfg": {"model": model_cfg, "task": {"_name": "masked_lm"}}, "model": state}
    else:
        checkpoint = {"cfg": argparse.Namespace(model=argparse.Namespace(**model_cfg)), "model": state}
    torch.save(checkpoint, path)
    return path


def relative_position_index(grid: int) -> torch.Tensor:
    """Index into the bias table for every (query, key) token pair; token 0 is CLS (unilm's convention)."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    r, c = rows.flatten(), cols.flatten()
    span = 2 * grid - 1
    size = span * span + 3  # every 2-D offset, then CLS→patch, patch→CLS, CLS→CLS
    index = torch.empty(grid * grid + 1, grid * grid + 1, dtype=torch.long)
    index[1:, 1:] = (r[:, None] - r[None, :] + grid - 1) * span + (c[:, None] - c[None, :] + grid - 1)
    index[0, :] = size - 3
    index[:, 0] = size - 2
    index[0, 0] = size - 1
    return index


def _beit_block(prefix: str, dim: int, rand) -> dict:
    return {
        f"{prefix}gamma_1": rand(dim, scale=0.05, mean=0.1), f"{prefix}gamma_2": rand(dim, scale=0.05, mean=0.1),
        f"{prefix}norm1.weight": rand(dim, mean=1.0), f"{prefix}norm1.bias": rand(dim),
        f"{prefix}attn.q_bias": rand(dim), f"{prefix}attn.v_bias": rand(dim),
        f"{prefix}attn.qkv.weight": rand(3 * dim, dim),
        f"{prefix}attn.proj.weight": rand(dim, dim), f"{prefix}attn.proj.bias": rand(dim),
        f"{prefix}norm2.weight": rand(dim, mean=1.0), f"{prefix}norm2.bias": rand(dim),
        f"{prefix}mlp.fc1.weight": rand(4 * dim, dim), f"{prefix}mlp.fc1.bias": rand(4 * dim),
        f"{prefix}mlp.fc2.weight": rand(dim, 4 * dim), f"{prefix}mlp.fc2.bias": rand(dim),
    }


def beitv2_pt1k_state(geo: ViTGeometry = ViTGeometry(), vocab: int = 16, seed: int = 0) -> dict:
    """A state in unilm's VisionTransformerForMaskedImageModelingCLS layout (shared_lm_head=True): ``vocab`` visual
    tokens (the release: 8192) and the two-block patch-aggregation head."""
    rand = _normal(torch.Generator().manual_seed(seed))
    dim, grid = geo.dim, geo.size // geo.patch
    state = {
        "cls_token": rand(1, 1, dim, scale=1.0),
        "mask_token": rand(1, 1, dim, scale=1.0),
        "patch_embed.proj.weight": rand(dim, 3, geo.patch, geo.patch, scale=0.1),
        "patch_embed.proj.bias": rand(dim, scale=0.1),
        "rel_pos_bias.relative_position_bias_table": rand((2 * grid - 1) ** 2 + 3, geo.heads, scale=1.0),
        "rel_pos_bias.relative_position_index": relative_position_index(grid),
        "norm.weight": rand(dim, mean=1.0),
        "norm.bias": rand(dim),
        "lm_head.weight": rand(vocab, dim, scale=1.0),
        "lm_head.bias": rand(vocab, scale=1.0),
    }
    for i in range(geo.depth):
        state.update(_beit_block(f"blocks.{i}.", dim, rand))
    for i in range(2):
        state.update(_beit_block(f"cls_pt_layers.{i}.", dim, rand))
    return state


def save_beitv2_release(state: dict, path: Path) -> Path:
    """Wrapped as the release's training script saves it, with a foreign object beside the weights."""
    torch.save({"model": state, "args": argparse.Namespace(model="beit_base_patch16_224_8k_vocab_cls_pt")}, path)
    return path


def random_beitv2_finetuned(seed: int = 0, tiny: bool = True) -> torch.nn.Module:
    """timm's fine-tuned BEiT-v2 layout (per-block bias, 1000 classes) at the loader's tiny size (or ViT-B/16)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_beitv2(tiny=tiny, num_classes=1000, shared_rel_pos=False).eval()
        with torch.no_grad():  # timm zero-inits the biases; make them matter
            for block in model.blocks:
                block.attn.relative_position_bias_table.normal_()
                block.gamma_1.fill_(0.5)
    return model


def random_dino(seed: int = 0, tiny: bool = True) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_dino(tiny=tiny).eval()


def hub_snapshot(cache: Path, repo_id: str) -> Path:
    """A snapshot folder in the hub cache's layout, with refs/main pointing at it (a 40-hex commit, as the hub's)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot


# GPT-2's pre-tokenizer (encoder.py): the pieces BPE works on.
GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def write_bpe_files(folder: Path, merges: list[tuple[str, str]], omitted: tuple[str, ...] = ()) -> tuple[dict, list]:
    """GPT-2's ``encoder.json`` and ``vocab.bpe`` for ``merges``, and a fairseq ``dict.txt`` listing every GPT-2 id
    but those of ``omitted`` tokens, in frequency (here: shuffled) order, with RoBERTa's madeupword filler.
    Returns (encoder, dict words)."""
    tokens = list(bytes_to_unicode().values()) + ["".join(pair) for pair in merges] + ["<|endoftext|>"]
    encoder = {token: i for i, token in enumerate(tokens)}
    (folder / "encoder.json").write_text(json.dumps(encoder), encoding="utf-8")
    (folder / "vocab.bpe").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    words = [str(i) for token, i in encoder.items() if token not in omitted]
    random.Random(0).shuffle(words)  # fairseq orders dict.txt by frequency, not by GPT-2 id
    words.append("madeupword0000")
    (folder / "dict.txt").write_text("".join(f"{w} {len(words) - n}\n" for n, w in enumerate(words)), encoding="utf-8")
    return encoder, words


# ---------------------------------------------------------------------------------------------- photos, captions

# Sample photo -> where it ships, and five descriptions (one per caption).
PHOTOS = {
    "astronaut": ("skimage", "astronaut.png", (
        "a smiling astronaut in an orange space suit", "a woman astronaut posing in front of an american flag",
        "an astronaut holding her helmet next to a model of the space shuttle",
        "portrait of a female astronaut in an orange suit", "an astronaut with short hair smiling at the camera")),
    "cat": ("skimage", "chelsea.png", (
        "a close view of a tabby cat with green eyes", "a striped cat looking to the side",
        "the face of an orange and brown cat", "a cat with long white whiskers", "a tabby cat staring at something")),
    "coffee": ("skimage", "coffee.png", (
        "a cup of espresso on a red saucer", "a red coffee cup with a spoon on a wooden table",
        "coffee with crema in a small red cup", "a small cup of coffee seen from above",
        "an espresso cup and saucer on a wooden table")),
    "rocket": ("skimage", "rocket.jpg", (
        "a rocket standing on the launch pad at night", "a white rocket between tall metal towers",
        "a launch pad lit up under a dark blue sky", "a rocket ready for launch in the evening",
        "towers and lights around a rocket at dusk")),
    "motorcycle": ("skimage", "motorcycle_left.png", (
        "a red motorcycle parked in a garage", "a motorcycle standing in a room full of boxes",
        "an old red motorbike on a concrete floor", "a parked motorcycle in front of metal shelves",
        "a red and black motorcycle in a storage room")),
    "cameraman": ("skimage", "camera.png", (
        "a black and white photo of a man with a camera", "a man in a dark coat looking through a camera",
        "a photographer with a camera on a tripod in a field", "a man taking a picture on a tripod",
        "a black and white picture of a photographer outside")),
    "coins": ("skimage", "coins.png", (
        "rows of old coins on a dark background", "a black and white photo of ancient coins",
        "many silver coins laid out in rows", "a collection of old round coins",
        "coins with faces on them in a grid")),
    "officer": ("matplotlib", "grace_hopper.jpg", (
        "an old woman in a navy uniform", "a woman officer in front of an american flag",
        "a portrait of a woman wearing a navy hat and glasses", "an elderly woman in uniform with medals",
        "a navy officer with glasses smiling slightly")),
}
# View -> crop box (fractions of the photo), mirrored, longer side in px, caption prefix, COCO split, Flickr split.
VIEWS = {
    "full": ((0, 0, 1, 1), False, 160, "", "test", "train"),
    "left": ((0, 0, .7, 1), False, 128, "the left part of ", "train", "train"),
    "right": ((.3, 0, 1, 1), False, 128, "the right part of ", "train", "train"),
    "close": ((.2, .15, .8, .85), False, 112, "a close up of ", "val", "val"),
    "mirrored": ((0, .1, 1, 1), True, 144, "a mirrored view of ", "restval", "test"),
}


def _sample_photo(source: str, name: str) -> Image.Image:
    path = (Path(skimage.data.data_dir) / name if source == "skimage"
            else matplotlib.cbook.get_sample_data(name, asfileobj=False))
    return Image.open(path).convert("RGB")  # the grayscale ones become RGB, as COCO's few gray photos do


def _view(photo: Image.Image, view: str, side: int | None = None) -> Image.Image:
    box, mirrored, own_side, *_ = VIEWS[view]
    side = side or own_side
    w, h = photo.size
    image = photo.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
    image = ImageOps.mirror(image) if mirrored else image
    scale = side / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)


def _photos(side: int | None = None, copies: int = 1) -> list[tuple[str, str, bytes, list[str]]]:
    """(subject, view, JPEG bytes, five captions) for every sample photo and view: 40 distinct photographs, each
    view's longer side ``side`` px (default: the view's own, 112-160); ``copies`` > 1 repeats the 40 at lower JPEG
    qualities (photo i is photo i mod 40 again), for a training split that holds a real global batch."""
    out = []
    for copy in range(copies):
        for subject, (source, name, phrases) in PHOTOS.items():
            photo = _sample_photo(source, name)
            for view, (*_, prefix, _coco, _flickr) in VIEWS.items():
                buffer = io.BytesIO()
                _view(photo, view, side).save(buffer, "JPEG", quality=90 - 5 * copy)
                captions = [(prefix if k % 2 == 0 else "") + phrase for k, phrase in enumerate(phrases)]
                out.append((subject, view, buffer.getvalue(), [c[0].upper() + c[1:] + "." for c in captions]))
    return out


# ---------------------------------------------------------------------------------------------- Karpathy files


def _sentences(captions: list[str], imgid: int) -> list[dict]:
    return [{"tokens": re.findall(r"[a-z]+", raw.lower()), "raw": raw, "imgid": imgid, "sentid": 5 * imgid + k}
            for k, raw in enumerate(captions)]


def _write_coco(folder: Path, photos) -> tuple[Path, Path]:
    images, root = [], folder / "images"
    for imgid, (_, view, jpeg, captions) in enumerate(photos):
        split = VIEWS[view][4]
        cocoid = 100000 + 7919 * imgid
        filepath = "train2014" if split == "train" else "val2014"  # restval, val and test are val2014 photos
        filename = f"COCO_{filepath}_{cocoid:012d}.jpg"
        (root / filepath).mkdir(parents=True, exist_ok=True)
        (root / filepath / filename).write_bytes(jpeg)
        sentences = _sentences(captions, imgid)
        images.append({"filepath": filepath, "sentids": [s["sentid"] for s in sentences], "filename": filename,
                       "imgid": imgid, "split": split, "sentences": sentences, "cocoid": cocoid})
    path = folder / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path, root


def _write_flickr(folder: Path, photos) -> tuple[Path, Path]:
    images, root = [], folder / "images"
    root.mkdir(parents=True)
    for imgid, (_, view, jpeg, captions) in enumerate(photos):
        filename = f"{1000092795 + 104729 * imgid}.jpg"
        (root / filename).write_bytes(jpeg)
        sentences = _sentences(captions, imgid)
        images.append({"sentids": [s["sentid"] for s in sentences], "imgid": imgid, "sentences": sentences,
                       "split": VIEWS[view][5], "filename": filename})
    path = folder / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return path, root


# What COCO annotates in each sample photo: (category id, name, supercategory); the rocket and the coins are no COCO
# category, so their images have no annotation, as about 1 % of COCO's do.
COCO_CATEGORY = {"astronaut": (1, "person", "person"), "cameraman": (1, "person", "person"),
                 "officer": (1, "person", "person"), "cat": (17, "cat", "animal"), "coffee": (47, "cup", "kitchen"),
                 "motorcycle": (4, "motorcycle", "vehicle")}


def write_coco_instances(folder: Path, karpathy_json: Path) -> list[Path]:
    """``instances_train2014.json`` and ``instances_val2014.json`` for the fixture's COCO photos, in COCO's layout:
    one annotation of the photo's subject per image (its area a share of the image), and a second, smaller one of a
    person beside each motorcycle, so the dominant supercategory is decided by area."""
    folder.mkdir(parents=True, exist_ok=True)
    categories = sorted({(c, n, s) for c, n, s in COCO_CATEGORY.values()})
    files = {}
    for entry in json.loads(karpathy_json.read_text())["images"]:
        subject = list(PHOTOS)[entry["imgid"] % (len(PHOTOS) * len(VIEWS)) // len(VIEWS)]
        data = files.setdefault(entry["filepath"], {"images": [], "annotations": [], "categories": [
            {"id": c, "name": n, "supercategory": s} for c, n, s in categories]})
        data["images"].append({"id": entry["cocoid"], "file_name": entry["filename"], "width": 160, "height": 120})
        objects = [(COCO_CATEGORY[subject][0], 6000.0)] if subject in COCO_CATEGORY else []
        objects += [(1, 900.0)] if subject == "motorcycle" else []
        data["annotations"] += [{"id": 10 * entry["cocoid"] + k, "image_id": entry["cocoid"], "category_id": c,
                                 "area": area, "bbox": [0, 0, 80, 75], "iscrowd": 0}
                                for k, (c, area) in enumerate(objects)]
    paths = []
    for split, data in sorted(files.items()):
        paths.append(folder / f"instances_{split}.json")
        paths[-1].write_text(json.dumps(data))
    return paths


def write_imagenet_val(folder: Path) -> Path:
    """An ImageNet-1k val folder in the layout zero-shot evaluation reads (``<wnid>/*.JPEG``, the 1000 wnids in
    timm's order): one 48-px crop of a sample photo per class."""
    info, photos = ImageNetInfo(), [_sample_photo(source, name) for source, name, _ in PHOTOS.values()]
    for k in range(info.num_classes()):
        wnid = info.index_to_label_name(k)
        (folder / wnid).mkdir(parents=True)
        photo = photos[k % len(photos)]
        side = min(photo.size) // 2
        left, top = (k * 37) % (photo.width - side), (k * 53) % (photo.height - side)
        photo.crop((left, top, left + side, top + side)).resize((48, 48)).save(
            folder / wnid / f"ILSVRC2012_val_{k + 1:08d}.JPEG", "JPEG", quality=85)
    return folder


def write_sugarcrepe(folder: Path) -> Path:
    """SugarCrepe's release as `--sugarcrepe` reads it: its 7 task JSONs (``{id: {filename, caption,
    negative_caption}}``, string ids that skip, no other field) and COCO val2017's images by their file names in
    ``val2017/``: each sample photo once, its first caption against a negative of each task's making."""
    (folder / "val2017").mkdir(parents=True)
    negatives = {  # task -> caption words -> negative words
        "add_att": lambda w: [*w[:2], "small", *w[2:]], "add_obj": lambda w: [*w, "and", "a", "dog"],
        "replace_att": lambda w: [*w[:1], "green", *w[1:]], "replace_obj": lambda w: [*w[:-1], "horse"],
        "replace_rel": lambda w: [{"in": "under", "on": "beside"}.get(x, x) for x in w] if {"in", "on"} & set(w)
        else [*w, "near", "a", "tree"],
        "swap_att": lambda w: [w[0], w[-1], *w[2:-1], w[1]], "swap_obj": lambda w: [*w[:2], w[-1], *w[3:-1], w[2]]}
    names = []
    for k, (source, name, _) in enumerate(PHOTOS.values()):
        names.append(f"{139 + 724 * k:012d}.jpg")
        _view(_sample_photo(source, name), "full").save(folder / "val2017" / names[-1], "JPEG", quality=90)
    for t, (task, negative) in enumerate(negatives.items()):
        entries = {}
        for k, (_, _, phrases) in enumerate(PHOTOS.values()):
            words = phrases[0].split()
            entries[str(11 * k + 3 * t)] = {"filename": names[k], "caption": phrases[0],
                                            "negative_caption": " ".join(negative(words))}
        (folder / f"{task}.json").write_text(json.dumps(entries, indent=4))
    return folder


# ---------------------------------------------------------------------------------------------- extra sources

# What the thesis' data mixes add to COCO (data.sources of the real configs), each in its release's own layout.
WEB_SOURCES = {"cc3m": 2, "cc3m_500k": 1, "cc12m": 1}  # source -> shards


def write_visual_genome(folder: Path, photos) -> tuple[Path, Path]:
    """``region_descriptions.json`` + ``VG_100K/<id>.jpg`` for the full-view photos: the phrases are the captions'
    words, a few per region, as Visual Genome's are (4.7 tokens on average)."""
    images, entries = folder / "VG_100K", []
    images.mkdir(parents=True)
    for k, (subject, view, jpeg, captions) in enumerate(p for p in photos if p[1] == "full"):
        image_id = 2_300_000 + k
        (images / f"{image_id}.jpg").write_bytes(jpeg)
        words = captions[0].rstrip(".").split()
        regions = [{"region_id": 10 * image_id + r, "image_id": image_id, "phrase": " ".join(words[r:r + 3]),
                    "x": 0, "y": 0, "width": 10, "height": 10} for r in range(0, len(words), 3)]
        regions.append({"region_id": 10 * image_id + 9, "image_id": image_id, "phrase": "  ", "x": 0, "y": 0,
                        "width": 1, "height": 1})  # an empty phrase, as a few of the real ones are
        entries.append({"id": image_id, "regions": regions})
    path = folder / "region_descriptions.json"
    path.write_text(json.dumps(entries))
    return path, folder


def write_web_shards(folder: Path, photos, shards: int) -> Path:
    """img2dataset webdataset shards: per sample ``<key>.jpg``, ``.txt`` and ``.json``; the last sample of each shard
    failed to download (no image), as a crawl's do."""
    folder.mkdir(parents=True)
    per_shard = -(-len(photos) // shards)
    for s in range(shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            chunk = photos[s * per_shard:(s + 1) * per_shard]
            for k, (subject, view, jpeg, captions) in enumerate(chunk):
                key = f"{s:05d}{k:04d}"
                files = {"txt": captions[k % len(captions)].encode(), "json": json.dumps({"key": key}).encode()}
                if k < len(chunk) - 1:
                    files["jpg"] = jpeg
                for ext, data in files.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder


# ---------------------------------------------------------------------------------------------- text models


def caption_merges(captions: list[str]) -> list[tuple[str, str]]:
    """BPE merges that build every word of the captions whole, left to right (GPT-2's 50k merges do that for
    common words); shared prefixes share their merges."""
    table, merges = bytes_to_unicode(), {}
    for caption in captions:
        for piece in GPT2_SPLIT.findall(caption):
            chars = "".join(table[b] for b in piece.encode("utf-8"))
            for i in range(2, len(chars) + 1):
                merges.setdefault((chars[:i - 1], chars[i - 1]), None)
    return list(merges)


def _write_d2v2_text(weights: Path, downloads: Path, captions: list[str], geo: TextGeometry) -> Path:
    """``nlp_base.pt`` (always at the real vocabulary, 50265 ids, and position table), and its converted tokenizer."""
    state, training_only = d2v2_text_state(geo)
    save_d2v2_text(weights / "nlp_base.pt", {**state, **training_only}, geo)
    write_bpe_files(downloads, caption_merges(captions))
    return convert_data2vec2_tokenizer(downloads / "encoder.json", downloads / "vocab.bpe", downloads / "dict.txt",
                                       weights / "d2v2-text-tokenizer")


def wordpiece_vocab(captions: list[str], size: int = 0) -> list[str]:
    """BERT-uncased's vocabulary layout ([PAD] 0, [unused*], [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, letters
    and ##letters for any other word), then the captions' words and punctuation; ``size``: padded to that many."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words = [w for c in captions for w in re.findall(r"[a-z]+|[^\sa-z]", c.lower())]
    specials = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = list(dict.fromkeys([*specials, *letters, *(f"##{c}" for c in letters), *words]))
    # up to BERT-base's size with unused entries, as the real file's [unused99..993] fill unused ids
    return vocab + [f"[unused{i}]" for i in range(99, 99 + size - len(vocab))]


def _write_bert_tokenizer(snapshot: Path, config: dict, vocab: list[str]) -> None:
    (snapshot / "config.json").write_text(json.dumps(config, indent=2))
    (snapshot / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    (snapshot / "vocab.txt").write_text("".join(f"{w}\n" for w in vocab))


def _write_bert(hub: Path, captions: list[str], config: BertConfig) -> None:
    """google-bert/bert-base-uncased as the hub holds it, at ``config``'s geometry."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BertForPreTraining(config)
    # The hub file: "bert."-prefixed, LayerNorms as gamma/beta (the TF port's names), the pretraining heads kept and
    # the decoder left out (tied to the word embeddings).
    state = {key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"):
             tensor.clone() for key, tensor in model.state_dict().items()
             if not key.startswith("cls.predictions.decoder.")}
    fields = ("attention_probs_dropout_prob", "hidden_act", "hidden_dropout_prob", "hidden_size", "initializer_range",
              "intermediate_size", "layer_norm_eps", "max_position_embeddings", "num_attention_heads",
              "num_hidden_layers", "pad_token_id", "type_vocab_size", "vocab_size")  # the hub config.json's
    hub_config = {"architectures": ["BertForMaskedLM"], "model_type": "bert", **{k: getattr(config, k) for k in fields}}
    vocab = wordpiece_vocab(captions, config.vocab_size)
    snapshot = hub_snapshot(hub, "google-bert/bert-base-uncased")
    save_file(state, snapshot / "model.safetensors", metadata={"format": "pt"})
    _write_bert_tokenizer(snapshot, hub_config, vocab)
    # real_smke.yaml names its tokenizer "bert-base-uncased": its first (online) run caches the tokenizer under
    # that id, and offline the hub does not map it to google-bert/…, so the cache holds both, as a user's would.
    _write_bert_tokenizer(hub_snapshot(hub, "bert-base-uncased"), hub_config, vocab)


def _write_timm(hub: Path, repo_id: str, model: torch.nn.Module) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              hub_snapshot(hub, repo_id) / "model.safetensors", metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------------- the fixture

D2V2_IMAGE = ViTGeometry(depth=6, prenet=2)


@dataclass(frozen=True)
class FixtureSize:
    """Every model's geometry at one fixture size, and the photos' longer side (None: each view's own)."""
    beitv2: ViTGeometry
    d2v2_image: ViTGeometry
    d2v2_text: TextGeometry
    bert: BertConfig
    tiny_timm: bool  # DINO and fine-tuned BEiT-v2: the loaders' tiny variants, else ViT-B/16
    photo_side: int | None
    copies: int = 1  # of the 40 photos (real: 5, so COCO's train split holds 600 pairs, a global batch of 512)


VIT_B16 = ViTGeometry(dim=768, heads=12, patch=16, size=224, depth=12, hidden=3072)
SIZES = {
    "tiny": FixtureSize(ViTGeometry(), D2V2_IMAGE, TextGeometry(vocab=50265),
                        BertConfig(hidden_size=32, num_hidden_layers=6, num_attention_heads=2, intermediate_size=128),
                        tiny_timm=True, photo_side=None),
    # The releases: base_imagenet.pt (2 prenet + 10 blocks), nlp_base.pt (RoBERTa-base), BEiT-v2 pt1k, BERT-base;
    # photos as large as COCO's.
    "real": FixtureSize(VIT_B16, replace(VIT_B16, depth=10, prenet=2),
                        TextGeometry(vocab=50265, dim=768, heads=12, ffn=3072, depth=12), BertConfig(),
                        tiny_timm=False, photo_side=640, copies=5),
}


@dataclass(frozen=True)
class RealFixture:
    root: Path
    karpathy: dict[str, tuple[Path, Path]]  # dataset -> (Karpathy JSON, image root): `mmd2v2 data karpathy` input
    instances: list[Path]  # COCO's instances_*.json for the coco photos (`--instances`)
    prepared: dict[str, Path]  # dataset -> its prepared index (data.root)
    weights_dir: Path
    hf_home: Path
    d2v2_tokenizer: Path
    env: dict[str, str]  # what a shell running the real configs on this fixture exports

    @property
    def overrides(self) -> list[str]:
        """What every real config needs here: the tiny student, the weights folder, one process, fp32 (what a CPU
        runs anyway), and a batch that fits the fixture's 120 training pairs (the configs' 256 and 512 do not)."""
        return ["student.size=tiny", f"teacher.weights_dir={self.weights_dir}", "data.num_workers=0",
                "optim.precision=fp32", "optim.batch_size=8"]

    def overrides_for(self, config: str) -> list[str]:
        """``overrides`` plus, for real_mmd2v2, the converted tokenizer (the config names weights/… relative to
        the working folder); real_smke's bert-base-uncased comes from the hub cache."""
        extra = {"real_mmd2v2": [f"data.tokenizer={self.d2v2_tokenizer}"], "real_smke": []}
        if config not in extra:
            raise ValueError(f"no overrides for config {config!r}; known: {', '.join(extra)}")
        return self.overrides + extra[config]


def build_real_fixture(root: Path, size: str = "tiny") -> RealFixture:
    root, geo = Path(root), SIZES[size]
    photos = _photos(geo.photo_side, geo.copies)
    captions = [c for *_, caps in photos for c in caps]
    karpathy = {"coco": _write_coco(root / "coco", photos), "flickr30k": _write_flickr(root / "flickr30k", photos)}
    prepared = {name: root / "prepared" / name for name in karpathy}
    instances = write_coco_instances(root / "coco" / "annotations", karpathy["coco"][0])
    for name, (json_path, images) in karpathy.items():  # the CLI's defaults: decode every image, merge restval
        index_karpathy(json_path, images, prepared[name],
                       supercategories=dominant_supercategories(instances) if name == "coco" else None)
    prepared["vg"] = root / "prepared" / "vg"
    index_visual_genome(*write_visual_genome(root / "vg", photos), prepared["vg"])
    for name, shards in WEB_SOURCES.items():
        prepared[name] = root / "prepared" / name
        index_webdataset(write_web_shards(root / name, photos, shards), prepared[name])

    weights, downloads, hub = root / "weights", root / "downloads", root / "hf" / "hub"
    for folder in (weights, downloads, hub):
        folder.mkdir(parents=True)
    save_beitv2_release(beitv2_pt1k_state(geo.beitv2, vocab=8192), weights / "beitv2_base_patch16_224_pt1k.pth")
    save_d2v2_image(weights / "base_imagenet.pt", d2v2_image_state(geo.d2v2_image), geo.d2v2_image)
    tokenizer = _write_d2v2_text(weights, downloads, captions, geo.d2v2_text)
    _write_timm(hub, "timm/vit_base_patch16_224.dino", random_dino(tiny=geo.tiny_timm))
    _write_timm(hub, "timm/beitv2_base_patch16_224.in1k_ft_in22k_in1k", random_beitv2_finetuned(tiny=geo.tiny_timm))
    _write_bert(hub, captions, geo.bert)
    # HF_HUB_CACHE too: an inherited one would win over HF_HOME.
    env = {"HF_HOME": str(hub.parent), "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "MMD2V2_WEIGHTS_DIR": str(weights)}
    return RealFixture(root, karpathy, instances, prepared, weights, hub.parent, tokenizer, env)

