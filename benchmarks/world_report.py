"""The embedded world's hallucination, a world beside its matched control, in one run.

For each world (test split): build time, POPE (random / popular / adversarial: F1 and yes-ratio),
CHAIR on the model's captions, the share of captions that name an absent co-occurrence partner of
a visible object, and the rates at which a caption names an absent partner and an absent
non-partner class (per absent class). Then, on the biased world's own captions, how well every
identification signal (the lens at layer 0 and as a logit lens at every layer) tells a
hallucinated object from a present one (AUROC, and precision /
recall / F1 of the flag h > 0.5), as ``seed detect --annotations`` scores them. With ``--oracle``,
the ceiling: ``seed evolve --identify oracle`` on the world (``--oracle-rounds`` rounds, all run,
the best on val kept; figures from test).

    python benchmarks/world_report.py [--seed 0 | --world DIR --control DIR] [--oracle] [--output report.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from seed.adapters import load
from seed.config import SIGNALS, ChairConfig, DetectConfig, EvolveConfig, IdentifyConfig, PopeConfig, PurifyConfig
from seed.detection import detect, detection_metrics
from seed.evaluation.chair import evaluate_chair_model
from seed.evaluation.pope import SPLITS, evaluate_pope
from seed.evolve import evolve
from seed.io import write_json
from seed.report import detection_table
from seed.world import World, build_world
from seed.world.scenes import absent_partners
from seed.world.vocab import CLASS_NAMES


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
    counts = {"partner": [0, 0], "other": [0, 0]}  # [named, absent]
    for truth, partners, named in _captions(chair):
        for name in CLASS_NAMES:
            if name not in truth:
                kind = counts["partner" if name in partners else "other"]
                kind[0] += name in named
                kind[1] += 1
    return tuple(n / max(a, 1) for n, a in counts.values())


def hallucination(world: World) -> tuple[dict, list[dict]]:
    """A world's test-split figures, and its model's captions (for the signals)."""
    vlm = load(str(world.model), device="cpu")
    images = str(world.images(world.eval_split))
    pope = {s: evaluate_pope(vlm, PopeConfig(splits=(s,), images=images, questions=world.pope_questions))["metrics"] for s in SPLITS}
    chair = evaluate_chair_model(vlm, ChairConfig(images=images, annotations=str(world.annotations(world.eval_split))))
    figures = {
        "world": str(world.root),
        "build_seconds": json.loads((world.root / "world.json").read_text())["build_seconds"],
        "pope": pope,
        "chair": chair["metrics"],
        "absent_partner_captions": partner_rate(chair),
        "named_if_absent": dict(zip(("partner", "other"), naming_rates(chair))),
    }
    return figures, [{"image": c["image"], "caption": c["caption"]} for c in chair["captions"]]


def signal_quality(world: World, captions: list[dict], limit: int) -> dict:
    """Every label-free signal (and the default combination) as a detector of the hallucinated
    objects in ``captions``, against the test annotations."""
    vlm = load(str(world.model), device="cpu")
    signals = tuple(s for s in SIGNALS if s != "oracle")
    images, truth = world.images(world.eval_split), world.annotations(world.eval_split)
    def judged(config: IdentifyConfig) -> dict:
        return detection_metrics(detect(vlm, captions[:limit], images, DetectConfig(config)), truth)

    out = {k: v for k, v in judged(IdentifyConfig(signals=signals)).items() if k != "combined"}
    for layer in range(1, vlm.model.get_decoder().config.num_hidden_layers + 1):
        out[f"logit lens, layer {layer}"] = judged(IdentifyConfig(signals=("lens",), lens_layers=(layer,)))["lens"]
    out["default (" + " × ".join(IdentifyConfig().signals) + ")"] = judged(IdentifyConfig())["combined"]
    return out


def oracle_ceiling(world: World, out: Path, max_rounds: int) -> dict:
    """``seed evolve --identify oracle`` on the world, every one of ``max_rounds`` rounds: test
    figures of round 0 and the round kept on val."""
    oracle = PurifyConfig(IdentifyConfig(signals=("oracle",)))
    config = EvolveConfig(world=str(world.root), purify=oracle, rounds=max_rounds, patience=max_rounds)
    history = evolve(out=out, config=config)
    rounds = {e["round"]: e["eval"] for e in history["rounds"]}
    return {"before": rounds[0], "after": rounds[history["best_round"]], "kept_round": history["best_round"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--world", type=Path, help="a built world (default: the default world of --seed)")
    ap.add_argument("--control", type=Path, help="its matched control (default: the control of --seed)")
    ap.add_argument("--signal-captions", type=int, default=300, help="test captions the signals judge")
    ap.add_argument("--oracle", type=Path, help="also run oracle SEED into this folder: the ceiling")
    ap.add_argument("--oracle-rounds", type=int, default=6, help="rounds of the oracle ceiling")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    world = World.existing(args.world) if args.world else World(build_world(seed=args.seed))
    control = World.existing(args.control) if args.control else World(build_world(seed=args.seed, bias=False))
    rows, captions = {}, None
    for name, w in (("world", world), ("matched control", control)):
        rows[name], own = hallucination(w)
        captions = captions or own
    table = Table(title=f"embedded world (test split): {world.root.name} and {control.root.name}")
    columns = ("world", "build s", "F1 rand", "F1 pop", "F1 adv", "yes rand", "yes adv", "CHAIR_i", "CHAIR_s", "recall", "partner captions")
    for col in (*columns, "named: absent partner", "named: absent other"):
        table.add_column(col, justify="right")
    for name, r in rows.items():
        p, c = r["pope"], r["chair"]
        table.add_row(
            name, f"{r['build_seconds']:.0f}", *(f"{100 * p[s]['f1']:.1f}" for s in ("random", "popular", "adversarial")),
            f"{100 * p['random']['yes_ratio']:.1f}", f"{100 * p['adversarial']['yes_ratio']:.1f}",
            *(f"{100 * c[k]:.1f}" for k in ("chair_i", "chair_s", "recall")), f"{100 * r['absent_partner_captions']:.1f}%",
            f"{100 * r['named_if_absent']['partner']:.1f}%", f"{100 * r['named_if_absent']['other']:.1f}%",
        )  # fmt: skip
    console = Console(width=180)
    console.print(table)
    signals = signal_quality(world, captions, args.signal_captions)
    console.print(detection_table(signals))
    result = {"worlds": rows, "signals": signals}
    if args.oracle:
        result["oracle"] = oracle_ceiling(world, args.oracle, args.oracle_rounds)
        o = result["oracle"]
        console.print(
            "oracle SEED (kept round {}): adversarial F1 {:.1f} → {:.1f}, CHAIR_i {:.1f} → {:.1f}".format(
                o["kept_round"], *(100 * o[k]["pope"]["adversarial"]["f1"] for k in ("before", "after")),
                *(100 * o[k]["chair"]["chair_i"] for k in ("before", "after")),
            )  # fmt: skip
        )
    if args.output:
        write_json(args.output, result)


if __name__ == "__main__":
    main()
