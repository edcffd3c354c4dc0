"""seed detect: every option of any caption judged by the identification signals, scored against
annotations, on a subword-tokenizer model; bad input is one line and exit 2."""

from __future__ import annotations

import json
import sys

import pytest
from subword_models import CAPTIONS, OBJECTS, caption_images

from seed.config import DetectConfig, IdentifyConfig
from seed.detection import auroc, detect, detection_metrics


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect")
    (root / "images").mkdir()
    for i, image in enumerate(caption_images()):
        image.save(root / "images" / f"photo_{i}.jpg")
    captions = [{"image": f"photo_{i}.jpg", "caption": c} for i, c in enumerate(CAPTIONS)]
    captions.append({"image": "photo_0.jpg", "caption": "A picture.", "options": ["teddy bears", "Hot dog", "bus"]})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in captions))
    shown = {0: ["giraffe"], 1: ["snowboard", "dog"], 2: ["dining table"]}
    cats = {o: i + 1 for i, o in enumerate(OBJECTS)}
    anns = [{"id": k, "image_id": i + 1, "category_id": cats[o], "bbox": [0, 0, 9, 9], "area": 81, "iscrowd": 0}
            for k, (i, o) in enumerate(((i, o) for i, os in shown.items() for o in os), 1)]  # fmt: skip
    images = [{"id": i + 1, "file_name": f"photo_{i}.jpg", "width": 640, "height": 480} for i in range(3)]
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": v, "name": k} for k, v in cats.items()]}))
    return root


def test_every_option_of_every_caption_is_judged(llava15_dir, data):
    from seed.adapters import load

    vlm = load(str(llava15_dir), device="cpu")
    config = DetectConfig(IdentifyConfig(signals=("self-probe", "lens", "contrast", "uncertainty")))
    results = detect(vlm, data / "captions.jsonl", data / "images", config)
    assert [[o["object"] for o in r["options"]] for r in results] == [
        ["giraffe", "hot dog", "teddy bear"], ["snowboard", "dog", "bus"], ["dining table", "broccoli", "cup", "stop sign"],
        ["teddy bear", "hot dog", "bus"],  # given options, resolved to categories
    ]  # fmt: skip
    for r in results:
        for o in r["options"]:
            assert 0 <= o["probability"] <= 1 and o["flagged"] == (o["probability"] > 0.5)
            assert {"self-probe", "lens"} <= o["signals"].keys()
    # contrast and uncertainty read the caption's own mention: the options it does not name get none
    assert all("contrast" in o["signals"] for r in results[:3] for o in r["options"])
    assert not any("contrast" in o["signals"] for o in results[3]["options"])
    metrics = detection_metrics(results, data / "instances.json")
    assert metrics["combined"]["n"] == 13 and metrics["combined"]["hallucinated"] == 9
    assert set(metrics) == {"self-probe", "lens", "contrast", "uncertainty", "combined"}


