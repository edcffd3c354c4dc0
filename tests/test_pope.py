"""POPE: official and strict parsing, scoring joined by id, refusals, the builder, the CLI."""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

from seed.errors import SeedError
from seed.evaluation import pope
from seed.io import md5_file

GQA_ARRAY = Path("/work/shared/data/pope/gqa_pope_seem_random.json")


def write_lines(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run_cli(monkeypatch, *args: str) -> int:
    from seed.cli import main

    monkeypatch.setattr(sys, "argv", ["seed", *map(str, args)])
    try:
        main()
    except SystemExit as e:
        return e.code or 0
    return 0


def label_answers(questions, flip: set = frozenset()):
    """LLaVA-style answers equal to the labels (flipped for the ids in ``flip``)."""
    out = []
    for q in questions:
        yes = (q["label"] == "yes") != (q["question_id"] in flip)
        out.append({"question_id": q["question_id"], "prompt": q["text"], "text": "Yes" if yes else "No"})
    return out


# --------------------------------------------------------------------------- parsing and metrics
CRAFTED = [  # (label, answer, official, strict)
    ("yes", "Yes, there is.", "yes", "yes"),
    ("no", "NO", "yes", "no"),
    ("yes", "Not sure.", "yes", None),
    ("no", "no, there is not", "no", "no"),
    ("yes", "", "yes", None),
    ("no", "There isn't one.", "yes", None),
]


def crafted_pairs():
    questions = [
        {"question_id": i, "image": f"{i}.jpg", "text": "Is there a cat in the image?", "label": lab}
        for i, (lab, *_) in enumerate(CRAFTED, 1)
    ]
    answers = [{"question_id": i, "answer": ans} for i, (_, ans, *_) in enumerate(CRAFTED, 1)]
    random.Random(3).shuffle(answers)  # joined by id, not by order
    return questions, answers


@pytest.mark.parametrize("label, answer, official, strict", CRAFTED)
def test_parsers_on_crafted_answers(label, answer, official, strict):
    assert pope.parse_answer(answer, "official") == official
    assert pope.parse_answer(answer, "strict") == strict


def test_official_scores_match_hand_computed():
    questions, answers = crafted_pairs()
    m = pope.score(questions, answers, "official")
    # TP 3 (q1, q3, q5), FP 2 (q2, q6), TN 1 (q4), FN 0
    assert m == pytest.approx(
        {"accuracy": 4 / 6, "precision": 3 / 5, "recall": 1.0, "f1": 0.75, "yes_ratio": 5 / 6, "n": 6, "unparsed": 0}
    )


def test_strict_parser_counts_unparsed_as_wrong_and_not_yes():
    questions, answers = crafted_pairs()
    m = pope.score(questions, answers, "strict")
    # TP 1 (q1), TN 2 (q2, q4); q3, q5, q6 unparsed → wrong, not predicted yes
    assert m == pytest.approx(
        {"accuracy": 0.5, "precision": 1.0, "recall": 1 / 3, "f1": 0.5, "yes_ratio": 1 / 6, "n": 6, "unparsed": 3}
    )
    assert pope.parse_answer("Yes and no.", "strict") is None
    with pytest.raises(SeedError, match="unknown parser"):
        pope.score(questions, answers, "lenient")


def test_string_ids_join_integer_ids(tmp_path):
    questions, _ = crafted_pairs()
    path = write_lines(tmp_path / "a.jsonl", [{"question_id": str(q["question_id"]), "text": q["label"]} for q in questions])
    assert pope.score(questions, pope.load_answers(path))["accuracy"] == 1.0


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda a: a[1:], "1 missing, 0 duplicate, 0 unknown"),
        (lambda a: a + a[:1], "0 missing, 1 duplicate, 0 unknown"),
        (lambda a: a + [{"question_id": 99999, "text": "yes"}], "0 missing, 0 duplicate, 1 unknown"),
    ],
)
def test_missing_duplicate_unknown_ids_are_refused(edit, expected):
    questions = pope.load_questions("adversarial").questions
    with pytest.raises(SeedError, match=expected):
        pope.score(questions, edit(label_answers(questions)))


def test_old_random_version_is_recognised(tmp_path):
    old = pope.load_questions("random.v2023-08").questions
    assert len(old) == 2910
    current = pope.load_questions("random").questions
    for answers in (label_answers(old), [{"question_id": q["question_id"], "image": q["image"], "text": "yes"} for q in old]):
        with pytest.raises(SeedError) as e:
            pope.score(current, answers)
        message = str(e.value)
        assert "2910 answers" in message and "3000 questions" in message
        assert "old COCO random split (random.v2023-08, 2910 questions)" in message
        assert "\n" not in message
    assert pope.score(old, label_answers(old))["f1"] == 1.0


