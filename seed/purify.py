"""``seed purify``: generate → identify → isolate → purge → store (method.md §1–4).

Per image the teacher (base model, or base + HEA) writes a caption and answers yes/no
questions. Identification scores the object categories; those scoring above τ are flagged.
Their tokens (and a "Yes" to a question about one) form H_t at every position; the teacher's
top-K distributions over its own responses, with H_t purged, are the stored targets, and a
site (teacher top-1 ∈ H_t) is repaired to argmax p̃.

Regenerating the rest of a caption from the repaired prefix (method.md's purified decoding)
was tried and dropped for now: on the tiny model, with most objects banned, it degenerated
("a bench, a There is a an umbrella ..."); the site-level repair keeps the response's context.

Output folder: ``manifest.json``, ``shard-NNNNN.safetensors`` (+ ``shard-NNNNN.jsonl``), and
``purified.jsonl`` once every shard is done. Shards are written atomically, so a killed run
resumes where it stopped with nothing lost or duplicated.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors.torch import load_file

from seed.errors import SeedError
from seed.identify import SIGNALS, answer_token_ids, probe_question, region_evidence, shared_evidence_scores, yes_margin
from seed.io import atomic_write_bytes, atomic_write_text, iter_jsonl, library_versions, md5_strings, write_json
from seed.lexicon import ObjectLexicon
from seed.purge import purge

CAPTION_PROMPT = "Please describe this image in detail."


@dataclass
class PurifyConfig:
    """Options of one purification run (defaults: the measured best label-free setting)."""

    identify: tuple[str, ...] = ("self-probe",)
    tau: float = 0.5
    probe_offset: float = 1.0  # a "yes" margin below this is doubtful (calibrated once on the world's purify split)
    probe_scale: float = 1.0
    top_k: int = 8
    questions_per_image: int = 6
    max_new_tokens: int = 48
    do_sample: bool = False
    batch_size: int = 16
    shard_size: int = 32
    seed: int = 0
    categories: tuple[str, ...] | None = None  # question/flag pool; default: the lexicon's categories in use
    lexicon: str | None = None  # extra lexicon file

    def __post_init__(self) -> None:
        self.identify = tuple(self.identify)
        unknown = [s for s in self.identify if s not in SIGNALS]
        if unknown or not self.identify:
            raise SeedError(f"--identify takes {', '.join(SIGNALS)}; got {', '.join(unknown) or 'nothing'}")


@dataclass
class ImageResult:
    """Everything purification decided for one image (the readable half of a shard)."""

    image: str
    scores: dict[str, float] = field(default_factory=dict)  # category -> hallucination score h
    flagged: list[str] = field(default_factory=list)
    items: list[dict] = field(default_factory=list)  # {"prompt", "response", "repaired", "category"?}


# --------------------------------------------------------------------------- token ↔ object maps
def object_token_map(tokenizer, lexicon: ObjectLexicon) -> dict[int, str]:
    """Token id → category, for tokens that are a whole object word (e.g. " dog", "dogs")."""
    out = {}
    for token_id, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        word = (token or "").lstrip("▁Ġ ").lower()
        if word.isalpha() and (category := lexicon.category_of(word)):
            out[token_id] = category
    return out


# --------------------------------------------------------------------------- identify
def category_scores(
    vlm,
    images: list[Image.Image],
    asked: list[list[str]],
    margins: list[dict[str, float]],
    config: PurifyConfig,
    truth: list[set[str]] | None,
) -> list[dict[str, float]]:
    """h(c) ∈ [0, 1] per image and category: the mean of the selected signals.

    Self-probe and oracle score every category of the pool (so purified decoding cannot swap a
    flagged object for another doubtful one); shared evidence, the costly signal, scores the
    categories the image's items are about.
    """
    for name in config.identify:
        if name in ("contrast", "uncertainty"):
            raise SeedError(f"--identify {name} scores single tokens; measure it with benchmarks/identify_signals.py")
    if "oracle" in config.identify and truth is None:
        raise SeedError("--identify oracle needs --annotations for the purification images")
    out = []
    for i, image in enumerate(images):
        signals: dict[str, dict[str, float]] = {}
        if "self-probe" in config.identify:
            signals["self-probe"] = {
                c: float(torch.sigmoid(torch.tensor((config.probe_offset - m) / config.probe_scale))) for c, m in margins[i].items()
            }
        if "oracle" in config.identify:
            signals["oracle"] = {c: float(c not in truth[i]) for c in margins[i]}
        if "evidence" in config.identify and asked[i]:
            base, evidence = region_evidence(vlm, image, asked[i])
            signals["evidence"] = dict(zip(asked[i], shared_evidence_scores(base, evidence).tolist()))
        categories = {c for s in signals.values() for c in s}
        out.append({c: sum(s[c] for s in signals.values() if c in s) / sum(c in s for s in signals.values()) for c in categories})
    return out


# --------------------------------------------------------------------------- one batch of images
@torch.no_grad()
def purify_images(
    vlm,
    images: list[Image.Image],
    names: list[str],
    config: PurifyConfig,
    lexicon: ObjectLexicon,
    token_map: dict[int, str],
    truth: list[set[str]] | None = None,
) -> tuple[list[ImageResult], dict[str, torch.Tensor]]:
    """Purify a batch of images: the readable results and the stored tensors."""
    pool = list(config.categories or sorted(set(token_map.values())))
    n = len(images)
    captions = vlm.generate(images, [CAPTION_PROMPT] * n, max_new_tokens=config.max_new_tokens, do_sample=config.do_sample)
    flat = yes_margin(vlm, [im for im in images for _ in pool], [c for _ in images for c in pool], config.batch_size * 4)
    margins = [dict(zip(pool, flat[i * len(pool) : (i + 1) * len(pool)].tolist())) for i in range(n)]

    # Questions: every category the caption names, then the ones the model most wants to affirm.
    mentioned = [sorted({m.category for m in lexicon.find(c)} & set(pool)) for c in captions]
    asked = []
    for i in range(n):
        rest = sorted((c for c in pool if c not in mentioned[i]), key=lambda c: -margins[i][c])
        asked.append((mentioned[i] + rest)[: max(config.questions_per_image, len(mentioned[i]))])
    scores = category_scores(vlm, images, asked, margins, config, truth)
    flagged = [sorted(c for c, h in s.items() if h > config.tau) for s in scores]

    rows = []  # in record order: each image's caption, then its questions
    for i in range(n):
        rows.append((i, CAPTION_PROMPT, captions[i], None))
        rows += [(i, probe_question(c), "Yes" if margins[i][c] > 0 else "No", c) for c in asked[i]]
    tensors = _targets(vlm, images, rows, flagged, token_map, config)
    best = tensors["topk_ids"].gather(-1, tensors["topk_probs"].argmax(-1, keepdim=True))[..., 0]
    repaired = torch.where(tensors["sites"], best, tensors["token_ids"])
    tensors["token_ids"] = repaired
    results = [ImageResult(names[i], scores[i], flagged[i]) for i in range(n)]
    for k, (i, prompt, response, category) in enumerate(rows):
        fixed = vlm.tokenizer.decode(repaired[k][tensors["mask"][k]], skip_special_tokens=True).strip()
        item = {"prompt": prompt, "response": response, "repaired": fixed, "sites": int(tensors["sites"][k].sum())}
        results[i].items.append(item if category is None else {**item, "category": category})
    return results, tensors


def _targets(vlm, images, rows, flagged, token_map, config) -> dict[str, torch.Tensor]:
    """Teacher top-K over the responses, with H_t purged (method.md §3–4).

    ``token_ids`` are the responses as generated; the caller replaces each site by argmax p̃.
    """
    yes_id, _ = answer_token_ids(vlm)
    parts = []
    for k in range(0, len(rows), config.batch_size):
        chunk = rows[k : k + config.batch_size]
        logits, ids, mask = vlm.response_logits([images[i] for i, *_ in chunk], [p for _, p, _, _ in chunk], [r for _, _, r, _ in chunk])
        probs, top = logits.softmax(-1).topk(config.top_k, dim=-1)
        flags = torch.zeros_like(top, dtype=torch.bool)
        for b, (i, _, _, category) in enumerate(chunk):
            bad = set(flagged[i])
            flags[b] = torch.tensor([[token_map.get(t) in bad for t in pos] for pos in top[b].tolist()], dtype=torch.bool)
            if category in bad:
                flags[b] |= top[b] == yes_id
        flags &= mask[..., None]
        parts.append(
            {
                "token_ids": ids,
                "topk_ids": top,
                "topk_probs": purge(probs / probs.sum(-1, keepdim=True), flags),
                "flags": flags,
                "sites": flags[..., 0],  # the teacher's own top-1 was a flagged candidate
                "mask": mask,
            }
        )
    out = _cat_padded(parts)
    out["topk_probs"] = out["topk_probs"].float()
    return {k: v.cpu() for k, v in out.items()}


def _cat_padded(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate per-batch tensors along rows, right-padding the T axis (dim 1) to one length."""
    T = max(p["mask"].shape[1] for p in parts)
    out = {}
    for key in parts[0]:
        if parts[0][key].dim() == 1:  # per-row values, e.g. item ids
            out[key] = torch.cat([p[key] for p in parts])
            continue
        out[key] = torch.cat([torch.nn.functional.pad(p[key], (0, 0) * (p[key].dim() - 2) + (0, T - p[key].shape[1])) for p in parts])
    return out


