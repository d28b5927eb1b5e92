"""Captions for synthetic scenes, in two phrasing styles.

Every caption names every object with its size, colour, shape and position, and the background, so a
single caption identifies its scene and perfect retrieval is possible in principle. What varies is
wording (synonyms), word order (object order, clause order, adjective placement) and sentence frame.
The ``flickr`` style shares the attribute words but uses other frames and position/background phrases,
so it tests transfer to unseen phrasing. All words are whole tokens of the BERT-uncased vocabulary
(a test checks that no caption tokenises to [UNK]).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable

from .scenes import relation as relation_of

COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
NOUNS = ("shape", "object")
RELATION_PHRASES = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
}


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class Phrasing:
    sizes: dict[str, tuple[str, ...]]
    positions: Callable[[str, str], tuple[str, ...]]
    backgrounds: dict[str, tuple[str, ...]]
    # Frames receive objs, bg, count ("two"), noun ("shapes") and rel (a relation clause or "").
    frames: tuple[str, ...]
    object_forms: tuple[str, ...] = field(default=("{a} {size} {color} {shape} {pos}",))


def _coco_positions(row: str, col: str) -> tuple[str, ...]:
    if row == "middle" and col == "center":
        return ("in the center", "in the middle")
    if row == "middle":
        return (f"on the {col}", f"at the {col}")
    if col == "center":
        return (f"at the {row}", f"near the {row}")
    return (f"in the {row} {col}", f"at the {row} {col}", f"in the {row} {col} corner")


def _flickr_positions(row: str, col: str) -> tuple[str, ...]:
    vertical = {"top": "upper", "bottom": "lower"}
    if row == "middle" and col == "center":
        return ("right in the middle", "in the centre")
    if row == "middle":
        return (f"on the {col} side", f"toward the {col} side")
    if col == "center":
        return (f"near the {row} edge", f"along the {row}")
    return (f"near the {row} {col} corner", f"in the {vertical[row]} {col} corner")


STYLES = {
    "coco": Phrasing(
        sizes={"small": ("small", "little", "tiny"), "large": ("large", "big")},
        positions=_coco_positions,
        backgrounds={
            "grass": ("on the grass", "on a lawn", "on a grassy field"),
            "sand": ("on the sand", "on a sandy beach", "on the beach"),
            "water": ("on the water", "in the water", "on a lake"),
            "snow": ("on the snow", "in the snow", "on a snowy field"),
            "night": ("at night", "against a night sky", "under a dark sky"),
        },
        frames=(
            "{objs} {bg}",
            "{bg} , {objs}",
            "there is {objs} {bg}",
            "{count} {noun} {bg} : {objs}",
            "{objs} {bg} {rel}",
        ),
        object_forms=("{a} {size} {color} {shape} {pos}", "{pos} {a} {size} {color} {shape}"),
    ),
    "flickr": Phrasing(
        sizes={"small": ("small", "little"), "large": ("large", "big", "huge")},
        positions=_flickr_positions,
        backgrounds={
            "grass": ("in a green meadow", "on a field of grass"),
            "sand": ("on a beach", "on the shore"),
            "water": ("on the sea", "on the ocean"),
            "snow": ("on the ice", "on frozen snow"),
            "night": ("in the dark", "on a dark evening"),
        },
        frames=(
            "a picture of {objs} {bg}",
            "this image shows {objs} {bg}",
            "we can see {objs} {bg}",
            "{objs} can be seen {bg}",
            "{bg} we see {count} {noun} : {objs} {rel}",
        ),
        object_forms=("{a} {size} {color} {shape} {pos}", "{a} {color} {shape} that is {size} {pos}"),
    ),
}


@dataclass(frozen=True)
class CaptionDraws:
    """Every random choice of one caption, each as a position in its list of options. Rendering the same draws for
    another scene (``render``) changes only the words that name what differs: a hard negative and its positive share
    their sentence frame, object order, synonyms and punctuation."""

    frame: str
    order: tuple[int, ...]  # the scene's object indices, in the order the caption names them
    objects: dict[int, tuple[int, int, int]]  # object index → (object form, size word, position phrase)
    background: int
    noun: int
    relation: tuple[int, int, int] | None  # (subject, object, phrase) of the relation clause; None: no clause
    full_stop: bool


def _pick(rng: random.Random, options: tuple | list) -> int:
    return options.index(rng.choice(options))


def draw_object(obj: dict, style: Phrasing, rng: random.Random) -> tuple[int, int, int]:
    return (_pick(rng, style.object_forms), _pick(rng, style.sizes[obj["size"]]),
            _pick(rng, style.positions(obj["row"], obj["col"])))


def draw(scene: dict, style_name: str, rng: random.Random, frame: str | None = None) -> CaptionDraws:
    """The random choices of a caption of ``scene`` (``frame``: a given sentence frame instead of a drawn one)."""
    style = STYLES[style_name]
    order = list(range(len(scene["objects"])))
    rng.shuffle(order)
    frame = frame or rng.choice(style.frames)
    objects = {i: draw_object(scene["objects"][i], style, rng) for i in order}
    background = _pick(rng, style.backgrounds[scene["background"]])
    noun = _pick(rng, NOUNS)
    relation = None
    if scene["relations"]:
        rel = rng.choice(scene["relations"])
        relation = (rel["subject"], rel["object"], _pick(rng, RELATION_PHRASES[rel["relation"]]))
    return CaptionDraws(frame, tuple(order), objects, background, noun, relation, rng.random() < 0.7)


def _nth(options: tuple, k: int) -> str:
    """Option k, or the last one where another attribute value has fewer synonyms."""
    return options[min(k, len(options) - 1)]


def _object_phrase(obj: dict, style: Phrasing, picks: tuple[int, int, int]) -> str:
    form = style.object_forms[picks[0]]
    size = _nth(style.sizes[obj["size"]], picks[1])
    pos = _nth(style.positions(obj["row"], obj["col"]), picks[2])
    # The article agrees with the word right after it.
    first = size if form.index("{size}") < form.index("{color}") else obj["color"]
    return form.format(a=article(first), size=size, color=obj["color"], shape=obj["shape"], pos=pos)


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return " , ".join(phrases[:-1]) + " and " + phrases[-1]


def _relation_clause(scene: dict, relation: tuple[int, int, int] | None) -> str:
    if relation is None:
        return ""
    a, b = scene["objects"][relation[0]], scene["objects"][relation[1]]
    phrase = _nth(RELATION_PHRASES[relation_of(a, b)], relation[2])
    return f", the {a['color']} {a['shape']} is {phrase} the {b['color']} {b['shape']}"


def render(scene: dict, style_name: str, draws: CaptionDraws) -> str:
    """The caption of ``scene`` that ``draws`` make: human-looking raw text (single spaces, no space before
    punctuation, capitalised, often a full stop)."""
    style = STYLES[style_name]
    n = len(draws.order)
    words = draws.frame.format(
        objs=_join([_object_phrase(scene["objects"][i], style, draws.objects[i]) for i in draws.order]),
        bg=_nth(style.backgrounds[scene["background"]], draws.background),
        count=COUNT_WORDS[n],
        noun=NOUNS[draws.noun] + ("s" if n > 1 else ""),
        rel=_relation_clause(scene, draws.relation),
    )
    text = re.sub(r"\s+", " ", words).strip()
    text = re.sub(r" ([,:])", r"\1", text)
    text = text[0].upper() + text[1:]
    return text + "." if draws.full_stop else text


def caption(scene: dict, style_name: str, rng: random.Random, frame: str | None = None) -> str:
    return render(scene, style_name, draw(scene, style_name, rng, frame))


def karpathy_tokens(raw: str) -> list[str]:
    """Tokens as the Karpathy JSON stores them: lower-case words, punctuation dropped."""
    return re.findall(r"[a-z]+", raw.lower())


def captions_for(scene: dict, style_name: str, n: int, rng: random.Random) -> list[str]:
    """n distinct captions; frames are cycled in shuffled order so one image gets varied sentence shapes."""
    frames = list(STYLES[style_name].frames)
    rng.shuffle(frames)
    out: list[str] = []
    attempts = 0
    while len(out) < n:
        text = caption(scene, style_name, rng, frames[len(out) % len(frames)])
        attempts += 1
        if text not in out or attempts > 50 * n:
            out.append(text)
    return out
