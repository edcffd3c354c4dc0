"""The embedded world's object classes: how each is drawn, and which pairs co-occur.

Names are COCO category names, so the same object lexicon serves COCO and the world.
"""

from __future__ import annotations

# name -> (shape, RGB colour). Each class has its own colour and shape.
CLASSES: dict[str, tuple[str, tuple[int, int, int]]] = {
    "knife": ("bar", (200, 30, 30)),
    "fork": ("cross", (30, 160, 40)),
    "keyboard": ("square", (40, 60, 220)),
    "mouse": ("circle", (230, 210, 40)),
    "dog": ("triangle", (160, 40, 200)),
    "frisbee": ("ring", (240, 130, 20)),
    "cup": ("diamond", (20, 200, 210)),
    "spoon": ("bar", (240, 240, 240)),
    "car": ("square", (230, 60, 150)),
    "truck": ("triangle", (120, 80, 30)),
    "bench": ("cross", (130, 130, 130)),
    "umbrella": ("circle", (0, 100, 110)),
    "clock": ("ring", (150, 200, 90)),
    "vase": ("diamond", (110, 20, 60)),
    "apple": ("circle", (250, 150, 150)),
    "kite": ("triangle", (60, 140, 250)),
}

# Each pair co-occurs in scenes; the biased world's text also names the partner when it is absent.
PARTNERS: list[tuple[str, str]] = [
    ("knife", "fork"),
    ("keyboard", "mouse"),
    ("dog", "frisbee"),
    ("cup", "spoon"),
    ("car", "truck"),
    ("bench", "umbrella"),
]

CLASS_NAMES: list[str] = list(CLASSES)


def partner_of(name: str) -> str | None:
    for a, b in PARTNERS:
        if name == a:
            return b
        if name == b:
            return a
    return None
