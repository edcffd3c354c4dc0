"""Run a model on POPE: prompts, answers (the one-pass yes/no fast path or generation), scores,
and the result record with its manifest."""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from seed.adapters import VisionLanguageModel, load_spec
from seed.config import ModelSpec, PopeConfig
from seed.decoding import Decoding, manifest as decoding_manifest
from seed.errors import SeedError
from seed.evaluation.pope.questions import build_pope, load_questions
from seed.evaluation.pope.scoring import METRIC_KEYS, make_manifest, result_record, score, write_answers, write_result
from seed.evaluation.runner import Progress, generate_answers, no_progress
from seed.evaluation.yes_no import answer_yes_no
from seed.io import LazyImages, check_images, check_output
from seed.prompts import PROTOCOLS

def pope_prompt(question: str, protocol: str) -> str:
    """The user prompt of a POPE question under a protocol (pope.md)."""
    if protocol not in PROTOCOLS:
        raise SeedError(f"--protocol must be greedy or sampling, not {protocol!r}")
    return question + PROTOCOLS[protocol]


def answer_pope(
    vlm,
    questions: Sequence[dict],
    image_dir: str | Path,
    *,
    protocol: str = "greedy",
    seed: int | None = None,
    decoding: Decoding = Decoding(),
    parser: str = "official",
    batch_size: int = 32,
    max_new_tokens: int = 32,
    fast: bool = True,
    on_progress: Progress = no_progress,
) -> tuple[list[dict], dict[str, int]]:
    """Answer POPE questions → (answer records ``question_id, prompt, text`` in question order,
    ``{"first_token": n, "generated": n, "cut_at_period": n}``).

    greedy protocol, greedy decoding, ``fast``: :func:`~seed.evaluation.yes_no.answer_yes_no`;
    otherwise generation (sampling needs ``seed``; see :func:`~seed.evaluation.runner.generate_answers`).
    """
    prompts = [pope_prompt(q["text"], protocol) for q in questions]
    names = [q["image"] for q in questions]
    images = LazyImages(image_dir, names)
    if protocol == "greedy" and decoding.name == "greedy" and fast:
        texts, settled = answer_yes_no(
            vlm, images, prompts, image_keys=names, batch_size=batch_size, max_new_tokens=max_new_tokens,
            period_settles=parser == "official", on_progress=on_progress,
        )  # fmt: skip
    else:
        texts = generate_answers(
            vlm, images, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens, do_sample=protocol == "sampling",
            seed=seed, decoding=decoding, on_progress=on_progress,
        )  # fmt: skip
        settled = [False] * len(texts)
    records = [{"question_id": q["question_id"], "prompt": p, "text": t} for q, p, t in zip(questions, prompts, texts)]
    counts = {"first_token": sum(settled), "generated": len(settled) - sum(settled)}
    # Candidates never end in ".", so a settled text that does was cut at the first ".".
    counts["cut_at_period"] = sum(s and t.endswith(".") for s, t in zip(settled, texts))
    return records, counts


def answers_path(output: str | Path, split: str | None = None, seed: int | None = None) -> Path:
    """Where the answers of a run go: beside ``output``, e.g. ``res.json`` → ``res.random.seed1.answers.jsonl``."""
    output = Path(output)
    parts = [output.stem] + ([split] if split else []) + ([f"seed{seed}"] if seed is not None else [])
    return output.with_name(".".join(parts) + ".answers.jsonl")


class SplitQuestions(NamedTuple):
    """The questions of one split, their md5 (for manifests) and where they came from."""

    questions: list[dict]
    md5: str
    source: str


def question_sets(config: PopeConfig) -> dict[str, SplitQuestions]:
    """The questions of each split of ``config``."""
    sets = {}
    for split in config.splits:
        if config.annotations is not None:
            built = build_pope(config.annotations, split, num_images=config.num_images, seed=config.build_seed)
            where = f"built from {config.annotations} ({split}, {config.num_images} images, seed {config.build_seed})"
            sets[split] = SplitQuestions(built, _questions_md5(built), where)
            continue
        source = split if config.questions is None else config.questions.replace("{split}", split)
        qs = load_questions(source)
        sets[split] = SplitQuestions(qs.questions, qs.md5, str(qs.path))
    return sets


