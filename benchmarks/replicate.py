"""SEED replicated across freshly built worlds: every method on every world's test split, the mean
± sd over worlds, and a bootstrap 95 % CI of each method's gain over the base (images resampled
within each world, the same resample for method and base).

    python benchmarks/replicate.py                                # worlds 101, 102, 103, default variant
    python benchmarks/replicate.py --seeds 201,202,203 --answer-bias 0 --out runs/replicate-caption-only
    python benchmarks/replicate.py --methods base,seed,oracle    # a subset of the rows

World seeds must be ones no default was chosen on (seed 0 chose the world and the recipe). Rows
per world: ``base``; ``seed`` (default ``seed evolve``: its identification, rounds kept on the
world's val split); ``oracle`` (the same with ``--identify oracle``, a ceiling: it runs all
``--oracle-rounds`` rounds and keeps the best on val); ``sft`` and ``forward-kl``
(one round from the base on the SAME shards as SEED's round 1, SEED's hyperparameters);
``vcd`` and ``purified`` (decoding-time baselines on the base). On the first world the round-1
distillation is repeated with every further ``--distill-seeds`` seed (distillation seed variance).
A row is kept in OUT/world-<seed>/<row>/ and reused by a rerun. A seed whose build the world's
model check refuses is reported and left out. Prints a markdown table; writes OUT/replicate.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from seed.adapters import load_spec
from seed.config import Decoding, EvolveConfig, ModelSpec
from seed.datasets import resolve_datasets
from seed.distill import distill
from seed.evaluation.pope import join_answers, load_answers, load_questions, parse_answer
from seed.errors import SeedError
from seed.evolve import best_round, evaluate, evolve, in_yes_window, keeps_recall, selection_metrics
from seed.io import library_versions, read_json, write_json
from seed.targets import load_shards
from seed.world import World, WorldConfig, build_world
from seed.world.scenes import BiasConfig

METHODS = ("base", "seed", "oracle", "sft", "forward-kl", "vcd", "purified")
EVOLVED = {"seed": (), "oracle": ("oracle",)}  # identification signals (() = the default)


# --------------------------------------------------------------------------- statistics
def pope_f1(counts: np.ndarray) -> float:
    tp, fp, fn = counts
    return 2 * tp / max(1.0, 2 * tp + fp + fn)


def chair_i(counts: np.ndarray) -> float:
    hallucinated, mentions = counts
    return hallucinated / max(1.0, mentions)


def bootstrap_gain(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], metric: Callable[[np.ndarray], float], draws: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean over worlds of metric(method) − metric(base), and its bootstrap 95 % CI.

    ``pairs`` holds per world the per-image counts ``[images, k]`` of the method and of the base,
    rows in the same image order; each draw resamples a world's images with replacement, the same
    rows for both, and averages the gain over worlds.
    """
    rng = np.random.default_rng(seed)
    point = float(np.mean([metric(m.sum(0)) - metric(b.sum(0)) for m, b in pairs]))
    total = np.zeros(draws)
    for method, base in pairs:
        rows = rng.integers(len(method), size=(draws, len(method)))
        total += [metric(m) - metric(b) for m, b in zip(method[rows].sum(1), base[rows].sum(1))]
    low, high = np.percentile(total / len(pairs), [2.5, 97.5])
    return point, float(low), float(high)


def pope_counts(questions: str | Path, answers: str | Path) -> np.ndarray:
    """[TP, FP, FN] per image of a POPE answers file (yes = positive, official parser), the images
    of the question file in name order; answers are joined to questions as ``seed eval`` joins them."""
    pairs = join_answers(load_questions(questions).questions, load_answers(answers))
    row = {name: i for i, name in enumerate(sorted({q["image"] for q, _ in pairs}))}
    counts = np.zeros((len(row), 3))
    for q, a in pairs:
        truth, yes = q["label"] == "yes", parse_answer(a["answer"]) == "yes"
        if yes or truth:
            counts[row[q["image"]], 0 if yes and truth else 1 if yes else 2] += 1
    return counts


def chair_counts(chair_file: str | Path) -> np.ndarray:
    """[hallucinated mentions, mentions] per captioned image of a CHAIR result file, in name order."""
    captions = sorted(read_json(chair_file)["captions"], key=lambda c: c["image"])
    return np.array([[sum(m["hallucinated"] for m in c["mentions"]), len(c["mentions"])] for c in captions], dtype=float).reshape(-1, 2)


# --------------------------------------------------------------------------- one world
def guard_failure(history: dict, config: EvolveConfig) -> str | None:
    """Why the kept round fails a guard (yes-ratio window or caption recall, on val), or None."""
    kept = best_round(history["rounds"], config)
    if kept is None:
        return "no trained round"
    if not in_yes_window(kept, config):
        _, yes = selection_metrics(kept, config.selection_split)
        return f"val yes-ratio {yes:.3f} outside [{config.yes_ratio[0]}, {config.yes_ratio[1]}]"
    if not keeps_recall(kept, history["rounds"], config):
        return f"val caption recall below {config.min_recall:.0%} of the base's"
    return None


