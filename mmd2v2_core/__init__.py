"""MM-D2V2 study kit: multimodal knowledge distillation from unimodal teachers, evaluated on retrieval."""

__version__ = "0.1.0"
