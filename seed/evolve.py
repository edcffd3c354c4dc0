"""The SEED recipe: self-evolving distillation, round after round (method.md §7).

    round 0   evaluate the model as given (held-out POPE, all three splits, and CHAIR)
    round r   purify with the current model (base + HEA so far)   → OUT/round-r/purified
              distil into the same HEA, continued                 → OUT/round-r/adapter
              evaluate                                            → OUT/round-r/*.json
              append to OUT/history.json; best round so far       → OUT/adapter
              stop when the selection split's F1 stops improving, or its yes-ratio moves
              away from the window (a model that learns to say "no" inflates precision)

A killed run resumes at the first round missing from ``history.json``; a round folder without
a history entry is half-done: its purification is kept when it belongs to the round (same
fingerprint; purify verifies its shards and redoes only what is missing), the rest is redone.
``history.json`` records the run's options and fingerprint (model and adapter by content, data),
and a resume that differs is refused, naming the fields. Purification images and evaluation
images never overlap.

    from seed.evolve import EvolveConfig, evolve
    history = evolve(out="runs/evolve", config=EvolveConfig(rounds=3))
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from seed.adapters import load_spec, resolve_model_name
from seed.adapters.hea import checkpoint_identity, save_hea
from seed.config import ChairConfig, Decoding, EvolveConfig, ModelSpec, PopeConfig, PurifyConfig
from seed.datasets import Datasets, check_disjoint, purification_images, resolve_datasets
from seed.detector import detector_identity
from seed.distill import distill
from seed.errors import SeedError
from seed.evaluation.chair import evaluate_chair_model
from seed.evaluation.pope import SPLITS, evaluate_pope
from seed.io import (
    check_output, differences, image_files, make_dirs, md5_file, md5_strings, read_json, read_json_object, write_dir_atomically, write_json,
)  # fmt: skip
from seed.purify import fingerprint, purify, stale_fields
from seed.report import before_after_table, round_summary, rounds_table
from seed.targets import load_shards
from seed.tracking import check_tracker, log_once

HISTORY_FILE = "history.json"
POPE_KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
CHAIR_KEYS = ("chair_i", "chair_s", "recall", "mean_length")
# Fields that may change between a killed run and its resume (they do not change any result).
RESUMABLE = ("options.rounds", "options.model.device")


# --------------------------------------------------------------------------- evaluation
def evaluate(
    vlm,
    data: Datasets,
    out_dir: str | Path,
    *,
    decoding: Decoding = Decoding(),
    batch_size: int = 32,
    pope_images: int = 500,
    chair_images: int = 500,
) -> dict:
    """POPE (all three splits) and CHAIR of ``vlm`` on the held-out set; answers, captions and
    result files go to ``out_dir``. Returns ``{"pope": {split: metrics}, "pope_mean_f1", "chair"}``."""
    out_dir = Path(out_dir)
    pope = {}
    for split in SPLITS:
        config = PopeConfig(
            splits=(split,), images=str(data.eval_images), questions=data.pope_questions,
            annotations=None if data.pope_questions else str(data.eval_annotations), num_images=pope_images, batch_size=batch_size,
        )  # fmt: skip
        result = evaluate_pope(vlm, config, decoding=decoding, output=out_dir / f"pope-{split}.json")
        pope[split] = {k: result["metrics"][k] for k in POPE_KEYS}
    chair_config = ChairConfig(images=str(data.eval_images), annotations=str(data.eval_annotations), num_images=chair_images)
    chair = evaluate_chair_model(vlm, chair_config, decoding=decoding, output=out_dir / "chair.json")
    return {
        "pope": pope,
        "pope_mean_f1": sum(m["f1"] for m in pope.values()) / len(pope),
        "chair": {k: chair["metrics"][k] for k in CHAIR_KEYS},
    }


# --------------------------------------------------------------------------- selection
def selection_metrics(entry: dict, split: str) -> tuple[float, float]:
    """(F1, yes-ratio) of one history entry on the selection split, from its validation figures
    (its reported ones in runs without a validation set)."""
    m = entry.get("val", entry["eval"])["pope"][split]
    return m["f1"], m["yes_ratio"]


def _window_distance(yes_ratio: float, window: tuple[float, float]) -> float:
    lo, hi = window
    return max(lo - yes_ratio, 0.0, yes_ratio - hi)


def in_yes_window(entry: dict, config: EvolveConfig) -> bool:
    """Whether the entry's yes-ratio on the selection split lies inside ``config.yes_ratio``."""
    return _window_distance(selection_metrics(entry, config.selection_split)[1], config.yes_ratio) == 0.0


