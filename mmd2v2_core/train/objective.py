"""The training objective of every recipe in one place: which loss terms a config sums, with which weights,
and the trainable state beside the student (temperatures, the teacher memory bank).

    MM-D2V2 (the seed):  loss = kd_weight · (MSE(image CLS, target) + MSE(text CLS, target))
    S-SMKE (successor):  loss = kd_weight · contrastive distillation (+ memory bank) + itc_weight · ITC
    SHRe:                loss = kd_weight · KL(student logits ‖ teacher logits)  (+ ITC)

The loss functions themselves are in ``mmd2v2_core/losses.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import TrainConfig
from ..losses import (LearnableTemperature, TeacherMemoryBank, contrastive_distillation_terms, itc_loss,
                      kd_regression_terms, shre_kd_terms)


class Objective(nn.Module):
    """Every recipe's loss in one place, and the trainable state beside the student (temperatures, memory bank).

    Terms (each logged): ``kd_image`` / ``kd_text`` (the image's and the caption's KD term), ``kd`` (MSE/cosine:
    their sum, as the seed's MM-D2V2; cdl and shre: their mean, as the original S-SMKE / SHRe), ``itc`` (with
    ``loss.itc_hidden`` the mean of ``itc_final`` and ``itc_hidden``, each with its own learnable temperature, as
    the original S-SMKE code), and ``loss`` = kd_weight·kd + itc_weight·itc.
    """

    def __init__(self, cfg: TrainConfig, target_dim: int):
        super().__init__()
        self.cfg = cfg.loss
        # A temperature no term uses is frozen: DDP refuses a parameter that gets no gradient (MM-D2V2, KD only).
        self.itc_scale = LearnableTemperature(max_scale=cfg.loss.itc_max_scale, learnable=bool(cfg.loss.itc_weight))
        self.itc_hidden_scale = LearnableTemperature(max_scale=cfg.loss.itc_max_scale) if cfg.loss.itc_hidden \
            else None
        self.kd_scale = LearnableTemperature(learnable=cfg.loss.kd == "cdl" and cfg.loss.kd_temperature == "learned")
        self.bank = TeacherMemoryBank(cfg.loss.memory_bank, target_dim, torch.Generator().manual_seed(cfg.optim.seed)) \
            if cfg.loss.kd == "cdl" and cfg.loss.memory_bank else None

    def forward(self, out: dict, targets: torch.Tensor | None) -> dict[str, torch.Tensor]:
        c, terms = self.cfg, {}
        if c.kd in ("mse", "cosine"):
            terms["kd_image"], terms["kd_text"] = kd_regression_terms(out["image_kd"], out["text_kd"], targets, c.kd)
            terms["kd"] = terms["kd_image"] + terms["kd_text"]
        elif c.kd == "cdl":
            bank = self.bank.entries() if self.bank is not None else None
            gather = bank is None or c.bank_negatives == "global"
            terms["kd_image"], terms["kd_text"] = contrastive_distillation_terms(
                out["image_kd"], out["text_kd"], targets, self.kd_scale(), bank, gather)
            terms["kd"] = 0.5 * (terms["kd_image"] + terms["kd_text"])
        elif c.kd == "shre":
            terms["kd_image"], terms["kd_text"] = shre_kd_terms(out["image_logits"], out["text_logits"], targets)
            terms["kd"] = 0.5 * (terms["kd_image"] + terms["kd_text"])
        if c.itc_weight:
            terms["itc"] = itc_loss(out["image_emb"], out["text_emb"], self.itc_scale(), negatives=out.get("negative_emb"))
            if self.itc_hidden_scale is not None:
                terms["itc_final"] = terms["itc"]
                terms["itc_hidden"] = itc_loss(out["image_hidden"], out["text_hidden"], self.itc_hidden_scale())
                terms["itc"] = 0.5 * (terms["itc_final"] + terms["itc_hidden"])
        terms["loss"] = c.kd_weight * terms.get("kd", 0.0) + c.itc_weight * terms.get("itc", 0.0)
        return terms


class Trainable(nn.Module):
    """Student + objective as one module, so DDP synchronises and checkpoints cover both."""

    def __init__(self, student: nn.Module, objective: Objective):
        super().__init__()
        self.student, self.objective = student, objective

    def forward(self, images, input_ids, attention_mask, targets, negative_ids=None, negative_mask=None):
        out = self.student(images, input_ids, attention_mask)
        if negative_ids is not None:  # hard-negative captions: the text tower again, for the ITC's extra columns
            out["negative_emb"] = self.student.encode_text(negative_ids, negative_mask)
        # The losses run in fp32 whatever precision the student ran in: bf16 similarities (3 significant digits)
        # times an ITC scale of up to 100 would blur every logit by about ±0.4.
        with torch.autocast(images.device.type, enabled=False):
            return self.objective({k: v.float() for k, v in out.items()}, targets)