# --------------------------------------------------------------------------- the run
def _shard_names(out: Path, index: int) -> tuple[Path, Path]:
    return out / f"shard-{index:05d}.safetensors", out / f"shard-{index:05d}.jsonl"


def purify(
    model=None,
    *,
    images: str | Path | Sequence[str | Path],
    out: str | Path,
    adapter: str | None = None,
    annotations: str | Path | None = None,
    config: PurifyConfig | None = None,
    device: str = "auto",
) -> Path:
    """Purify ``images`` (a folder or a list of files) with ``model``; returns the output folder."""
    from accelerate import PartialState

    from seed.adapters import load
    from seed.evaluation.runner import open_image

    config = config or PurifyConfig()
    out = Path(out)
    vlm = model if model is not None and not isinstance(model, str) else load(model, adapter=adapter, device=device)
    files = sorted(Path(images).glob("*")) if isinstance(images, (str, Path)) else [Path(p) for p in images]
    files = [f for f in files if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp")]
    if not files:
        raise SeedError(f"{images}: no images to purify")
    truth = _truth(annotations) if annotations else None
    lexicon = ObjectLexicon.default(config.lexicon)
    token_map = object_token_map(vlm.tokenizer, lexicon)
    options = json.loads(json.dumps({"config": asdict(config), "images_md5": md5_strings(f.name for f in files)}))
    manifest_path = out / "manifest.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text()).get("options") != options:
        raise SeedError(f"{out} holds a purification with other options; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if not manifest_path.is_file():
        write_json(manifest_path, {"model": vlm.name_or_path, "adapter": adapter, "options": options, "complete": False})

    state = PartialState()
    shards = [files[k : k + config.shard_size] for k in range(0, len(files), config.shard_size)]
    mine = [s for s in range(len(shards)) if s % state.num_processes == state.process_index]
    start, done_images = time.time(), 0
    columns = [TextColumn("purifying"), BarColumn(), TextColumn("{task.completed}/{task.total} images"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]
    with Progress(*columns, disable=not state.is_local_main_process) as bar:
        task = bar.add_task("purify", total=sum(len(shards[s]) for s in mine), rate="")
        for s in mine:
            tensor_file, record_file = _shard_names(out, s)
            if tensor_file.is_file():
                bar.advance(task, len(shards[s]))
                continue
            torch.manual_seed(config.seed + s)
            loaded, names, skipped = [], [], []
            for f in shards[s]:
                try:
                    loaded.append(open_image(f))
                    names.append(f.name)
                except SeedError as e:
                    skipped.append({"image": f.name, "error": str(e)})
            records, tensors = [], {}
            if loaded:
                image_truth = [truth.get(n, set()) for n in names] if truth is not None else None
                results, tensors = purify_images(vlm, loaded, names, config, lexicon, token_map, image_truth)
                base = s * 1_000_000  # item ids stay unique across shards and resumes
                item = 0
                for r in results:
                    for it in r.items:
                        records.append({"item": base + item, "image": r.image, **it, "flagged": r.flagged, "scores": r.scores})
                        item += 1
                tensors["item"] = torch.arange(base, base + item)
            atomic_write_text(record_file, "".join(json.dumps(x) + "\n" for x in [*records, *({"skipped": k} for k in skipped)]))
            atomic_write_bytes(tensor_file, _safetensors_bytes(tensors))  # written last: the shard's commit mark
            done_images += len(shards[s])
            bar.update(task, advance=len(shards[s]), rate=f"{done_images / (time.time() - start):.2f} images/s")
    state.wait_for_everyone()
    if state.is_main_process:
        _finish(out, len(shards), vlm, adapter, options)
    return out


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()}) if tensors else save({"item": torch.zeros(0, dtype=torch.long)})


def _finish(out: Path, num_shards: int, vlm, adapter, options) -> None:
    records, skipped = [], []
    for s in range(num_shards):
        for r in iter_jsonl(_shard_names(out, s)[1]):
            (skipped.append(r["skipped"]) if "skipped" in r else records.append(r))
    atomic_write_text(out / "purified.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    flagged_items = sum(r["response"] != r["repaired"] for r in records)
    write_json(
        out / "manifest.json",
        {
            "model": vlm.name_or_path,
            "adapter": adapter,
            "options": options,
            "complete": True,
            "items": len(records),
            "repaired_items": flagged_items,
            "shards": [_shard_names(out, s)[0].name for s in range(num_shards)],
            "skipped": skipped,
            "versions": library_versions(),
        },
    )


def _truth(annotations: str | Path) -> dict[str, set[str]]:
    from seed.io import load_coco

    coco, _ = load_coco(annotations)
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    return {img["file_name"]: {names[a["category_id"]] for a in coco.imgToAnns.get(i, [])} for i, img in coco.imgs.items()}


def load_shards(out: str | Path) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """The records of ``purified.jsonl`` and the shard tensors concatenated (padded to one T)."""
    out = Path(out)
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else {}
    if not manifest.get("complete"):
        raise SeedError(f"{out}: not a finished purification (run seed purify again to resume it)")
    records = list(iter_jsonl(out / "purified.jsonl"))
    parts = [load_file(out / name) for name in manifest["shards"]]
    return records, _cat_padded([p for p in parts if "token_ids" in p])


def show_examples(out: str | Path, n: int) -> None:
    """Print ``n`` purified responses that changed, flagged words in red, repairs in green."""
    from rich.console import Console

    console = Console()
    shown = 0
    for r in iter_jsonl(Path(out) / "purified.jsonl"):
        if r["response"] == r["repaired"]:
            continue
        flagged = set(r["flagged"])
        words = [f"[bold red]{w}[/]" if w.strip(".,").lower() in flagged else w for w in r["response"].split()]
        console.print(f"[dim]{r['image']}[/] {r['prompt'].splitlines()[0]}")
        console.print("  " + " ".join(words))
        console.print(f"  [green]{r['repaired']}[/]")
        shown += 1
        if shown == n:
            break
