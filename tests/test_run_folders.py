"""Run folders never mix or trust damaged state: a purification resumes only with the same
fingerprint (model, adapter, options, images), every shard is verified on resume and on load,
failed repairs are dropped and counted."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from seed.adapters import load
from seed.adapters.hea import attach_hea, save_hea
from seed.config import HEAConfig, IdentifyConfig, PurifyConfig
from seed.errors import SeedError
from seed.purge import repair_problem
from seed.purify import purify
from seed.targets import load_shards, shard_paths

CONFIG = PurifyConfig(IdentifyConfig(signals=("self-probe", "lens"), questions_per_image=2, categories=("dog", "cup", "car")), shard_size=2, max_new_tokens=6)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 90, 200 - 40 * i)).save(folder / f"im{i}.png")
    return folder


@pytest.fixture(scope="module")
def vlm(tiny_llava_dir):
    return load(str(tiny_llava_dir), device="cpu")


@pytest.fixture(scope="module")
def finished(vlm, images, tmp_path_factory) -> Path:
    return purify(vlm, images=images, out=tmp_path_factory.mktemp("runs") / "purified", config=CONFIG)


def killed_after_one_shard(vlm, images, out: Path, monkeypatch) -> None:
    import seed.purify

    real, calls = seed.purify.purify_images, []

    def dies_on_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(seed.purify, "purify_images", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        purify(vlm, images=images, out=out, config=CONFIG)
    monkeypatch.setattr(seed.purify, "purify_images", real)


def test_a_resume_with_another_model_adapter_or_options_is_refused(vlm, images, tmp_path, monkeypatch):
    from conftest import build_tiny_llava

    out = tmp_path / "run"
    killed_after_one_shard(vlm, images, out, monkeypatch)
    other = load(str(build_tiny_llava(tmp_path / "other-model", seed=1)), device="cpu")
    with pytest.raises(SeedError, match=r"holds a purification of another model \(model\.weights_md5 differs\); choose another --out"):
        purify(other, images=images, out=out, config=CONFIG)
    hea = save_hea(attach_hea(load(vlm.name_or_path, device="cpu"), HEAConfig(rank=2, alpha=4)), tmp_path / "hea", {})
    with_adapter = load(vlm.name_or_path, adapter=str(hea), device="cpu")
    with pytest.raises(SeedError, match=r"with another adapter \(adapter differs\)"):
        purify(with_adapter, images=images, out=out, config=CONFIG)
    other_options = replace(CONFIG, identify=replace(CONFIG.identify, tau=0.6), top_k=4)
    with pytest.raises(SeedError, match=r"with other options \(options\.identify\.tau, options\.top_k differ\)"):
        purify(vlm, images=images, out=out, config=other_options)
    with pytest.raises(SeedError, match=r"of other images \(images\.count, images\.names_md5 differ\)"):
        purify(vlm, images=sorted(images.iterdir())[:3], out=out, config=CONFIG)
    assert len(list(out.glob("shard-*.check.json"))) == 1  # nothing was added by the refused runs
    purify(vlm, images=images, out=out, config=CONFIG)  # the same model resumes


def test_a_run_that_finished_no_shard_does_not_block_the_next(vlm, images, tmp_path, monkeypatch):
    import seed.purify

    def crash(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(seed.purify, "purify_images", crash)
    with pytest.raises(RuntimeError):
        purify(vlm, images=images, out=tmp_path / "run", config=CONFIG)
    monkeypatch.undo()
    purify(vlm, images=images, out=tmp_path / "run", config=replace(CONFIG, top_k=4))


@pytest.mark.parametrize(
    "damage, problem",
    [
        ("truncate-tensors", r"its tensors file is \d+ of \d+ bytes"),
        ("cut-records", r"its records file holds \d+ of \d+ records"),
        ("edit-records", "its records file has changed since it was written"),
        ("delete-records", "its records file is missing"),
    ],
)
def test_a_damaged_shard_is_refused_on_resume_and_on_load(finished, vlm, images, tmp_path, damage, problem):
    out = Path(shutil.copytree(finished, tmp_path / "run"))
    tensors, records = shard_paths(out, 1)
    if damage == "truncate-tensors":
        tensors.write_bytes(tensors.read_bytes()[:-100])
    elif damage == "cut-records":
        records.write_text("".join(records.read_text().splitlines(keepends=True)[:-1]))
    elif damage == "edit-records":
        records.write_text(records.read_text().replace('"im', '"IM'))
    else:
        records.unlink()
    message = rf"shard-00001 is damaged \({problem}\); delete shard-00001\.\* and rerun to redo it"
    with pytest.raises(SeedError, match=message):
        load_shards(out)
    with pytest.raises(SeedError, match=message):
        purify(vlm, images=images, out=out, config=CONFIG)
    for path in out.glob("shard-00001.*"):
        path.unlink()
    purify(vlm, images=images, out=out, config=CONFIG)  # redone as the message says
    assert (out / "purified.jsonl").read_bytes() == (finished / "purified.jsonl").read_bytes()


def test_a_broken_manifest_is_one_line(finished, vlm, images, tmp_path):
    out = Path(shutil.copytree(finished, tmp_path / "run"))
    (out / "manifest.json").write_text('{"fingerprint": {')
    with pytest.raises(SeedError, match=r"manifest\.json: malformed JSON at line 1"):
        purify(vlm, images=images, out=out, config=CONFIG)
    with pytest.raises(SeedError, match=r"manifest\.json: malformed JSON"):
        load_shards(out)


@pytest.mark.parametrize(
    "text, answer, problem",
    [
        ("In this picture we can see a clock, a knife and a.", False, "an article is left dangling (a .)"),
        ("In this picture we can see an umbrella, a bench and a Yes", False, "an article is left dangling (a yes)"),
        ("we can see a bench, a car and a in the image.", False, "an article is left dangling (a in)"),
        ("we can see a fork and a an umbrella.", False, "an article is left dangling (a an)"),
        ("we can see a fork and", False, "it ends on 'and'"),
        ("we can see a fork", False, "it does not end a sentence"),
        ("  ", False, "empty"),
        ("the", True, "the answer 'the' is neither yes nor no"),
        ("", True, "empty"),
        ("In this picture we can see an umbrella, a bench and a keyboard.", False, None),
        ("No", True, None),
    ],
)
def test_repaired_responses_are_checked(text, answer, problem):
    assert repair_problem(text, answer) == problem


def test_failed_repairs_are_dropped_from_the_targets_and_counted(finished):
    records, tensors = load_shards(finished)
    manifest = json.loads((finished / "manifest.json").read_text())
    notes = [json.loads(line) for s in range(manifest["shards"]) for line in shard_paths(finished, s)[1].read_text().splitlines()]
    dropped = [n["dropped"] for n in notes if "dropped" in n]
    assert dropped and manifest["dropped_repairs"] == len(dropped)  # the tiny random model wrecks some repairs
    assert all(repair_problem(d["repaired"], "category" in d) == d["problem"] for d in dropped)
    assert all(repair_problem(r["repaired"], "category" in r) is None for r in records if r["repaired"] != r["response"])
    assert len(records) == manifest["items"] == len(tensors["item"])
    assert sorted(tensors["item"].tolist()) == sorted(r["item"] for r in records)


def test_unreadable_images_are_named_on_stderr_and_in_the_manifest(vlm, images, tmp_path, capsys):
    folder = Path(shutil.copytree(images, tmp_path / "images"))
    (folder / "broken.png").write_bytes(b"not a png")
    out = purify(vlm, images=folder, out=tmp_path / "run", config=CONFIG)
    assert "warning: skipped 1 unreadable image(s): broken.png" in capsys.readouterr().err
    assert [k["image"] for k in json.loads((out / "manifest.json").read_text())["skipped"]] == ["broken.png"]
