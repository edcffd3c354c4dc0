"""``seed report``: one self-contained HTML page for a run folder, readable with no network.

It reads a ``seed evolve`` run (``history.json``, ``round-N/purified``), a ``seed purify``
output (``manifest.json`` + ``purified.jsonl``) or an ablation (``ablation.json``) and shows the
before/after table, per-round charts (matplotlib, inlined as SVG), how well identification separates
absent objects from present ones when the annotations are known, and a gallery of purified captions:
thumbnail, the original with flagged words marked, the repair, the per-object scores. Text is escaped.

    write_report("runs/evolve", "runs/evolve/report.html")
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np
from PIL import Image

from seed.config import ReportConfig
from seed.errors import SeedError
from seed.coco import objects_by_file
from seed.io import atomic_write_text, image_files, iter_jsonl, md5_strings, read_json
from seed.lexicon import ObjectLexicon
from seed.report import METRIC_ROWS, METRICS_CAPTION, metric_cell, metric_values

KINDS = {"evolve": "SEED run", "purify": "Purified shards", "ablation": "Ablation"}
# Charts of the held-out figures: (title, group and keys of METRIC_ROWS drawn in it).
CHARTS = (
    ("POPE F1 %", "pope", ("f1",)),
    ("POPE yes-ratio %", "pope", ("yes_ratio",)),
    ("CHAIR % (lower is better)", "chair", ("chair_i", "chair_s")),
    ("caption object recall %", "chair", ("recall",)),
)


@dataclass
class Run:
    """What a report shows, whichever kind of folder it came from."""

    kind: str  # "evolve", "purify" or "ablation"
    folder: Path
    columns: dict[str, dict] = field(default_factory=dict)  # column → evaluation, as METRIC_ROWS reads it
    sources: dict[str, str] = field(default_factory=dict)  # column → its name in data-source attributes
    before: str | None = None  # column of the model as given
    kept: str | None = None  # column of the kept round
    rounds: list[dict] = field(default_factory=list)  # history entries (evolve)
    facts: dict[str, str] = field(default_factory=dict)  # header lines
    purified: dict[str, Path] = field(default_factory=dict)  # label → purified folder
    purify_options: dict = field(default_factory=dict)  # the PurifyConfig the shards were written with
    images: Path | None = None
    annotations: Path | None = None
    window: tuple[float, float] | None = None  # evolve's yes-ratio window


# --------------------------------------------------------------------------- reading a run
def load_run(path: str | Path, config: ReportConfig = ReportConfig()) -> Run:
    """The run in ``path`` (a folder, or its history.json / ablation.json / manifest.json)."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    if (folder / "history.json").is_file():
        run = _evolve_run(folder)
    elif (folder / "ablation.json").is_file():
        run = _ablation_run(folder)
    elif (folder / "manifest.json").is_file() and (folder / "purified.jsonl").is_file():
        manifest = read_json(folder / "manifest.json")
        options, model = manifest.get("options", {}), str(manifest.get("model"))
        run = Run("purify", folder, purified={"purified": folder}, purify_options=options.get("config", {}), facts={"model": model})
        run.images, run.annotations = _world_data(model, options.get("images_md5"))
    elif not path.exists():
        raise SeedError(f"{path}: no such file or folder")
    else:
        raise SeedError(f"{path}: not a seed evolve run (history.json), a purify output (manifest.json + purified.jsonl) or an ablation (ablation.json)")
    run.images = Path(config.images) if config.images else run.images
    run.annotations = Path(config.annotations) if config.annotations else run.annotations
    return run


def _evolve_run(folder: Path) -> Run:
    history = read_json(folder / "history.json")
    options, rounds = history.get("options", {}), history.get("rounds", [])
    run = Run("evolve", folder, rounds=rounds, purify_options=options.get("purify", {}), window=tuple(options.get("yes_ratio", (0.4, 0.6))))
    for entry in rounds:
        name = f"round {entry['round']}"
        run.columns[name], run.sources[name] = entry["eval"], f"round-{entry['round']}"
        if entry.get("purified") and (folder / entry["purified"] / "purified.jsonl").is_file():
            run.purified[name] = folder / entry["purified"]
    run.before = "round 0" if "round 0" in run.columns else None
    run.kept = None if history.get("best_round") is None else f"round {history['best_round']}"
    model = (options.get("model") or {}).get("model")
    identify = run.purify_options.get("identify", {})
    run.facts = {
        "model": str(model), "loss": str(options.get("distill", {}).get("loss")),
        "identify": f"{', '.join(identify.get('signals', []))} (τ = {identify.get('tau')})",
        "kept round": str(history.get("best_round")), "stopped": history.get("stopped") or "no (ran every round asked for)",
    }  # fmt: skip
    run.images, run.annotations = (Path(options["images"]), None) if options.get("images") else _world_data(str(model), None)
    run.annotations = Path(options["annotations"]) if options.get("annotations") else run.annotations
    return run