def check_rows_folder(out: Path, options: dict) -> None:
    """Record what a folder's rows are run with; refuse rows of another world or other options."""
    recorded = out / "options.json"
    if not recorded.is_file():
        write_json(recorded, options)
    elif read_json(recorded) != json.loads(json.dumps(options)):
        raise SystemExit(f"error: {out} holds rows of another world or other options; choose another --out")


def world_rows(
    world: World, out: Path, methods: Sequence[str], config: EvolveConfig, distill_seeds: Sequence[int], oracle_rounds: int
) -> dict[str, dict]:
    """Every row of ``methods`` on one world: {row: {"eval", "dir", "guard"?}}, each kept in OUT/<row>."""
    config = dataclasses.replace(config, world=str(world.root))
    spec, data = resolve_datasets(ModelSpec(), config)
    world_config = read_json(world.root / "world.json")["config"]
    check_rows_folder(out, {"world": world_config, "evolve": dataclasses.asdict(config), "oracle_rounds": oracle_rounds})
    rows: dict[str, dict] = {}

    def row(name: str, run: Callable[[Path], dict]) -> None:
        done = out / name / "result.json"
        if not done.is_file():
            start = time.time()
            write_json(done, {**run(out / name), "seconds": round(time.time() - start, 1)})
        rows[name] = read_json(done)

    def decoded(decoding: Decoding) -> Callable[[Path], dict]:
        return lambda d: {"eval": evaluate(load_spec(spec), data, d, decoding=decoding), "dir": str(d)}

    def evolved(signals: tuple[str, ...]) -> Callable[[Path], dict]:
        def run(folder: Path) -> dict:
            identify = dataclasses.replace(config.purify.identify, **({"signals": signals} if signals else {}))
            run_config = dataclasses.replace(config, purify=dataclasses.replace(config.purify, identify=identify))
            if "oracle" in signals:  # the ceiling: every round, the best kept on val
                run_config = dataclasses.replace(run_config, rounds=oracle_rounds, patience=oracle_rounds)
            history = evolve(spec, out=folder, config=run_config)
            kept = best_round(history["rounds"], run_config)
            figures = kept or history["rounds"][0]
            return {"eval": figures["eval"], "dir": str(folder / f"round-{figures['round']}"), "guard": guard_failure(history, run_config)}

        return run

    def distilled(loss: str, seed: int) -> Callable[[Path], dict]:
        def run(folder: Path) -> dict:
            purified = out / "seed" / "round-1" / "purified"
            records, tensors = load_shards(purified)
            vlm = load_spec(spec)
            distill(vlm, records, tensors, data.purify_images, dataclasses.replace(config.distill, loss=loss, seed=seed), run_name=loss)
            return {"eval": evaluate(vlm, data, folder), "dir": str(folder)}

        return run

    for name in methods:
        if name == "base":
            row(name, decoded(Decoding()))
        elif name in EVOLVED:
            row(name, evolved(EVOLVED[name]))
        elif name in ("sft", "forward-kl"):
            row("seed", evolved(EVOLVED["seed"]))  # its round-1 shards
            row(name, distilled(name, config.distill.seed))
        else:
            row(name, decoded(Decoding("vcd") if name == "vcd" else Decoding("purified")))
    if len(distill_seeds) > 1:  # distillation seed variance: SEED's round 1 again, one row per seed
        row("seed", evolved(EVOLVED["seed"]))
        for seed in distill_seeds:
            row(f"reverse-kl-seed{seed}", distilled("reverse-kl", seed))
    return rows


# --------------------------------------------------------------------------- the table
def summarise(worlds: dict[int, tuple[World, dict[str, dict]]], draws: int) -> dict[str, dict]:
    """Per row: mean and sd over worlds of the figures, bootstrap CIs of its gains over the base."""
    names = sorted({n for _, rows in worlds.values() for n in rows}, key=lambda n: (n not in METHODS, METHODS.index(n) if n in METHODS else 0, n))
    figures = {
        "F1 random": lambda e: e["pope"]["random"]["f1"],
        "F1 popular": lambda e: e["pope"]["popular"]["f1"],
        "F1 adversarial": lambda e: e["pope"]["adversarial"]["f1"],
        "yes-ratio adv.": lambda e: e["pope"]["adversarial"]["yes_ratio"],
        "CHAIR_i": lambda e: e["chair"]["chair_i"],
        "recall": lambda e: e["chair"]["recall"],
    }
    summary = {}
    for name in names:
        present = [(world, rows) for world, rows in worlds.values() if name in rows]
        # A figure a world cannot give (CHAIR_i of captions that name no object) is left out of its mean.
        values = {k: [x for _, rows in present if (x := f(rows[name]["eval"])) is not None] for k, f in figures.items()}
        entry = {"worlds": len(present), "mean": {k: 100 * float(np.mean(v)) if v else None for k, v in values.items()}}
        entry["sd"] = {k: 100 * float(np.std(v, ddof=1)) if len(v) > 1 else None for k, v in values.items()}  # one world: no sd
        entry["guard_failures"] = sum(bool(rows[name].get("guard")) for _, rows in present)
        if name != "base" and all("base" in rows for _, rows in present):
            entry["gain"] = _gains(present, name, draws)
        summary[name] = entry
    return summary


