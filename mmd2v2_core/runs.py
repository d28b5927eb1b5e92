"""Every run a study can make: its recipe as overrides of the profile's training YAML, and the thesis row it measures.

The synthetic profiles (smoke, embedded) and the real one share the run names where the recipe is the same idea
(``mmd2v2_6``: MM-D2V2 5+1 with the pretrained teacher; ``smke``: the thesis' final S-SMKE); which runs a profile
makes, and which tables they feed, is the profile's (``profiles.py``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunSpec:
    name: str
    label: str
    overrides: tuple[str, ...]
    # Where the teacher targets come from: a target cache of the study ("pretrained" | "random"), the teacher run
    # on each batch ("online": the real profile, whose crops differ every step), or no teacher ("none").
    teacher: str
    config: str | None = None  # the training YAML; None: the profile's
    quoted: str | None = None  # the thesis row it measures (an entry of report/references.yaml)


# S-SMKE at embedded size: ITC + contrastive distillation on the raw (unwhitened) teacher feature through its KD head;
# the distillation term weighs 3× the ITC term (the embedded measurement: 3× beat 1× and 10×).
_SMKE = ("student.preset=smke", "loss.kd=cdl", "loss.kd_weight=3.0", "loss.itc_weight=1.0", "teacher.whiten=false")
_NO_TEACHER = ("loss.kd=none", "teacher.name=none")

SYNTHETIC_RUNS = [
    RunSpec("mmd2v2_6", "MM-D2V2 5+1, strong teacher (KD only)", (), "pretrained"),
    RunSpec("mmd2v2_6_weak", "MM-D2V2 5+1, weak teacher (random-init, KD only)", ("teacher.tiny=true",), "random"),
    RunSpec("mmd2v2_7_2", "MM-D2V2 7_2 (5+2)", ("student.preset=mmd2v2_7_2",), "pretrained"),
    RunSpec("mmd2v2_7", "MM-D2V2 7 (6+1)", ("student.preset=mmd2v2_7",), "pretrained"),
    RunSpec("mmd2v2_6_shared", "MM-D2V2 5+1, shared attention", ("student.attention=shared",), "pretrained"),
    RunSpec("smke", "S-SMKE (ITC + contrastive distillation)", _SMKE, "pretrained"),
    RunSpec("smke_random_teacher", "S-SMKE, random-init teacher", (*_SMKE, "teacher.tiny=true"), "random"),
    RunSpec("smke_no_teacher", "S-SMKE without teacher (ITC only)",
            ("student.preset=smke", "loss.itc_weight=1.0", *_NO_TEACHER), "none"),
    RunSpec("smke_no_views", "S-SMKE without rendering views", (*_SMKE, "data.rendering_views=0"), "pretrained"),
    # beyond the thesis: NegCLIP's hard negatives (generated from the scene graphs) in S-SMKE's ITC
    RunSpec("smke_hard_negatives", "S-SMKE + hard negatives (NegCLIP-style ITC)", (*_SMKE, "loss.hard_negatives=true"),
            "pretrained"),
]

# The thesis' runs on COCO / Flickr30K, from real_mmd2v2.yaml (the seed's MM-D2V2, BEiT-v2 teacher: the † rows) and
# real_smke.yaml (the final S-SMKE, BEiT-v2 teacher, CDL + 65,536-entry memory bank). The D2V2-image teacher's target
# is the mean-pooled final output (the original config's target_agg: mean; the thesis does not say which one that
# row used). The fine-tuned BEiT-v2 teaches through its ImageNet logits with KL, as in the thesis' teacher ablation.
REAL_RUNS = [
    RunSpec("mmd2v2_6_d2v2", "MM-D2V2 5+1, D2V2-image teacher", ("teacher.name=d2v2-image", "teacher.target=mean"),
            "online", "real_mmd2v2", "mmd2v2_d2v2"),
    RunSpec("mmd2v2_6", "MM-D2V2 5+1, BEiT-v2 teacher †", (), "online", "real_mmd2v2", "mmd2v2_beitv2"),
    RunSpec("mmd2v2_7_2", "MM-D2V2 7_2 (5+2) †", ("student.preset=mmd2v2_7_2",), "online", "real_mmd2v2", "mmd2v2_7_2"),
    RunSpec("mmd2v2_7", "MM-D2V2 7 (6+1) †", ("student.preset=mmd2v2_7",), "online", "real_mmd2v2", "mmd2v2_7"),
    RunSpec("mmd2v2_6_shared", "MM-D2V2 5+1, shared attention †", ("student.attention=shared",), "online",
            "real_mmd2v2"),
    RunSpec("smke", "S-SMKE, BEiT-v2 teacher (CDL + memory bank)", (), "online", "real_smke", "smke_final"),
    RunSpec("smke_beitv2_ft", "S-SMKE, BEiT-v2 fine-tuned teacher (KL)",
            ("teacher.name=beitv2-ft", "teacher.target=logits", "loss.kd=shre", "loss.memory_bank=0"), "online",
            "real_smke", "smke_beitv2_ft"),
    RunSpec("smke_d2v2", "S-SMKE, D2V2-image teacher", ("teacher.name=d2v2-image", "teacher.target=cls"), "online",
            "real_smke", "smke_d2v2"),
    RunSpec("smke_dino", "S-SMKE, DINO teacher", ("teacher.name=dino",), "online", "real_smke", "smke_dino"),
    RunSpec("smke_no_teacher", "S-SMKE without teacher (ITC only)", _NO_TEACHER, "none", "real_smke",
            "smke_no_teacher"),
]

# Rows that are not training runs: the towers before any training, and the closed-form baselines (study.py): the
# trivial one on thumbnails, and the strong ones on the frozen features the students start from.
EXTRA_LABELS = {
    "unaligned": "Unaligned towers (step 0)",
    "cca": "Trivial baseline: 16×16 thumbnails + bag of words, CCA",
    "cca_frozen": "CCA on the student's frozen inputs (EfficientNet-Lite0 stem × bag of words)",
    "cca_frozen_views": "CCA on the student's frozen inputs, fitted with the rendering views",
    "cca_frozen_d2v2": "CCA on the towers' frozen features (Data2Vec2-image mean × Data2Vec2-text mean)",
    "cca_frozen_d2v2_bert": "CCA on the towers' frozen features (Data2Vec2-image mean × BERT CLS)",
    "cca_frozen_beitv2_bert": "CCA on frozen features (BEiT-v2 CLS × BERT CLS)",
}

# Real: the frozen features the real towers (and the teacher) start from, each cached once per split. Per row: the
# image model and its pooling, the text model and its pooling (``teachers/targets.py``), and the run whose config
# locates the weights folder and the text model's tokenizer.
REAL_BASELINES = {
    "cca_frozen_d2v2": (("d2v2-image", "mean"), ("d2v2-text", "mean"), "mmd2v2_6"),  # MM-D2V2's towers
    "cca_frozen_d2v2_bert": (("d2v2-image", "mean"), ("bert", "cls"), "smke"),  # S-SMKE's towers
    "cca_frozen_beitv2_bert": (("beitv2", "cls"), ("bert", "cls"), "smke"),  # the teacher × S-SMKE's text tower
}