def evaluate_pope(
    model: VisionLanguageModel | ModelSpec,
    config: PopeConfig = PopeConfig(),
    *,
    decoding: Decoding = Decoding(),
    output: str | Path | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Run a model on POPE split(s) and score it → a result record (``pope`` when several splits).

    ``model``: a loaded model, or a :class:`~seed.adapters.ModelSpec` loaded once the questions and
    images have been checked. Sampling runs every seed (default 1, 2, 3) and reports the mean, with
    ``std`` (sample, n − 1) and ``per_seed`` beside it. With ``output``, the result JSON goes there
    and the answers beside it (:func:`answers_path`).
    """
    if output is not None:
        check_output(output)
    sets = question_sets(config)
    if config.images is None:
        raise SeedError("running a model on POPE needs --images DIR (the folder of the questions' image files)")
    check_images(config.images, [q["image"] for s in sets.values() for q in s.questions])
    vlm = load_spec(model) if isinstance(model, ModelSpec) else model

    per_seed: list[dict[str, dict]] = []
    answered = {"first_token": 0, "generated": 0, "cut_at_period": 0}
    files: dict[str, str] = {}
    for seed in config.run_seeds():
        scores = {}
        for split, split_questions in sets.items():
            qs = split_questions.questions
            start = time.time()
            records, counts = answer_pope(
                vlm, qs, config.images, protocol=config.protocol, seed=seed, decoding=decoding, parser=config.parser,
                batch_size=config.batch_size, max_new_tokens=config.max_new_tokens,
            )  # fmt: skip
            records = [{**r, "split": split} for r in records]  # so that the answers file says which split it answers
            for k in answered:
                answered[k] += counts[k]
            scores[split] = score(qs, records, config.parser, split=split)
            log(
                f"{split}{'' if seed is None else f' seed {seed}'}: {len(qs)} questions in {time.time() - start:.1f} s "
                f"({counts['first_token']} from one forward, {counts['generated']} generated)"
            )
            if output is not None:
                path = answers_path(output, split if len(sets) > 1 else None, seed)
                write_answers(path, records)
                files[f"{split}{'' if seed is None else f'.seed{seed}'}"] = str(path)
        per_seed.append(scores)
    manifest = _manifest(vlm, config, decoding, sets, answered, files)
    result = _result(config, per_seed, manifest)
    if output is not None:
        write_result(output, result)
    return result


def _manifest(vlm, config: PopeConfig, decoding: Decoding, sets, answered: dict, files: dict) -> dict:
    manifest = make_manifest(
        parser=config.parser,
        questions_md5=next(iter(sets.values())).md5 if len(sets) == 1 else {s: v.md5 for s, v in sets.items()},
        model=vlm.name_or_path,
        adapter=vlm.adapter,
        protocol=config.protocol,
        seeds=config.run_seeds() if config.protocol == "sampling" else None,
    )
    manifest.update(
        decoding=decoding_manifest(decoding),
        prompt_suffix=PROTOCOLS[config.protocol],
        max_new_tokens=config.max_new_tokens,
        family=vlm.family,
        dtype=str(vlm.dtype).removeprefix("torch."),
        images=str(config.images),
        questions={s: v.source for s, v in sets.items()},
        answered=answered,
        answers_files=files or None,
    )
    if answered["cut_at_period"]:
        manifest["answer_text"] = "answers settled by one forward pass end at their first '.' (the official parser reads nothing after it)"
    return manifest


def _result(config: PopeConfig, per_seed: list[dict[str, dict]], manifest: dict) -> dict:
    """The result record: metrics (mean over splits when several), per-split metrics, and for
    sampling the std over seeds and each seed's figures."""
    splits = config.splits
    combined = [_combine(scores, splits) for scores in per_seed]
    metrics = _mean([m for m, _ in combined])
    split_metrics = None if len(splits) == 1 else {s: _mean([sp[s] for _, sp in combined]) for s in splits}
    result = result_record("pope" if len(splits) > 1 else f"pope-{splits[0]}", metrics, manifest, splits=split_metrics)
    if config.protocol == "sampling":
        result["std"] = _std([m for m, _ in combined])
        if split_metrics is not None:
            result["splits_std"] = {s: _std([sp[s] for _, sp in combined]) for s in splits}
        result["per_seed"] = [
            {"seed": seed, "metrics": m, **({"splits": sp} if sp is not None else {})} for seed, (m, sp) in zip(config.run_seeds(), combined)
        ]
    return result


def _combine(scores: dict[str, dict], splits: Sequence[str]) -> tuple[dict, dict | None]:
    if len(splits) == 1:
        return scores[splits[0]], None
    mean = {k: sum(m[k] for m in scores.values()) / len(scores) for k in METRIC_KEYS if k not in ("n", "unparsed")}
    mean["n"] = sum(m["n"] for m in scores.values())
    mean["unparsed"] = sum(m["unparsed"] for m in scores.values())
    return mean, scores


def _mean(metrics: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out = {}
    for k in METRIC_KEYS:
        values = [m[k] for m in metrics]
        out[k] = values[0] if len(set(values)) == 1 else sum(values) / len(values)
    return out


def _std(metrics: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Sample standard deviation (n − 1) over seeds of the fractional metrics; None for one seed."""
    keys = [k for k in METRIC_KEYS if k not in ("n", "unparsed")]
    return {k: statistics.stdev([m[k] for m in metrics]) if len(metrics) > 1 else None for k in keys}


def _questions_md5(records: Sequence[dict]) -> str:
    """md5 of the records as :func:`~seed.evaluation.pope.questions.write_questions` writes them."""
    h = hashlib.md5()
    for q in records:
        h.update((json.dumps({k: q[k] for k in ("question_id", "image", "text", "label")}) + "\n").encode("utf-8"))
    return h.hexdigest()
