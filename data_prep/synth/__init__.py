"""Captioned synthetic scenes written in the Karpathy JSON format (the embedded profile's datasets)."""

from .generate import PROFILES, generate

__all__ = ["PROFILES", "generate"]