def _gains(present: list[tuple[World, dict]], name: str, draws: int) -> dict[str, list[float]]:
    pope, chair = [], []
    for world, rows in present:
        questions = world.pope_questions.format(split="adversarial")
        pope.append(tuple(pope_counts(questions, Path(rows[r]["dir"]) / "pope-adversarial.answers.jsonl") for r in (name, "base")))
        chair.append(tuple(chair_counts(Path(rows[r]["dir"]) / "chair.json") for r in (name, "base")))
    gain = lambda pairs, metric: [100 * x for x in bootstrap_gain(pairs, metric, draws)]
    return {"F1 adversarial": gain(pope, pope_f1), "CHAIR_i": gain(chair, chair_i)}


def markdown(summary: dict[str, dict]) -> str:
    keys = list(next(iter(summary.values()))["mean"])
    lines = [
        "| method | " + " | ".join(keys) + " | Δ F1 adv. [95 % CI] | Δ CHAIR_i [95 % CI] | guard failures |",
        "| --- " * (len(keys) + 4) + "|",
    ]
    for name, s in summary.items():
        cells = ["n/a" if s["mean"][k] is None else f"{s['mean'][k]:.1f}" + ("" if s["sd"][k] is None else f" ± {s['sd'][k]:.1f}") for k in keys]
        gains = [f"{g[0]:+.1f} [{g[1]:+.1f}, {g[2]:+.1f}]" for g in s.get("gain", {}).values()] or ["", ""]
        lines.append(f"| {name} | " + " | ".join(cells + gains) + f" | {s['guard_failures']}/{s['worlds']} |")
    return "\n".join(lines)


def replicate(
    seeds: Sequence[int], bias: BiasConfig, out: Path, methods: Sequence[str] = METHODS, *,
    config: EvolveConfig | None = None, world_config: WorldConfig | None = None, distill_seeds: Sequence[int] = (0, 1), draws: int = 1000,
    oracle_rounds: int = 6,
) -> dict:  # fmt: skip
    """Build (or reuse) the worlds of ``seeds`` with ``bias`` and run every method on each."""
    start = time.time()
    config = config or EvolveConfig()
    worlds, refused = {}, {}
    for seed in seeds:
        world_cfg = dataclasses.replace(world_config or WorldConfig(), seed=seed, bias=bias)
        try:
            world = World(build_world(config=world_cfg))
        except SeedError as e:  # a build whose model does not look at the image: reported, not measured
            refused[seed] = str(e)
            continue
        first = not worlds
        worlds[seed] = (world, world_rows(world, out / f"world-{seed}", methods, config, distill_seeds if first else (), oracle_rounds))
    if not worlds:
        raise SystemExit(f"error: no usable world among seeds {', '.join(map(str, seeds))}")
    summary = summarise(worlds, draws)
    result = {
        "seeds": list(worlds), "refused": refused, "bias": dataclasses.asdict(bias), "methods": list(methods), "summary": summary,
        "worlds": {s: rows for s, (_, rows) in worlds.items()}, "evolve": dataclasses.asdict(config),
        "oracle_rounds": oracle_rounds, "versions": library_versions(), "seconds": round(time.time() - start, 1),
    }  # fmt: skip
    write_json(out / "replicate.json", result)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="101,102,103", help="world seeds, comma-separated (never used to choose a default)")
    p.add_argument("--caption-bias", type=float, default=BiasConfig.caption_rate)
    p.add_argument("--answer-bias", type=float, default=BiasConfig.answer_rate)
    p.add_argument("--cooccur", type=float, default=BiasConfig.cooccur)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--distill-seeds", default="0,1", help="distillation seeds of the first world's round 1 (variance)")
    p.add_argument("--oracle-rounds", type=int, default=6, help="rounds of the oracle ceiling (all run, the best on val kept)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws")
    p.add_argument("--out", default="runs/replicate")
    args = p.parse_args()
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"error: unknown --methods {', '.join(unknown)} (choose from {', '.join(METHODS)})")
    bias = BiasConfig(args.caption_bias, args.answer_bias, args.cooccur)
    seeds = [int(s) for s in args.seeds.split(",")]
    result = replicate(seeds, bias, Path(args.out), methods, distill_seeds=[int(s) for s in args.distill_seeds.split(",")], draws=args.bootstrap, oracle_rounds=args.oracle_rounds)
    for seed, why in result["refused"].items():
        print(f"world {seed} refused: {why}")
    print(f"worlds {', '.join(map(str, result['seeds']))} ({json.dumps(result['bias'])}), test split, mean ± sd over worlds, in %:\n")
    print(markdown(result["summary"]))
    print(f"\nwrote {Path(args.out) / 'replicate.json'} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
