"""Every bad input is one line on stderr and exit code 2, found before any work: damaged or pickle
weights, outputs that are folders or lie under files, option values out of range, JSON nested too
deeply. Outputs get the umask's mode."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from seed.adapters.hea import attach_hea, save_hea
from seed.config import HEAConfig
from seed.evaluation import pope
from seed.io import write_json


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    from seed.cli import main

    monkeypatch.setattr(sys, "argv", ["seed", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.err.strip()


def one_line_error(monkeypatch, capsys, *args, after_loading: bool = False) -> str:
    """The error line (``after_loading``: transformers' loading bar may come first)."""
    code, err = run_cli(monkeypatch, capsys, *args)
    if after_loading:
        err = err.splitlines()[-1]
    assert code == 2 and err.startswith("error:") and "\n" not in err, err
    return err


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "a.png")
    return folder


@pytest.fixture
def never_unpickle(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called: a pickle was opened")

    monkeypatch.setattr(torch, "load", refuse)


def damaged(folder: Path, file: str, how: str) -> Path:
    data = (folder / file).read_bytes()
    (folder / file).write_bytes(data[: len(data) // 2] if how == "truncated" else data[:8] + b"#" * 64 + data[72:])
    return folder


@pytest.mark.parametrize("how, reason", [("truncated", "incomplete metadata"), ("garbled", "invalid JSON in header")])
def test_damaged_model_weights(tiny_llava_dir, images, tmp_path, monkeypatch, capsys, how, reason):
    model = damaged(Path(shutil.copytree(tiny_llava_dir, tmp_path / "model")), "model.safetensors", how)
    err = one_line_error(monkeypatch, capsys, "purify", "--model", model, "--images", images, "--out", tmp_path / "o", "--device", "cpu")
    assert f"model {model}: model.safetensors: cannot read it" in err and reason in err


def test_pickle_only_model_is_never_unpickled(tiny_llava_dir, images, tmp_path, monkeypatch, capsys, never_unpickle):
    model = Path(shutil.copytree(tiny_llava_dir, tmp_path / "model"))
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")  # before torch.load is refused
    (model / "model.safetensors").unlink()
    err = one_line_error(monkeypatch, capsys, "purify", "--model", model, "--images", images, "--out", tmp_path / "o", "--device", "cpu")
    assert "holds only pickle weights (pytorch_model.bin); seed loads safetensors only" in err


@pytest.fixture(scope="module")
def adapter(tiny_llava_dir, tmp_path_factory) -> Path:
    from seed.adapters import load

    vlm = attach_hea(load(str(tiny_llava_dir), device="cpu"), HEAConfig(rank=2, alpha=4))
    return save_hea(vlm, tmp_path_factory.mktemp("hea") / "adapter", {})


@pytest.mark.parametrize("how", ["truncated", "garbled", "pickle"])
def test_damaged_or_pickle_adapter(tiny_llava_dir, adapter, images, tmp_path, monkeypatch, capsys, never_unpickle, how):
    folder = Path(shutil.copytree(adapter, tmp_path / "adapter"))
    if how == "pickle":
        (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    else:
        damaged(folder, "adapter_model.safetensors", how)
    args = ["purify", "--model", tiny_llava_dir, "--adapter", folder, "--images", images, "--out", tmp_path / "o", "--device", "cpu"]
    err = one_line_error(monkeypatch, capsys, *args)
    expected = "holds only pickle weights (adapter_model.bin)" if how == "pickle" else "adapter_model.safetensors: cannot read it"
    assert f"adapter {folder}" in err and expected in err


@pytest.mark.parametrize(
    "option, message",
    [
        (["--batch-size", "0"], "--batch-size must be at least 1, not 0"),
        (["--top-k", "0"], "--top-k must be at least 1, not 0"),
        (["--top-k", "100000"], "--top-k 100000 exceeds the vocabulary"),
        (["--tau", "1.5"], "--tau is a hallucination score threshold in [0, 1], not 1.5"),
        (["--shard-size", "0"], "--shard-size must be at least 1, not 0"),
        (["--lens-layers", "99"], "--lens-layers 99: the language model has layers 0 (input) to"),
        (["--categories", "dog,unicorn"], "--categories: unknown object 'unicorn'"),
        (["--identify", "oracle"], "--identify oracle needs --annotations"),
    ],
)
def test_options_out_of_range_are_refused_before_any_work(tiny_llava_dir, images, tmp_path, monkeypatch, capsys, option, message):
    out, vocabulary = tmp_path / "o", any(w in message for w in ("vocabulary", "layers", "unknown object"))  # checked once the model is loaded
    args = ["purify", "--model", tiny_llava_dir, "--images", images, "--out", out, "--device", "cpu", *option]
    err = one_line_error(monkeypatch, capsys, *args, after_loading=vocabulary)
    assert message in err
    assert not (out / "manifest.json").exists()  # nothing that would block the corrected rerun


def test_outputs_that_are_folders_or_lie_under_files(tiny_llava_dir, images, tmp_path, monkeypatch, capsys):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": q["question_id"], "text": "yes"}) + "\n" for q in pope.load_questions("random").questions))
    a_file = tmp_path / "note.txt"
    a_file.write_text("keep")
    err = one_line_error(monkeypatch, capsys, "eval", "pope-random", "--answers", answers, "--output", tmp_path)
    assert f"{tmp_path}: is a folder; give a file path" in err
    err = one_line_error(monkeypatch, capsys, "eval", "pope-random", "--answers", answers, "--output", a_file / "result.json")
    assert f"lies under {a_file}, which is a file" in err
    for out, message in ((a_file, f"{a_file}: is a file, not a folder"), (a_file / "run", f"lies under {a_file}, which is a file")):
        err = one_line_error(monkeypatch, capsys, "purify", "--model", tiny_llava_dir, "--images", images, "--out", out, "--device", "cpu")
        assert message in err
        assert message in one_line_error(monkeypatch, capsys, "evolve", "--out", out)
    assert a_file.read_text() == "keep"


def test_json_nested_too_deeply(tmp_path, monkeypatch, capsys):
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"question_id": 1, "text": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    assert f"{deep}: JSON nested too deeply on line 1" in one_line_error(monkeypatch, capsys, "eval", "pope-random", "--answers", deep)
    deep.write_text("[" * 100_000 + "]" * 100_000)
    err = one_line_error(monkeypatch, capsys, "eval", "build-pope", "--annotations", deep, "--split", "random", "--out", tmp_path / "q.jsonl")
    assert "nested too deeply" in err


def test_outputs_take_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {})
        os.umask(0o027)
        write_json(tmp_path / "b.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize(
    "args, message",
    [
        (["purge"], "No such command 'purge'."),
        (["eval", "chair", "--captionz", "x"], "No such option: --captionz"),
        (["eval", "pope-random", "--batch-size", "many"], "Invalid value for '--batch-size'"),
        (["world", "build", "--seed", "-1"], "--seed must be at least 0, not -1"),
    ],
)
def test_usage_mistakes_are_one_line_too(monkeypatch, capsys, args, message):
    assert message in one_line_error(monkeypatch, capsys, *args)


def test_images_none_of_which_can_be_read_are_an_error(tiny_llava_dir, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    args = ["purify", "--model", tiny_llava_dir, "--images", folder, "--out", tmp_path / "o", "--device", "cpu", "--max-new-tokens", "4"]
    assert "none of the 1 images could be read (e.g. a.png" in one_line_error(monkeypatch, capsys, *args, after_loading=True)


def test_detect_checks_its_outputs_and_annotations_before_any_work(tiny_llava_dir, images, tmp_path, monkeypatch, capsys):
    from seed import detection

    monkeypatch.setattr(detection, "detect", lambda *a, **k: pytest.fail("detected before the checks"))
    captions = tmp_path / "c.jsonl"
    captions.write_text(json.dumps({"image": "a.png", "caption": "A dog."}) + "\n")
    base = ["detect", "--model", tiny_llava_dir, "--images", images, "--captions", captions, "--device", "cpu"]
    assert "is a folder; give a file path" in one_line_error(monkeypatch, capsys, *base, "--output", tmp_path)
    assert "no such file" in one_line_error(monkeypatch, capsys, *base, "--annotations", tmp_path / "none.json")
    a_file = tmp_path / "note.txt"
    a_file.write_text("keep")
    train = ["detect", "train", "--model", tiny_llava_dir, "--images", images, "--device", "cpu"]
    assert "is a file, not a folder" in one_line_error(monkeypatch, capsys, *train, "--out", a_file)
