"""benchmarks/replicate.py: the bootstrap of a gain and the per-image counts it resamples."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location("replicate", Path(__file__).parents[1] / "benchmarks" / "replicate.py")
replicate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(replicate)


def _pope_world(rng, images: int, p_right: float) -> np.ndarray:
    """[TP, FP, FN] per image of 3 yes + 3 no questions answered right with probability p_right."""
    right = rng.random((images, 6)) < p_right
    return np.stack([right[:, :3].sum(1), (~right[:, 3:]).sum(1), (~right[:, :3]).sum(1)], axis=1).astype(float)


def test_the_bootstrap_brackets_a_real_gain_and_centres_no_gain_on_zero():
    rng = np.random.default_rng(0)
    better = [(_pope_world(rng, 500, 0.95), _pope_world(rng, 500, 0.85)) for _ in range(3)]
    gain, low, high = replicate.bootstrap_gain(better, replicate.pope_f1, draws=300)
    assert 0.06 < gain < 0.14 and 0 < low < gain < high  # ~ +10 F1 points, the CI excludes 0
    same = [(w, w.copy()) for w, _ in better]
    assert replicate.bootstrap_gain(same, replicate.pope_f1, draws=300) == (0.0, 0.0, 0.0)
    noise = [(_pope_world(rng, 500, 0.9), _pope_world(rng, 500, 0.9)) for _ in range(3)]
    _, low, high = replicate.bootstrap_gain(noise, replicate.pope_f1, draws=300)
    assert low < 0 < high and high - low < 0.05  # two draws of one model: a CI around 0, about 2 points wide


def test_counts_read_the_answer_and_chair_files(tmp_path):
    questions = [
        {"question_id": 1, "image": "b.png", "text": "Is there a dog in the image?", "label": "yes"},
        {"question_id": 2, "image": "b.png", "text": "Is there a cat in the image?", "label": "no"},
        {"question_id": 3, "image": "a.png", "text": "Is there a cup in the image?", "label": "yes"},
        {"question_id": 4, "image": "a.png", "text": "Is there a car in the image?", "label": "no"},
    ]
    answers = [{"question_id": 1, "text": "Yes"}, {"question_id": 2, "text": "Yes, there is."}, {"question_id": 3, "text": "No"}, {"question_id": 4, "text": "No."}]
    for name, records in (("q.jsonl", questions), ("a.jsonl", answers)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    counts = replicate.pope_counts(tmp_path / "q.jsonl", tmp_path / "a.jsonl")
    assert counts.tolist() == [[0, 0, 1], [1, 1, 0]]  # a.png: a missed cup; b.png: a dog and a false cat
    assert replicate.pope_f1(counts.sum(0)) == pytest.approx(0.5)
    mention = lambda h: {"category": "x", "hallucinated": h}
    chair = {"captions": [{"image": "b.png", "mentions": [mention(True), mention(False)]}, {"image": "a.png", "mentions": []}]}
    (tmp_path / "chair.json").write_text(json.dumps(chair))
    counts = replicate.chair_counts(tmp_path / "chair.json")
    assert counts.tolist() == [[0, 0], [1, 2]] and replicate.chair_i(counts.sum(0)) == 0.5


def test_the_table_shows_every_row_with_its_gain_and_guard_failures():
    summary = {
        "base": {"worlds": 3, "mean": {"F1 adversarial": 86.0}, "sd": {"F1 adversarial": 1.0}, "guard_failures": 0},
        "seed": {
            "worlds": 3, "mean": {"F1 adversarial": 89.0}, "sd": {"F1 adversarial": 0.5}, "guard_failures": 1,
            "gain": {"F1 adversarial": [3.0, 1.5, 4.5], "CHAIR_i": [-5.0, -6.0, -4.0]},
        },
    }  # fmt: skip
    lines = replicate.markdown(summary).splitlines()
    assert lines[2] == "| base | 86.0 ± 1.0 |  |  | 0/3 |"
    assert lines[3] == "| seed | 89.0 ± 0.5 | +3.0 [+1.5, +4.5] | -5.0 [-6.0, -4.0] | 1/3 |"


def test_a_rows_folder_refuses_rows_of_another_world(tmp_path):
    replicate.check_rows_folder(tmp_path, {"world": {"seed": 1}, "evolve": {"rounds": 2}})
    replicate.check_rows_folder(tmp_path, {"world": {"seed": 1}, "evolve": {"rounds": 2}})  # the same: reused
    with pytest.raises(SystemExit, match="another world or other options"):
        replicate.check_rows_folder(tmp_path, {"world": {"seed": 2}, "evolve": {"rounds": 2}})


def test_one_world_has_no_sd():
    summary = {"seed": {"worlds": 1, "mean": {"F1 adversarial": 89.0, "CHAIR_i": None}, "sd": {"F1 adversarial": None, "CHAIR_i": None}, "guard_failures": 0}}
    assert replicate.markdown(summary).splitlines()[2] == "| seed | 89.0 | n/a |  |  | 0/1 |"


def test_a_refused_world_is_reported_and_the_others_measured(tmp_path, monkeypatch):
    def build(config):
        if config.seed == 1:
            raise replicate.SeedError("F1 0.43 < 0.7: it did not learn to answer from the image")
        return tmp_path / f"world-{config.seed}"

    measured = []
    monkeypatch.setattr(replicate, "build_world", build)
    monkeypatch.setattr(replicate, "world_rows", lambda world, out, *a: measured.append(world.root.name) or {})
    monkeypatch.setattr(replicate, "summarise", lambda worlds, draws: {})
    result = replicate.replicate([1, 2], replicate.BiasConfig(), tmp_path / "out", ["base"])
    assert measured == ["world-2"] and result["seeds"] == [2] and "did not learn" in result["refused"][1]
    monkeypatch.setattr(replicate, "build_world", lambda config: build(replicate.WorldConfig(seed=1)))
    with pytest.raises(SystemExit, match="no usable world"):
        replicate.replicate([1], replicate.BiasConfig(), tmp_path / "out", ["base"])


def test_a_guard_failure_names_the_guard_the_kept_round_fails():
    config = replicate.EvolveConfig()
    def entry(r, yes, recall):
        figures = {"pope": {config.selection_split: {"f1": 0.8 + r / 100, "yes_ratio": yes}}, "chair": {"recall": recall}}
        return {"round": r, "val": figures, "eval": figures}

    base = entry(0, 0.5, 0.8)
    assert replicate.guard_failure({"rounds": [base, entry(1, 0.5, 0.8)]}, config) is None
    assert replicate.guard_failure({"rounds": [base, entry(1, 0.7, 0.8)]}, config).startswith("val yes-ratio 0.700 outside")
    assert "recall below" in replicate.guard_failure({"rounds": [base, entry(1, 0.5, 0.1)]}, config)
    assert replicate.guard_failure({"rounds": [base]}, config) == "no trained round"