def test_answers_of_another_split_are_recognised_by_their_prompts():
    popular = pope.load_questions("popular").questions
    with pytest.raises(SeedError, match="look like the current COCO popular split"):
        pope.score(pope.load_questions("random").questions, label_answers(popular))


def test_answers_naming_their_split_are_scored_against_that_split_only(tmp_path, monkeypatch, capsys):
    """Answers with only id + text fit any split of the same ids: the split they name must be the one scored."""
    random_qs = pope.load_questions("random").questions
    bare = [{"question_id": a["question_id"], "text": a["text"]} for a in label_answers(random_qs)]
    assert pope.score(pope.load_questions("popular").questions, bare)["n"] == 3000  # nothing tells them apart
    for key in ("split", "category"):  # seed's own answers files; LLaVA's question files with answers added
        named = [{**a, key: "random"} for a in bare]
        assert pope.score(random_qs, named, split="random")["f1"] == 1.0
        with pytest.raises(SeedError, match="made for the random split, not for popular"):
            pope.score(pope.load_questions("popular").questions, named, split="popular")
    answers = write_lines(tmp_path / "random.jsonl", [{**a, "split": "random"} for a in bare])
    assert run_cli(monkeypatch, "eval", "pope-adversarial", "--answers", answers) == 2
    assert "made for the random split, not for adversarial" in capsys.readouterr().err
    assert run_cli(monkeypatch, "eval", "pope-random", "--answers", answers) == 0


def test_several_splits_read_the_given_question_files(tmp_path, monkeypatch, capsys):
    for split in ("random", "popular"):
        questions = [{"question_id": i, "image": f"{split}{i}.jpg", "text": "Is there a dog in the image?", "label": "yes"} for i in (1, 2)]
        write_lines(tmp_path / f"q-{split}.jsonl", questions)
        write_lines(tmp_path / f"a-{split}.jsonl", [{"question_id": q["question_id"], "text": "Yes"} for q in questions])
    out = tmp_path / "pope.json"
    args = ["--splits", "random,popular", "--questions", tmp_path / "q-{split}.jsonl", "--answers", tmp_path / "a-{split}.jsonl"]
    assert run_cli(monkeypatch, "eval", "pope", *args, "--output", out) == 0
    assert json.loads(out.read_text())["metrics"]["n"] == 4


