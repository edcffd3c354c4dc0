"""POPE answers: parse free-text answers, join them to questions by ``question_id`` (never by
order), score them, and write result records.

Metrics take "yes" as the positive class and are fractions in [0, 1]; ``yes_ratio`` is the
share of *predicted* yes.
"""

from __future__ import annotations

import functools
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from seed.config import PARSERS
from seed.errors import SeedError
from seed.evaluation.pope.questions import SHIPPED, SPLITS, id_examples, load_questions, question_id
from seed.io import library_versions, read_records, write_json, write_jsonl

METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio", "n", "unparsed")


# --------------------------------------------------------------------------- answers
def load_answers(path: str | Path) -> list[dict]:
    """Read model answers (JSON Lines or a JSON array) keyed by ``question_id``.

    The answer is ``answer`` if present (then ``text``, if any, is the question, as in a
    question file with answers added), else ``text`` (LLaVA style). ``image``, ``prompt``
    and ``question``, when present, are kept to check that the answers fit the questions, and
    so is the split they were made for (``split``, or LLaVA's ``category`` naming a split).
    """
    path = Path(path)
    answers = answer_records(read_records(path), where=str(path))
    if not answers:
        raise SeedError(f"{path}: no answers (empty file)")
    return answers


def answer_records(records: Iterable[dict], where: str = "answers") -> list[dict]:
    """Normalise answer records (see :func:`load_answers`) to ``question_id``, ``answer`` and
    the optional ``image``, ``question`` and ``prompt``; normalised records pass unchanged."""
    answers = []
    for i, r in enumerate(records, 1):
        if "question_id" not in r:
            raise SeedError(f"{where}: record {i} has no question_id")
        if "answer" in r:
            answer, question = r["answer"], r.get("text", r.get("question"))
        elif "text" in r:
            answer, question = r["text"], r.get("question")
        else:
            raise SeedError(f"{where}: record {i} has neither text nor answer")
        if not isinstance(answer, str):
            raise SeedError(f"{where}: record {i}: the answer is {type(answer).__name__}, not a string")
        record = {"question_id": question_id(r["question_id"], where, i), "answer": answer}
        split = r.get("split", r.get("category") if r.get("category") in SPLITS else None)
        for key, value in (("image", r.get("image")), ("question", question), ("prompt", r.get("prompt")), ("split", split)):
            if isinstance(value, str):
                record[key] = value
        answers.append(record)
    return answers


def write_answers(path: str | Path, records: Iterable[dict]) -> None:
    """Write model answers as JSON Lines (``question_id``, ``prompt``, ``text``, any extras), atomically."""
    write_jsonl(path, records)


def parse_answer(text: str, parser: str = "official") -> str | None:
    """Map a free-text answer to "yes", "no", or None (strict parser only: unparsed).

    official (RUCAIBox/POPE, LLaVA): text before the first '.', commas dropped, split on
    spaces; any word exactly ``No``, ``no`` or ``not`` → "no", else "yes" — so "" and "NO"
    are yes. strict: lowercase, punctuation removed; "yes" without "no" → yes, the reverse
    → no, anything else → None.
    """
    if parser == "official":
        words = text.split(".")[0].replace(",", "").split(" ")
        return "no" if any(w in ("No", "no", "not") for w in words) else "yes"
    if parser == "strict":
        words = set(text.lower().translate(str.maketrans("", "", string.punctuation)).split())
        if "yes" in words and "no" not in words:
            return "yes"
        if "no" in words and "yes" not in words:
            return "no"
        return None
    raise SeedError(f"unknown parser {parser!r}: choose {' or '.join(PARSERS)}")