def keeps_recall(entry: dict, rounds: Sequence[dict], config: EvolveConfig) -> bool:
    """Whether the entry's caption object recall is at least ``min_recall`` of round 0's."""
    base = next((e for e in rounds if e["round"] == 0), None)
    recall = lambda e: e.get("val", e["eval"])["chair"]["recall"]
    return base is None or recall(entry) >= config.min_recall * recall(base)


def best_round(rounds: Sequence[dict], config: EvolveConfig) -> dict | None:
    """The trained round to keep: yes-ratio inside the window and recall kept first, then the
    highest F1 (earliest on ties)."""
    trained = [e for e in rounds if e["round"] >= 1]
    if not trained or config.select == "last":
        return max(trained, key=lambda e: e["round"], default=None)

    def rank(entry):
        return (in_yes_window(entry, config), keeps_recall(entry, rounds, config), selection_metrics(entry, config.selection_split)[0])

    return max(trained, key=rank)


def stop_reason(rounds: Sequence[dict], config: EvolveConfig) -> str | None:
    """Why no further round should run, judged from the finished entries (round 0 = before SEED);
    a label-free run (``select="last"``) runs every round."""
    if len(rounds) < 2 or config.select == "last":
        return None
    split = config.selection_split
    _, yes = selection_metrics(rounds[-1], split)
    _, previous_yes = selection_metrics(rounds[-2], split)
    if _window_distance(yes, config.yes_ratio) > _window_distance(previous_yes, config.yes_ratio):
        lo, hi = config.yes_ratio
        return f"{split} yes-ratio {yes:.3f} moved away from [{lo:.2f}, {hi:.2f}] (round {rounds[-1]['round']})"
    if not keeps_recall(rounds[-1], rounds, config):
        return f"caption object recall fell below {config.min_recall:.0%} of the base's (round {rounds[-1]['round']})"
    scores = [selection_metrics(e, split)[0] for e in rounds]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    if len(scores) - 1 - best >= config.patience:
        return f"{split} F1 has not improved on round {rounds[best]['round']} ({scores[best]:.4f}) for {config.patience} round(s)"
    return None


# --------------------------------------------------------------------------- history
def read_history(out: Path, spec: ModelSpec, config: EvolveConfig, data: Datasets) -> dict:
    """``OUT/history.json``, or a fresh one; refuses a run made with other options, another
    model or adapter, or other data, naming the fields that differ."""
    now = {"options": _options(spec, config), **run_fingerprint(spec, data)}
    path = out / HISTORY_FILE
    if not path.is_file():
        return {**now, "rounds": [], "best_round": None, "stopped": None}
    history = read_json_object(path)
    changed = [d for d in differences({k: history.get(k) for k in now}, now) if d not in RESUMABLE]
    if changed:
        kinds = {"options": "other options", "identity": "another model or adapter", "data": "other data"}
        what = " and ".join(dict.fromkeys(kinds[c.split(".")[0]] for c in changed))
        raise SeedError(f"{out} holds a run with {what} ({', '.join(changed)} differ{'s' * (len(changed) == 1)}); choose another --out")
    return {**history, **now}


def run_fingerprint(spec: ModelSpec, data: Datasets) -> dict:
    """What a run's results depend on beyond its options: the model and starting adapter by
    content, and the data (purification image names and annotations, the evaluation and
    validation sets' annotations and questions)."""
    val = data.validation()
    return {
        "identity": checkpoint_identity(resolve_model_name(spec.model), spec.adapter),
        "data": {
            "purify_images_md5": md5_strings(purification_images(data)),
            "purify_annotations_md5": md5_file(data.purify_annotations) if data.purify_annotations else None,
            "eval": _set_fingerprint(data),
            "val": None if val is None else _set_fingerprint(val),
        },
    }


