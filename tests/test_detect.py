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


def test_a_distilled_detector_judges_in_one_pass_and_only_on_its_base(llava15_dir, tiny_llava_dir, data, tmp_path):
    from seed.adapters import load
    from seed.config import DetectorConfig
    from seed.detector import CONFIG_FILE, Detector, train_detector
    from seed.errors import SeedError
    from seed.lexicon import ObjectLexicon

    vlm = load(str(llava15_dir), device="cpu")
    teacher = IdentifyConfig(signals=("self-probe", "lens", "evidence"), categories=tuple(OBJECTS))
    stats = train_detector(vlm, data / "images", tmp_path / "det", DetectorConfig(teacher=teacher, coarse_steps=20, fine_steps=20, batch_size=3))
    assert stats["images"] == 3 and stats["coarse_examples"] == 3 * len(OBJECTS) and stats["fine_examples"] > 0
    assert json.loads((tmp_path / "det" / CONFIG_FILE).read_text())["pool"] == OBJECTS
    results = detect(vlm, data / "captions.jsonl", data / "images", DetectConfig(detector=str(tmp_path / "det")))
    assert [len(r["options"]) for r in results] == [3, 3, 4, 3]  # an option the caption does not name is read from "There is a …."
    assert all(set(o["signals"]) == {"detector"} and 0 < o["probability"] < 1 for r in results for o in r["options"])
    with pytest.raises(SeedError, match="was trained on"):
        Detector.load(tmp_path / "det", load(str(tiny_llava_dir), device="cpu"), ObjectLexicon.default())
    with pytest.raises(SeedError, match="not a detector folder"):
        Detector.load(tmp_path, vlm, ObjectLexicon.default())