# --------------------------------------------------------------------------- scoring
def join_answers(questions: Sequence[dict], answers: Iterable[dict], split: str | None = None) -> list[tuple[dict, dict]]:
    """Pair each question with its (normalised, see :func:`answer_records`) answer by ``question_id``.

    Refused (SeedError): missing, duplicate or unknown ids, answers whose ``image`` or question
    text disagree with the questions, and answers made for another split than ``split``; the
    message says which shipped version the answers look like when one fits.
    """
    answers = answer_records(answers)
    other = sorted({a["split"] for a in answers if split is not None and a.get("split", split) != split})
    if other:
        raise SeedError(f"these answers were made for the {' and '.join(other)} split, not for {split}")
    by_id = {q["question_id"]: q for q in questions}
    counts = Counter(a["question_id"] for a in answers)
    missing = [k for k in by_id if k not in counts]
    unknown = [k for k in counts if k not in by_id]
    duplicate = [k for k, c in counts.items() if c > 1]
    if missing or unknown or duplicate:
        parts = [f"{len(missing)} missing", f"{len(duplicate)} duplicate", f"{len(unknown)} unknown"]
        examples = "; ".join(
            f"{kind} e.g. {id_examples(ids)}"
            for kind, ids in (("missing", missing), ("duplicate", duplicate), ("unknown", unknown))
            if ids
        )
        raise SeedError(
            f"answers do not match the questions: {', '.join(parts)} question_ids "
            f"({len(answers)} answers for {_version_of(questions)}; {examples}){_looks_like(answers, questions)}"
        )
    mismatched = sum(not _fits(a, by_id[a["question_id"]]) for a in answers)
    if mismatched:
        raise SeedError(
            f"answers do not belong to these questions: {mismatched} of {len(answers)} carry another image or question "
            f"({_version_of(questions)}){_looks_like(answers, questions)}"
        )
    return [(by_id[a["question_id"]], a) for a in answers]


