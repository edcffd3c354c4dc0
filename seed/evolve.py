"""The SEED recipe: self-evolving distillation, round after round (method.md §7).

    round 0   evaluate the model as given (held-out POPE, all three splits, and CHAIR)
    round r   purify with the current model (base + HEA so far)   → OUT/round-r/purified
              distil into the same HEA, continued                 → OUT/round-r/adapter
              evaluate                                            → OUT/round-r/*.json
              append to OUT/history.json; best round so far       → OUT/adapter
              stop when the selection split's F1 stops improving, or its yes-ratio moves
              away from the window (a model that learns to say "no" inflates precision)

A killed run resumes at the first round missing from ``history.json``; a round folder without
a history entry is half-done and is redone from scratch. Purification images and evaluation
images never overlap.

    from seed.evolve import EvolveConfig, evolve
    history = evolve(out="runs/evolve", config=EvolveConfig(rounds=3, loss="reverse-kl"))
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from seed.distill import DistillConfig, distill
from seed.errors import SeedError
from seed.evaluation.pope import SPLITS
from seed.evaluation.runner import Decoding, ModelSpec
from seed.io import md5_file, read_json, write_json
from seed.losses import get_loss
from seed.purify import PurifyConfig, load_shards, purify

HISTORY_FILE = "history.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
POPE_KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
CHAIR_KEYS = ("chair_i", "chair_s", "recall", "mean_length")
# Options that may change between a killed run and its resume (they do not change any result).
RESUMABLE_OPTIONS = ("rounds",)


@dataclass
class EvolveConfig:
    """One self-evolution run.

    ``loss`` and ``identify`` are the recipe's two knobs; they override ``distill.loss`` and
    ``purify.identify`` (``identify`` None keeps purify's default signals). Purification uses
    ``images`` (default: the embedded world's purify split; ``annotations`` only feed the
    ``oracle`` signal); evaluation uses ``eval_images`` + ``eval_annotations`` (default: the
    world's held-out split and its POPE files; otherwise POPE is built from the annotations
    with ``pope_images`` images per split). Rounds are ranked by ``selection_split`` F1,
    rounds whose yes-ratio lies inside ``yes_ratio`` and whose caption object recall keeps
    ``min_recall`` of the base's first (fewer objects named hides hallucination, method.md).
    ``rounds`` 2: on the embedded world a third round lowered adversarial F1 in each of four runs
    (by 0.3–1.4) while caption recall kept falling; ``--rounds`` asks for more.
    """

    rounds: int = 2
    loss: str = "reverse-kl"
    identify: tuple[str, ...] | None = None
    distill: DistillConfig = field(default_factory=DistillConfig)
    purify: PurifyConfig = field(default_factory=PurifyConfig)
    images: str | None = None
    annotations: str | None = None
    eval_images: str | None = None
    eval_annotations: str | None = None
    pope_images: int = 500
    chair_images: int = 500
    selection_split: str = "adversarial"
    patience: int = 1
    yes_ratio: tuple[float, float] = (0.40, 0.60)
    min_recall: float = 0.9
    eval_batch_size: int = 32

    def __post_init__(self):
        get_loss(self.loss)
        if self.rounds < 1 or self.patience < 1:
            raise SeedError("--rounds and --patience must be at least 1")
        if not 0 <= self.min_recall <= 1:
            raise SeedError(f"--min-recall is a share of the base's recall in [0, 1], not {self.min_recall}")
        if self.selection_split not in SPLITS:
            raise SeedError(f"the selection split must be one of {', '.join(SPLITS)}, not {self.selection_split!r}")
        lo, hi = self.yes_ratio
        if not 0 <= lo < hi <= 1:
            raise SeedError(f"the yes-ratio window must satisfy 0 <= low < high <= 1, not {self.yes_ratio}")
        self.yes_ratio = (float(lo), float(hi))
        if self.identify is not None:
            from seed.identify import SIGNALS

            self.identify = tuple(self.identify)
            unknown = [s for s in self.identify if s not in SIGNALS]
            if unknown or not self.identify:
                raise SeedError(f"--identify takes signals among {', '.join(SIGNALS)}, not {', '.join(unknown) or 'nothing'}")

    def distill_config(self) -> DistillConfig:
        return dataclasses.replace(self.distill, loss=self.loss)

    def purify_config(self) -> PurifyConfig:
        return self.purify if self.identify is None else dataclasses.replace(self.purify, identify=self.identify)


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Datasets:
    """Where purification reads images and evaluation reads images, questions and objects."""

    purify_images: Path
    purify_annotations: Path | None
    eval_images: Path
    eval_annotations: Path
    pope_questions: dict[str, Path] | None  # None: build POPE from eval_annotations


def resolve_datasets(spec: ModelSpec, config: EvolveConfig) -> Datasets:
    """The world's purify/held-out splits by default; a real model must be given both sets.
    Refuses any image file name that both sets share."""
    world = None
    if spec.model is None and (config.images is None or config.eval_images is None or config.eval_annotations is None):
        from seed.world import ensure_world

        world = Path(ensure_world())
    if config.images is None and world is None:
        raise SeedError("purifying a model needs --images DIR (unlabelled images, disjoint from the evaluation images)")
    if (config.eval_images is None or config.eval_annotations is None) and world is None:
        raise SeedError("evaluating a model needs --eval-images DIR and --eval-annotations instances.json (held-out COCO)")
    own_eval = config.eval_images is None and config.eval_annotations is None
    data = Datasets(
        purify_images=Path(config.images) if config.images else world / "purify" / "images",
        purify_annotations=Path(config.annotations)
        if config.annotations
        else (world / "purify" / "annotations" / "instances.json" if config.images is None else None),
        eval_images=Path(config.eval_images) if config.eval_images else world / "heldout" / "images",
        eval_annotations=Path(config.eval_annotations) if config.eval_annotations else world / "heldout" / "annotations" / "instances.json",
        pope_questions={s: world / "pope" / f"{s}.jsonl" for s in SPLITS} if own_eval and world is not None else None,
    )
    check_disjoint(purification_images(data), evaluation_images(data))
    return data


def purification_images(data: Datasets) -> list[str]:
    """File names purify will read (every image file of the folder, as :func:`seed.purify.purify` lists them)."""
    if not data.purify_images.is_dir():
        raise SeedError(f"--images {data.purify_images}: no such folder")
    return sorted(p.name for p in data.purify_images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def evaluation_images(data: Datasets) -> list[str]:
    """File names of every image POPE or CHAIR may show: the annotated images and the questions' images."""
    from seed.evaluation.pope import load_questions

    names = {img.get("file_name") for img in read_json(data.eval_annotations).get("images", [])}
    for path in (data.pope_questions or {}).values():
        names.update(q["image"] for q in load_questions(path).questions)
    return sorted(n for n in names if n)


def check_disjoint(purify_names: Sequence[str], eval_names: Sequence[str]) -> None:
    """Refuse a run whose purification images include any evaluation image (by file name, so
    copies in another folder count too)."""
    shared = sorted(set(purify_names) & set(eval_names))
    if shared:
        raise SeedError(
            f"{len(shared)} purification image(s) are also evaluation images (e.g. {', '.join(shared[:3])}); "
            "purify on images disjoint from the held-out set"
        )


# --------------------------------------------------------------------------- evaluation
def evaluate(
    vlm,
    data: Datasets,
    out_dir: str | Path,
    *,
    adapter: str | None = None,
    decoding: Decoding = Decoding(),
    batch_size: int = 32,
    pope_images: int = 500,
    chair_images: int = 500,
) -> dict:
    """POPE (all three splits) and CHAIR of ``vlm`` on the held-out set; answers, captions and
    result files go to ``out_dir``. Returns ``{"pope": {split: metrics}, "pope_mean_f1", "chair"}``."""
    from seed.evaluation import runner

    out_dir = Path(out_dir)
    spec = ModelSpec(vlm.name_or_path, adapter)
    pope = {}
    for split in SPLITS:
        questions = data.pope_questions[split] if data.pope_questions else None
        result = runner.evaluate_pope(
            [split], spec, vlm=vlm, images=data.eval_images, questions=questions,
            annotations=None if questions else data.eval_annotations, num_images=pope_images,
            decoding=decoding, batch_size=batch_size, output=out_dir / f"pope-{split}.json",
        )  # fmt: skip
        pope[split] = {k: result["metrics"][k] for k in POPE_KEYS}
    chair = runner.evaluate_chair_model(
        spec, vlm=vlm, images=data.eval_images, annotations=data.eval_annotations,
        num_images=chair_images, decoding=decoding, output=out_dir / "chair.json",
    )  # fmt: skip
    return {
        "pope": pope,
        "pope_mean_f1": sum(m["f1"] for m in pope.values()) / len(pope),
        "chair": {k: chair["metrics"][k] for k in CHAIR_KEYS},
    }


# --------------------------------------------------------------------------- selection
def selection_metrics(entry: dict, split: str) -> tuple[float, float]:
    """(F1, yes-ratio) of one history entry on the selection split."""
    m = entry["eval"]["pope"][split]
    return m["f1"], m["yes_ratio"]


def _window_distance(yes_ratio: float, window: tuple[float, float]) -> float:
    lo, hi = window
    return max(lo - yes_ratio, 0.0, yes_ratio - hi)


def keeps_recall(entry: dict, rounds: Sequence[dict], config: EvolveConfig) -> bool:
    """Whether the entry's caption object recall is at least ``min_recall`` of round 0's."""
    base = next((e for e in rounds if e["round"] == 0), None)
    return base is None or entry["eval"]["chair"]["recall"] >= config.min_recall * base["eval"]["chair"]["recall"]


def best_round(rounds: Sequence[dict], config: EvolveConfig) -> dict | None:
    """The trained round to keep: yes-ratio inside the window and recall kept first, then the
    highest F1 (earliest on ties)."""
    trained = [e for e in rounds if e["round"] >= 1]
    if not trained:
        return None

    def rank(entry):
        f1, yes = selection_metrics(entry, config.selection_split)
        return (_window_distance(yes, config.yes_ratio) == 0.0, keeps_recall(entry, rounds, config), f1)

    return max(trained, key=rank)


def stop_reason(rounds: Sequence[dict], config: EvolveConfig) -> str | None:
    """Why no further round should run, judged from the finished entries (round 0 = before SEED)."""
    if len(rounds) < 2:
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
def read_history(out: Path, spec: ModelSpec, config: EvolveConfig) -> dict:
    """``OUT/history.json``, or a fresh one; refuses a run made with other options."""
    options = _options(spec, config)
    path = out / HISTORY_FILE
    if not path.is_file():
        return {"options": options, "rounds": [], "best_round": None, "stopped": None}
    history = read_json(path)
    recorded = {k: v for k, v in history.get("options", {}).items() if k not in RESUMABLE_OPTIONS}
    now = {k: v for k, v in options.items() if k not in RESUMABLE_OPTIONS}
    if recorded != now:
        changed = sorted(k for k in now.keys() | recorded.keys() if now.get(k) != recorded.get(k))
        raise SeedError(f"{out} holds a run with other options ({', '.join(changed)}); choose another --out")
    history["options"] = options
    return history


def _options(spec: ModelSpec, config: EvolveConfig) -> dict:
    """What a run's results depend on, as plain JSON (tuples become lists, as on a reread)."""
    options = json.loads(json.dumps({"model": asdict(spec), **asdict(config)}, default=str))
    options["distill"].pop("progress", None)  # display only
    return options


def _keep_best(out: Path, history: dict, config: EvolveConfig) -> None:
    """Point ``best_round`` at the best trained round and copy its adapter to OUT/adapter (atomically)."""
    from seed.adapters.hea import _write_dir_atomically

    best = best_round(history["rounds"], config)
    if best is None or (history.get("best_round") == best["round"] and (out / "adapter" / "adapter_config.json").is_file()):
        return
    _write_dir_atomically(out / "adapter", lambda tmp: shutil.copytree(out / best["adapter"], tmp), marker="adapter_config.json")
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

    from seed.adapters.hea import save_hea

    config = config or EvolveConfig()
    spec = model if isinstance(model, ModelSpec) else ModelSpec(model)
    out = Path(out)
    state = PartialState()
    data = resolve_datasets(spec, config)
    history = read_history(out, spec, config)

    def finish_round(entry: dict) -> None:
        """Main process: append the entry, keep the best adapter, save; everyone rereads."""
        nonlocal history
        if state.is_main_process:
            history["rounds"].append(entry)
            _keep_best(out, history, config)
            last = history["rounds"][-1]["round"]
            history["stopped"] = stop_reason(history["rounds"], config) if last < config.rounds else None
            write_json(out / HISTORY_FILE, history)
            if console is not None:
                if entry["round"] > 0:
                    console.print(round_summary(entry), highlight=False)
                console.print(rounds_table(history, config))
        state.wait_for_everyone()
        history = read_json(out / HISTORY_FILE)

    if not any(e["round"] == 0 for e in history["rounds"]):
        start = time.time()
        if state.is_main_process:
            _fresh(out / "round-0")
            vlm = spec.load()
            entry = {"round": 0, "adapter": spec.adapter, "eval": _evaluate(vlm, data, out / "round-0", spec.adapter, config)}
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
        if state.is_main_process:
            _fresh(round_dir)
        state.wait_for_everyone()

        vlm = dataclasses.replace(spec, adapter=adapter).load()
        purified = purify(
            vlm, images=data.purify_images, annotations=data.purify_annotations, out=round_dir / "purified", config=config.purify_config()
        )
        records, tensors = load_shards(purified)
        stats = distill(vlm, records, tensors, data.purify_images, config.distill_config())
        adapter = str(round_dir / "adapter")
        if state.is_main_process:
            # Paths inside OUT are recorded relative to it, so a run folder can be moved and resumed.
            metadata = {"loss": config.loss, "round": r, "rounds": r, "data_hash": md5_file(purified / "purified.jsonl")}
            save_hea(vlm, adapter, {**metadata, "distill": {k: v for k, v in stats.items() if k != "losses"}})
            entry = {
                "round": r,
                "adapter": f"round-{r}/adapter",
                "purified": f"round-{r}/purified",
                "purified_items": len(records),
                "repaired_items": sum(x["response"] != x["repaired"] for x in records),
                "distill": {k: v for k, v in stats.items() if k not in ("config", "losses")},
                "eval": _evaluate(vlm, data, round_dir, adapter, config),
                "seconds": round(time.time() - start, 1),
            }
            finish_round(entry)
        else:
            finish_round({})
        del vlm

    if console is not None and state.is_main_process:
        console.print(before_after_table(history, config))
        _print_outcome(console, out, history, config)
    return history


def _fresh(folder: Path) -> None:
    """An empty ``folder``: what a killed round left there is redone from scratch."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def _evaluate(vlm, data: Datasets, out_dir: Path, adapter: str | None, config: EvolveConfig) -> dict:
    return evaluate(
        vlm,
        data,
        out_dir,
        adapter=adapter,
        batch_size=config.eval_batch_size,
        pope_images=config.pope_images,
        chair_images=config.chair_images,
    )


# --------------------------------------------------------------------------- export
def export(
    adapter: str | Path, out: str | Path, *, device: str = "auto", dtype: str | None = None, trust_remote_code: bool = False
) -> Path:
    """Bake a saved HEA into the base model it names (adapter_config.json) and save the merged
    model with its processor to ``out``: a plain transformers checkpoint, no adapter overhead."""
    from seed.adapters import load
    from seed.adapters.hea import merge_and_export

    config = Path(adapter) / "adapter_config.json"
    if not config.is_file():
        raise SeedError(f"{adapter}: no adapter_config.json there (not a PEFT adapter folder)")
    base = read_json(config).get("base_model_name_or_path")
    if not base:
        raise SeedError(f"{config} does not name its base model (base_model_name_or_path)")
    vlm = load(base, adapter=str(adapter), device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    return merge_and_export(vlm, out)


# --------------------------------------------------------------------------- tables
# One row per metric, one column per model: narrow whatever the number of rounds.
METRIC_ROWS = (
    *((f"POPE F1 {s}", "pope", s, "f1") for s in SPLITS),
    *((f"POPE yes-ratio {s[:3]}", "pope", s, "yes_ratio") for s in SPLITS),
    ("CHAIR_i", "chair", None, "chair_i"),
    ("CHAIR_s", "chair", None, "chair_s"),
    ("object recall", "chair", None, "recall"),
    ("caption words", "chair", None, "mean_length"),
)
METRICS_CAPTION = "in %, caption words = mean caption length"


def metric_values(evaluation: dict) -> list[float | None]:
    """The values of :data:`METRIC_ROWS` for one evaluation (fractions; words as is)."""
    return [evaluation[group][split][key] if split else evaluation[group][key] for _, group, split, key in METRIC_ROWS]


def _cell(value: float | None, key: str, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    value = value if key == "mean_length" else 100 * value
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def metrics_table(title: str, columns: dict[str, dict], *, bold: str | None = None, delta: bool = False):
    """A rich table of held-out metrics: one column per named evaluation (``columns``: name →
    :func:`evaluate` result), plus the change from the first to the last when ``delta``."""
    from rich.table import Table

    table = Table(title=title, caption=METRICS_CAPTION)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right", style="bold" if name == bold else None)
    if delta:
        table.add_column("Δ", justify="right")
    values = [metric_values(e) for e in columns.values()]
    for i, (label, _, _, key) in enumerate(METRIC_ROWS):
        cells = [_cell(v[i], key) for v in values]
        if delta:
            first, last = values[0][i], values[-1][i]
            cells.append("n/a" if first is None or last is None else _cell(last - first, key, signed=True))
        table.add_row(label, *cells)
    return table


def rounds_table(history: dict, config: EvolveConfig):
    """Every finished round (0 = before SEED); the kept round in bold."""
    columns = {f"round {e['round']}": e["eval"] for e in history["rounds"]}
    best = history.get("best_round")
    return metrics_table(
        f"SEED rounds ({config.loss}; kept: best {config.selection_split} F1)", columns, bold=None if best is None else f"round {best}"
    )


def round_summary(entry: dict) -> str:
    """One line on what a trained round did."""
    d = entry["distill"]
    return (
        f"round {entry['round']}: {entry['purified_items']} purified responses ({entry['repaired_items']} repaired), "
        f"{d['steps']} steps, loss {d['first_loss']:.3f} → {d['final_loss']:.3f}, {entry['seconds']:.0f} s"
    )


def before_after_table(history: dict, config: EvolveConfig):
    """The model as given against the kept round."""
    by_round = {e["round"]: e for e in history["rounds"]}
    best = history.get("best_round")
    columns = {"before": by_round[0]["eval"]} if 0 in by_round else {}
    if best is not None:
        columns[f"after (round {best})"] = by_round[best]["eval"]
    return metrics_table("before / after SEED (held-out set)", columns, delta=len(columns) == 2)


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


__all__ = [
    "Datasets",
    "EvolveConfig",
    "before_after_table",
    "best_round",
    "check_disjoint",
    "evaluate",
    "evolve",
    "export",
    "metrics_table",
    "resolve_datasets",
    "rounds_table",
    "stop_reason",
]