def _ablation_run(folder: Path) -> Run:
    ablation = read_json(folder / "ablation.json")
    run = Run("ablation", folder, purify_options=ablation.get("purify", {}))
    for name, row in ablation["rows"].items():
        run.columns[row.get("label", name)], run.sources[row.get("label", name)] = row["eval"], f"row-{name}"
    run.before, run.kept = (next((c for c, s in run.sources.items() if s == f"row-{row}"), None) for row in ("base", "reverse-kl"))
    purified = Path(ablation.get("purified", {}).get("path", folder / "purified"))
    run.purified = {"base": c for c in (folder / "purified", purified) if (c / "purified.jsonl").is_file()}
    data = ablation.get("data", {})
    run.images, run.annotations = (Path(data[k]) if data.get(k) not in (None, "None") else None for k in ("purify_images", "purify_annotations"))
    run.facts = {"held-out images": str(data.get("eval_images")), "purified": str(purified)}
    return run


def _world_data(model: str, images_md5: str | None) -> tuple[Path | None, Path | None]:
    """The embedded world's purify images and annotations when ``model`` is a world's model
    (and, given ``images_md5``, the purified images are that split's)."""
    from seed.world import World

    root = Path(model).parent
    if not (root / "world.json").is_file():
        return None, None
    world = World(root)
    images = world.images(world.purify_split)
    if images_md5 is not None and md5_strings(p.name for p in image_files(images)) != images_md5:
        return None, None
    return images, world.annotations(world.purify_split)


def caption_records(folder: Path) -> list[dict]:
    """The caption record of every purified image (it carries the image's scores and flags)."""
    return [r for r in iter_jsonl(folder / "purified.jsonl") if "category" not in r]