def _set_fingerprint(data: Datasets) -> dict:
    """The evaluated set's annotations and questions, by content."""
    questions = None if data.pope_questions is None else {s: md5_file(data.pope_questions.format(split=s)) for s in SPLITS}
    return {"annotations_md5": md5_file(data.eval_annotations), "pope_questions_md5": questions}


def _options(spec: ModelSpec, config: EvolveConfig) -> dict:
    """What a run's results depend on, as plain JSON (tuples become lists, as on a reread)."""
    options = json.loads(json.dumps({"model": asdict(spec), **asdict(config)}, default=str))
    options["detectors"] = detector_identity(config.purify.identify.signals)
    for display_only in ("progress", "log_with", "logging_dir"):
        options["distill"].pop(display_only, None)
    return options


def purification_fits(purified: Path, vlm, data: Datasets, config: PurifyConfig) -> bool:
    """Whether ``purified`` holds a purification (finished or not) of this round: same fingerprint."""
    if not (purified / "manifest.json").is_file():
        return False
    return not stale_fields(purified, fingerprint(vlm, image_files(data.purify_images), config))


def _keep_best(out: Path, history: dict, config: EvolveConfig) -> None:
    """Point ``best_round`` at the best trained round and copy its adapter to OUT/adapter (atomically)."""
    best = best_round(history["rounds"], config)
    if best is None or (history.get("best_round") == best["round"] and (out / "adapter" / "adapter_config.json").is_file()):
        return
    write_dir_atomically(out / "adapter", lambda tmp: shutil.copytree(out / best["adapter"], tmp), marker="adapter_config.json")
    history["best_round"] = best["round"]


# --------------------------------------------------------------------------- the recipe
def evolve(model: str | ModelSpec | None = None, *, out: str | Path, config: EvolveConfig | None = None, console=None) -> dict:
    """Run (or resume) self-evolution; returns the history (also in ``OUT/history.json``).

    ``model``: alias, hub id, local folder or a :class:`ModelSpec` with loading options and
    a starting adapter (None = the embedded world's model). ``console``: a rich console for
    the per-round table and the before/after table (None = quiet).
    Under ``accelerate launch`` purification and distillation are data-parallel; evaluation
    and bookkeeping run on the main process.
    """
    from accelerate import PartialState

    config = config or EvolveConfig()
    out = check_output(out, folder=True)
    spec, data = resolve_datasets(model if isinstance(model, ModelSpec) else ModelSpec(model), config)
    state = PartialState()
    history = read_history(out, spec, config, data)
    log_with = config.distill.log_with
    check_tracker(log_with)
    train = config.distill
    if log_with is not None and train.logging_dir is None:
        train = dataclasses.replace(train, logging_dir=str(out / "logs"))

    def finish_round(entry: dict) -> None:
        """Main process: append the entry, keep the best adapter, save; everyone rereads."""
        nonlocal history
        if state.is_main_process:
            history["rounds"].append(entry)
            _keep_best(out, history, config)
            last = history["rounds"][-1]["round"]
            history["stopped"] = stop_reason(history["rounds"], config) if last < config.rounds else None
            write_json(out / HISTORY_FILE, history)
            if log_with is not None:
                log_once(log_with, train.logging_dir, "evolve", round_figures(entry), step=entry["round"])
            if console is not None:
                if entry["round"] > 0:
                    console.print(round_summary(entry), highlight=False)
                console.print(rounds_table(history, config.distill.loss, config.selection_split))
        state.wait_for_everyone()
        history = read_json(out / HISTORY_FILE)

    if not any(e["round"] == 0 for e in history["rounds"]):
        start = time.time()
        if state.is_main_process:
            _fresh(out / "round-0")
            vlm = load_spec(spec)
            entry = {"round": 0, "adapter": spec.adapter, **_evaluate(vlm, data, out / "round-0", config)}
            finish_round({**entry, "seconds": round(time.time() - start, 1)})
            del vlm
        else:
            finish_round({})

    adapter = spec.adapter
    for r in range(1, config.rounds + 1):
        done = next((e for e in history["rounds"] if e["round"] == r), None)
        if done is not None:
            adapter = str(out / done["adapter"])
            continue
        if stop_reason(history["rounds"], config) is not None:
            break
        start = time.time()
        round_dir = out / f"round-{r}"
        vlm = load_spec(dataclasses.replace(spec, adapter=adapter))
        if state.is_main_process:
            _fresh(round_dir, keep="purified" if purification_fits(round_dir / "purified", vlm, data, config.purify) else None)
        state.wait_for_everyone()
        purified = purify(
            vlm, images=data.purify_images, annotations=data.purify_annotations, out=round_dir / "purified", adapter=adapter, config=config.purify
        )
        records, tensors = load_shards(purified)
        stats = distill(vlm, records, tensors, data.purify_images, train, run_name=f"round-{r}")
        adapter = str(round_dir / "adapter")
        if state.is_main_process:
            # Paths inside OUT are recorded relative to it, so a run folder can be moved and resumed.
            metadata = {"loss": config.distill.loss, "round": r, "rounds": r, "data_hash": md5_file(purified / "purified.jsonl")}
            save_hea(vlm, adapter, {**metadata, "distill": {k: v for k, v in stats.items() if k != "losses"}})
            entry = {
                "round": r,
                "adapter": f"round-{r}/adapter",
                "purified": f"round-{r}/purified",
                "purified_items": len(records),
                "repaired_items": sum(x["response"] != x["repaired"] for x in records),
                "distill": {k: v for k, v in stats.items() if k not in ("config", "losses")},
                **_evaluate(vlm, data, round_dir, config),
                "seconds": round(time.time() - start, 1),
            }
            finish_round(entry)
        else:
            finish_round({})
        del vlm

    if console is not None and state.is_main_process:
        console.print(before_after_table(history))
        _print_outcome(console, out, history, config)
    return history


