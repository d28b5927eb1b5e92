"""Image transforms: the thesis' training augmentation and plain-resize evaluation.

Training: RandomResizedCrop with scale (0.9, 1.0) (as VLMo and the thesis: smaller crops would cut away
what the caption mentions), bicubic, then a horizontal flip. Evaluation: resize straight to
size×size, bicubic, no centre crop (the BEiT-3 / thesis protocol). Normalisation comes from the model
or teacher the images are fed to (``normalization_of``), ImageNet mean/std by default.

The synthetic captions say "left" and "right", so the embedded profiles set ``hflip=0``: a flipped
image would contradict its caption.
"""

from __future__ import annotations

from dataclasses import dataclass

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms as T


@dataclass(frozen=True)
class ImageTransformConfig:
    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD
    crop_scale: tuple[float, float] = (0.9, 1.0)
    hflip: float = 0.5


def train_transform(cfg: ImageTransformConfig) -> T.Compose:
    steps = [T.RandomResizedCrop(cfg.size, scale=cfg.crop_scale, interpolation=T.InterpolationMode.BICUBIC)]
    if cfg.hflip > 0:
        steps.append(T.RandomHorizontalFlip(cfg.hflip))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])


def eval_transform(cfg: ImageTransformConfig) -> T.Compose:
    return T.Compose([
        T.Resize((cfg.size, cfg.size), interpolation=T.InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(cfg.mean, cfg.std),
    ])
