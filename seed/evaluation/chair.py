"""CHAIR (Rohrbach et al., EMNLP 2018): how many objects a caption names that are not there.

Ground truth of an image = its annotated instance categories (a COCO-format instances
file, read with pycocotools), plus, when a COCO captions file is given, the objects named in
its reference captions. Caption words and category names both go through the same
:class:`~seed.lexicon.ObjectLexicon`, so ``men`` matches ``person`` and ``tvs`` matches
``tv``. Category names of the annotations that the lexicon does not know (a custom data
set) are added to it as categories of their own.

Metrics (fractions in [0, 1]):

- ``chair_i``: hallucinated object mentions / all object mentions, counted per mention
  (a caption naming "dog" twice without a dog counts twice); None when no caption names
  an object;
- ``chair_s``: share of captions with at least one hallucinated mention;
- ``recall``: covered ground-truth categories / ground-truth categories, pooled over all
  (caption, ground-truth category) pairs — every caption of every image weighs by the
  size of its image's ground truth; None when no image has ground truth;
- ``mean_length``: mean caption length in words (whitespace-separated);
- ``n``, ``n_mentions``, ``n_hallucinated``: captions, mentions, hallucinated mentions.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seed.adapters import VisionLanguageModel, load_spec
from seed.config import ChairConfig, ModelSpec
from seed.decoding import Decoding, manifest as decoding_manifest
from seed.errors import SeedError
from seed.evaluation.runner import describe_images
from seed.coco import load_coco
from seed.io import LazyImages, check_images, check_output, library_versions, md5_file, read_json, read_records, write_json, write_jsonl
from seed.lexicon import ObjectLexicon
from seed.prompts import CAPTION_PROMPT

METRIC_KEYS = ("chair_i", "chair_s", "recall", "mean_length", "n", "n_mentions", "n_hallucinated")
RECALL_DEFINITION = "pooled over (caption, ground-truth category) pairs"


@dataclass(frozen=True)
class GroundTruth:
    """The objects of every annotated image, by COCO image id, as lexicon categories."""

    objects: dict[int, frozenset[str]]
    file_names: dict[str, int]  # COCO file_name, and its base name when no other image shares it → image id
    lexicon: ObjectLexicon
    sources: dict[str, Any] = field(default_factory=dict)  # file paths and md5s, for manifests

    def image_id(self, record: Mapping[str, Any]) -> int | None:
        """The annotated image a caption record names, joined exactly: its ``image_id``, else its
        ``image`` as an annotation ``file_name`` (or as the base name of exactly one). A record
        giving both must name one image."""
        by_name = None
        if "image" in record:
            name = str(record["image"])
            by_name = self.file_names.get(name, self.file_names.get(name.replace("\\", "/").rsplit("/", 1)[-1]))
        if "image_id" not in record:
            return by_name
        if by_name is not None and by_name != record["image_id"]:
            raise SeedError(f"a caption names image {record['image']} (image_id {by_name}) but gives image_id {record['image_id']}")
        return record["image_id"] if record["image_id"] in self.objects else None


# --------------------------------------------------------------------------- ground truth
def load_ground_truth(
    annotations: str | Path | dict,
    ref_captions: str | Path | dict | None = None,
    lexicon: ObjectLexicon | None = None,
) -> GroundTruth:
    """Objects per image from a COCO instances file (path or loaded dict), plus the
    objects the lexicon finds in a COCO captions file's reference captions."""
    lexicon = lexicon or ObjectLexicon.default()
    coco, _ = load_coco(annotations)
    names = {cat_id: cat["name"].strip() for cat_id, cat in coco.cats.items()}
    unknown = [n for n in dict.fromkeys(names.values()) if n and lexicon.category_of(n) is None]
    if unknown:
        lexicon = lexicon.extended(unknown)
    category = {cat_id: lexicon.category_of(n) for cat_id, n in names.items()}

    objects: dict[int, set[str]] = {image_id: set() for image_id in coco.imgs}
    for ann in coco.anns.values():
        objects[ann["image_id"]].add(category[ann["category_id"]])
    file_names = {image["file_name"]: image_id for image_id, image in coco.imgs.items()}
    bases = Counter(name.rsplit("/", 1)[-1] for name in file_names)
    for name, image_id in list(file_names.items()):
        base = name.rsplit("/", 1)[-1]
        if bases[base] == 1:
            file_names.setdefault(base, image_id)

    sources: dict[str, Any] = {"annotations": _source(annotations)}
    if ref_captions is not None:
        for image_id, caption in _reference_captions(ref_captions):
            if image_id in objects:
                objects[image_id].update(m.category for m in lexicon.find(caption))
        sources["ref_captions"] = _source(ref_captions)
    return GroundTruth({k: frozenset(v) for k, v in objects.items()}, file_names, lexicon, sources)