def round_figures(entry: dict) -> dict:
    """What a tracker gets of a finished round: the held-out figures and, for a trained round,
    the purified and repaired counts and the distillation's loss (flattened by the tracker)."""
    figures = {"eval": entry["eval"]}
    if "distill" in entry:
        figures["purify"] = {"items": entry["purified_items"], "repaired": entry["repaired_items"]}
        figures["distill"] = {k: entry["distill"][k] for k in ("steps", "first_loss", "final_loss")}
    return figures


def _fresh(folder: Path, keep: str | None = None) -> None:
    """An empty ``folder`` but for ``keep``: what a killed round left there is redone."""
    for path in folder.iterdir() if folder.is_dir() else []:
        if path.name == keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    make_dirs(folder)


def _evaluate(vlm, data: Datasets, out_dir: Path, config: EvolveConfig) -> dict:
    """A round's figures: ``{"eval": reported, "val": validation}`` (no "val" without a validation set)."""
    options = {"batch_size": config.eval_batch_size, "pope_images": config.pope_images, "chair_images": config.chair_images}
    figures = {"eval": evaluate(vlm, data, out_dir, **options)}
    if data.validation() is not None:
        figures["val"] = evaluate(vlm, data.validation(), out_dir / "val", **options)
    return figures


def _print_outcome(console, out: Path, history: dict, config: EvolveConfig) -> None:
    if history.get("stopped"):
        console.print(f"stopped early: {history['stopped']}", highlight=False)
    best = history.get("best_round")
    if best is None:
        return
    console.print(f"kept round {best}: {out / 'adapter'}  (history: {out / HISTORY_FILE})", highlight=False)
    by_round = {e["round"]: e for e in history["rounds"]}
    if 0 in by_round:
        before = selection_metrics(by_round[0], config.selection_split)[0]
        after = selection_metrics(by_round[best], config.selection_split)[0]
        if after <= before:
            console.print(
                f"[bold yellow]no round beat the model as given on {config.selection_split} F1[/] "
                f"({100 * after:.2f} vs {100 * before:.2f}); the kept adapter is the best trained round, not an improvement",
                highlight=False,
            )


__all__ = ["Datasets", "EvolveConfig", "best_round", "check_disjoint", "evaluate", "evolve", "resolve_datasets", "stop_reason"]
