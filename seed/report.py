"""The rich tables seed prints: a POPE or CHAIR result, the spread over sampling seeds, and the
held-out metrics of several evaluations side by side (rounds of ``seed evolve``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table

from seed.evaluation.pope import SPLITS


def pope_table(result: Mapping[str, Any]) -> Table:
    """A POPE result record: one row per split (and the mean for ``pope``), in %."""
    table = Table(title=f"{result['benchmark']} (parser: {result['manifest']['parser']})")
    for column in ("split", "Acc %", "P %", "R %", "F1 %", "yes-ratio %", "n", "unparsed"):
        table.add_column(column, justify="left" if column == "split" else "right")

    def row(name: str, m: Mapping[str, Any], style: str | None = None) -> None:
        cells = [f"{100 * m[k]:.2f}" for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")]
        table.add_row(name, *cells, str(m["n"]), str(m["unparsed"]), style=style)

    if "splits" in result:
        for name, m in result["splits"].items():
            row(name, m)
        row("mean", result["metrics"], style="bold")
    else:
        row(result["benchmark"].removeprefix("pope-"), result["metrics"])
    return table


def spread_table(result: Mapping[str, Any]) -> Table:
    """A sampled POPE result: mean ± std over seeds, in %."""
    seeds = ", ".join(str(s) for s in result["manifest"]["seeds"])
    table = Table(title=f"{result['benchmark']}: mean ± std over seeds {seeds}")
    for column in ("split", "Acc %", "F1 %", "yes-ratio %"):
        table.add_column(column, justify="left" if column == "split" else "right")

    def cell(mean: float, std: float | None) -> str:
        return f"{100 * mean:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")

    rows = [(name, result["splits"][name], result["splits_std"][name]) for name in result.get("splits", {})]
    rows.append(("mean" if rows else result["benchmark"].removeprefix("pope-"), result["metrics"], result["std"]))
    for name, m, s in rows:
        table.add_row(name, *(cell(m[k], s[k]) for k in ("accuracy", "f1", "yes_ratio")))
    return table


def chair_table(result: Mapping[str, Any]) -> Table:
    """A CHAIR result: CHAIR_i, CHAIR_s and recall in %, mean length, n."""
    m = result["metrics"]
    table = Table(title="CHAIR")
    for column in ("CHAIR_i %", "CHAIR_s %", "recall %", "mean length", "n", "mentions"):
        table.add_column(column, justify="right")

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}"

    length = "n/a" if m["mean_length"] is None else f"{m['mean_length']:.1f}"
    table.add_row(pct(m["chair_i"]), pct(m["chair_s"]), pct(m["recall"]), length, str(m["n"]), str(m["n_mentions"]))
    return table


# --------------------------------------------------------------------------- evolve
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


def metric_cell(value: float | None, key: str, signed: bool = False) -> str:
    """One figure as the tables show it: in % (caption words as is), two decimals."""
    if value is None:
        return "n/a"
    value = value if key == "mean_length" else 100 * value
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def metrics_table(title: str, columns: dict[str, dict], *, bold: str | None = None, delta: bool = False):
    """A rich table of held-out metrics: one column per named evaluation (``columns``: name →
    :func:`evaluate` result), plus the change from the first to the last when ``delta``."""
    table = Table(title=title, caption=METRICS_CAPTION)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right", style="bold" if name == bold else None)
    if delta:
        table.add_column("Δ", justify="right")
    values = [metric_values(e) for e in columns.values()]
    for i, (label, _, _, key) in enumerate(METRIC_ROWS):
        cells = [metric_cell(v[i], key) for v in values]
        if delta:
            first, last = values[0][i], values[-1][i]
            cells.append("n/a" if first is None or last is None else metric_cell(last - first, key, signed=True))
        table.add_row(label, *cells)
    return table


def rounds_table(history: dict, loss: str, selection_split: str):
    """Every finished round (0 = before SEED); the kept round in bold."""
    columns = {f"round {e['round']}": e["eval"] for e in history["rounds"]}
    best = history.get("best_round")
    chosen = f"best validation {selection_split} F1" if any("val" in e for e in history["rounds"]) else "last round"
    return metrics_table(f"SEED rounds, reported set ({loss}; kept: {chosen})", columns, bold=None if best is None else f"round {best}")


def round_summary(entry: dict) -> str:
    """One line on what a trained round did."""
    d = entry["distill"]
    return (
        f"round {entry['round']}: {entry['purified_items']} purified responses ({entry['repaired_items']} repaired), "
        f"{d['steps']} steps, loss {d['first_loss']:.3f} → {d['final_loss']:.3f}, {entry['seconds']:.0f} s"
    )


def before_after_table(history: dict):
    """The model as given against the kept round."""
    by_round = {e["round"]: e for e in history["rounds"]}
    best = history.get("best_round")
    columns = {"before": by_round[0]["eval"]} if 0 in by_round else {}
    if best is not None:
        columns[f"after (round {best})"] = by_round[best]["eval"]
    return metrics_table("before / after SEED (reported set: the world's test split or --eval-images)", columns, delta=len(columns) == 2)


def detection_table(metrics: Mapping[str, Mapping[str, Any]]) -> Table:
    """``seed detect``'s scores of each signal (and the combination) as a hallucination detector."""
    table = Table(title="hallucinated-object detection (positive = the image does not hold the object)")
    for column in ("signal", "AUROC", "precision %", "recall %", "F1 %", "objects", "hallucinated"):
        table.add_column(column, justify="left" if column == "signal" else "right")
    for name, m in metrics.items():
        auc = "n/a" if m["auroc"] is None else f"{m['auroc']:.3f}"
        cells = [f"{100 * m[k]:.1f}" for k in ("precision", "recall", "f1")]
        table.add_row(name, auc, *cells, str(m["n"]), str(m["hallucinated"]), style="bold" if name == "combined" else None)
    return table