def score(questions: Sequence[dict], answers: Iterable[dict], parser: str = "official", split: str | None = None) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 (yes = positive), yes_ratio, n and unparsed.

    Unparsed answers (strict parser) count as wrong and as neither yes nor no predictions.
    ``answers`` are records as in an answers file (``text`` or ``answer``) or as loaded;
    ``split``: the split the questions are (answers that name another are refused).
    """
    parse_answer("", parser)  # refuse an unknown parser before joining
    if not questions:
        raise SeedError("no questions to score")
    pairs = join_answers(questions, answers, split)
    predictions = [(q["label"], parse_answer(a["answer"], parser)) for q, a in pairs]
    tp = sum(label == "yes" and pred == "yes" for label, pred in predictions)
    fp = sum(label == "no" and pred == "yes" for label, pred in predictions)
    tn = sum(label == "no" and pred == "no" for label, pred in predictions)
    positives = sum(label == "yes" for label, _ in predictions)
    n = len(predictions)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / positives if positives else 0.0
    return {
        "accuracy": (tp + tn) / n,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": (tp + fp) / n,
        "n": n,
        "unparsed": sum(pred is None for _, pred in predictions),
    }


def score_splits(
    questions: Mapping[str, Sequence[dict]], answers: Mapping[str, Sequence[dict]], parser: str = "official"
) -> dict[str, Any]:
    """Score several splits → ``{"metrics": mean over splits, "splits": {name: metrics}}``.

    The mean's ``f1`` is the single POPE score (mean F1); ``n`` and ``unparsed`` are summed.
    """
    if set(questions) != set(answers):
        raise SeedError(f"splits differ between questions ({', '.join(questions)}) and answers ({', '.join(answers)})")
    splits = {}
    for name in questions:
        try:
            splits[name] = score(questions[name], answers[name], parser, split=name)
        except SeedError as e:
            raise SeedError(f"{name} split: {e}") from None
    mean = {k: sum(m[k] for m in splits.values()) / len(splits) for k in METRIC_KEYS if k not in ("n", "unparsed")}
    mean["n"] = sum(m["n"] for m in splits.values())
    mean["unparsed"] = sum(m["unparsed"] for m in splits.values())
    return {"metrics": {k: mean[k] for k in METRIC_KEYS}, "splits": splits}


# --------------------------------------------------------------------------- answers files → results
def score_answers_file(
    answers: str | Path,
    questions: str | Path = "random",
    parser: str = "official",
    benchmark: str | None = None,
    split: str | None = None,
) -> dict:
    """Score one answers file against a question set → a result record (see :func:`result_record`).
    ``split``: the split being scored (default: the shipped set's, if ``questions`` names one)."""
    question_set = load_questions(questions)
    split = split or (str(questions).split(".")[0] if str(questions) in SHIPPED else None)
    metrics = score(question_set.questions, load_answers(answers), parser, split=split)
    manifest = make_manifest(parser=parser, questions_md5=question_set.md5)
    return result_record(benchmark or f"pope-{question_set.name}", metrics, manifest)


def score_pope_files(answers: Mapping[str, str | Path], parser: str = "official", questions: str | None = None) -> dict:
    """Score an answers file per split → the ``pope`` result record. ``questions``: the question
    files, ``{split}`` in the path standing for each split (default: the shipped COCO splits)."""
    if not answers or any(s not in SPLITS for s in answers):
        raise SeedError(f"pope scores the splits {', '.join(SPLITS)}; got {', '.join(answers) or 'none'}")
    question_sets = {name: load_questions(name if questions is None else questions.replace("{split}", name)) for name in answers}
    scored = score_splits(
        {n: qs.questions for n, qs in question_sets.items()}, {n: load_answers(answers[n]) for n in answers}, parser
    )
    manifest = make_manifest(parser=parser, questions_md5={n: qs.md5 for n, qs in question_sets.items()})
    return result_record("pope", scored["metrics"], manifest, splits=scored["splits"])


def make_manifest(
    parser: str,
    questions_md5: str | Mapping[str, str],
    model: str | None = None,
    adapter: str | None = None,
    protocol: str | None = None,
    seeds: Sequence[int] | None = None,
) -> dict:
    """What produced a result. ``model``/``adapter``/``protocol``/``seeds`` stay None when
    scoring answers files; ``questions_md5`` is one hash, or one per split for ``pope``."""
    return {
        "model": model,
        "adapter": adapter,
        "protocol": protocol,
        "parser": parser,
        "seeds": list(seeds) if seeds is not None else None,
        "questions_md5": questions_md5 if isinstance(questions_md5, str) else dict(questions_md5),
        "versions": library_versions(),
    }


def result_record(
    benchmark: str, metrics: Mapping[str, Any], manifest: Mapping[str, Any], splits: Mapping[str, Mapping] | None = None
) -> dict:
    """``{"benchmark", "metrics", "splits" (pope only), "manifest"}`` — the ``--output`` JSON."""
    record: dict[str, Any] = {"benchmark": benchmark, "metrics": {k: metrics[k] for k in METRIC_KEYS}}
    if splits is not None:
        record["splits"] = {name: {k: m[k] for k in METRIC_KEYS} for name, m in splits.items()}
    record["manifest"] = dict(manifest)
    return record


def write_result(path: str | Path, result: Mapping[str, Any]) -> None:
    """Write a result record (from :func:`result_record`) as JSON, atomically."""
    write_json(path, dict(result))


# --------------------------------------------------------------------------- helpers
def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _fits(answer: dict, question: Mapping) -> bool:
    """Whether the optional image / question / prompt of an answer agree with the question."""
    if "image" in answer and question.get("image") is not None and answer["image"] != question["image"]:
        return False
    text = question.get("text")
    if text is None:
        return True
    if "question" in answer and _norm(answer["question"]) != _norm(text):
        return False
    return "prompt" not in answer or _norm(text) in _norm(answer["prompt"])


@functools.cache
def _shipped_questions(name: str) -> tuple[dict, ...]:
    return tuple(load_questions(name).questions)


def _shipped_fitting(records: Sequence[dict], fits) -> list[str]:
    """Shipped versions with exactly the ids of ``records`` and whose records all fit."""
    ids = [r["question_id"] for r in records]
    found = []
    for name in SHIPPED:
        shipped = {q["question_id"]: q for q in _shipped_questions(name)}
        if len(ids) == len(shipped) and set(ids) == shipped.keys() and all(fits(r, shipped[r["question_id"]]) for r in records):
            found.append(name)
    return found


def _describe(names: Sequence[str]) -> str:
    count = len(_shipped_questions(names[0]))
    if names == ["random.v2023-08"]:
        return f"the old COCO random split (random.v2023-08, {count} questions)"
    if len(names) == 1:
        return f"the current COCO {names[0]} split ({count} questions)"
    return f"a shipped COCO split ({' or '.join(names)}, {count} questions)"


def _version_of(questions: Sequence[dict]) -> str:
    """How many questions, and which shipped version they are if they are one (for messages)."""
    same = lambda q, s: (q.get("image"), q.get("text"), q["label"]) == (s["image"], s["text"], s["label"])  # noqa: E731
    names = _shipped_fitting(questions, same)
    if len(names) == 1:
        old = names == ["random.v2023-08"]
        return f"the {len(questions)} questions of the {'old' if old else 'current'} COCO {names[0].split('.')[0]} split"
    return f"{len(questions)} questions"


def _looks_like(answers: Sequence[dict], questions: Sequence[dict]) -> str:
    """For messages: the shipped version (other than the questions' own) the answers fit."""
    names = _shipped_fitting(answers, _fits)
    own = _shipped_fitting(questions, lambda q, s: (q.get("image"), q.get("text")) == (s["image"], s["text"]))
    names = [n for n in names if n not in own]
    if not names:
        return ""
    hint = f": score them with --questions {names[0]}" if len(names) == 1 else ""
    if names == ["random.v2023-08"]:
        hint += " or re-run the model on the current random split"
    return f"; they look like {_describe(names)}{hint}"
