"""The retrieval browser's state logic (what the widget shows), on hand-made embeddings."""

import numpy as np
import pytest
import torch

from mmd2v2_core.data.datasets import RetrievalSplit
from mmd2v2_core.data.index import ImageRecord
from mmd2v2_core.viz.browser import RetrievalBrowser


@pytest.fixture
def browser(tmp_path):
    # 3 images; captions 0,1 → image 0, caption 2 → image 1, caption 3 → image 2.
    records = [ImageRecord(i, tmp_path / f"{i}.png", tuple(f"c{i}{k}" for k in range(n)), tuple(range(n)))
               for i, n in enumerate([2, 1, 1])]
    split = RetrievalSplit.from_records("toy", records)
    images = torch.eye(3)
    texts = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0.1, 0, 1.0], [0, 0, 1.0]])  # caption 2 is wrong
    words = {"zero": [1.0, 0, 0], "two": [0, 0, 1.0], "a small red circle on the grass": [0, 1.0, 0]}
    return RetrievalBrowser(split, images, texts, encode_text=lambda t: torch.tensor([words[t[0]]]), k=2)


def test_caption_query_marks_truth_and_rank(browser):
    good = browser.by_caption(0)
    assert [h.index for h in good.hits] == [0, 1] and [h.correct for h in good.hits] == [True, False]
    assert good.true_rank == 1
    bad = browser.by_caption(2)  # its image 1 scores 0, behind image 2 (0.995) and image 0 (0.0995)
    assert [h.index for h in bad.hits] == [2, 0] and not any(h.correct for h in bad.hits)
    assert bad.true_rank == 3
    assert bad.hits[0].score == pytest.approx(1 / np.sqrt(1.01), abs=1e-6)


def test_image_query_lists_captions(browser):
    ans = browser.by_image(2)
    assert [h.index for h in ans.hits] == [3, 2] and [h.correct for h in ans.hits] == [True, False]
    assert browser.by_image(1).true_rank == 3  # image 1's only caption is the misaligned one


def test_typed_text(browser):
    ans = browser.by_text("two")
    assert ans.hits[0].index == 2 and ans.true_rank is None and not any(h.correct for h in ans.hits)


def test_failures_and_stepping(browser):
    assert browser.failures("caption") == [2]
    assert browser.failures("image") == [1]
    assert browser.failures("caption", within=3) == []
    assert browser.next_failure("caption", 0) == 2 and browser.next_failure("caption", 2) == 2  # wraps
    assert browser.next_failure("caption", 3, step=-1) == 2
    assert browser.next_failure("caption", 0, within=5) is None


def test_widget_builds(browser, tmp_path):
    from PIL import Image

    from mmd2v2_core.viz.browser import show_browser

    for i in range(3):
        Image.new("RGB", (8, 8), (80 * i, 0, 0)).save(tmp_path / f"{i}.png")
    widget = show_browser(browser)
    mode, controls, typed, out = widget.children
    assert "rank of the true match: <b>1</b>" in out.children[0].value
    controls.children[0].value = 2
    assert "rank of the true match: <b>3</b>" in out.children[0].value
    controls.children[3].value = True  # failures only
    controls.children[2].click()  # next failure wraps to caption 2
    assert controls.children[0].value == 2
    mode.value = "text"
    assert "typed:" in out.children[0].value
