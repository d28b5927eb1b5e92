"""Evaluation: retrieval metric (``retrieval``), encoding of evaluation splits (``embed``)."""
