"""Every loss of the study, as pure functions, plus the two small modules that hold their state.

Notation (thesis §1.3): v = image, w = text (caption), s = student, t = teacher, δ = L2 normalisation,
B = local (per-rank) batch, B' = W·B the global batch over W ranks, s (a scalar) = logit scale = 1/τ.

* ``itc_loss``                      L_CL, CLIP-style symmetric InfoNCE between image and caption embeddings.
* ``kd_regression_loss``            L_KD of MM-D2V2 (the seed): image and caption both regress the *image* teacher
                                    target (MSE or cosine), the two terms summed.
* ``shre_kd_loss``                  L_KD of SHRe: KL between teacher and student class distributions.
* ``contrastive_distillation_loss`` L_KD of the final model (CDL, "contrastive target loss"), optionally with
                                    a ``TeacherMemoryBank`` of past teacher targets as extra negatives (CDL+MB).
* ``LearnableTemperature``          the learnable logit scale s, stored as log s.

Under DDP every rank calls the loss on its local rows; features are gathered from all ranks ("local loss":
local rows scored against all ranks' columns, labels offset by rank·B). This requires equal local batch sizes
on every rank (e.g. ``drop_last=True``). The mean over ranks of the per-rank losses is the single-process loss on
the global batch, and DDP's gradient averaging then yields exactly the single-process parameter gradient
(tests/test_losses.py checks this on two gloo processes).

Where the original code and the thesis text differ, these functions compute what the code ran (the numbers came
from it) and offer the text's version as an option:

* The KD temperature (``logit_scale_target``) lived outside the module whose parameters the optimiser collected,
  so it stayed at 1/0.07. ``LearnableTemperature`` can be frozen at 1/0.07 (``loss.kd_temperature=fixed``, the
  ``real_*`` presets) or optimised (``learned``).
* With a memory bank the contrastive distillation's negatives were the *local* batch's targets plus the bank
  (``gather=False``); without a bank, the gathered global batch's.
* MM-D2V2's two KD regression terms (image, caption) were summed, not averaged.

A bug of the original code that is fixed here:

* The memory-bank update only defined its tensor when world size > 1, so single-GPU training crashed; here the
  gathers are identities at world size 1 and ``TeacherMemoryBank.push`` works for any batch and bank size
  (the original also required the bank size to be divisible by the global batch).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError

KD_REGRESSION_KINDS = ("mse", "cosine")


class LearnableTemperature(nn.Module):
    """The logit scale s = exp(log_scale) of a contrastive loss (the inverse temperature 1/τ).

    Stored as a log so that the optimiser works on a well-conditioned, unconstrained number. With ``max_scale``
    the log is clamped to [0, ln max_scale] (ITC: 100, as in CLIP and the thesis code), i.e. 1 ≤ s ≤ max_scale.
    ``clamp`` passes the gradient unchanged while the log is inside the range and blocks it only outside.
    The KD temperature of the contrastive distillation is a separate, unclamped instance (``max_scale=None``);
    ``learnable=False`` freezes it at ``init`` (what the original code effectively ran: τ = 0.07).
    """

    def __init__(self, init: float = 1 / 0.07, max_scale: float | None = None, learnable: bool = True):
        super().__init__()
        if init <= 0:
            raise ValueError(f"initial logit scale must be positive, got {init}")
        if max_scale is not None and max_scale < 1:
            raise ValueError(f"max_scale must be >= 1 (the log is clamped to [0, ln max_scale]), got {max_scale}")
        self.max_scale = max_scale
        self.log_scale = nn.Parameter(torch.tensor(math.log(init)), requires_grad=learnable)

    def forward(self) -> Tensor:
        log_scale = self.log_scale
        if self.max_scale is not None:
            log_scale = log_scale.clamp(0.0, math.log(self.max_scale))
        return log_scale.exp()

    def extra_repr(self) -> str:
        return f"scale={self.log_scale.exp().item():.4g}, max_scale={self.max_scale}"


# ----------------------------------------------------------------------------------------------- distributed helpers

def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` [B, ...] of all ranks in rank order -> [W·B, ...], keeping the autograd graph.

    The backward of ``torch.distributed.nn.functional.all_gather`` sums, over ranks, the gradients that flow into
    each rank's slice, so rank r's ``x`` receives Σ_r' ∂L_r'/∂x_r. Returns ``x`` itself without a process group
    or at world size 1.
    """
    _, world = _rank_and_world()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated for a private module's equivalent; it warned at every step
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x.contiguous()), dim=0)


