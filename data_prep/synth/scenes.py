"""Scene grammar of the synthetic datasets: what a scene is, how one is sampled, when two are the same.

A scene is a background plus one to three objects, each with a shape, a colour, a size and a cell of a
3×3 grid. Objects occupy distinct cells, so pairwise relations ("left of", "above") follow from the
cells. The scene dict is stored verbatim in the Karpathy JSON (field ``scene``) for per-attribute
evaluation and plot colouring.
"""

from __future__ import annotations

import random

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLORS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "white")
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
BACKGROUNDS = ("grass", "sand", "water", "snow", "night")

# Object colours that would be hard to see on a background are never sampled on it.
HIDDEN_ON = {
    "grass": {"green"},
    "sand": {"yellow", "orange"},
    "water": {"blue"},
    "snow": {"white"},
    "night": {"blue", "purple"},
}

OBJECT_COUNT_WEIGHTS = (0.3, 0.4, 0.3)  # one, two, three objects


def position_name(row: str, col: str) -> str:
    """'top left', 'top', 'left', 'center' … — the plain name of a grid cell."""
    if row == "middle":
        return col
    if col == "center":
        return row
    return f"{row} {col}"


def relation(a: dict, b: dict) -> str | None:
    """The relation of object a to object b read off their grid cells, or None if they share a row and column."""
    col_a, col_b = COLS.index(a["col"]), COLS.index(b["col"])
    row_a, row_b = ROWS.index(a["row"]), ROWS.index(b["row"])
    if col_a != col_b:
        return "left of" if col_a < col_b else "right of"
    if row_a != row_b:
        return "above" if row_a < row_b else "below"
    return None


def sample_scene(rng: random.Random) -> dict:
    background = rng.choice(BACKGROUNDS)
    colors = [c for c in COLORS if c not in HIDDEN_ON[background]]
    n_objects = rng.choices((1, 2, 3), weights=OBJECT_COUNT_WEIGHTS)[0]
    cells = rng.sample([(r, c) for r in ROWS for c in COLS], n_objects)
    objects = [
        {
            "shape": rng.choice(SHAPES),
            "color": rng.choice(colors),
            "size": rng.choice(SIZES),
            "row": row,
            "col": col,
            "position": position_name(row, col),
        }
        for row, col in cells
    ]
    # Reading order (top to bottom, left to right) makes the stored scene independent of sampling order.
    objects.sort(key=lambda o: (ROWS.index(o["row"]), COLS.index(o["col"])))
    relations = [
        {"subject": i, "relation": relation(objects[i], objects[j]), "object": j}
        for i in range(len(objects))
        for j in range(len(objects))
        if i != j
    ]
    return {"background": background, "objects": objects, "relations": relations}


def scene_key(scene: dict) -> tuple:
    """Identity of a scene: two scenes with the same key are described by the same captions."""
    return (
        scene["background"],
        tuple((o["shape"], o["color"], o["size"], o["row"], o["col"]) for o in scene["objects"]),
    )


def sample_unique_scenes(rng: random.Random, n: int, seen: set) -> list[dict]:
    """n scenes whose keys are not in ``seen`` (which is updated), so descriptions are unique."""
    scenes = []
    while len(scenes) < n:
        scene = sample_scene(rng)
        key = scene_key(scene)
        if key not in seen:
            seen.add(key)
            scenes.append(scene)
    return scenes
