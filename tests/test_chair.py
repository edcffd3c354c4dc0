"""CHAIR on a tiny COCO-format file, with every number computed by hand; the CLI command."""

import json
import sys
from fractions import Fraction

import pytest

from seed.errors import SeedError
from seed.evaluation.chair import evaluate_chair, load_ground_truth, read_captions, score_captions

CATEGORIES = {1: "person", 3: "car", 10: "traffic light", 17: "cat", 18: "dog", 67: "dining table", 88: "teddy bear"}
# image id → category ids of its instances (image 4 has none)
INSTANCES = {1: [1, 1, 18, 67], 2: [17, 88], 3: [10, 10, 3], 4: []}

CAPTIONS = [
    # mentions: men, dining table, dogs, cat (hallucinated) — recalls person, dog, dining table
    {"image_id": 1, "caption": "Two men sit at a dining table with their dogs and a cat."},
    # by file name: kitten (cat), teddy-bear — nothing hallucinated, recalls both
    {"image": "000000000002.jpg", "text": "A kitten hugs a teddy-bear."},
    # traffic lights, car, bus (hallucinated, twice) — recalls both
    {"image_id": 3, "caption": "Traffic lights above a car, a bus and another bus."},
    # no object words, no ground truth
    {"image": "val2014/000000000004.jpg", "caption": "An empty street."},
    # a second caption of image 1: recalls only person
    {"image_id": "1", "caption": "A man."},
]


def coco_instances():
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480} for i in INSTANCES]
    annotations = []
    for image_id, cats in INSTANCES.items():
        for category_id in cats:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                "bbox": [10.0, 20.0, 30.0, 40.0], "area": 1200.0, "iscrowd": 0, "segmentation": [],
            })
    categories = [{"id": k, "name": v, "supercategory": "thing"} for k, v in CATEGORIES.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


@pytest.fixture
def files(tmp_path):
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps(coco_instances()))
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps(c) + "\n" for c in CAPTIONS))
    refs = tmp_path / "captions_ref.json"
    refs.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "000000000001.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "caption": "A cat sleeps under the table."},
                        {"id": 2, "image_id": 99, "caption": "A giraffe."}],
    }))
    return annotations, captions, refs


def close(value, fraction):
    return value == pytest.approx(float(fraction))


def test_hand_computed_metrics(files):
    annotations, captions, _ = files
    result = evaluate_chair(captions, annotations)
    m = result["metrics"]
    assert m["n"] == 5 and m["n_mentions"] == 11 and m["n_hallucinated"] == 3
    assert close(m["chair_i"], Fraction(3, 11))
    assert close(m["chair_s"], Fraction(2, 5))
    assert close(m["recall"], Fraction(3 + 2 + 2 + 0 + 1, 3 + 2 + 2 + 0 + 3))
    assert close(m["mean_length"], Fraction(13 + 5 + 10 + 3 + 2, 5))

    first, second, third = result["captions"][:3]
    assert [(x["category"], x["surface"], x["hallucinated"]) for x in first["mentions"]] == [
        ("person", "men", False), ("dining table", "dining table", False), ("dog", "dogs", False), ("cat", "cat", True),
    ]
    assert first["hallucinated"] == ["cat"]
    assert first["ground_truth"] == ["dining table", "dog", "person"] == first["recalled"]
    assert second["image_id"] == 2 and second["image"] == "000000000002.jpg" and second["hallucinated"] == []
    assert third["hallucinated"] == ["bus", "bus"]
    for entry in result["captions"]:
        for x in entry["mentions"]:
            assert entry["caption"][x["start"] : x["end"]] == x["surface"]
    assert result["captions"][3]["image_id"] == 4  # matched by the base name of its file
    assert result["benchmark"] == "chair"
    assert result["manifest"]["annotations"]["md5"] and result["manifest"]["model"] is None


def test_reference_captions_add_ground_truth(files):
    annotations, captions, refs = files
    m = evaluate_chair(captions, annotations, ref_captions=refs)["metrics"]
    # "cat" of image 1 is now present; image 99 is not annotated and is ignored.
    assert close(m["chair_i"], Fraction(2, 11))
    assert close(m["chair_s"], Fraction(1, 5))
    assert close(m["recall"], Fraction(4 + 2 + 2 + 0 + 1, 4 + 2 + 2 + 0 + 4))


def test_no_mentions_gives_none_not_zero():
    truth = load_ground_truth(coco_instances())
    m = score_captions([{"image_id": 4, "caption": "Nothing here."}], truth)["metrics"]
    assert m["chair_i"] is None and m["recall"] is None and m["chair_s"] == 0.0


def test_unknown_annotation_categories_join_the_lexicon():
    data = coco_instances()
    data["categories"].append({"id": 200, "name": "lamp"})
    data["annotations"].append({"id": 99, "image_id": 4, "category_id": 200, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0})
    truth = load_ground_truth(data)
    assert truth.objects[4] == {"lamp"}
    details = score_captions([{"image_id": 4, "caption": "Two lamps."}, {"image_id": 1, "caption": "A lamp."}], truth)["captions"]
    assert details[0]["hallucinated"] == [] and details[1]["hallucinated"] == ["lamp"]


