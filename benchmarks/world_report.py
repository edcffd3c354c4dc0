"""The embedded world's hallucination, biased world beside its no-bias control, in one run.

For each world: build time, POPE (random / popular / adversarial: F1 and yes-ratio) on the
held-out split, CHAIR on held-out captions, and the share of captions that name an absent
co-occurrence partner of a visible object — the planted hallucination — with the rates at which
a caption names an absent partner and an absent non-partner class (per absent class): in a world
without bias the two are alike, and the first figure is then just the model's general
hallucination rate landing on partners.

    python benchmarks/world_report.py [--seed 0] [--output report.json]
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from seed.adapters import load
from seed.config import ChairConfig, PopeConfig
from seed.evaluation.chair import evaluate_chair_model
from seed.evaluation.pope import SPLITS, evaluate_pope
from seed.io import write_json
from seed.world import World, build_world
from seed.world.scenes import absent_partners


def _captions(chair: dict):
    """(objects shown, absent partners of them, objects named) per caption, as CHAIR matched them."""
    for c in chair["captions"]:
        truth = sorted(c["ground_truth"])
        yield set(truth), set(absent_partners(truth)), {m["category"] for m in c["mentions"]}


def partner_rate(chair: dict) -> float:
    """Share of captions naming an absent partner of an object the image shows."""
    return sum(bool(named & partners) for _, partners, named in _captions(chair)) / len(chair["captions"])


def naming_rates(chair: dict) -> tuple[float, float]:
    """(P(named | absent partner), P(named | absent other class)) over all captions."""
    from seed.world.vocab import CLASS_NAMES

    counts = {"partner": [0, 0], "other": [0, 0]}  # [named, absent]
    for truth, partners, named in _captions(chair):
        for name in CLASS_NAMES:
            if name not in truth:
                kind = counts["partner" if name in partners else "other"]
                kind[0] += name in named
                kind[1] += 1
    return tuple(n / max(a, 1) for n, a in counts.values())


def report(seed: int, bias: bool) -> dict:
    world = World(build_world(seed=seed, bias=bias))
    vlm = load(str(world.model), device="cpu")
    images = str(world.images(world.eval_split))
    pope = {s: evaluate_pope(vlm, PopeConfig(splits=(s,), images=images, questions=world.pope_questions))["metrics"] for s in SPLITS}
    chair = evaluate_chair_model(vlm, ChairConfig(images=images, annotations=str(world.annotations(world.eval_split))))
    return {
        "world": str(world.root),
        "build_seconds": json.loads((world.root / "world.json").read_text())["build_seconds"],
        "pope": pope,
        "chair": chair["metrics"],
        "absent_partner_captions": partner_rate(chair),
        "named_if_absent": dict(zip(("partner", "other"), naming_rates(chair))),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    rows = {"biased": report(args.seed, True), "control (no bias)": report(args.seed, False)}
    table = Table(title=f"embedded world, seed {args.seed}")
    columns = ("world", "build s", "F1 rand", "F1 pop", "F1 adv", "yes rand", "yes adv", "CHAIR_i", "recall", "partner captions")
    for col in (*columns, "named: absent partner", "named: absent other"):
        table.add_column(col, justify="right")
    for name, r in rows.items():
        p = r["pope"]
        table.add_row(
            name,
            f"{r['build_seconds']:.0f}",
            *(f"{100 * p[s]['f1']:.1f}" for s in ("random", "popular", "adversarial")),
            f"{100 * p['random']['yes_ratio']:.1f}",
            f"{100 * p['adversarial']['yes_ratio']:.1f}",
            f"{100 * r['chair']['chair_i']:.1f}",
            f"{100 * r['chair']['recall']:.1f}",
            f"{100 * r['absent_partner_captions']:.1f}%",
            f"{100 * r['named_if_absent']['partner']:.1f}%",
            f"{100 * r['named_if_absent']['other']:.1f}%",
        )
    Console(width=160).print(table)
    if args.output:
        write_json(args.output, rows)


if __name__ == "__main__":
    main()
