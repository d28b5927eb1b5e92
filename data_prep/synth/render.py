"""Drawing a scene into an RGB image, in two rendering styles made of six traits.

``coco`` (no trait): flat, noisy background in the background's colour; flat shapes.
``flickr`` (every trait): vertical gradient background with texture stripes, shapes with a dark outline,
a drop shadow, jittered hues, a slight rotation and blur — the same vocabulary of things, a visibly
different look, so the flickr domain measures transfer rather than memorised pixels.

The traits can also be drawn one at a time (``data_prep.synth.transfer``: which of them costs a student
its zero-shot transfer).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .scenes import COLS, ROWS

RGB = {
    "red": (220, 30, 30),
    "green": (40, 170, 50),
    "blue": (40, 70, 220),
    "yellow": (245, 220, 40),
    "orange": (245, 140, 20),
    "purple": (130, 40, 170),
    "pink": (245, 130, 190),
    "white": (245, 245, 245),
}
BACKGROUND_RGB = {
    "grass": ((70, 140, 50), (30, 90, 25)),
    "sand": ((225, 200, 150), (190, 160, 110)),
    "water": ((60, 130, 200), (20, 60, 130)),
    "snow": ((235, 240, 248), (200, 210, 225)),
    "night": ((20, 20, 50), (5, 5, 15)),
}
RADIUS = {"small": 0.08, "large": 0.13}  # fraction of the image side; a grid cell is 1/3
# Farthest a (rotated) shape reaches from its centre, in radii; used to keep shapes inside their cell.
EXTENT = 1.25
TRAITS = ("background", "hue", "rotation", "shadow", "outline", "blur")
STYLE_TRAITS = {"coco": (), "flickr": TRAITS}
# A look no style has and no rendering view draws (``data_prep.synth.transfer`` tests transfer to it): ``mat``,
# the scene drawn natively at MAT_SCALE of the side, centred in a light mat inside a bevelled dark frame. The
# views' ``framing`` resamples a drawn scene into a flat margin or border; nothing in them draws a mat or a bevel.
MAT_SCALE = 0.8  # every object's centre stays ≥ 0.04 of the side inside its cell; a large shape stays large
HELD_OUT_LOOKS = {"mat": f"the scene drawn natively at {MAT_SCALE:g} of the side, centred in an ivory mat inside a "
                         "bevelled dark frame"}
HELD_OUT_TRAITS = tuple(HELD_OUT_LOOKS)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(r, r), (-r, r), (-r, -r), (r, -r)]
    elif shape == "diamond":
        pts = [(0, -r * 1.15), (r * 0.85, 0), (0, r * 1.15), (-r * 0.85, 0)]
    elif shape == "triangle":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        pts = [(x, y + r * 0.2) for x, y in pts]
    elif shape == "star":
        pts = [
            ((r if k % 2 == 0 else r * 0.45) * math.cos(-math.pi / 2 + k * math.pi / 5),
             (r if k % 2 == 0 else r * 0.45) * math.sin(-math.pi / 2 + k * math.pi / 5))
            for k in range(10)
        ]
    elif shape == "cross":
        t = r * 0.38
        pts = [(t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t), (-t, -t), (-t, -r)]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _background(name: str, size: int, textured: bool, rng: np.random.Generator) -> np.ndarray:
    top, bottom = (np.array(c, dtype=np.float32) for c in BACKGROUND_RGB[name])
    if not textured:
        img = np.broadcast_to((top + bottom) / 2, (size, size, 3)).copy()
        img += rng.normal(0.0, 12.0, (size, size, 1)).astype(np.float32)
    else:
        t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
        img = np.broadcast_to(top * (1 - t) + bottom * t, (size, size, 3)).copy()
        phase = rng.uniform(0, 2 * math.pi)
        stripes = np.sin(np.arange(size, dtype=np.float32) * (2 * math.pi / max(size / 8, 2)) + phase)
        img += 10.0 * stripes[None, :, None]
        img += rng.normal(0.0, 5.0, (size, size, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def render(scene: dict, size: int, traits, seed: tuple[int, ...]) -> Image.Image:
    """The scene as a size×size RGB image with the rendering ``traits`` (a subset of ``TRAITS``; a style's are
    ``STYLE_TRAITS[style]``); the same seed always gives the same pixels."""
    unknown = set(traits) - set(TRAITS) - set(HELD_OUT_TRAITS)
    if unknown:
        raise ValueError(f"unknown rendering traits {sorted(unknown)}; choose from {TRAITS + HELD_OUT_TRAITS}")
    if "mat" in traits:
        return _matted(render(scene, round(MAT_SCALE * size), [t for t in traits if t != "mat"], seed), size)
    rng = np.random.default_rng(list(seed))
    img = Image.fromarray(_background(scene["background"], size, "background" in traits, rng))
    draw = ImageDraw.Draw(img)
    cell = size / 3
    for obj in scene["objects"]:
        r = RADIUS[obj["size"]] * size
        slack = max(cell / 2 - EXTENT * r, 0.0)
        cx = (COLS.index(obj["col"]) + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (ROWS.index(obj["row"]) + 0.5) * cell + rng.uniform(-slack, slack)
        color = np.array(RGB[obj["color"]], dtype=np.float32)
        if "hue" in traits:
            color = np.clip(color + rng.normal(0.0, 8.0, 3), 0, 255)
        angle = rng.uniform(-0.3, 0.3) if "rotation" in traits else 0.0
        fill = tuple(int(v) for v in color)
        if "shadow" in traits:
            shadow = max(1, round(size / 64))
            _draw_shape(draw, obj["shape"], cx + shadow, cy + shadow, r, angle, (0, 0, 0), None, 0)
        if "outline" in traits:
            _draw_shape(draw, obj["shape"], cx, cy, r, angle, fill, (25, 25, 25), max(1, round(size / 48)))
        else:
            _draw_shape(draw, obj["shape"], cx, cy, r, angle, fill, None, 0)
    if "blur" in traits:
        img = img.filter(ImageFilter.GaussianBlur(radius=size / 160))
    return img


def _matted(picture: Image.Image, size: int) -> Image.Image:
    """``picture`` centred on a size×size mat: a dark wooden frame (lit from the top left) around an ivory mat,
    with a thin grey bevel at the picture's edge."""
    frame = max(2, round(0.05 * size))
    img = Image.new("RGB", (size, size), (92, 58, 34))
    draw = ImageDraw.Draw(img)
    draw.polygon([(0, 0), (size, 0), (size - frame, frame), (frame, frame), (frame, size - frame), (0, size)],
                 fill=(128, 86, 52))  # the lit half of the frame
    draw.rectangle([frame, frame, size - frame - 1, size - frame - 1], fill=(236, 230, 214))
    at = (size - picture.width) // 2
    draw.rectangle([at - 1, at - 1, at + picture.width, at + picture.height], fill=(150, 146, 138))
    img.paste(picture, (at, at))
    return img


def _draw_shape(draw, shape, cx, cy, r, angle, fill, outline, width):
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=width)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=fill, outline=outline, width=width)
