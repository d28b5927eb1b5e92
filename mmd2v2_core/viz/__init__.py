"""Figures for reports/: dataset samples (and, as the study grows, curves and embedding plots)."""