def gather_no_grad(x: Tensor) -> Tensor:
    """Like ``gather_with_grad`` but detached: for teacher targets, which never receive gradients."""
    _, world = _rank_and_world()
    x = x.detach()
    if world == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


def _local_labels(batch: int, rank: int, device: torch.device) -> Tensor:
    """Positions of the local rows' positives among the gathered columns (rank r owns rows r·B … r·B+B-1)."""
    return torch.arange(batch, device=device) + rank * batch


# ----------------------------------------------------------------------------------------------------------- losses

def itc_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float, gather: bool = True,
             negatives: Tensor | None = None) -> Tensor:
    """Image-text contrastive loss L_CL (CLIP-style symmetric InfoNCE), thesis §1.3 (1).

    u_i = δ(image_emb_i), z_j = δ(text_emb_j) (normalised here), both [B, D]:
        L_CL = ½·CE_rows(s·U Zᵀ, diag) + ½·CE_rows(s·Z Uᵀ, diag),
    CE averaged over the rows. With ``gather`` under DDP the local rows are scored against the columns of all
    ranks (gathered with gradient), so each rank sees W·B - 1 negatives and the positive of local row i is
    column rank·B + i. ``negatives`` [B, D] (NegCLIP, Yuksekgonul et al. 2023): a hard-negative caption of each local
    image, added as columns of the image→text rows only (gathered like the captions).
    """
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(f"itc_loss needs two [B, D] tensors of equal shape, got {tuple(image_emb.shape)} "
                         f"and {tuple(text_emb.shape)}")
    u, z = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
    rank = 0
    all_u, all_z = u, z
    if gather:
        rank, _ = _rank_and_world()
        all_u, all_z = gather_with_grad(u), gather_with_grad(z)
    labels = _local_labels(u.shape[0], rank, u.device)
    if negatives is not None:
        n = F.normalize(negatives, dim=-1)
        all_z = torch.cat([all_z, gather_with_grad(n) if gather else n])
    i2t = F.cross_entropy(logit_scale * u @ all_z.T, labels)
    t2i = F.cross_entropy(logit_scale * z @ all_u.T, labels)
    return 0.5 * (i2t + t2i)


def kd_regression_terms(image_kd: Tensor, text_kd: Tensor, target: Tensor, kind: str = "mse") -> tuple[Tensor, Tensor]:
    """Feature-regression KD, the seed's loss (thesis §1.3 (3)), one term per modality.

    ``image_kd`` and ``text_kd`` — MM-D2V2's final CLS itself, or S-SMKE's KD-head outputs — both regress the
    *image* teacher's target h^t_CLS (there is no text teacher; the caption has to predict its image's target):

    * ``mse``:    (MSE(image_kd, target), MSE(text_kd, target)), each averaged over batch and dimensions;
    * ``cosine``: (mean(1 − cos(image_kd, target)), mean(1 − cos(text_kd, target))).

    ``target`` is detached: the frozen teacher is never trained.
    """
    target = target.detach()
    if kind == "mse":
        return F.mse_loss(image_kd, target), F.mse_loss(text_kd, target)
    if kind == "cosine":
        return ((1 - F.cosine_similarity(image_kd, target, dim=-1)).mean(),
                (1 - F.cosine_similarity(text_kd, target, dim=-1)).mean())
    raise ConfigError(f"unknown KD regression loss {kind!r}; choose one of {', '.join(KD_REGRESSION_KINDS)}")


def kd_regression_loss(image_kd: Tensor, text_kd: Tensor, target: Tensor, kind: str = "mse") -> Tensor:
    """L_KD = image term + caption term of ``kd_regression_terms``: summed, as the original MM-D2V2 code did."""
    image, text = kd_regression_terms(image_kd, text_kd, target, kind)
    return image + text


def shre_kd_loss(image_logits: Tensor, text_logits: Tensor, teacher_logits: Tensor,
                 temperature: float = 1.0) -> Tensor:
    """L_KD = ½·(image term + caption term) of ``shre_kd_terms``."""
    image, text = shre_kd_terms(image_logits, text_logits, teacher_logits, temperature)
    return 0.5 * (image + text)


