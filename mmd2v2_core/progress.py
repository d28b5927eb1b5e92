"""Progress bars that behave in a terminal, in JupyterLab, and under papermill/CI.

``tqdm.auto`` picks the widget bar in a live notebook and the text bar elsewhere. Headless runs
(papermill, CI: set ``MMD2V2_PROGRESS=plain``) get a text bar that appears only for steps longer than 10 s and
redraws every 30 s, so logs stay a few lines; ``MMD2V2_PROGRESS=off`` silences bars entirely.
"""

from __future__ import annotations

import os
from typing import Iterable, TypeVar

from tqdm import tqdm
from tqdm.auto import tqdm as auto_tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, **kwargs):
    """A tqdm bar over ``iterable`` (or a manual one: ``progress(total=n)`` then ``.update(k)``)."""
    mode = os.environ.get("MMD2V2_PROGRESS", "auto")
    if mode == "off":
        return tqdm(iterable, **{**kwargs, "disable": True})
    if mode == "plain" or os.environ.get("CI"):
        kwargs.setdefault("mininterval", 30.0)
        kwargs.setdefault("delay", 10.0)  # a step shorter than this leaves no line in the log
        return tqdm(iterable, ascii=True, **kwargs)
    return auto_tqdm(iterable, **kwargs)