def _reference_captions(ref_captions: str | Path | dict) -> Iterable[tuple[int, str]]:
    data = ref_captions if isinstance(ref_captions, dict) else read_json(ref_captions)
    where = "reference captions" if isinstance(ref_captions, dict) else str(ref_captions)
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list):
        raise SeedError(f"{where}: not a COCO captions file (needs annotations with image_id and caption)")
    for i, ann in enumerate(anns, 1):
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str) or "image_id" not in ann:
            raise SeedError(f"{where}: annotation {i} lacks image_id or a caption string")
        yield ann["image_id"], ann["caption"]


def _source(source: str | Path | dict) -> dict[str, str | None]:
    if isinstance(source, dict):
        return {"path": None, "md5": None}
    return {"path": str(source), "md5": md5_file(source)}


# --------------------------------------------------------------------------- captions
def read_captions(path: str | Path) -> list[dict]:
    """Caption records from JSON Lines (or one JSON array): ``image_id`` (int) or ``image``
    (file name), and ``caption`` (or ``text``). Other fields are kept."""
    path = Path(path)
    records = read_records(path)
    if not records:
        raise SeedError(f"{path}: no captions (empty file)")
    return [_caption_record(r, f"{path}: record {i}") for i, r in enumerate(records, 1)]


def _caption_record(record: Mapping[str, Any], where: str) -> dict:
    """``record`` with ``caption`` set and ``image_id`` an int; refused if it cannot be."""
    out = dict(record)
    if "caption" not in out:
        if "text" not in out:
            raise SeedError(f"{where} has neither caption nor text")
        out["caption"] = out.pop("text")
    if not isinstance(out["caption"], str):
        raise SeedError(f"{where}: the caption is {type(out['caption']).__name__}, not a string")
    if "image_id" in out:
        value = out["image_id"]
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise SeedError(f"{where} has image_id {out['image_id']!r}; expected an integer COCO id")
        out["image_id"] = value
    elif not isinstance(out.get("image"), str) or not out["image"]:
        raise SeedError(f"{where} has neither image_id nor image")
    return out


# --------------------------------------------------------------------------- scoring
def score_captions(captions: Iterable[Mapping[str, Any]], truth: GroundTruth) -> dict[str, Any]:
    """Score caption records against the ground truth → ``{"metrics", "captions"}``.

    ``captions`` are records as :func:`read_captions` accepts them. Each entry of
    ``captions`` in the result holds the caption's mentions (category, surface, character
    span, hallucinated), its hallucinated words, ground truth and recalled categories.
    Captions of images absent from the annotations are refused, all counted in one error.
    """
    records = [_caption_record(r, f"caption {i}") for i, r in enumerate(captions, 1)]
    if not records:
        raise SeedError("no captions to score")
    image_ids = [truth.image_id(r) for r in records]
    unknown = [r.get("image_id", r.get("image")) for r, i in zip(records, image_ids) if i is None]
    if unknown:
        examples = ", ".join(str(u) for u in list(dict.fromkeys(unknown))[:3])
        raise SeedError(
            f"{len(unknown)} of {len(records)} captions name images that are not in the annotations (e.g. {examples})"
        )

    details = []
    for record, image_id in zip(records, image_ids):
        gt = truth.objects[image_id]
        mentions = truth.lexicon.find(record["caption"])
        mentioned = {m.category for m in mentions}
        entry = {"image_id": image_id}
        if "image" in record:
            entry["image"] = record["image"]
        entry.update(
            caption=record["caption"],
            words=len(record["caption"].split()),
            mentions=[
                {"category": m.category, "surface": m.surface, "start": m.start, "end": m.end, "hallucinated": m.category not in gt}
                for m in mentions
            ],
            hallucinated=[m.surface for m in mentions if m.category not in gt],
            ground_truth=sorted(gt),
            recalled=sorted(gt & mentioned),
        )
        details.append(entry)
    return {"metrics": chair_metrics(details), "captions": details}


