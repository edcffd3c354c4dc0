"""``seed report``: the HTML page of a small synthetic evolve run (rounds 0-2, one purified set of
14 images that exist), read as HTML here and rendered by a real headless Chromium (slow)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from io import BytesIO
from itertools import combinations
from pathlib import Path

import pytest
from PIL import Image

from seed.config import ReportConfig
from seed.html_report import auroc, identification, write_report
from seed.lexicon import ObjectLexicon

# Per image: the objects it holds, the one the caption adds that is not there.
SCENES = [(("dog", "cup"), "car"), (("car", "truck"), "bench"), (("fork", "knife"), "spoon"), (("cat", "umbrella"), "kite")] * 3
SCENES += [(("clock", "vase"), "bench"), (("apple", "mouse"), "keyboard")]
CATEGORIES = sorted({c for present, absent in SCENES for c in (*present, absent)})
INJECTION = "<script>alert('x')</script> & <b>bold</b>"


def evaluation(f1: float, chair_i: float) -> dict:
    pope = {s: {"accuracy": f1, "precision": f1, "recall": f1, "f1": f1 - k / 100, "yes_ratio": 0.5 - k / 50} for k, s in enumerate(("random", "popular", "adversarial"))}
    return {"pope": pope, "pope_mean_f1": f1, "chair": {"chair_i": chair_i, "chair_s": 3 * chair_i, "recall": 0.8 + chair_i / 10, "mean_length": 12.25}}


def write_run(out: Path) -> Path:
    """A finished-looking ``seed evolve`` folder: history, one purified set, its images and annotations."""
    images, purified = out / "images", out / "round-1" / "purified"
    images.mkdir(parents=True)
    purified.mkdir(parents=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": i, "name": c} for i, c in enumerate(CATEGORIES, 1)]}
    records = []
    for i, (present, absent) in enumerate(SCENES):
        name = f"scene_{i:02d}.png"
        Image.new("RGB", (48, 32), (20 * i % 255, 90, 200 - 10 * i)).save(images / name)
        coco["images"].append({"id": i, "file_name": name, "width": 48, "height": 32})
        coco["annotations"] += [{"id": 10 * i + k, "image_id": i, "category_id": CATEGORIES.index(c) + 1, "bbox": [0, 0, 4, 4]} for k, c in enumerate(present)]
        scores = {present[0]: 0.05, present[1]: 0.2, absent: 0.9 if i % 7 else 0.15}  # every 7th hallucination is missed
        flagged = [absent] if scores[absent] > 0.5 else []
        caption = f"There is a {present[0]}, a {absent} and a {present[1]}."
        repaired = f"There is a {present[0]} and a {present[1]}." if flagged else caption
        if i == 1:
            caption, repaired = caption + " " + INJECTION, repaired + " " + INJECTION
        base = {"image": name, "flagged": flagged, "scores": scores, "sites": 0}
        records.append({"item": len(records), **base, "prompt": "Describe.", "response": caption, "repaired": repaired})
        records.append({"item": len(records), **base, "prompt": f"Is there a {absent}?", "response": "Yes", "repaired": "No", "category": absent})
    (purified / "purified.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (purified / "manifest.json").write_text(json.dumps({"model": "tiny", "options": {"config": {"identify": {"signals": ["self-probe", "lens"], "tau": 0.5}}}}))
    (out / "instances.json").write_text(json.dumps(coco))
    rounds = [{"round": 0, "adapter": None, "eval": evaluation(0.80, 0.20), "seconds": 3.0}]
    for r, (f1, chair_i) in enumerate(((0.8512, 0.1234), (0.83, 0.0987)), 1):
        distilled = {"examples": 28, "steps": 4, "first_loss": 1.5, "final_loss": 0.75 / r, "seconds": 2.0}
        rounds.append({"round": r, "adapter": f"round-{r}/adapter", "purified": f"round-{r}/purified", "purified_items": 28, "repaired_items": 12, "distill": distilled, "eval": evaluation(f1, chair_i), "seconds": 5.0})
    options = {"model": {"model": "tiny"}, "images": str(images), "annotations": str(out / "instances.json"), "yes_ratio": [0.4, 0.6],
               "distill": {"loss": "reverse-kl"}, "purify": {"identify": {"signals": ["self-probe", "lens"], "tau": 0.5, "lexicon": None}}}  # fmt: skip
    (out / "history.json").write_text(json.dumps({"options": options, "rounds": rounds, "best_round": 1, "stopped": None}))
    return out


class Page(HTMLParser):
    """The parts of the page the tests read: metric cells, images, gallery cards and their marks."""

    def __init__(self, text: str):
        super().__init__()
        self.cells, self.images, self.cards, self.marks = [], [], 0, []
        self._cell, self._mark = None, False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and "data-source" in attrs:
            self._cell = [attrs["data-source"], attrs["data-metric"], ""]
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "figure" and attrs.get("class") == "example":
            self.cards += 1
            self.marks.append(0)
        elif tag == "mark" and self.marks:
            self.marks[-1] += 1

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2] += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append(tuple(self._cell))
            self._cell = None


def history_value(history: dict, source: str, metric: str) -> float:
    entry = next(e for e in history["rounds"] if f"round-{e['round']}" == source)
    group, *path = metric.split(".")
    value = entry["eval"][group]
    for key in path:
        value = value[key]
    return value if path[-1] == "mean_length" else 100 * value


def decoded_image(src: str) -> str:
    """The format of a data-URI image, after decoding it (PNG/JPEG through PIL, SVG as XML)."""
    head, _, data = src.partition(",")
    assert head.startswith("data:image/") and head.endswith(";base64"), head[:40]
    raw = base64.b64decode(data, validate=True)
    if head == "data:image/svg+xml;base64":
        assert ET.fromstring(raw).tag.endswith("svg")
        return "SVG"
    with Image.open(BytesIO(raw)) as image:
        image.load()
        return image.format


def check_page(text: str, history: dict) -> Page:
    page = Page(text)
    assert len(page.cells) == 10 * (3 + 2)  # every METRIC_ROWS row: three rounds, then before and after
    for source, metric, shown in page.cells:
        assert float(shown) == pytest.approx(history_value(history, source, metric), abs=0.0051), (source, metric, shown)
    formats = [decoded_image(img["src"]) for img in page.images]
    assert formats.count("SVG") >= 5 and formats.count("PNG") == page.cards  # four metric charts, the score histogram, thumbnails
    assert page.cards >= 12 and sum(1 for m in page.marks if m) >= 12, page.marks
    return page


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("report") / "run")


def test_the_page_shows_the_history_and_marks_the_flagged_words(run_dir, tmp_path):
    out = write_report(run_dir, tmp_path / "report.html", ReportConfig(examples=14))
    text = out.read_text()
    history = json.loads((run_dir / "history.json").read_text())
    page = check_page(text, history)
    # Twelve captions were repaired (one flagged word each); the two unrepaired come last, unmarked.
    assert page.cards == 14 and page.marks == [1] * 12 + [0, 0]
    assert INJECTION not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in text
    assert '<mark class="obj absent" title="car: h = 0.90, absent">car</mark>' in text
    assert "85.12" in text and "+5.12" in text  # round 1 kept: after − before on random F1


def test_identification_against_the_annotations(run_dir):
    captions = [r for r in map(json.loads, (run_dir / "round-1" / "purified" / "purified.jsonl").read_text().splitlines()) if "category" not in r]
    truth = {f"scene_{i:02d}.png": set(present) for i, (present, _) in enumerate(SCENES)}
    found = identification(captions, truth, ObjectLexicon.default())
    assert found["images"] == 14 and found["repaired captions"] == 12
    # Absent objects score 0.9, except two at 0.15, which rank below every image's second present object (0.2).
    assert found["AUROC, every scored object"] == pytest.approx((12 * 28 + 2 * 14) / (14 * 28))
    assert found["flag precision (flagged → absent)"] == 1.0 and found["flag recall (absent → flagged)"] == pytest.approx(12 / 14)
    assert found["absent objects among caption mentions, before"] == pytest.approx(14 / 42)
    assert found["absent objects among caption mentions, after repair"] == pytest.approx(2 / 30)
    assert identification(captions, None, ObjectLexicon.default()).keys() == {"images", "repaired captions", "flagged objects per image"}


def test_auroc_is_the_share_of_correctly_ordered_pairs():
    scores, labels = [0.1, 0.4, 0.4, 0.8, 0.3, 0.9, 0.4], [0, 1, 0, 1, 0, 1, 1]
    pairs = [(a, b) for a, b in combinations(range(len(scores)), 2) if labels[a] != labels[b]]
    pos_first = [(a, b) if labels[a] else (b, a) for a, b in pairs]
    expected = sum((scores[p] > scores[n]) + 0.5 * (scores[p] == scores[n]) for p, n in pos_first) / len(pairs)
    assert auroc(scores, labels) == pytest.approx(expected)
    assert auroc([0.1, 0.2], [1, 1]) is None


def test_purify_folders_and_ablations_have_their_own_pages(run_dir, tmp_path):
    purified = run_dir / "round-1" / "purified"
    text = write_report(purified, tmp_path / "purify.html", ReportConfig(images=str(run_dir / "images"), annotations=str(run_dir / "instances.json"))).read_text()
    assert Page(text).cards == 14 and "AUROC, every scored object" in text and 'id="metrics"' not in text
    history = json.loads((run_dir / "history.json").read_text())
    rows = {"base": {"label": "base", "eval": history["rounds"][0]["eval"]}, "reverse-kl": {"label": "SEED (rev KL)", "eval": history["rounds"][1]["eval"]}}
    (tmp_path / "ablation").mkdir()
    (tmp_path / "ablation" / "ablation.json").write_text(json.dumps({"rows": rows, "purified": {"path": str(purified)}, "data": {}}))
    page = Page(write_report(tmp_path / "ablation", None, ReportConfig(images=str(run_dir / "images"))).read_text())
    assert {(s, m) for s, m, _ in page.cells} >= {("row-base", "pope.adversarial.f1"), ("row-reverse-kl", "chair.chair_i")}
    assert page.cards == 14 and (tmp_path / "ablation" / "report.html").is_file()


def test_without_matplotlib_the_command_says_so_in_one_line(run_dir, tmp_path, monkeypatch, capsys):
    from seed.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(sys, "argv", ["seed", "report", str(run_dir), "--out", str(tmp_path / "r.html")])
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and "pip install 'seed-vlm[report]'" in err
    assert not (tmp_path / "r.html").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
def test_the_page_renders_in_headless_chromium(run_dir, tmp_path):
    out = write_report(run_dir, tmp_path / "report.html")
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,4000",
    ]  # fmt: skip
    url = out.resolve().as_uri()
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=60, check=True).stdout
    page = check_page(dom, json.loads((run_dir / "history.json").read_text()))
    assert page.cards == 14
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=60, check=True)
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (1280, 4000)
        pixels = image.convert("RGB")
        assert len(pixels.getcolors(maxcolors=1 << 20) or range(1 << 20)) > 50  # text, charts and thumbnails, not a blank page
        # The charts' coloured lines (matplotlib's first three colours) are on screen.
        colours = {rgb for _, rgb in pixels.getcolors(maxcolors=1 << 20) or []}
        assert {(31, 119, 180), (255, 127, 14), (44, 160, 44)} <= colours