# --------------------------------------------------------------------------- identification
def auroc(scores, labels) -> float | None:
    """Probability that a positive outscores a negative (ties count half); None without both."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if not positives or not negatives:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based, ties averaged
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def identification(captions: list[dict], truth: dict[str, set[str]] | None, lexicon: ObjectLexicon) -> dict[str, float | None]:
    """How purification did on one set of shards: counts, and against the annotations (an
    object is hallucinated when absent) the AUROC of the combined score h over every scored
    object and over the objects the captions name, the flag's precision and recall, and the
    share of caption mentions that name an absent object before and after the repair."""
    out: dict[str, float | None] = {
        "images": len(captions),
        "repaired captions": sum(r["response"] != r["repaired"] for r in captions),
        "flagged objects per image": sum(len(r["flagged"]) for r in captions) / max(1, len(captions)),
    }
    known = [r for r in captions if truth is not None and r["image"] in truth]
    if not known:
        return out
    scored = [(r["scores"][c], c not in truth[r["image"]], c in r["flagged"]) for r in known for c in r["scores"]]
    named = [(r["scores"][m.category], m.category not in truth[r["image"]]) for r in known for m in lexicon.find(r["response"]) if m.category in r["scores"]]
    flagged_absent = sum(a and f for _, a, f in scored)
    mentions = {when: [m.category not in truth[r["image"]] for r in known for m in lexicon.find(r[when])] for when in ("response", "repaired")}
    out.update({
        "AUROC, every scored object": auroc([h for h, _, _ in scored], [a for _, a, _ in scored]),
        "AUROC, objects the captions name": auroc([h for h, _ in named], [a for _, a in named]),
        "flag precision (flagged → absent)": flagged_absent / max(1, sum(f for _, _, f in scored)),
        "flag recall (absent → flagged)": flagged_absent / max(1, sum(a for _, a, _ in scored)),
        "absent objects among caption mentions, before": sum(mentions["response"]) / max(1, len(mentions["response"])),
        "absent objects among caption mentions, after repair": sum(mentions["repaired"]) / max(1, len(mentions["repaired"])),
    })  # fmt: skip
    return out


# --------------------------------------------------------------------------- charts
def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise SeedError("seed report draws its charts with matplotlib: pip install 'seed-vlm[report]'") from None
    return Figure


def svg_uri(figure) -> str:
    """A matplotlib figure as an SVG data URI (text kept as text, no date: same run, same bytes)."""
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "seed"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def metric_charts(run: Run) -> list[tuple[str, str]]:
    """(title, SVG data URI) of each chart in :data:`CHARTS`: lines over rounds, bars over rows."""
    Figure = _figure_class()
    names, values = list(run.columns), [metric_values(e) for e in run.columns.values()]
    x = np.arange(len(names))
    charts = []
    for title, group, keys in CHARTS:
        figure = Figure(figsize=(5.2, 3.0), layout="constrained")
        ax = figure.add_subplot()
        series = [(i, split or label) for i, (label, g, split, key) in enumerate(METRIC_ROWS) if g == group and key in keys]
        for k, (i, label) in enumerate(series):
            ys = np.array([np.nan if v[i] is None else 100 * v[i] for v in values])
            if run.kind == "evolve":
                ax.plot(x, ys, marker="o", label=label)
            else:
                width = 0.8 / len(series)
                ax.bar(x + (k - (len(series) - 1) / 2) * width, ys, width, label=label)
        if run.window and keys == ("yes_ratio",):
            ax.axhspan(100 * run.window[0], 100 * run.window[1], color="tab:green", alpha=0.1, zorder=0, label="window")
        if run.kind == "evolve" and run.kept in names:
            ax.axvline(names.index(run.kept), color="0.5", linestyle=":", label="kept")
        ax.set_xticks(x, names, rotation=0 if run.kind == "evolve" else 20)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
        charts.append((title, svg_uri(figure)))
    return charts


def score_chart(captions: dict[str, list[dict]], truth: dict[str, set[str]]) -> str:
    """Histograms of h for present and absent objects, one panel per set of shards."""
    Figure = _figure_class()
    figure = Figure(figsize=(min(3.4 * len(captions), 10.5), 2.6), layout="constrained")
    for k, (label, records) in enumerate(captions.items(), 1):
        ax = figure.add_subplot(1, len(captions), k)
        pairs = [(h, c in truth[r["image"]]) for r in records if r["image"] in truth for c, h in r["scores"].items()]
        for present, colour in ((True, "tab:green"), (False, "tab:red")):
            ax.hist([h for h, p in pairs if p == present], bins=20, range=(0, 1), alpha=0.6, color=colour, label="present" if present else "absent")
        ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("hallucination score h", fontsize=8)
        ax.legend(fontsize=7, frameon=False)
    return svg_uri(figure)


# --------------------------------------------------------------------------- html pieces
def image_uri(path: Path, size: int) -> str | None:
    """A thumbnail as a PNG (JPEG for photos) data URI; None when the file cannot be read."""
    try:
        with Image.open(path) as image:
            photo = image.format == "JPEG"
            thumb = image.convert("RGB")
    except (OSError, ValueError):
        return None
    thumb.thumbnail((size, size))
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG" if photo else "PNG", **({"quality": 85} if photo else {}))
    return f"data:image/{'jpeg' if photo else 'png'};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def marked(text: str, lexicon: ObjectLexicon, flagged, scores: dict, present: set[str] | None) -> str:
    """``text`` escaped, each object mention wrapped: ``<mark>`` when flagged, else a span;
    class ``absent`` when the annotations know the object is not there."""
    parts, at = [], 0
    for m in lexicon.find(text):
        absent = " absent" if present is not None and m.category not in present else ""
        h = f"h = {scores[m.category]:.2f}" if m.category in scores else "not scored"
        tag = "mark" if m.category in flagged else "span"
        title = escape(f"{m.category}: {h}{', absent' if absent else ''}")
        parts += [escape(text[at : m.start]), f'<{tag} class="obj{absent}" title="{title}">{escape(m.surface)}</{tag}>']
        at = m.end
    return "".join(parts) + escape(text[at:])


def gallery_examples(captions: list[dict], n: int) -> list[dict]:
    """``n`` repaired captions spread over the run (unchanged ones only if too few were repaired)."""
    changed = [r for r in captions if r["response"] != r["repaired"]]
    pool = changed + [r for r in captions if r["response"] == r["repaired"]] if len(changed) < n else changed
    k = min(n, len(pool))
    return [pool[i * len(pool) // k] for i in range(k)]


def example_card(record: dict, run: Run, lexicon: ObjectLexicon, truth: dict | None, size: int) -> str:
    """One gallery card: thumbnail, original (flags marked), repair, per-object scores."""
    present = truth.get(record["image"]) if truth is not None else None
    uri = image_uri(run.images / record["image"], size) if run.images is not None else None
    picture = f'<img src="{uri}" alt="{escape(record["image"])}">' if uri else f'<div class="noimage">{escape(record["image"])}: image not found</div>'
    named = {m.category for m in lexicon.find(record["response"])}
    chips = []
    for category, h in sorted(record["scores"].items(), key=lambda kv: (kv[0] not in named, -kv[1])):
        flag, state = category in record["flagged"], "" if present is None else (" ✓" if category in present else " ✗")
        wrong = present is not None and flag == (category in present)
        cls = " ".join(c for c, on in (("named", category in named), ("flag", flag), ("wrong", wrong)) if on)
        chips.append(f'<li class="{cls}">{escape(category)} <b>{h:.2f}</b>{state}</li>')
    return (
        f'<figure class="example">{picture}<figcaption>{escape(record["image"])}</figcaption>'
        f'<p class="original"><small>original</small> {marked(record["response"], lexicon, record["flagged"], record["scores"], present)}</p>'
        f'<p class="repaired"><small>repaired</small> {marked(record["repaired"], lexicon, record["flagged"], record["scores"], present)}</p>'
        f'<ul class="scores">{"".join(chips)}</ul></figure>'
    )


def metrics_html(run: Run, columns: list[str], table_id: str, heads: list[str] | None = None) -> str:
    """A table of :data:`METRIC_ROWS`, one column per evaluation (with ``heads``: the before/after
    table, the change as its last column); cells carry their source."""
    values = [metric_values(run.columns[c]) for c in columns]
    delta = heads is not None
    head = "".join(f'<th class="{"kept" if c == run.kept else ""}">{escape(h)}</th>' for c, h in zip(columns, heads or columns))
    head += "<th>Δ</th>" if delta else ""
    rows = []
    for i, (label, group, split, key) in enumerate(METRIC_ROWS):
        metric = ".".join(p for p in (group, split, key) if p)
        cells = [f'<td data-source="{run.sources[c]}" data-metric="{metric}">{metric_cell(v[i], key)}</td>' for c, v in zip(columns, values)]
        if delta:
            first, last = values[0][i], values[-1][i]
            cells.append(f"<td>{'n/a' if first is None or last is None else metric_cell(last - first, key, signed=True)}</td>")
        rows.append(f"<tr><th>{escape(label)}</th>{''.join(cells)}</tr>")
    return f'<table id="{table_id}"><thead><tr><th>metric</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody><caption>{METRICS_CAPTION}</caption></table>'


def rounds_html(rounds: list[dict]) -> str:
    """What each trained round did."""
    rows = "".join(
        f"<tr><td>{e['round']}</td><td>{e['purified_items']}</td><td>{e['repaired_items']}</td><td>{e['distill']['steps']}</td>"
        f"<td>{e['distill']['first_loss']:.3f} → {e['distill']['final_loss']:.3f}</td><td>{e['seconds']:.0f}</td></tr>"
        for e in rounds if "distill" in e
    )
    head = "<tr><th>round</th><th>purified responses</th><th>repaired</th><th>steps</th><th>loss</th><th>seconds</th></tr>"
    return f'<table id="training"><thead>{head}</thead><tbody>{rows}</tbody></table>' if rows else ""


# --------------------------------------------------------------------------- the page
def identification_html(run: Run, captions: dict[str, list[dict]], truth: dict | None, lexicon: ObjectLexicon) -> str:
    """The identification table (one column per set of shards) and the score histograms."""
    found = {label: identification(records, truth, lexicon) for label, records in captions.items()}
    names = list(next(iter(found.values())))
    cell = lambda v: "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    rows = "".join(f"<tr><th>{escape(n)}</th>{''.join(f'<td>{cell(f.get(n))}</td>' for f in found.values())}</tr>" for n in names)
    head = "".join(f"<th>{escape(label)}</th>" for label in found)
    identify = run.purify_options.get("identify", {})
    note = (
        f"Signals {escape(', '.join(identify.get('signals', [])))} combined into one score h per object (flag: h &gt; {identify.get('tau')}); "
        + ("scored against the annotations of the purified images (an object is hallucinated when absent)." if truth else "no annotations of the purified images are known (give --annotations).")
    )
    chart = f'<img class="chart" src="{score_chart(captions, truth)}" alt="score histograms">' if truth else ""
    return f'<h2>Identification</h2><p>{note}</p><table id="identification"><thead><tr><th></th>{head}</tr></thead><tbody>{rows}</tbody></table>{chart}'


def render(run: Run, config: ReportConfig = ReportConfig()) -> str:
    """The whole page as one HTML string."""
    title = f"{KINDS[run.kind]}: {run.folder}"
    facts = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in run.facts.items())
    body = [f"<h1>{escape(title)}</h1><dl>{facts}</dl>"]
    if run.columns:
        ends = [c for c in (run.before, run.kept) if c is not None]
        if len(ends) == 2:
            body.append("<h2>Before / after</h2>" + metrics_html(run, ends, "before-after", [f"before ({ends[0]})", f"after ({ends[1]})"]))
        body.append(f"<h2>{'Rounds' if run.kind == 'evolve' else 'Rows'}</h2>" + metrics_html(run, list(run.columns), "metrics"))
        body.append(rounds_html(run.rounds))
        charts = "".join(f'<img class="chart" src="{uri}" alt="{escape(t)}">' for t, uri in metric_charts(run))
        body.append(f'<h2>Charts</h2><div class="charts">{charts}</div>')
    if run.purified:
        options = run.purify_options.get("identify", {})
        lexicon = ObjectLexicon.default(options.get("lexicon"))
        truth = objects_by_file(run.annotations) if run.annotations is not None and Path(run.annotations).is_file() else None
        captions = {label: caption_records(folder) for label, folder in run.purified.items()}
        body.append(identification_html(run, captions, truth, lexicon))
        label, records = next(iter(captions.items()))
        cards = "".join(example_card(r, run, lexicon, truth, config.thumbnail) for r in gallery_examples(records, config.examples))
        legend = (
            '<p class="legend"><mark class="obj">flagged</mark><span class="obj">named, not flagged</span><span class="obj absent">absent from '
            "the image</span> · scores h (named objects first): ✓ present, ✗ absent, red outline: the flag disagrees with the annotations</p>"
        )
        body.append(f'<h2>Purified examples ({escape(label)})</h2>{legend}<div class="gallery">{cards}</div>')
    return f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title><style>{CSS}</style></head><body>{"".join(body)}</body></html>\n'


def write_report(run_dir: str | Path, out: str | Path | None = None, config: ReportConfig = ReportConfig()) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default RUN_DIR/report.html); returns its path."""
    _figure_class()  # refuse before reading anything when matplotlib is missing
    run = load_run(run_dir, config)
    out = Path(out) if out is not None else run.folder / "report.html"
    atomic_write_text(out, render(run, config))
    return out


CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; padding: 0 1rem; } h1 { font-size: 1.4rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; } dl { display: grid; grid-template-columns: max-content 1fr; gap: 0 1rem; }
dt { color: #666; } dd { margin: 0; } table { border-collapse: collapse; margin: 0.5rem 0; } th.kept { background: #e8f4e8; }
caption { caption-side: bottom; color: #666; font-size: 0.85em; text-align: left; } th { text-align: left; font-weight: 600; }
th, td { padding: 0.2rem 0.6rem; border-bottom: 1px solid #eee; } td { text-align: right; font-variant-numeric: tabular-nums; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 1rem; } img.chart { max-width: 100%; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(270px, 1fr)); gap: 1rem; } .noimage { color: #a00; }
.example { margin: 0; padding: 0.6rem; border: 1px solid #ddd; border-radius: 6px; } .example p { margin: 0.4rem 0; }
.example img { width: 100%; max-width: 192px; image-rendering: pixelated; display: block; margin: auto; }
.example figcaption { color: #666; font-size: 0.8em; text-align: center; } .legend > * { margin-right: 0.6rem; }
.example small { display: block; color: #888; text-transform: uppercase; font-size: 0.7em; } span.obj { border-bottom: 1px dotted #555; }
mark.obj { background: #ffd0d0; border-radius: 3px; padding: 0 2px; } .obj.absent { outline: 1.5px solid #c00; }
ul.scores { list-style: none; padding: 0; margin: 0; display: flex; flex-wrap: wrap; gap: 3px; font-size: 0.8em; }
ul.scores li { background: #f1f1f1; border-radius: 3px; padding: 0 4px; } ul.scores li.flag { background: #ffd0d0; }
ul.scores li.named { font-weight: 600; } ul.scores li.wrong { outline: 1.5px solid #c00; }
"""
