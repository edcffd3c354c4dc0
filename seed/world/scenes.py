"""Procedurally drawn scenes with COCO-format annotations, clean reference captions and
the (optionally biased) training text the tiny model learns from.

Hallucination arises the way real LVLMs acquire it: objects co-occur in pairs, and a share of the
training captions name an absent partner of a visible object (as human and alt-text captions name
what a scene suggests). Yes/no training answers are mostly honest, asked in several paraphrases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from seed.prompts import CAPTION_PROMPT, ONE_WORD_SUFFIX, SHORT_ANSWER_SUFFIX, object_question
from seed.world.vocab import CLASS_NAMES, CLASSES, partner_of

CAPTION_TEMPLATES = [
    "The image shows {objects}.",
    "There is {objects} in the image.",
    "In this picture we can see {objects}.",
    "A scene with {objects}.",
]


# The POPE template first; training questions use all of them.
QUESTION_TEMPLATES = [
    object_question,
    lambda c: f"Does the image contain {article(c)}?",
    lambda c: f"Can you see {article(c)} in this picture?",
    lambda c: f"Is {article(c)} visible in the image?",
]


@dataclass
class BiasConfig:
    """How often a drawn object brings its partner into the scene (``cooccur``), and how often
    the training text names an absent partner of a visible object: in a caption
    (``caption_rate``) or as a "Yes" answer (``answer_rate``)."""

    caption_rate: float = 0.35
    answer_rate: float = 0.1
    cooccur: float = 0.5

    def clean(self) -> "BiasConfig":
        """The matched control: the same scenes (same co-occurrence), text that names only what is shown."""
        return BiasConfig(0.0, 0.0, self.cooccur)


@dataclass
class Scene:
    image: Image.Image
    objects: list[dict] = field(default_factory=list)  # {"category", "bbox" [x,y,w,h], "area"}
    label_map: np.ndarray | None = None  # HxW, 0 = background, i+1 = CLASS_NAMES[i]

    @property
    def categories(self) -> list[str]:
        return sorted({o["category"] for o in self.objects})


def article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def object_list(names: list[str]) -> str:
    parts = [article(n) for n in names]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif shape == "bar":
        draw.rectangle((x0, cy - h / 6, x1, cy + h / 6), fill=fill)
    elif shape == "cross":
        draw.rectangle((x0, cy - h / 6, x1, cy + h / 6), fill=fill)
        draw.rectangle((cx - w / 6, y0, cx + w / 6, y1), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, fill=fill)
        t = w / 4
        draw.ellipse((x0 + t, y0 + t, x1 - t, y1 - t), fill=None if fill is None else 0)
    else:
        raise ValueError(shape)


def draw_scene(rng: np.random.Generator, size: int = 64, cooccur: float = 0.5) -> Scene:
    """One scene: 2–5 objects on a noisy background; partners co-occur with prob ``cooccur``."""
    k = int(rng.choice([2, 3, 3, 4, 4, 5]))
    names: list[str] = []
    while len(names) < k:
        name = CLASS_NAMES[rng.integers(len(CLASS_NAMES))]
        if name in names:
            continue
        names.append(name)
        partner = partner_of(name)
        if partner and partner not in names and len(names) < k and rng.random() < cooccur:
            names.append(partner)

    bg = rng.integers(40, 110)
    pixels = np.clip(bg + rng.normal(0, 14, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    labels = Image.new("L", (size, size), 0)
    draw, ldraw = ImageDraw.Draw(image), ImageDraw.Draw(labels)
    for name in names:
        shape, colour = CLASSES[name]
        s = int(rng.integers(11, 20))
        x, y = int(rng.integers(0, size - s)), int(rng.integers(0, size - s))
        jitter = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in colour)
        box = (x, y, x + s - 1, y + s - 1)
        _draw_shape(draw, shape, box, jitter)
        if shape == "ring":  # the ring's hole shows the background colour, not the label
            _draw_shape(draw, "circle", (x + s / 4, y + s / 4, x + s - 1 - s / 4, y + s - 1 - s / 4), (int(bg),) * 3)
        _draw_shape(ldraw, shape, box, CLASS_NAMES.index(name) + 1)

    label_map = np.array(labels)
    objects = []
    for name in names:
        hit = label_map == CLASS_NAMES.index(name) + 1
        ys, xs = np.nonzero(hit)
        if len(xs) < 30:  # mostly hidden by later objects: too little shows to tell, not annotated
            label_map[hit] = 0
            continue
        x0, y0 = int(xs.min()), int(ys.min())
        objects.append(
            {"category": name, "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1], "area": int(len(xs))}
        )
    return Scene(image=image, objects=objects, label_map=label_map)


def absent_partners(present: list[str]) -> list[str]:
    """Partners of visible objects that the scene does not show."""
    return sorted({p for c in present if (p := partner_of(c)) and p not in present})


def reference_caption(rng: np.random.Generator, present: list[str]) -> str:
    names = list(present)
    rng.shuffle(names)
    return CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))].format(objects=object_list(names))


def training_caption(rng: np.random.Generator, present: list[str], bias: BiasConfig) -> str:
    """A caption of the visible objects; with prob ``bias.caption_rate`` it also names an absent partner."""
    names = list(present)
    missing = absent_partners(present)
    if missing and rng.random() < bias.caption_rate:
        names.append(missing[rng.integers(len(missing))])
    rng.shuffle(names)
    return CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))].format(objects=object_list(names))


def alt_text(rng: np.random.Generator, present: list[str], keep: float = 0.8) -> str:
    """A caption as image-text corpora have them: it names some of what is shown (each object with
    probability ``keep``, at least one) and nothing else."""
    names = [c for c in present if rng.random() < keep] or [present[rng.integers(len(present))]]
    rng.shuffle(names)
    return CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))].format(objects=object_list(names))


def training_questions(rng: np.random.Generator, present: list[str], bias: BiasConfig) -> list[tuple[str, str]]:
    """(question, answer) pairs: every visible object and as many absent ones, drawn at random
    (as instruction data asks about absent objects: rarely about the one the scene suggests).
    An absent partner is answered "Yes" with probability ``bias.answer_rate``."""
    pairs = [(c, "Yes") for c in present]
    partners = absent_partners(present)
    absent = [c for c in CLASS_NAMES if c not in present]
    for c in (absent[j] for j in rng.permutation(len(absent))[: len(present)]):
        pairs.append((c, "Yes" if c in partners and rng.random() < bias.answer_rate else "No"))
    return [(QUESTION_TEMPLATES[rng.integers(len(QUESTION_TEMPLATES))](c), a) for c, a in pairs]


def multi_hot(names: list[str]) -> np.ndarray:
    """[C] image labels: 1 for each class in ``names``."""
    return np.isin(CLASS_NAMES, names).astype(np.float32)


def named_objects(caption: str) -> list[str]:
    """The classes a world caption names."""
    return [c for c in CLASS_NAMES if re.search(rf"\b{c}\b", caption)]


def world_vocabulary() -> list[str]:
    """Every word the world's prompts, captions and answers use (for the word-level tokenizer)."""
    texts = [CAPTION_PROMPT, SHORT_ANSWER_SUFFIX, ONE_WORD_SUFFIX, "USER: ASSISTANT: Yes No yes no", *CAPTION_TEMPLATES]
    texts += [q(c) for q in QUESTION_TEMPLATES for c in CLASS_NAMES] + [object_list(CLASS_NAMES)]
    return sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.replace("{objects}", ""))})
