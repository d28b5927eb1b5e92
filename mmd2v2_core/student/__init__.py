"""The student. ``blocks``: the transformer block and the separate / shared-attention modality layer;
``model``: MultimodalStudent and its config; ``init``: copying pretrained unimodal weights in;
``presets``: the seed's layouts and S-SMKE in real / embedded / smoke sizes."""