def shre_kd_terms(image_logits: Tensor, text_logits: Tensor, teacher_logits: Tensor,
                  temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """SHRe's KD loss (thesis §1.3 (2)): the student's class distributions for the image (f_v) and for the
    caption (f_w) match the (supervised) teacher's distribution p_teacher on the image:

        (KL(p_teacher ‖ softmax(f_v / T)), KL(p_teacher ‖ softmax(f_w / T))),
        p_teacher = softmax(teacher_logits / T),

    KL summed over classes and averaged over the batch. No T² factor (the thesis uses T = 1, the default).
    ``teacher_logits`` are detached.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_p = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)

    def kl(student_logits: Tensor) -> Tensor:
        # kl_div(input=log q, target=log p) = Σ p·(log p − log q) = KL(p ‖ q)
        log_q = F.log_softmax(student_logits / temperature, dim=-1)
        return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)

    return kl(image_logits), kl(text_logits)


def contrastive_distillation_loss(image_kd: Tensor, text_kd: Tensor, targets: Tensor, logit_scale: Tensor | float,
                                  bank: Tensor | None = None, gather: bool = True) -> Tensor:
    """L_KD = ½·(L^{i2i}_KD + L^{t2i}_KD) of ``contrastive_distillation_terms``."""
    i2i, t2i = contrastive_distillation_terms(image_kd, text_kd, targets, logit_scale, bank, gather)
    return 0.5 * (i2i + t2i)


def contrastive_distillation_terms(image_kd: Tensor, text_kd: Tensor, targets: Tensor, logit_scale: Tensor | float,
                                   bank: Tensor | None = None, gather: bool = True) -> tuple[Tensor, Tensor]:
    """Contrastive distillation (CDL, thesis §1.3 (4)–(5)); with ``bank`` the final S-SMKE_CDL_MB loss.

    T = δ(teacher targets of all images of the global batch) (gathered without gradient), optionally followed by
    the memory bank's entries (already unit-norm, detached here) as extra negatives. Each image's and each
    caption's normalised KD output must pick its *own image's* target:

        L^{i2i}_KD = CE(s·δ(r(h^s_v))·[T; bank]ᵀ, labels),   L^{t2i}_KD = CE(s·δ(r(h^s_w))·[T; bank]ᵀ, labels),
        labels = arange(B) + rank·B;  returns (L^{i2i}_KD, L^{t2i}_KD).

    Only the targets are gathered: the KD outputs of other ranks never meet these columns, so no gradient crosses
    ranks. ``gather=False`` scores against the local batch only (the original's choice when a bank is used).
    ``logit_scale`` is the KD temperature's scale (fixed at 1/0.07 in the original code, optionally learned).
    """
    rank = 0
    if gather:
        rank, _ = _rank_and_world()
        targets = gather_no_grad(targets)
    keys = F.normalize(targets.detach(), dim=-1)
    if bank is not None:
        keys = torch.cat([keys, bank.detach().to(keys)], dim=0)
    labels = _local_labels(image_kd.shape[0], rank, image_kd.device)
    i2i = F.cross_entropy(logit_scale * F.normalize(image_kd, dim=-1) @ keys.T, labels)
    t2i = F.cross_entropy(logit_scale * F.normalize(text_kd, dim=-1) @ keys.T, labels)
    return i2i, t2i


# ------------------------------------------------------------------------------------------------------ memory bank

class TeacherMemoryBank(nn.Module):
    """FIFO queue of past (unit-norm) teacher targets, used as extra negatives by the contrastive distillation.

    The thesis uses 65,536 entries. Because the teacher is frozen, old entries never go stale. The queue starts with
    random unit vectors (reproducible through ``generator``). ``bank`` [size, dim] and the write pointer ``ptr``
    (index of the oldest entry) are buffers: they move with ``.to()`` and are saved in checkpoints, but are never
    parameters and never receive gradients.
    """

    def __init__(self, size: int, dim: int, generator: torch.Generator | None = None):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"memory bank size and dim must be positive, got size={size}, dim={dim}")
        self.register_buffer("bank", F.normalize(torch.randn(size, dim, generator=generator), dim=-1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.bank.shape[0]

    def entries(self) -> Tensor:
        """All ``size`` entries [size, dim], detached (order is storage order, not age)."""
        return self.bank.detach()

    @torch.no_grad()
    def push(self, targets: Tensor) -> None:
        """Enqueue the teacher targets of the *global* batch (gather them first, e.g. with ``gather_no_grad``,
        so that every rank's bank stays identical). The rows are normalised and written at the pointer, wrapping
        around the end, so the oldest entries are overwritten first. A batch larger than the bank keeps only its
        last ``size`` rows."""
        if targets.ndim != 2 or targets.shape[1] != self.bank.shape[1]:
            raise ValueError(f"memory bank expects [N, {self.bank.shape[1]}] targets, got {tuple(targets.shape)}")
        rows = F.normalize(targets.detach()[-self.size:].to(self.bank), dim=-1)
        n = rows.shape[0]
        idx = (self.ptr + torch.arange(n, device=self.bank.device)) % self.size
        self.bank[idx] = rows
        self.ptr.copy_((self.ptr + n) % self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.bank.shape[1]}"
