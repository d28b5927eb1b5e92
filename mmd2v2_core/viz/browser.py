"""Browsing retrieval results: the state logic (``RetrievalBrowser``, unit-tested) and its ipywidgets view.

Queries: a test caption (text→image, its image is the ground truth), a test image (image→text, its
captions are), or any typed text. Every answer lists the top-K items with scores, marks the ground
truth, and gives the 1-based rank of the first correct item; ``failures`` lists the queries whose
correct item is not first (or not in the top K), and ``next_failure`` steps through them.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..data.datasets import RetrievalSplit
from ..data.images import open_rgb
from ..eval.retrieval import retrieval_ranks


@dataclass(frozen=True)
class Hit:
    index: int  # image row (text queries) or caption row (image queries)
    score: float
    correct: bool


@dataclass(frozen=True)
class Answer:
    kind: str  # "caption" | "image" | "text"
    query: int | str
    hits: list[Hit]
    true_rank: int | None  # 1-based rank of the first correct item; None for typed text


class RetrievalBrowser:
    def __init__(self, split: RetrievalSplit, image_emb: torch.Tensor, text_emb: torch.Tensor,
                 encode_text: Callable[[list[str]], torch.Tensor] | None = None, k: int = 5):
        self.split, self.k, self.encode_text = split, k, encode_text
        self.image_emb = F.normalize(image_emb.float(), dim=-1)
        self.text_emb = F.normalize(text_emb.float(), dim=-1)
        self.ranks = retrieval_ranks(self.image_emb, self.text_emb, split.text_to_image)

    def _top(self, scores: torch.Tensor, correct: Callable[[int], bool]) -> list[Hit]:
        # stable descending order: the same tie rule as the metric
        order = torch.sort(scores, descending=True, stable=True).indices[: self.k].tolist()
        return [Hit(i, float(scores[i]), correct(i)) for i in order]

    def by_caption(self, j: int) -> Answer:
        truth = int(self.split.text_to_image[j])
        hits = self._top(self.image_emb @ self.text_emb[j], lambda i: i == truth)
        return Answer("caption", j, hits, int(self.ranks.t2i[j]) + 1)

    def by_image(self, i: int) -> Answer:
        hits = self._top(self.text_emb @ self.image_emb[i], lambda j: int(self.split.text_to_image[j]) == i)
        return Answer("image", i, hits, int(self.ranks.i2t[i]) + 1)

    def by_text(self, text: str) -> Answer:
        if self.encode_text is None:
            raise ValueError("typed-text queries need an encode_text function")
        query = F.normalize(self.encode_text([text]).float(), dim=-1)[0]
        return Answer("text", text, self._top(self.image_emb @ query, lambda i: False), None)

    def failures(self, kind: str = "caption", within: int = 1) -> list[int]:
        """Queries whose first correct item is not in the top ``within``."""
        ranks = self.ranks.t2i if kind == "caption" else self.ranks.i2t
        return torch.nonzero(ranks >= within).flatten().tolist()

    def next_failure(self, kind: str, current: int, step: int = 1, within: int = 1) -> int | None:
        """The next (step=1) or previous (step=-1) failure after ``current``, wrapping around; None if none."""
        fails = self.failures(kind, within)
        if not fails:
            return None
        later = [f for f in fails if (f > current if step > 0 else f < current)]
        if later:
            return later[0] if step > 0 else later[-1]
        return fails[0] if step > 0 else fails[-1]


def _thumbnail(path, size: int = 96) -> bytes:
    img = open_rgb(path)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def show_browser(browser: RetrievalBrowser):
    """An ipywidgets panel over ``browser``; returns the widget (display it in JupyterLab)."""
    import ipywidgets as W

    mode = W.ToggleButtons(options=[("caption → images", "caption"), ("image → captions", "image"),
                                    ("typed text → images", "text")], value="caption")
    number = W.BoundedIntText(value=0, min=0, max=len(browser.split.captions) - 1, description="query #")
    typed = W.Text(value="a small red circle on the grass", description="text", layout=W.Layout(width="420px"))
    failures_only = W.Checkbox(value=False, description="step through failures only")
    prev_btn, next_btn = W.Button(description="◀ previous"), W.Button(description="next ▶")
    out = W.VBox()

    def card(title: str, body: W.Widget, ok: bool | None) -> W.Widget:
        color = {True: "#2a9d3c", False: "#bbb", None: "#bbb"}[ok]
        return W.VBox([W.HTML(f"<div style='font-size:11px;max-width:150px'>{title}</div>"), body],
                      layout=W.Layout(border=f"3px solid {color}", padding="3px", margin="2px"))

    def render(*_):
        kind = mode.value
        number.max = (len(browser.split.captions) if kind == "caption" else len(browser.split.records)) - 1
        if kind == "caption":
            ans = browser.by_caption(number.value)
            head = f"<b>caption {ans.query}:</b> {html.escape(browser.split.captions[ans.query])}"
        elif kind == "image":
            ans = browser.by_image(number.value)
            head = f"<b>image {ans.query}</b>"
        else:
            ans = browser.by_text(typed.value)
            head = f"<b>typed:</b> {html.escape(typed.value)}"
        rank = "" if ans.true_rank is None else f" — rank of the true match: <b>{ans.true_rank}</b>"
        cards = []
        for hit in ans.hits:
            if kind == "image":
                cards.append(card(f"{hit.score:.3f} {'✔' if hit.correct else ''}<br>"
                                  f"{html.escape(browser.split.captions[hit.index])}", W.HTML(""), hit.correct))
            else:
                thumb = W.Image(value=_thumbnail(browser.split.records[hit.index].path), format="png")
                cards.append(card(f"image {hit.index}: {hit.score:.3f} {'✔ ground truth' if hit.correct else ''}",
                                  thumb, hit.correct))
        top = [W.HTML(head + rank)]
        if kind == "image":
            top.append(W.Image(value=_thumbnail(browser.split.records[ans.query].path, 128), format="png"))
        out.children = [*top, W.HBox(cards, layout=W.Layout(flex_flow="row wrap"))]

    def move(step):
        if mode.value == "text":
            return
        if failures_only.value:
            nxt = browser.next_failure(mode.value, number.value, step)
            if nxt is not None:
                number.value = nxt
        else:
            number.value = min(max(number.value + step, 0), number.max)

    prev_btn.on_click(lambda _: move(-1))
    next_btn.on_click(lambda _: move(1))
    for widget in (mode, number, typed):
        widget.observe(render, names="value")
    render()
    return W.VBox([mode, W.HBox([number, prev_btn, next_btn, failures_only]), typed, out])