def test_user_lexicon_file(files, tmp_path):
    annotations, _, _ = files
    captions = tmp_path / "c.jsonl"
    captions.write_text(json.dumps({"image_id": 2, "caption": "A plushie and a tomcat."}) + "\n")
    assert evaluate_chair(captions, annotations)["metrics"]["n_mentions"] == 0
    words = tmp_path / "words.txt"
    words.write_text("plushie: teddy bear\ntomcat: cat\n")
    result = evaluate_chair(captions, annotations, lexicon=words)
    assert result["metrics"]["n_mentions"] == 2 and result["metrics"]["n_hallucinated"] == 0
    assert result["manifest"]["lexicon"]["path"] == str(words)


def test_unknown_images_are_refused_with_a_count(files):
    truth = load_ground_truth(files[0])
    records = [{"image_id": 1, "caption": "a dog"}, {"image_id": 7, "caption": "a dog"}, {"image": "x.jpg", "caption": "a"}]
    with pytest.raises(SeedError, match=r"^2 of 3 captions name images that are not in the annotations \(e.g. 7, x.jpg\)"):
        score_captions(records, truth)


def test_captions_join_by_exact_file_name_only(files):
    """Digits in a file name never pick an image: foreign names are refused, not scored as others."""
    truth = load_ground_truth(files[0])
    for name in ("purify_000001.png", "holiday_photo_1.jpg", "COCO_val2014_000000000002.jpg", "000000000002.png"):
        with pytest.raises(SeedError, match=rf"1 of 2 captions name images that are not in the annotations \(e.g. {name}\)"):
            score_captions([{"image": "000000000001.jpg", "caption": "a dog"}, {"image": name, "caption": "a cat"}], truth)
    with pytest.raises(SeedError, match="names image 000000000002.jpg \\(image_id 2\\) but gives image_id 1"):
        score_captions([{"image_id": 1, "image": "000000000002.jpg", "caption": "a dog"}], truth)
    data = coco_instances()
    data["images"][0]["file_name"], data["images"][1]["file_name"] = "a/000000000001.jpg", "b/000000000001.jpg"
    with pytest.raises(SeedError, match="not in the annotations"):  # a base name two images share joins neither
        score_captions([{"image": "000000000001.jpg", "caption": "a dog"}], load_ground_truth(data))
    assert score_captions([{"image": "b/000000000001.jpg", "caption": "a dog"}], load_ground_truth(data))["captions"][0]["image_id"] == 2


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"image_id": 1, "caption": "a"}\n{"image_id": 1\n', r"malformed JSON on line 2"),
        ('{"image_id": 1}\n', r"record 1 has neither caption nor text"),
        ('{"caption": "a"}\n', r"record 1 has neither image_id nor image"),
        ('{"image_id": 1.5, "caption": "a"}\n', r"record 1 has image_id 1.5; expected an integer"),
        ('{"image_id": 1, "caption": 3}\n', r"record 1: the caption is int, not a string"),
        ("\n", r"no captions"),
    ],
)
def test_bad_caption_files(tmp_path, content, message):
    path = tmp_path / "c.jsonl"
    path.write_text(content)
    with pytest.raises(SeedError, match=message):
        read_captions(path)


def test_bad_annotation_files(tmp_path, files):
    _, captions, _ = files
    with pytest.raises(SeedError, match=r"nope\.json: no such file"):
        evaluate_chair(captions, tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(SeedError, match=r"bad\.json: malformed JSON"):
        evaluate_chair(captions, bad)
    bad.write_text('{"images": []}')
    with pytest.raises(SeedError, match=r"not a COCO instances file"):
        evaluate_chair(captions, bad)
    data = coco_instances()
    data["annotations"][0]["category_id"] = 555
    with pytest.raises(SeedError, match=r"1 annotation\(s\) name an unknown category_id \(e.g. annotation 1: category_id 555\)"):
        load_ground_truth(data)
    bad.write_text('{"annotations": {}}')
    with pytest.raises(SeedError, match=r"not a COCO captions file"):
        load_ground_truth(coco_instances(), bad)


# --------------------------------------------------------------------------- CLI
def run_cli(monkeypatch, *args):
    from seed.cli import main

    monkeypatch.setattr(sys, "argv", ["seed", "eval", "chair", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code


def test_cli_writes_result(files, tmp_path, monkeypatch, capsys):
    annotations, captions, refs = files
    out = tmp_path / "out" / "chair.json"
    code = run_cli(monkeypatch, "--captions", str(captions), "--annotations", str(annotations), "--output", str(out))
    assert code in (0, None)
    printed = capsys.readouterr()
    assert "CHAIR_i" in printed.out and "27.27" in printed.out and "40.00" in printed.out
    result = json.loads(out.read_text())
    assert set(result) >= {"benchmark", "metrics", "manifest", "captions"}
    assert result["benchmark"] == "chair" and close(result["metrics"]["chair_i"], Fraction(3, 11))
    assert result["manifest"]["captions"]["path"] == str(captions)
    code = run_cli(monkeypatch, "--captions", str(captions), "--annotations", str(annotations), "--ref-captions", str(refs))
    assert code in (0, None) and "18.18" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--captions", "{captions}"], "chair needs --annotations FILE"),
        (["--captions", "{tmp}/missing.jsonl", "--annotations", "{annotations}"], "missing.jsonl: no such file"),
        (["--captions", "{captions}", "--annotations", "{annotations}", "--lexicon", "{tmp}/w.txt"], "w.txt: no such file"),
    ],
)
def test_cli_errors_are_one_line(files, tmp_path, monkeypatch, capsys, args, message):
    annotations, captions, _ = files
    fill = {"captions": captions, "annotations": annotations, "tmp": tmp_path}
    code = run_cli(monkeypatch, *(a.format(**fill) for a in args))
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.strip().startswith("error:") and "\n" not in err.strip()