def test_auroc_by_hand():
    assert auroc([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0
    assert auroc([0.5, 0.5], [1, 0]) == 0.5 and auroc([0.3], [1]) is None


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda r: r.pop("caption"), 'needs an "image"'),
        (lambda r: r.update(image="nowhere.jpg"), "no such image file"),
        (lambda r: r.update(options=["unicorn"]), "unknown object 'unicorn'"),
        (lambda r: r.update(options="dog"), "must be a list"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(llava15_dir, data, tmp_path, monkeypatch, capsys, edit, expected):
    from seed.cli import main

    record = {"image": "photo_0.jpg", "caption": "A dog."}
    edit(record)
    (tmp_path / "bad.jsonl").write_text(json.dumps(record) + "\n")
    argv = ["seed", "detect", "--model", str(llava15_dir), "--images", str(data / "images"), "--captions", str(tmp_path / "bad.jsonl"), "--device", "cpu"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and expected in err, err


def test_a_distilled_detector_judges_in_one_pass_and_only_on_its_base(llava15_dir, tiny_llava_dir, data, tmp_path, monkeypatch):
    from seed.adapters import load
    from seed.config import DetectorConfig
    from seed.detection import train_detector
    from seed.detector import CONFIG_FILE, Detector
    from seed.errors import SeedError
    from seed.lexicon import ObjectLexicon

    vlm = load(str(llava15_dir), device="cpu")
    teacher = IdentifyConfig(signals=("self-probe", "lens", "evidence"), categories=tuple(OBJECTS))
    stats = train_detector(vlm, data / "images", tmp_path / "det", DetectorConfig(teacher=teacher, coarse_steps=20, fine_steps=20, batch_size=3))
    assert stats["images"] == 3 and stats["coarse_examples"] == 3 * len(OBJECTS) and stats["fine_examples"] > 0
    assert json.loads((tmp_path / "det" / CONFIG_FILE).read_text())["pool"] == OBJECTS
    passes = []
    monkeypatch.setattr(type(vlm), "response_states", lambda self, *a, f=type(vlm).response_states: passes.append(len(a[0])) or f(self, *a))
    signal = f"detector:{tmp_path / 'det'}"
    results = detect(vlm, data / "captions.jsonl", data / "images", DetectConfig(IdentifyConfig(signals=(signal,)), batch_size=8))
    assert [len(r["options"]) for r in results] == [3, 3, 4, 3]
    assert all(set(o["signals"]) == {signal} and 0 < o["probability"] < 1 for r in results for o in r["options"])
    # One pass over the four captions; the three options the last caption does not name are read at "There is a …."
    assert passes == [4, 3]
    with pytest.raises(SeedError, match="was trained on"):
        Detector.load(tmp_path / "det", load(str(tiny_llava_dir), device="cpu"), ObjectLexicon.default())
    with pytest.raises(SeedError, match="not a detector folder"):
        Detector.load(tmp_path, vlm, ObjectLexicon.default())
    with pytest.raises(SeedError, match="no such folder"):
        IdentifyConfig(signals=("self-probe", f"detector:{tmp_path / 'nowhere'}"))


def test_the_detector_is_an_identification_signal_of_purify_named_by_content(llava15_dir, data, tmp_path):
    from seed.adapters import load
    from seed.config import DetectorConfig, PurifyConfig
    from seed.detection import train_detector
    from seed.detector import WEIGHTS_FILE
    from seed.errors import SeedError
    from seed.purify import purify

    vlm = load(str(llava15_dir), device="cpu")
    teacher = IdentifyConfig(signals=("self-probe", "lens"), categories=tuple(OBJECTS))
    train_detector(vlm, data / "images", tmp_path / "det", DetectorConfig(teacher=teacher, coarse_steps=10, fine_steps=10, batch_size=3))
    config = PurifyConfig(IdentifyConfig(signals=("self-probe", f"detector:{tmp_path / 'det'}"), categories=tuple(OBJECTS)), max_new_tokens=24)
    out = purify(vlm, images=data / "images", out=tmp_path / "purified", config=config)
    records = [json.loads(line) for line in (out / "purified.jsonl").read_text().splitlines()]
    assert {r["image"] for r in records} == {"photo_0.jpg", "photo_1.jpg", "photo_2.jpg"} and all(set(r["scores"]) == set(OBJECTS) for r in records)
    weights = tmp_path / "det" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # another detector in the same folder
    with pytest.raises(SeedError, match="with another detector"):
        purify(vlm, images=data / "images", out=tmp_path / "purified", config=config)


@pytest.mark.slow
def test_detect_and_a_distilled_detector_on_the_world(tmp_path, monkeypatch, capsys):
    """On the embedded world: the signals and a detector trained on 16 unlabelled images judge the
    model's own captions of 12 held-out images, scored against their annotations."""
    import shutil

    from seed.adapters import load
    from seed.cli import main
    from seed.config import DetectorConfig
    from seed.detection import train_detector
    from seed.prompts import CAPTION_PROMPT
    from seed.world import World

    world = World.default()
    images = tmp_path / "purify"
    images.mkdir()
    for f in sorted(world.images(world.purify_split).glob("*.png"))[:16]:
        shutil.copy(f, images)
    vlm = load(str(world.model), device="cpu")
    train_detector(vlm, images, tmp_path / "det", DetectorConfig(coarse_steps=50, fine_steps=50))
    files = sorted(world.images(world.eval_split).glob("*.png"))[:12]
    from PIL import Image

    captions = vlm.generate([Image.open(f).convert("RGB") for f in files], [CAPTION_PROMPT] * len(files), max_new_tokens=48)
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"image": f.name, "caption": c}) + "\n" for f, c in zip(files, captions)))
    for identify in ("self-probe,lens", f"detector:{tmp_path / 'det'}"):
        out = tmp_path / f"judged-{len(identify)}.jsonl"
        args = ["seed", "detect", "--captions", tmp_path / "c.jsonl", "--annotations", world.annotations(world.eval_split), "--output", out, "--identify", identify]
        monkeypatch.setattr(sys, "argv", list(map(str, args)))
        with pytest.raises(SystemExit) as e:
            main()
        assert e.value.code == 0, capsys.readouterr().err
        metrics = json.loads(out.with_name(out.stem + ".metrics.json").read_text())
        assert "combined" in metrics and all(0 <= m["auroc"] <= 1 for m in metrics.values() if m["auroc"] is not None)
        assert len(out.read_text().splitlines()) == len(files)