def chair_metrics(details: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """CHAIR_i, CHAIR_s, recall, mean length and counts from per-caption details."""
    details = list(details)
    n = len(details)
    n_mentions = sum(len(d["mentions"]) for d in details)
    n_hallucinated = sum(len(d["hallucinated"]) for d in details)
    gt_total = sum(len(d["ground_truth"]) for d in details)
    return {
        "chair_i": n_hallucinated / n_mentions if n_mentions else None,
        "chair_s": sum(bool(d["hallucinated"]) for d in details) / n if n else None,
        "recall": sum(len(d["recalled"]) for d in details) / gt_total if gt_total else None,
        "mean_length": sum(d["words"] for d in details) / n if n else None,
        "n": n,
        "n_mentions": n_mentions,
        "n_hallucinated": n_hallucinated,
    }


# --------------------------------------------------------------------------- files → results
def evaluate_chair(
    captions: str | Path | Iterable[Mapping[str, Any]],
    annotations: str | Path | dict,
    ref_captions: str | Path | dict | None = None,
    lexicon: str | Path | ObjectLexicon | None = None,
) -> dict[str, Any]:
    """Score a captions file (or records) → ``{"benchmark", "metrics", "manifest", "captions"}``.

    ``lexicon`` is an :class:`ObjectLexicon` or a user word list (see
    :meth:`ObjectLexicon.default`) added to the default one.
    """
    lexicon_file = None
    if not isinstance(lexicon, ObjectLexicon):
        lexicon_file, lexicon = lexicon, ObjectLexicon.default(lexicon)
    records = read_captions(captions) if isinstance(captions, (str, Path)) else list(captions)
    truth = load_ground_truth(annotations, ref_captions, lexicon)
    scored = score_captions(records, truth)
    manifest = {
        "model": None,  # set when the captions were generated here rather than read from a file
        "captions": _source(captions) if isinstance(captions, (str, Path)) else {"path": None, "md5": None},
        **truth.sources,
        "lexicon": {
            "path": str(lexicon_file) if lexicon_file is not None else None,
            "md5": md5_file(lexicon_file) if lexicon_file is not None else None,
            "categories": len(truth.lexicon.categories),
        },
        "annotated_images": len(truth.objects),
        "recall": RECALL_DEFINITION,
        "versions": library_versions(),
    }
    return {"benchmark": "chair", "metrics": scored["metrics"], "manifest": manifest, "captions": scored["captions"]}


def write_result(path: str | Path, result: Mapping[str, Any]) -> None:
    """Write a CHAIR result (from :func:`evaluate_chair`) as JSON, atomically."""
    write_json(path, dict(result))


# --------------------------------------------------------------------------- a model's captions
def captions_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f"{output.stem}.captions.jsonl")


def evaluate_chair_model(
    model: VisionLanguageModel | ModelSpec,
    config: ChairConfig = ChairConfig(),
    *,
    decoding: Decoding = Decoding(),
    output: str | Path | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Caption ``num_images`` annotated images (sampled with ``image_seed``, taken in id order)
    with "Please describe this image in detail." (``decoding``, greedy by default) and score them
    with CHAIR. ``model`` is loaded (a :class:`~seed.adapters.ModelSpec`) once the images are
    checked. With ``output``, the captions go beside it (:func:`captions_path`).
    """
    if config.images is None or config.annotations is None:
        raise SeedError("captioning with a model needs --images DIR and --annotations instances.json")
    if output is not None:
        check_output(output)
    coco, _ = load_coco(config.annotations)
    ids = sorted(coco.imgs)
    if len(ids) > config.num_images:
        ids = sorted(random.Random(config.image_seed).sample(ids, config.num_images))
    names = [coco.imgs[i].get("file_name") for i in ids]
    check_images(config.images, names)

    vlm = load_spec(model) if isinstance(model, ModelSpec) else model
    start = time.time()
    images = LazyImages(config.images, names)
    captions = describe_images(vlm, images, batch_size=config.batch_size, max_new_tokens=config.max_new_tokens, decoding=decoding)
    log(f"{len(captions)} captions in {time.time() - start:.1f} s")
    records = [{"image_id": i, "image": n, "prompt": CAPTION_PROMPT, "caption": c} for i, n, c in zip(ids, names, captions)]
    result = evaluate_chair(records, config.annotations, ref_captions=config.ref_captions, lexicon=config.lexicon)
    result["manifest"].update(
        model=vlm.name_or_path,
        adapter=vlm.adapter,
        prompt=CAPTION_PROMPT,
        decoding=decoding_manifest(decoding),
        max_new_tokens=config.max_new_tokens,
        images={"path": str(config.images), "count": len(ids), "sample_seed": config.image_seed},
    )
    if output is not None:
        path = captions_path(output)
        write_jsonl(path, records)
        result["manifest"]["captions"] = {"path": str(path), "md5": md5_file(path)}
        write_result(output, result)
    return result
