"""``seed detect``: which objects in any caption are hallucinated (the HKD4VLM task).

Input: records ``{"image", "caption"}`` (captions from any model or person), optionally with
``"options"``, the objects to judge (default: the objects the lexicon finds in the caption).
Each option gets every selected identification signal's h (:func:`seed.identify.signal_scores`;
contrast and uncertainty read the caption's own mention of it) and their product of experts,
the hallucination probability; ``flagged`` is probability > τ. With COCO annotations, each
signal is scored as a detector of absent objects (:func:`detection_metrics`).

``seed detect train`` (:func:`train_detector`) distils the slow identification (self-probe, lens,
sampled-caption consistency, masked-view evidence on unlabelled images) into the one-pass
:class:`~seed.detector.Detector`, coarse to fine: first the teacher's image-level object scores
(read at "There is a {object}." for every object of the pool), then its scores of the objects the
model's own captions name.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image

from seed.adapters import VisionLanguageModel, load_spec
from seed.adapters.hea import base_fingerprint
from seed.coco import objects_by_file
from seed.config import DetectConfig, DetectorConfig, ModelSpec
from seed.detector import CONFIG_FILE, Detector, Head, mention_features, stack_examples, template
from seed.errors import SeedError
from seed.identify import check_identification, combine, informative, pool_margins, signal_scores
from seed.io import LazyImages, check_images, check_replaceable, image_files, open_image, read_records
from seed.isolate import SurfaceBans
from seed.lexicon import ObjectLexicon
from seed.prompts import CAPTION_PROMPT


def read_caption_records(source: str | Path | Sequence[dict], lexicon: ObjectLexicon) -> list[dict]:
    """Caption records with ``options`` resolved to lexicon categories; bad input is one line."""
    records = read_records(source) if isinstance(source, (str, Path)) else list(source)
    where = str(source) if isinstance(source, (str, Path)) else "captions"
    if not records:
        raise SeedError(f"{where}: no captions")
    out = []
    for n, r in enumerate(records, 1):
        if not isinstance(r.get("image"), str) or not isinstance(r.get("caption"), str):
            raise SeedError(f"{where}: record {n} needs an \"image\" (file name) and a \"caption\" (text)")
        options = r.get("options")
        if options is None:
            categories = list(dict.fromkeys(m.category for m in lexicon.find(r["caption"])))
        elif not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise SeedError(f"{where}: record {n}: \"options\" must be a list of object names")
        else:
            categories = [lexicon.category_of(o) for o in options]
            unknown = [o for o, c in zip(options, categories) if c is None]
            if unknown:
                raise SeedError(f"{where}: record {n}: unknown object {unknown[0]!r} (not in the object lexicon; see --lexicon)")
        out.append({**r, "options": list(dict.fromkeys(categories))})
    return out


@torch.no_grad()
def detect(
    model: VisionLanguageModel | ModelSpec, captions: str | Path | Sequence[dict], images: str | Path, config: DetectConfig | None = None
) -> list[dict]:
    """Judge every option of every caption → ``{"image", "caption", "options": [{"object",
    "probability", "flagged", "signals": {name: h}}]}`` per record, in order."""
    config = config or DetectConfig()
    lexicon = ObjectLexicon.default(config.identify.lexicon)
    records = read_caption_records(captions, lexicon)
    check_images(images, [r["image"] for r in records])
    vlm = load_spec(model) if isinstance(model, ModelSpec) else model
    check_identification(vlm, config.identify, lexicon)
    bans = SurfaceBans(vlm.tokenizer, lexicon, {c for r in records for c in r["options"]})
    out = []
    for start in range(0, len(records), config.batch_size):
        batch = records[start : start + config.batch_size]
        out += _detect_batch(vlm, batch, images, config, lexicon, bans)
    return out


def _detect_batch(vlm, records: list[dict], folder, config: DetectConfig, lexicon, bans) -> list[dict]:
    loaded = LazyImages(folder, [r["image"] for r in records])
    images = [loaded[i] for i in range(len(records))]
    pools = [r["options"] for r in records]
    margins = [dict.fromkeys(pool, 0.0) for pool in pools]  # the pools; the self-probe's margins when it is asked for
    if "self-probe" in config.identify.signals:
        margins = pool_margins(vlm, images, pools, config.batch_size * 4)
    captions = [r["caption"] for r in records]
    by_signal = signal_scores(vlm, images, captions, pools, margins, config.identify, lexicon, bans, None, config.max_new_tokens)
    kept = {name: scores for name, scores in by_signal.items() if informative(scores)}
    out = []
    for i, r in enumerate(records):
        combined = combine([scores[i] for scores in kept.values()])
        options = []
        for c in r["options"]:
            signals = {name: scores[i][c] for name, scores in by_signal.items() if c in scores[i]}
            probability = combined.get(c, 0.5)
            options.append({"object": c, "probability": probability, "flagged": probability > config.identify.tau, "signals": signals})
        out.append({"image": r["image"], "caption": r["caption"], "options": options})
    return out


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """The probability that a hallucinated option outscores a present one (ties half); None
    without both kinds."""
    ranked = torch.tensor(scores, dtype=torch.float64)
    y = torch.tensor(labels, dtype=torch.bool)
    pos, neg = ranked[y], ranked[~y]
    if not len(pos) or not len(neg):
        return None
    wins = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    return wins.mean().item()


def detection_metrics(results: Sequence[dict], annotations: str | Path, tau: float = 0.5) -> dict[str, dict]:
    """Per signal and for the combined probability: AUROC, precision, recall and F1 of h > τ as a
    detector of options the image's annotations do not hold, and how many options it scored."""
    truth = objects_by_file(annotations)
    missing = sorted({r["image"] for r in results} - truth.keys())
    if missing:
        raise SeedError(f"{annotations}: no annotations for {len(missing)} caption image(s), e.g. {missing[0]}")
    rows: dict[str, list[tuple[float, int]]] = {}
    for r in results:
        for o in r["options"]:
            label = int(o["object"] not in truth[r["image"]])
            for name, h in {**o["signals"], "combined": o["probability"]}.items():
                rows.setdefault(name, []).append((h, label))
    metrics = {}
    for name, pairs in rows.items():
        scores, labels = [h for h, _ in pairs], [y for _, y in pairs]
        hits = sum(h > tau and y for h, y in pairs)
        flagged, positives = sum(h > tau for h in scores), sum(labels)
        precision, recall = (hits / flagged if flagged else 0.0), (hits / positives if positives else 0.0)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        metrics[name] = {"auroc": auroc(scores, labels), "precision": precision, "recall": recall, "f1": f1, "n": len(pairs), "hallucinated": positives}
    return metrics


