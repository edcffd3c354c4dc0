"""``seed detect``: which objects in any caption are hallucinated (the HKD4VLM task).

Input: records ``{"image", "caption"}`` (captions from any model or person), optionally with
``"options"``, the objects to judge (default: the objects the lexicon finds in the caption).
Each option gets every selected identification signal's h (:func:`seed.identify.signal_scores`;
contrast and uncertainty read the caption's own mention of it) and their product of experts,
the hallucination probability; ``flagged`` is probability > τ. With COCO annotations, each
signal is scored as a detector of absent objects (:func:`detection_metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from seed.adapters import VisionLanguageModel, load_spec
from seed.config import DetectConfig, ModelSpec
from seed.detector import Detector
from seed.errors import SeedError
from seed.identify import combine, informative, signal_scores, yes_margin
from seed.coco import objects_by_file
from seed.io import LazyImages, check_images, read_records
from seed.isolate import SurfaceBans
from seed.lexicon import ObjectLexicon


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
    student = Detector.load(config.detector, vlm, lexicon) if config.detector else None
    bans = SurfaceBans(vlm.tokenizer, lexicon, {c for r in records for c in r["options"]})
    out = []
    for start in range(0, len(records), config.batch_size):
        batch = records[start : start + config.batch_size]
        out += _student_batch(vlm, student, batch, images, config) if student else _detect_batch(vlm, batch, images, config, lexicon, bans)
    return out


def _student_batch(vlm, student: Detector, records: list[dict], folder, config: DetectConfig) -> list[dict]:
    """The distilled detector's judgement: one teacher-forced pass per caption."""
    loaded = LazyImages(folder, [r["image"] for r in records])
    probs = student.probabilities(vlm, [loaded[i] for i in range(len(records))], [r["caption"] for r in records], [r["options"] for r in records])
    return [
        {"image": r["image"], "caption": r["caption"], "options": [
            {"object": c, "probability": p[c], "flagged": p[c] > config.identify.tau, "signals": {"detector": p[c]}} for c in r["options"] if c in p
        ]}  # fmt: skip
        for r, p in zip(records, probs)
    ]


def _detect_batch(vlm, records: list[dict], folder, config: DetectConfig, lexicon, bans) -> list[dict]:
    loaded = LazyImages(folder, [r["image"] for r in records])
    images = [loaded[i] for i in range(len(records))]
    pools = [r["options"] for r in records]
    flat = yes_margin(vlm, [im for im, pool in zip(images, pools) for _ in pool], [c for pool in pools for c in pool], config.batch_size * 4)
    margins, k = [], 0
    for pool in pools:
        margins.append(dict(zip(pool, flat[k : k + len(pool)].tolist())))
        k += len(pool)
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
