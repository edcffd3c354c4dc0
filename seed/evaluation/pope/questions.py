"""POPE (Li et al., EMNLP 2023) questions: the shipped COCO splits, question files, and building a
split from COCO-format annotations.

Question records have the official shape
``{"question_id": 1, "image": "x.jpg", "text": "Is there a car in the image?", "label": "yes"}``.
The three COCO splits ship with the package (MIT, RUCAIBox/POPE), together with the old
2910-question random split (``random.v2023-08``) so that answers made for it are recognised.

"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seed.config import POPE_SPLITS
from seed.errors import SeedError
from seed.coco import load_coco
from seed.io import md5_file, read_records, write_jsonl
from seed.prompts import object_question

SPLITS = POPE_SPLITS
DATA_DIR = Path(__file__).parent.parent / "data"
# Shipped question files by name; "random.v2023-08" is the old random split (84 images lack
# negatives) that some harnesses still pin — kept to recognise answers made for it.
SHIPPED = {
    "random": "coco_pope_random.json",
    "popular": "coco_pope_popular.json",
    "adversarial": "coco_pope_adversarial.json",
    "random.v2023-08": "coco_pope_random.v2023-08.json",
}


# --------------------------------------------------------------------------- question files
@dataclass(frozen=True)
class QuestionSet:
    """Questions of one split with where they came from (``md5`` goes into manifests)."""

    name: str
    path: Path
    md5: str
    questions: list[dict]


def load_questions(source: str | Path) -> QuestionSet:
    """Read a question set: a shipped name (``random``, ``popular``, ``adversarial``,
    ``random.v2023-08``) or a file, as JSON Lines or as one JSON array.

    Every record needs ``question_id`` and a ``label`` of yes/no; ids must be unique.
    """
    if isinstance(source, str) and source in SHIPPED:
        path, name = DATA_DIR / SHIPPED[source], source
    else:
        path = Path(source)
        if not path.exists() and not path.suffix and len(path.parts) == 1:
            raise SeedError(f"unknown POPE split {str(source)!r}: choose {', '.join(SHIPPED)} or give a question file")
        name = path.stem
    questions = []
    for i, r in enumerate(read_records(path), 1):
        if "question_id" not in r or "label" not in r:
            raise SeedError(f"{path}: record {i} lacks question_id or label")
        label = r["label"].strip().lower() if isinstance(r["label"], str) else r["label"]
        if label not in ("yes", "no"):
            raise SeedError(f"{path}: record {i} has label {r['label']!r}; POPE labels are yes or no")
        questions.append(
            {"question_id": question_id(r["question_id"], path, i), "image": r.get("image"), "text": r.get("text"), "label": label}
        )
    if not questions:
        raise SeedError(f"{path}: no questions")
    counts = Counter(q["question_id"] for q in questions)
    duplicates = sorted((k for k, c in counts.items() if c > 1), key=str)
    if duplicates:
        raise SeedError(f"{path}: {len(duplicates)} duplicate question_ids (e.g. {id_examples(duplicates)})")
    return QuestionSet(name=name, path=path, md5=md5_file(path), questions=questions)


def write_questions(path: str | Path, questions: Iterable[dict]) -> None:
    """Write questions as official POPE JSON Lines (atomically)."""
    write_jsonl(path, ({k: q[k] for k in ("question_id", "image", "text", "label")} for q in questions))


# --------------------------------------------------------------------------- building
def build_pope(annotations: str | Path | dict, split: str, num_images: int = 500, seed: int = 0) -> list[dict]:
    """Build a POPE split from a COCO-format instances file (or its loaded dict).

    Objects of an image are its annotated categories in annotation order. Images with at
    least 3 objects are eligible; ``num_images`` of them are sampled with ``seed``. Each of
    an image's first 3 objects gives a "yes" question followed by a "no" question whose
    object is absent from the image and not used before for it:

    - random: uniform over the categories occurring in the sampled images;
    - popular: the most frequent category over the sampled images;
    - adversarial: the category co-occurring most often with the positive (else random).

    Ties go to the lower category id. The ``image`` field is the COCO ``file_name``.
    """
    if split not in SPLITS:
        raise SeedError(f"unknown POPE split {split!r}: choose {', '.join(SPLITS)}")
    if num_images < 1:
        raise SeedError(f"--num-images must be at least 1, not {num_images}")
    coco, _ = load_coco(annotations)
    objects = _image_objects(coco)
    eligible = sorted(i for i, objs in objects.items() if len(objs) >= 3)
    if len(eligible) < num_images:
        raise SeedError(f"only {len(eligible)} images have 3 or more objects; ask for at most that many with --num-images")

    rng = random.Random(seed)
    images = rng.sample(eligible, num_images)
    present = [set(objects[i]) for i in images]
    pool = sorted(set().union(*present))
    frequency = Counter(c for cats in present for c in cats)
    popular = sorted(pool, key=lambda c: (-frequency[c], c))
    cooccur: dict[int, Counter] = defaultdict(Counter)
    for cats in present:
        for a in cats:
            cooccur[a].update(b for b in cats if b != a)

    questions: list[dict] = []
    for image_id in images:
        file_name = coco.imgs[image_id].get("file_name", str(image_id))
        taken = set(objects[image_id])  # present objects and negatives already asked
        for positive in objects[image_id][:3]:
            if split == "popular":
                negative = next((c for c in popular if c not in taken), None)
            elif split == "adversarial":
                ranked = sorted((c for c in cooccur[positive] if c not in taken), key=lambda c: (-cooccur[positive][c], c))
                negative = ranked[0] if ranked else _random_absent(pool, taken, rng)
            else:
                negative = _random_absent(pool, taken, rng)
            if negative is None:
                raise SeedError(f"image {file_name}: no absent category left for a {split} negative (too few categories)")
            taken.add(negative)
            for category, label in ((positive, "yes"), (negative, "no")):
                name = coco.cats[category]["name"]
                questions.append(
                    {"question_id": len(questions) + 1, "image": file_name, "text": object_question(name), "label": label}
                )
    return questions


def _random_absent(pool: Sequence[int], taken: set[int], rng: random.Random) -> int | None:
    candidates = [c for c in pool if c not in taken]
    return rng.choice(candidates) if candidates else None


def _image_objects(coco) -> dict[int, list[int]]:
    """Distinct category ids of each image, in annotation order."""
    objects = {}
    for image_id in coco.imgs:
        cats: list[int] = []
        for ann in coco.imgToAnns.get(image_id, []):
            category = ann.get("category_id")
            if category not in coco.cats:
                raise SeedError(f"annotation {ann.get('id')}: unknown category_id {category!r}")
            if category not in cats:
                cats.append(category)
        objects[image_id] = cats
    return objects


def question_id(value: Any, path: Path | str, i: int) -> int | str:
    """Question ids are ints; digit strings are read as ints so "7" and 7 join."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SeedError(f"{path}: record {i} has question_id {value!r}; expected an integer")
    return int(value) if isinstance(value, str) and value.strip().isdigit() else value


def id_examples(ids: Sequence, k: int = 3) -> str:
    shown = sorted(ids, key=lambda x: (isinstance(x, str), x))[:k]
    return ", ".join(map(str, shown)) + (", ..." if len(ids) > k else "")
