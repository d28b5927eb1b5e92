"""Frozen unimodal teachers: registry, real-checkpoint loaders and converters, targets, target cache.

``base``         TeacherOutput, the timm / transformers adapters, MissingWeights
``checkpoints``  reading other projects' pickles without running their code
"""