def test_malformed_json_names_the_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"question_id": 1, "text": "yes"}\n\n{"question_id": 2, "text": "no"\n')
    with pytest.raises(SeedError, match="line 3"):
        pope.load_answers(path)
    array = tmp_path / "q.json"
    array.write_text('[\n  {"question_id": 1, "label": "yes"},\n  {"question_id": 2 "label": "no"}\n]\n')
    with pytest.raises(SeedError, match="line 3"):
        pope.load_questions(array)


def test_bad_question_files_are_refused(tmp_path):
    bad_label = write_lines(tmp_path / "q.jsonl", [{"question_id": 1, "text": "Is there a cat in the image?", "label": "maybe"}])
    with pytest.raises(SeedError, match="label 'maybe'"):
        pope.load_questions(bad_label)
    with pytest.raises(SeedError, match="unknown POPE split 'sideways'"):
        pope.load_questions("sideways")
    with pytest.raises(SeedError, match="no such file"):
        pope.load_questions(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(SeedError, match="no answers"):
        pope.load_answers(tmp_path / "empty.jsonl")


# --------------------------------------------------------------------------- question files
def test_shipped_splits_and_json_array_shape(tmp_path):
    for split in pope.SPLITS:
        qs = pope.load_questions(split)
        assert len(qs.questions) == 3000 and Counter(q["label"] for q in qs.questions) == {"yes": 1500, "no": 1500}
    assert (pope.DATA_DIR / "LICENSE").read_text().startswith("MIT License")
    records = pope.load_questions("popular").questions[:12]
    array = tmp_path / "popular.json"
    array.write_text(json.dumps(records, indent=4))
    assert pope.load_questions(array).questions == records
    if GQA_ARRAY.is_file():
        assert len(pope.load_questions(GQA_ARRAY).questions) == 3000


def test_write_answers_round_trip(tmp_path):
    questions = pope.load_questions("random").questions
    pope.write_answers(tmp_path / "answers.jsonl", label_answers(questions, flip={1, 2}))
    m = pope.score(questions, pope.load_answers(tmp_path / "answers.jsonl"))
    assert m["n"] == 3000 and m["accuracy"] == pytest.approx(2998 / 3000)


# --------------------------------------------------------------------------- builder
NAMES = ["person", "dog", "apple", "umbrella", "car", "oven", "cup", "chair", "bicycle", "elephant", "kite", "bench"]


def coco_file(tmp_path: Path) -> Path:
    rng = random.Random(1)
    weights = [12, 9, 7, 6, 5, 4, 3, 3, 2, 2, 1, 1]  # skewed, so popularity and co-occurrence matter
    images, annotations = [], []
    for image_id in range(1, 41):
        images.append({"id": image_id, "file_name": f"img_{image_id:03d}.jpg", "width": 64, "height": 64})
        k = 2 if image_id % 7 == 0 else rng.randint(3, 6)  # some images have too few objects
        cats = set()
        while len(cats) < k:
            cats.add(rng.choices(range(1, len(NAMES) + 1), weights)[0])
        for cat in rng.sample(sorted(cats), k) * 2:  # repeated instances of a category
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [1, 1, 10, 10],
                    "area": 100.0,
                    "iscrowd": 0,
                }
            )
    data = {"images": images, "annotations": annotations, "categories": [{"id": i, "name": n} for i, n in enumerate(NAMES, 1)]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def objects_by_file(path: Path) -> dict[str, list[str]]:
    data = json.loads(path.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    files = {im["id"]: im["file_name"] for im in data["images"]}
    out: dict[str, list[str]] = {f: [] for f in files.values()}
    for ann in data["annotations"]:
        objs = out[files[ann["image_id"]]]
        if names[ann["category_id"]] not in objs:
            objs.append(names[ann["category_id"]])
    return out


def object_of(text: str) -> str:
    return text.removeprefix("Is there ").removesuffix(" in the image?").split(" ", 1)[1]


def per_image(questions):
    groups: dict[str, list[dict]] = {}
    for q in questions:
        groups.setdefault(q["image"], []).append(q)
    return groups


@pytest.mark.parametrize("split", pope.SPLITS)
def test_builder_invariants(tmp_path, split):
    path = coco_file(tmp_path)
    objects = objects_by_file(path)
    questions = pope.build_pope(path, split, num_images=12, seed=0)
    assert [q["question_id"] for q in questions] == list(range(1, 73))
    assert [q["label"] for q in questions] == ["yes", "no"] * 36
    groups = per_image(questions)
    assert len(groups) == 12 and all(len(g) == 6 for g in groups.values())
    sampled = [set(objects[f]) for f in groups]
    frequency = Counter(c for s in sampled for c in s)
    rank = {n: i for i, n in enumerate(NAMES)}  # ties go to the lower category id
    for image, group in groups.items():
        present = objects[image]
        assert len(present) >= 3
        positives = [object_of(q["text"]) for q in group[0::2]]
        negatives = [object_of(q["text"]) for q in group[1::2]]
        assert positives == present[:3]
        assert not set(negatives) & set(present) and len(set(negatives)) == 3
        for i, (pos, neg) in enumerate(zip(positives, negatives)):
            allowed = [c for c in NAMES if c in frequency and c not in present and c not in negatives[:i]]
            assert neg in allowed
            if split == "popular":
                assert neg == min(allowed, key=lambda c: (-frequency[c], rank[c]))
            if split == "adversarial":
                co = {c: sum(pos in s and c in s for s in sampled) for c in allowed}
                if max(co.values()) > 0:
                    assert neg == min(allowed, key=lambda c: (-co[c], rank[c]))
    assert any(q["text"] == "Is there an apple in the image?" for q in questions)
    assert not any(" a apple" in q["text"] or " a umbrella" in q["text"] for q in questions)


def test_builder_is_seeded(tmp_path):
    path = coco_file(tmp_path)
    first = pope.build_pope(path, "random", num_images=10, seed=0)
    assert pope.build_pope(path, "random", num_images=10, seed=0) == first
    other = pope.build_pope(path, "random", num_images=10, seed=1)
    assert set(per_image(other)) != set(per_image(first))
    with pytest.raises(SeedError, match="only 35 images"):
        pope.build_pope(path, "random", num_images=36)


def test_build_then_score_on_the_cli(tmp_path, monkeypatch, capsys):
    path = coco_file(tmp_path)
    out = tmp_path / "adv.jsonl"
    assert (
        run_cli(
            monkeypatch, "eval", "build-pope", "--annotations", path, "--split", "adversarial", "--num-images", "5", "--out", out
        )
        == 0
    )
    built = pope.load_questions(out).questions
    assert len(built) == 30
    answers = write_lines(tmp_path / "answers.jsonl", label_answers(built, flip={2}))
    result_path = tmp_path / "result.json"
    code = run_cli(monkeypatch, "eval", "pope-adversarial", "--answers", answers, "--questions", out, "--output", result_path)
    assert code == 0
    result = json.loads(result_path.read_text())
    assert result["metrics"]["yes_ratio"] == pytest.approx(16 / 30) and result["manifest"]["questions_md5"] == md5_file(out)


# --------------------------------------------------------------------------- command line
def test_cli_scores_shipped_split_and_writes_result(tmp_path, monkeypatch, capsys):
    questions = pope.load_questions("random").questions
    answers = write_lines(tmp_path / "answers.jsonl", label_answers(questions, flip={1}))
    out = tmp_path / "out.json"
    assert run_cli(monkeypatch, "eval", "pope-random", "--answers", answers, "--output", out) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "pope-random"
    assert set(result["metrics"]) == set(pope.METRIC_KEYS) and result["metrics"]["n"] == 3000
    assert result["metrics"]["recall"] == pytest.approx(1499 / 1500)
    manifest = result["manifest"]
    assert manifest["parser"] == "official" and manifest["model"] is None and manifest["seeds"] is None
    assert manifest["questions_md5"] == md5_file(pope.DATA_DIR / "coco_pope_random.json")
    assert "torch" in manifest["versions"]
    assert "F1" in capsys.readouterr().out


def test_cli_pope_reports_mean_f1(tmp_path, monkeypatch, capsys):
    for i, split in enumerate(pope.SPLITS):
        questions = pope.load_questions(split).questions
        write_lines(tmp_path / f"{split}.jsonl", label_answers(questions, flip=set(range(1, 1 + 2 * i))))
    out = tmp_path / "pope.json"
    assert run_cli(monkeypatch, "eval", "pope", "--answers", tmp_path / "{split}.jsonl", "--parser", "strict", "--output", out) == 0
    result = json.loads(out.read_text())
    f1s = [result["splits"][s]["f1"] for s in pope.SPLITS]
    assert f1s[0] == 1.0 and f1s[2] < f1s[1] < 1.0
    assert result["metrics"]["f1"] == pytest.approx(sum(f1s) / 3) and result["metrics"]["n"] == 9000
    assert set(result["manifest"]["questions_md5"]) == set(pope.SPLITS)
    assert "mean" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, expected",
    [
        (["eval", "pope-random", "--answers", "{bad}"], "line 2"),
        (["eval", "pope-random", "--answers", "{empty}"], "no answers"),
        (["eval", "pope-random", "--answers", "{tmp}/absent.jsonl"], "no such file"),
        (["eval", "pope-random", "--answers", "{old}"], "random.v2023-08"),
        (["eval", "pope-random", "--answers", "{old}", "--parser", "loose"], "unknown parser"),
        (["eval", "pope-popular", "--answers", "{old}", "--questions", "{badlabel}"], "label 'Yes please'"),
        (["eval", "pope-random", "--answers", "{old}", "--model", "m"], "only apply when running a model"),
        (["eval", "pope", "--answers", "{old}"], "put {split} in the --answers path"),
        (["eval", "pope", "--splits", "random,sideways", "--answers", "{old}"], "--splits takes"),
        (["eval", "build-pope", "--annotations", "{old}", "--split", "sideways", "--out", "{tmp}/q.jsonl"], "unknown POPE split"),
        (["eval", "build-pope", "--annotations", "{bad}", "--split", "random", "--out", "{tmp}/q.jsonl"], "malformed JSON"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys, args, expected):
    old = pope.load_questions("random.v2023-08").questions
    files = {
        "tmp": tmp_path,
        "bad": tmp_path / "bad.jsonl",
        "empty": tmp_path / "empty.jsonl",
        "old": write_lines(tmp_path / "old.jsonl", label_answers(old)),
        "badlabel": write_lines(tmp_path / "badlabel.jsonl", [{"question_id": 1, "label": "Yes please"}]),
    }
    files["bad"].write_text('{"question_id": 1, "text": "yes"}\n{"question_id": 2, text: "no"}\n')
    files["empty"].write_text("")
    assert run_cli(monkeypatch, *[a.format(**files) for a in args]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("error:") and expected in captured.err
    assert "Traceback" not in captured.err + captured.out
