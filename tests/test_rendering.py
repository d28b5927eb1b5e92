"""Rendering views (``mmd2v2_core.data.rendering``): deterministic, and every appearance family keeps what a
caption names — each object's grid cell, size class and colour name, and the background's kind.

Scenes are drawn with the synthetic generator's own functions (``data_prep.synth``, training style). An object
is measured the same way before and after augmentation: within its cell (widened by a sixth of a cell, other
objects' pixels left out), the pixels farther from the local background colour than half the object's clean
contrast (at most 60 grey levels), holes filled, speckles removed, the connected part that overlaps the object;
outside the object's clean silhouette only pixels that read as a palette colour count (a grey shadow is not
the object). Its colour is the mean of the more contrasting half of the pixels whose nearest reference colour
is a palette colour (not the background, not the grey of an outline or shadow).
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_prep.synth.render import BACKGROUND_RGB, RADIUS, RGB, render
from data_prep.synth.scenes import COLS, ROWS, sample_scene
from mmd2v2_core.data.rendering import (FRAMING_SCALE, TRAITS, draw_families, framing_bounds, reframe,
                                        render_augment)

PALETTE = torch.tensor(list(RGB.values()), dtype=torch.float32)  # [8, 3]
COLOUR_NAMES = list(RGB)
BACKGROUND_MEANS = torch.tensor([[(a + b) / 2 for a, b in zip(*pair)] for pair in BACKGROUND_RGB.values()])
BACKGROUND_NAMES = list(BACKGROUND_RGB)
GREYS = torch.tensor([[g, g, g] for g in (0.0, 50.0, 100.0, 150.0, 200.0)])  # outlines, shadows: no colour name
# Size classes differ by (0.13 / 0.08)² = 2.64× in area: an object's area may change by less than the square
# root of that (1.62×) before it is nearer the other class; the bound keeps a margin.
AREA_RATIO = 1.45
MAX_SHIFT = 1 / 16  # of the image side: 4 px at 64 px, a fifth of a cell


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one thread is faster than a shared pool (and leaves the other core to others)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def scenes(n: int, size: int, seed: int) -> list[tuple[dict, torch.Tensor]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        scene = sample_scene(rng)
        image = torch.from_numpy(np.array(render(scene, size, (), (seed, i)))).permute(2, 0, 1).contiguous()
        out.append((scene, image))
    return out


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    return F.max_pool2d(mask.float()[None, None], 2 * r + 1, 1, r)[0, 0] > 0 if r > 0 else mask


def _neighbours4(m: torch.Tensor) -> torch.Tensor:
    p = F.pad(m.float()[None, None], (1, 1, 1, 1))[0, 0]
    return torch.stack([p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]).amax(0)


def _fill_holes(mask: torch.Tensor) -> torch.Tensor:
    """Pixels of ``mask`` plus those no 4-connected path of non-mask pixels joins to the border."""
    outside = torch.zeros_like(mask)
    outside[0, :], outside[-1, :], outside[:, 0], outside[:, -1] = True, True, True, True
    outside &= ~mask
    while True:
        grown = outside | ((_neighbours4(outside) > 0) & ~mask)
        if torch.equal(grown, outside):
            return ~outside
        outside = grown


def _components(mask: torch.Tensor) -> torch.Tensor:
    """4-connected component labels (0 = not in mask)."""
    labels = torch.where(mask, torch.arange(1, mask.numel() + 1, dtype=torch.float32).view(mask.shape), 0.0)
    while True:
        grown = torch.where(mask, torch.maximum(labels, _neighbours4(labels)), 0.0)
        if torch.equal(grown, labels):
            return labels.long()
        labels = grown


def object_masks(scene: dict, image: torch.Tensor) -> list[torch.Tensor]:
    """Each object's pixels in the clean training-style drawing (flat fill in its palette colour, in its cell)."""
    _, h, w = image.shape
    masks = []
    for obj in scene["objects"]:
        r, c = ROWS.index(obj["row"]), COLS.index(obj["col"])
        cell = torch.zeros(h, w, dtype=torch.bool)
        cell[r * h // 3:(r + 1) * h // 3, c * w // 3:(c + 1) * w // 3] = True
        near = (image.float() - torch.tensor(RGB[obj["color"]], dtype=torch.float32).view(3, 1, 1)).norm(dim=0) < 25
        masks.append(cell & near)
    return masks


def measure(image: torch.Tensor, scene: dict, masks: list[torch.Tensor], k: int, threshold: float | None = None,
            picture: torch.Tensor | None = None):
    """Object k of ``image``: (centroid row, centroid col, area, colour name, threshold) as described above;
    ``picture``: the pixels of a reframed scene (its border is not an object's)."""
    _, h, w = image.shape
    s = h / 64
    obj = scene["objects"][k]
    r, c = ROWS.index(obj["row"]), COLS.index(obj["col"])
    margin = h // 18
    top, left = max(0, r * h // 3 - margin), max(0, c * w // 3 - margin)
    box = (slice(top, (r + 1) * h // 3 + margin), slice(left, (c + 1) * w // 3 + margin))
    window = torch.ones(h, w, dtype=torch.bool) if picture is None else picture.clone()
    for j, other in enumerate(masks):
        if j != k:
            window &= ~_dilate(other, round(2 * s))
    window, own = window[box], masks[k][box]  # everything below within the widened cell
    x = image.float()[:, box[0], box[1]]
    around = window & ~_dilate(own, round(2 * s))
    background = x[:, around].median(dim=1).values
    distance = (x - background.view(3, 1, 1)).norm(dim=0)
    if threshold is None:  # the clean image: half the object's contrast to its background, at most 60
        threshold = min(60.0, 0.5 * float((x[:, own].mean(dim=1) - background).norm()))
    else:  # a view: lower where the view lowered the contrast (most of the object's pixels are far), ≤ 2×
        threshold = min(threshold, max(0.5 * threshold, 0.5 * float(torch.quantile(distance[own], 0.9))))
    far = (distance > threshold) & window
    refs = torch.cat([PALETTE, background[None], GREYS])
    reads_colour = (torch.cdist(x.flatten(1).T, refs).argmin(dim=1) < len(PALETTE)).view(own.shape)
    # inside the object's clean silhouette every far pixel counts (an outline, a textured fill); outside it
    # only pixels that read as a palette colour (growth of the object itself, not a grey shadow)
    solid = _fill_holes(far & (own | reads_colour))
    solid = (F.avg_pool2d(solid.float()[None, None], 3, 1, 1)[0, 0] > 0.5) & window
    labels = _components(solid)
    overlap = torch.bincount(labels[own], minlength=int(labels.max()) + 1)
    overlap[0] = 0
    if overlap.max() == 0:
        return None
    part = labels == int(overlap.argmax())
    ys, xs = torch.nonzero(part, as_tuple=True)
    coloured = part & far & reads_colour
    name = None
    if coloured.any():  # the mean of the more contrasting half (edges blended with the background aside)
        core = coloured & (distance >= distance[coloured].median())
        name = COLOUR_NAMES[int(torch.cdist(x[:, core].mean(1)[None], PALETTE).argmin())]
    return top + float(ys.float().mean()), left + float(xs.float().mean()), int(part.sum()), name, threshold


def background_name(image: torch.Tensor, masks: list[torch.Tensor], picture: torch.Tensor | None = None) -> str:
    away = torch.ones(image.shape[1:], dtype=torch.bool) if picture is None else picture.clone()
    for m in masks:
        away &= ~_dilate(m, round(3 * image.shape[1] / 64))
    mean = image.float()[:, away].mean(dim=1)
    return BACKGROUND_NAMES[int(torch.cdist(mean[None], BACKGROUND_MEANS).argmin())]


def content_problems(scene: dict, clean: torch.Tensor, view: torch.Tensor,
                     picture: torch.Tensor | None = None) -> list[str]:
    """What a view changed that a caption names (empty: nothing); ``picture`` as in ``measure``."""
    _, h, w = clean.shape
    masks = object_masks(scene, clean)
    problems = []
    if background_name(view, masks, picture) != scene["background"]:
        problems.append(f"background {scene['background']} → {background_name(view, masks, picture)}")
    for k, obj in enumerate(scene["objects"]):
        before = measure(clean, scene, masks, k)
        assert before is not None and before[3] == obj["color"], (obj, before)  # the measure itself
        after = measure(view, scene, masks, k, threshold=before[4], picture=picture)
        label = f"{obj['size']} {obj['color']} {obj['shape']} at {obj['position']}"
        if after is None:
            problems.append(f"{label}: lost")
            continue
        cy, cx, area, name, _ = after
        if (int(3 * cy / h), int(3 * cx / w)) != (ROWS.index(obj["row"]), COLS.index(obj["col"])):
            problems.append(f"{label}: centroid ({cy:.1f}, {cx:.1f}) left its cell")
        elif math.hypot(cy - before[0], cx - before[1]) > MAX_SHIFT * h:
            problems.append(f"{label}: moved by {math.hypot(cy - before[0], cx - before[1]):.1f} px")
        if not 1 / AREA_RATIO < area / before[2] < AREA_RATIO:
            problems.append(f"{label}: area {before[2]} → {area}")
        if name != obj["color"]:
            problems.append(f"{label}: colour reads {name}")
    return problems


def test_views_are_deterministic_uint8_images_of_the_same_size():
    for scene, image in scenes(3, 64, 1) + scenes(1, 128, 2):
        for seed in range(4):
            a = render_augment(image, torch.Generator().manual_seed(seed))
            b = render_augment(image, torch.Generator().manual_seed(seed))
            assert torch.equal(a, b), seed  # a pure function of (image, generator state)
            assert a.dtype == torch.uint8 and a.shape == image.shape and a.is_contiguous()
            assert 0 < a.float().std() and not torch.equal(a, torch.zeros_like(a))
        views = [render_augment(image, torch.Generator().manual_seed(seed), p=1.0) for seed in range(4)]
        assert len({v.numpy().tobytes() for v in views}) == 4  # another seed, another drawing
        assert torch.equal(render_augment(image, torch.Generator().manual_seed(0), p=0.0), image)
        assert torch.equal(render_augment(image, torch.Generator().manual_seed(0), families=()), image)
    # the generator is the only source of randomness: the global RNG does not matter
    image = scenes(1, 64, 3)[0][1]
    torch.manual_seed(1)
    a = render_augment(image, torch.Generator().manual_seed(9), p=1.0)
    torch.manual_seed(2)
    assert torch.equal(a, render_augment(image, torch.Generator().manual_seed(9), p=1.0))


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown rendering families"):
        render_augment(scenes(1, 64, 0)[0][1], torch.Generator().manual_seed(0), families=("sepia",))


def test_views_vary_in_how_many_families_they_change():
    counts = [len(draw_families(torch.Generator().manual_seed(seed))) for seed in range(400)]
    assert min(counts) <= 1 and max(counts) >= 11  # some views nearly clean, some heavily changed
    assert 4 <= sum(counts) / len(counts) <= 9
    assert len(set(counts)) >= 10
    assert all(not draw_families(torch.Generator().manual_seed(seed), p=0.0) for seed in range(50))
    # render_augment applies the families its generator draws first
    image = scenes(1, 64, 4)[0][1]
    for seed in range(20):
        drawn = draw_families(torch.Generator().manual_seed(seed))
        assert torch.equal(render_augment(image, torch.Generator().manual_seed(seed)),
                           render_augment(image, torch.Generator().manual_seed(seed), families=drawn))


def test_the_content_check_finds_changed_content():
    """The measure used below is not blind: a moved, recoloured, shrunk or grown object, or another
    background, is reported."""
    scene, image = next((s, i) for s, i in scenes(20, 64, 5)
                        if s["objects"][0]["color"] == "red" and s["background"] != "night")
    assert content_problems(scene, image, image) == []
    masks = object_masks(scene, image)
    obj, mask = scene["objects"][0], masks[0]
    moved = image.clone()
    moved[:, mask] = image[:, ~_dilate(torch.stack(masks).any(0), 4)].median(dim=1).values[:, None]
    shift = 22 if COLS.index(obj["col"]) < 2 else -22
    moved[:, torch.roll(mask, shift, dims=1)] = torch.tensor(RGB["red"], dtype=torch.uint8)[:, None]
    assert any(p.endswith(("left its cell", "lost")) for p in content_problems(scene, image, moved))
    nudged = image.clone()  # 6 px: still in its cell, but farther than any family moves an object
    nudged[:, mask] = moved[:, mask]
    nudged[:, torch.roll(mask, 6 if shift > 0 else -6, dims=1)] = torch.tensor(RGB["red"], dtype=torch.uint8)[:, None]
    assert any("moved by" in p or "left its cell" in p for p in content_problems(scene, image, nudged))
    recoloured = image.clone()
    recoloured[:, mask] = torch.tensor(RGB["orange"], dtype=torch.uint8)[:, None]
    assert any("colour reads orange" in p for p in content_problems(scene, image, recoloured))
    grown = image.clone()
    grown[:, _dilate(mask, 3)] = torch.tensor(RGB["red"], dtype=torch.uint8)[:, None]
    assert any("area" in p for p in content_problems(scene, image, grown))
    shrunk = image.clone()  # the object less a 2 px border
    shrunk[:, mask & _dilate(~mask, 2)] = image[:, ~mask].median(dim=1).values[:, None]
    assert any("area" in p for p in content_problems(scene, image, shrunk))
    other = "night" if scene["background"] != "night" else "sand"
    repainted = image.clone()
    away = ~_dilate(torch.stack(masks).any(0), 1)
    repainted[:, away] = BACKGROUND_MEANS[BACKGROUND_NAMES.index(other)].to(torch.uint8)[:, None]
    assert any("background" in p for p in content_problems(scene, image, repainted))


def framed(image: torch.Tensor, framing: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The clean drawing reframed as a view reframed it, in a margin of its background colour (the reference a
    reframed view's content is compared with; ``test_framing_keeps_every_object_in_its_cell`` checks it against
    the scene), and the mask of the reframed picture's pixels (None: not reframed)."""
    if not framing:
        return image, None
    x = image.float()
    fill = x.flatten(1).median(dim=1).values.view(3, 1, 1)
    reference = reframe(x, framing["scale"], framing["dy"], framing["dx"], fill).round().clamp(0, 255)
    cover = reframe(torch.ones(1, *x.shape[1:]), framing["scale"], framing["dy"], framing["dx"], torch.zeros(1, 1, 1))
    return reference.to(torch.uint8), cover[0] > 0.99


def view_problems(scene: dict, image: torch.Tensor, gen: torch.Generator, **kwargs) -> list[str]:
    framing: dict = {}
    view = render_augment(image, gen, framing=framing, **kwargs)
    reference, picture = framed(image, framing)
    return content_problems(scene, reference, view, picture)


@pytest.mark.parametrize("family", TRAITS)
def test_each_family_changes_the_drawing_and_keeps_what_captions_name(family):
    drawn = scenes(16, 64, 6) + scenes(3, 128, 7)
    changed = 0
    for i, (scene, image) in enumerate(drawn):
        view = render_augment(image, torch.Generator().manual_seed(100 + i), families=(family,))
        changed += not torch.equal(view, image)
        problems = view_problems(scene, image, torch.Generator().manual_seed(100 + i), families=(family,))
        assert problems == [], (family, i, scene, problems)
    assert changed >= 0.75 * len(drawn), family  # (``hollow`` leaves a small thin-armed star or cross filled)


def _extreme_framings() -> list[tuple[float, float, float]]:
    """The smallest scale, the scale of the largest shift and no scaling, each at every corner of its bounds."""
    scales = (FRAMING_SCALE[0], max((FRAMING_SCALE[0] + k / 100 for k in range(21)), key=framing_bounds), 1.0)
    return [(s, sy * framing_bounds(s), sx * framing_bounds(s)) for s in scales for sy in (-1, 1) for sx in (-1, 1)]


def test_framing_keeps_every_object_in_its_cell():
    """At the extremes of its bounds, a reframed scene keeps each object's centroid inside its own cell (by
    0.01 of the side, less a pixel's resampling) and its size class: the area scales by scale² and a large
    shape's radius stays nearer the large radius than the small one; the object still reads as drawn."""
    assert framing_bounds(FRAMING_SCALE[0]) > 0 and framing_bounds(1.0) == 0  # shifts exist; none at full size
    assert FRAMING_SCALE[0] * RADIUS["large"] > math.sqrt(RADIUS["small"] * RADIUS["large"])
    drawn = scenes(40, 64, 10) + scenes(4, 128, 11)
    checked = 0
    for scene, image in drawn:
        h = image.shape[1]
        centre = (torch.arange(h, dtype=torch.float32) + 0.5) / h
        for scale, dy, dx in _extreme_framings():
            reference, _ = framed(image, {"scale": scale, "dy": dy, "dx": dx})
            found = object_masks(scene, reference)
            for obj, m0, m1 in zip(scene["objects"], object_masks(scene, image), found):
                moved = reframe(m0.float()[None], scale, dy, dx, torch.zeros(1, 1, 1))[0]  # the object's own pixels
                area = float(moved.sum())
                cy, cx = float((moved.sum(1) * centre).sum()) / area, float((moved.sum(0) * centre).sum()) / area
                row, col = ROWS.index(obj["row"]), COLS.index(obj["col"])
                inside = min(cy - row / 3, (row + 1) / 3 - cy, cx - col / 3, (col + 1) / 3 - cx)
                assert inside > 0.01 - 0.5 / h, (obj, scale, dy, dx, inside)
                assert abs(area / (scale * scale * int(m0.sum())) - 1) < 0.05, (obj, scale, area, int(m0.sum()))
                assert int(m1.sum()) >= 0.4 * area, (obj, scale, dy, dx)  # its colour, mostly in its cell
                checked += 1
    assert checked > 100


def test_mixed_views_keep_what_captions_name():
    """Many families at once: the guard, the softening budget and the hollow/outline rules hold the content;
    a rare small object may still read wrong when every family stacks up (≈1 % of objects at p = 1)."""
    drawn = scenes(80, 64, 8) + scenes(6, 128, 9)
    problems, objects = [], 0
    for i, (scene, image) in enumerate(drawn):
        for p in (0.7, 1.0):
            problems += view_problems(scene, image, torch.Generator().manual_seed(i), p=p)
            objects += len(scene["objects"])
    assert len(problems) <= 0.02 * objects, problems


def test_the_report_names_the_test_traits_the_views_contain():
    from data_prep.synth.render import STYLE_TRAITS
    from mmd2v2_core.data.rendering import GEOMETRIC_CHANGES, TEST_TRAITS_COVERED, TRAITS
    from mmd2v2_core.report.sections import views_statement

    assert set(TEST_TRAITS_COVERED) == set(STYLE_TRAITS["flickr"])  # every trait of the zero-shot style is mapped
    assert all(f in TRAITS for families in TEST_TRAITS_COVERED.values() for f in families)
    text = views_statement()
    assert f"randomise {len(TRAITS)} families" in text and "outline (as outline)" in text
    assert "photometric" in text.split("no test set here has")[1] and "outline" not in text.split("no test set")[1]
    assert all(f"{family} (" in text.split("change geometry")[1] for family in GEOMETRIC_CHANGES)
    assert "framing" in GEOMETRIC_CHANGES and "No view crops, zooms in or flips" in text
