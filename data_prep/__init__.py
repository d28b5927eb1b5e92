"""Dataset producers: synthetic Karpathy-format datasets and preparation of the real Karpathy splits."""
