"""COCO-format instances files: read with pycocotools after every record has been checked, so
that images, annotations and categories join exactly or not at all."""

from __future__ import annotations

import collections
import contextlib
import io
from pathlib import Path
from typing import Any

from seed.errors import SeedError
from seed.io import read_json


def load_coco(annotations: str | Path | dict):
    """A pycocotools ``COCO`` index over an instances file (or its dict), and a name for errors.
    Malformed records are refused (:func:`check_coco`), never skipped."""
    from pycocotools.coco import COCO

    data = annotations if isinstance(annotations, dict) else read_json(annotations)
    where = "annotations" if isinstance(annotations, dict) else str(annotations)
    check_coco(data, where)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco, where


def check_coco(data: Any, where: str) -> None:
    """Refuse an instances file with a record that cannot be joined exactly: images need a unique
    id and file_name, categories a unique id and name, annotations a unique id, a known image_id
    and a known category_id."""
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= data.keys():
        raise SeedError(f"{where}: not a COCO instances file (needs images, annotations and categories)")
    required = {"image": ("id", "file_name"), "category": ("id", "name"), "annotation": ("id", "image_id", "category_id")}
    ids = {}
    for kind, keys in required.items():
        records = data["categories" if kind == "category" else kind + "s"]
        if not isinstance(records, list):
            raise SeedError(f"{where}: the {kind} records are {type(records).__name__}, not a list")
        for i, r in enumerate(records, 1):
            if not isinstance(r, dict) or not all(_is_key(r.get(k), text=k in ("file_name", "name")) for k in keys):
                raise SeedError(f"{where}: {kind} record {i} lacks a valid {' or '.join(keys)}: {str(r)[:80]}")
        ids[kind] = [r["id"] for r in records]
    unique = {**{f"{kind} ids": values for kind, values in ids.items()}, "image file_names": [r["file_name"] for r in data["images"]]}
    for what, values in unique.items():
        repeated = [v for v, n in collections.Counter(values).items() if n > 1]
        if repeated:
            raise SeedError(f"{where}: {len(repeated)} repeated {what} (e.g. {', '.join(map(str, repeated[:3]))})")
    for kind in ("image", "category"):
        known = set(ids[kind])
        unknown = [a for a in data["annotations"] if a[f"{kind}_id"] not in known]
        if unknown:
            raise SeedError(
                f"{where}: {len(unknown)} annotation(s) name an unknown {kind}_id "
                f"(e.g. annotation {unknown[0]['id']}: {kind}_id {unknown[0][f'{kind}_id']})"
            )


def _is_key(value: Any, text: bool = False) -> bool:
    """An id (an integer or a non-empty string) or, with ``text``, a non-empty string."""
    return (isinstance(value, str) or (not text and isinstance(value, int) and not isinstance(value, bool))) and value != ""


def objects_by_file(annotations: str | Path | dict) -> dict[str, set[str]]:
    """The annotated category names of every image of a COCO instances file, by ``file_name``."""
    coco, _ = load_coco(annotations)
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    return {img["file_name"]: {names[a["category_id"]] for a in coco.imgToAnns.get(i, [])} for i, img in coco.imgs.items()}
