"""How well each self-signal flags hallucinated object mentions, against the oracle.

Captions are generated greedily on held-out world images; every object mention is labelled by
the image's annotations (hallucinated = category absent) and scored by each signal as purify
scores it (h ∈ [0, 1]), and by the default combination (self-probe × lens, a product of experts;
the earlier default self-probe × consistency beside it). Then the same for every "Yes" the model
gives to "Is there a …?" over all categories: the answers POPE counts. Prints AUROC, and
precision / recall of the flag h > 0.5.

    python benchmarks/identify_signals.py [--world DIR] [--num-images 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from seed.adapters import load
from seed.identify import combine, consistency_scores, find_mentions, lens_scores, region_evidence, shared_evidence_scores, to_unit
from seed.coco import load_coco
from seed.isolate import category_tokens, object_token_map
from seed.lexicon import ObjectLexicon
from seed.prompts import CAPTION_PROMPT
from seed.world import World


def auroc(scores: list[float], labels: list[int]) -> float:
    """Probability that a random positive outranks a random negative (ties count half)."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=Path, default=None)
    ap.add_argument("--num-images", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8, help="sampled captions per image (consistency)")
    args = ap.parse_args()
    world = World(args.world) if args.world else World.default()
    vlm = load(str(world.model), device="cpu")
    coco, _ = load_coco(world.annotations(world.eval_split))
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    ids = sorted(coco.imgs)[: args.num_images]
    truth = {i: {names[a["category_id"]] for a in coco.imgToAnns[i]} for i in ids}
    images = {i: Image.open(world.images(world.eval_split) / coco.imgs[i]["file_name"]).convert("RGB") for i in ids}
    lexicon = ObjectLexicon.default()
    categories = [c["name"] for c in coco.dataset["categories"]]
    words = {c: ids for c, ids in category_tokens(object_token_map(vlm.tokenizer, lexicon)).items() if c in categories}

    def default(h: dict[str, float]) -> None:
        h["default (self-probe × lens)"] = combine([{0: h["self-probe"]}, {0: h["lens"]}])[0]
        h["self-probe × consistency"] = combine([{0: h["self-probe"]}, {0: h["consistency"]}])[0]

    rows, answers = [], []  # (label, {signal: score}) for caption mentions and for "Yes" answers
    for k in range(0, len(ids), args.batch_size):
        chunk = ids[k : k + args.batch_size]
        imgs = [images[i] for i in chunk]
        prompts = [CAPTION_PROMPT] * len(chunk)
        captions = vlm.generate(imgs, prompts, max_new_tokens=48)
        sampled = [[] for _ in chunk]
        for _ in range(args.samples):
            for b, text in enumerate(vlm.generate(imgs, prompts, max_new_tokens=48, do_sample=True)):
                sampled[b].append({m.category for m in lexicon.find(text)})
        lens = lens_scores(vlm, imgs, words)
        logits, resp, mask = vlm.response_logits(imgs, prompts, captions)
        logp = logits.log_softmax(-1).gather(-1, resp[..., None])[..., 0]
        null = {
            kind: vlm.response_logits(imgs, prompts, captions, null_image=kind)[0]
            .log_softmax(-1)
            .gather(-1, resp[..., None])[..., 0]
            for kind in ("grey", "none", "noise")
        }
        for b, i in enumerate(chunk):
            consistency = consistency_scores(sampled[b], args.samples, categories)
            margin, evidence = region_evidence(vlm, images[i], categories)
            shared = shared_evidence_scores(margin, evidence)
            for c, name in enumerate(categories):
                if margin[c] > 0:
                    h = {"self-probe": to_unit(-margin[c]).item(), "consistency": consistency[name]}
                    h.update({"lens": lens[b][name], "evidence": shared[c].item()})
                    default(h)
                    answers.append((int(name not in truth[i]), h))
            mentions = find_mentions(vlm.tokenizer, resp[b][mask[b]].tolist(), lexicon)
            for m in mentions:
                c = categories.index(m.category)
                t = m.token
                h = {f"contrast-{kind}": to_unit(null[kind][b, t] - logp[b, t]).item() for kind in ("grey", "none", "noise")}
                h["uncertainty"] = 1 - logp[b, t].exp().item()
                h["self-probe"] = to_unit(-margin[c]).item()
                h["consistency"] = consistency[m.category]
                h["evidence"] = shared[c].item()
                h["lens"] = lens[b][m.category]
                default(h)
                rows.append((int(m.category not in truth[i]), h))
    report("caption mentions", rows)
    report('"Yes" answers to "Is there a …?" (every category)', answers)


def report(what: str, rows: list[tuple[int, dict[str, float]]]) -> None:
    labels = [y for y, _ in rows]
    print(f"{what}: {len(rows)}, {sum(labels)} hallucinated")
    print(f"  {'signal':36s} AUROC  precision  recall  (flag: h > 0.5)")
    for signal in rows[0][1]:
        scores = [s[signal] for _, s in rows]
        flags = [h > 0.5 for h in scores]
        hits = sum(f and y for f, y in zip(flags, labels))
        precision = hits / max(sum(flags), 1)
        recall = hits / max(sum(labels), 1)
        print(f"  {signal:36s} {auroc(scores, labels):.3f}  {precision:9.3f}  {recall:6.3f}")


if __name__ == "__main__":
    main()