# --------------------------------------------------------------------------- seed detect train
def teacher_examples(vlm, images: list[Image.Image], config: DetectorConfig, lexicon, bans, pool: list[str], layer: int):
    """(coarse, fine) lists of (mention state, image states, teacher h) for a batch of unlabelled images."""
    n = len(images)
    captions = vlm.generate(images, [CAPTION_PROMPT] * n, max_new_tokens=config.max_new_tokens)
    margins = pool_margins(vlm, images, [pool] * n, config.batch_size * 4)
    asked = [sorted({m.category for m in lexicon.find(c)} & set(pool)) for c in captions]
    by_signal = signal_scores(vlm, images, captions, asked, margins, config.teacher, lexicon, bans, None, config.max_new_tokens)
    teacher = [combine([scores[i] for scores in by_signal.values()]) for i in range(n)]
    coarse, fine = [], []
    for i, image in enumerate(images):  # "There is a {c}." for every object of the pool, in one batch per image
        for (named, states), c in zip(mention_features(vlm, [image] * len(pool), [template(c) for c in pool], lexicon, layer), pool):
            if c in named:
                coarse.append((named[c], states, teacher[i][c]))
    for (named, states), h in zip(mention_features(vlm, images, captions, lexicon, layer), teacher):
        fine += [(m, states, h[c]) for c, m in named.items() if c in h]
    return coarse, fine


def train_detector(vlm, images: str | Path, out: str | Path, config: DetectorConfig | None = None, lexicon: ObjectLexicon | None = None) -> dict:
    """Distil the teacher into a head on ``vlm``'s hidden states, from the images of a folder
    (no labels read); save it to ``out``; return what it learned from."""
    config, lexicon = config or DetectorConfig(), lexicon or ObjectLexicon.default(None)
    check_replaceable(out, CONFIG_FILE)
    check_identification(vlm, config.teacher, lexicon)
    files = image_files(images)[: config.images]
    if not files:
        raise SeedError(f"{images}: no images to learn from")
    start = time.time()
    torch.manual_seed(config.seed)
    bans = SurfaceBans(vlm.tokenizer, lexicon, config.teacher.categories or lexicon.categories)
    pool = list(config.teacher.categories or sorted(bans.category_ids()))
    layers = vlm.text_layers
    layer = config.layer if config.layer is not None else layers // 2
    coarse, fine = [], []
    for k in range(0, len(files), config.batch_size):
        c, f = teacher_examples(vlm, [open_image(p) for p in files[k : k + config.batch_size]], config, lexicon, bans, pool, layer)
        coarse, fine = coarse + c, fine + f
    if not coarse:
        raise SeedError("the teacher gave the detector nothing to learn from (no object the tokenizer can spell?)")
    head = Head(coarse[0][0].shape[0])
    states = torch.stack([m for m, _, _ in coarse + fine])
    head.mean.copy_(states.mean(0))
    head.std.copy_(states.std(0).clamp_min(1e-6))
    losses = {stage: _fit(head, examples, steps, config.lr)
              for stage, examples, steps in (("coarse", coarse, config.coarse_steps), ("fine", fine, config.fine_steps))}  # fmt: skip
    meta = {"base_model": vlm.name_or_path, **base_fingerprint(vlm.name_or_path), "config": asdict(config), "pool": pool}
    stats = {"images": len(files), "coarse_examples": len(coarse), "fine_examples": len(fine), "losses": losses, "seconds": round(time.time() - start, 1)}
    Detector(head, layer, lexicon, {**meta, "trained": stats}).save(out)
    return stats


def _fit(head: Head, examples, steps: int, lr: float, batch: int = 512) -> float | None:
    """Adam on the binary cross-entropy against the teacher's soft labels, in random minibatches;
    the last loss."""
    if not examples or not steps:
        return None
    m, image, keep, y = stack_examples(examples)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        rows = torch.randint(len(y), (min(batch, len(y)),))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(m[rows], image[rows], keep[rows]), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
    return loss.item()
