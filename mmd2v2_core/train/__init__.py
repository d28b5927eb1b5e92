"""Distillation pretraining. ``loop``: the trainer; ``data``: deterministic batches and augmentation;
``checkpoint``: atomic step checkpoints and exact resume."""
